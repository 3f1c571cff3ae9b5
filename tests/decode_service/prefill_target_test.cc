// --prefill_target parsing and the channel targets it turns into.
#include "decode_service/prefill_target.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace pdserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

absl::StatusOr<std::string> TargetOf(const std::string& flag) {
  absl::StatusOr<std::vector<std::string>> split = SplitPrefillTargets(flag);
  if (!split.ok()) return split.status();
  return PrefillChannelTarget(*split);
}

TEST(PrefillTargetTest, SplitsAndTrimsTheCommaList) {
  absl::StatusOr<std::vector<std::string>> split =
      SplitPrefillTargets(" 127.0.0.1:50051, 127.0.0.1:50061 ");
  ASSERT_TRUE(split.ok());
  EXPECT_THAT(*split, ElementsAre("127.0.0.1:50051", "127.0.0.1:50061"));
  EXPECT_EQ(SplitPrefillTargets("127.0.0.1:1,,127.0.0.1:2").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SplitPrefillTargets("").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(PrefillTargetTest, IpLiteralsBecomeOneMultiAddressTarget) {
  EXPECT_EQ(*TargetOf("127.0.0.1:50051"), "ipv4:127.0.0.1:50051");
  EXPECT_EQ(*TargetOf("127.0.0.1:50051,10.0.0.2:7"), "ipv4:127.0.0.1:50051,10.0.0.2:7");
  EXPECT_EQ(*TargetOf("[::1]:50051,[fe80::1]:2"), "ipv6:[::1]:50051,[fe80::1]:2");
}

TEST(PrefillTargetTest, NamesAndUrisGoThroughTheResolver) {
  EXPECT_EQ(*TargetOf("localhost:50051"), "dns:///localhost:50051");
  EXPECT_EQ(*TargetOf("dns:///prefill.default.svc:50051"), "dns:///prefill.default.svc:50051");
  EXPECT_EQ(*TargetOf("unix:/tmp/prefill.sock"), "unix:/tmp/prefill.sock");
}

TEST(PrefillTargetTest, RejectsWhatOneChannelCannotBalance) {
  for (const char* bad : {"prefill-a:1,prefill-b:2", "127.0.0.1:1,[::1]:2", "127.0.0.1",
                          "127.0.0.1:0", "127.0.0.1:70000", "::1:5", "dns:///a:1,dns:///b:2"}) {
    absl::StatusOr<std::string> target = TargetOf(bad);
    EXPECT_EQ(target.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(target.status().message(), HasSubstr("--prefill_target")) << bad;
  }
}

}  // namespace
}  // namespace pdserve
