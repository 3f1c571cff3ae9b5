#include "bench/load_generator/kv_cache_comparison.h"

#include <grpcpp/grpcpp.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/bench/fake_generate_service.h"

namespace pdserve::bench {
namespace {

using ::testing::HasSubstr;

class KvCacheComparisonTest : public ::testing::Test {
 protected:
  KvCacheComparisonTest() : stub_(server_.NewStub()) {}

  testing::FakeServer server_;
  std::unique_ptr<v1::GenerateService::Stub> stub_;
};

TEST_F(KvCacheComparisonTest, ConsistentServerGivesTheSameIdsOnBothPaths) {
  // The fake's token k is (k + words in the prompt) % 512, and each token's
  // text adds one word, so the recompute path must land on the same ids.
  auto comparison =
      CompareKvCache(stub_.get(), "Once upon a time", KvCacheComparisonOptions{.new_tokens = 12});
  ASSERT_TRUE(comparison.ok()) << comparison.status();
  std::vector<int32_t> expected;
  for (int k = 0; k < 12; ++k) expected.push_back(k + 4);
  EXPECT_EQ(comparison->cached_token_ids, expected);
  EXPECT_EQ(comparison->recomputed_token_ids, expected);
  EXPECT_TRUE(comparison->token_ids_match);
  EXPECT_EQ(comparison->first_mismatch, -1);
  EXPECT_FALSE(comparison->retokenization_matches.has_value());
  EXPECT_EQ(comparison->recompute_calls, 12);
  EXPECT_EQ(comparison->prompt_tokens, 5);
  EXPECT_GT(comparison->with_cache_s, 0);
  EXPECT_GT(comparison->recompute_s, 0);
  EXPECT_DOUBLE_EQ(comparison->ratio, comparison->recompute_s / comparison->with_cache_s);

  // Warm-up, the cached call, and one call per recompute step.
  const std::vector<std::string> prompts = server_.service().seen_prompts();
  ASSERT_EQ(prompts.size(), 14u);
  EXPECT_EQ(prompts[2], "Once upon a time");
  // Each one-token call of the fake answers " w0": one more word per step.
  EXPECT_EQ(prompts[5], "Once upon a time w0 w0 w0");

  const nlohmann::json json = KvCacheComparisonToJson(*comparison);
  EXPECT_EQ(json["token_ids_match"], true);
  EXPECT_EQ(json["with_cache_tokens"], 12);
  EXPECT_TRUE(json["retokenization_matches"].is_null());
  EXPECT_THAT(FormatKvCacheComparison(*comparison), HasSubstr("identical on both paths"));
}

TEST_F(KvCacheComparisonTest, DifferingPathsAreReportedWithThePosition) {
  auto comparison =
      CompareKvCache(stub_.get(), "drift prompt", KvCacheComparisonOptions{.new_tokens = 5});
  ASSERT_TRUE(comparison.ok()) << comparison.status();
  // Cached: 0 1 2 3 4; every recompute step starts again at 0.
  EXPECT_EQ(comparison->recomputed_token_ids, std::vector<int32_t>(5, 0));
  EXPECT_FALSE(comparison->token_ids_match);
  EXPECT_EQ(comparison->first_mismatch, 1);
  ASSERT_TRUE(comparison->retokenization_matches.has_value());
  // The fake tokenizes " w0" as id 2, while the cached path produced 0.
  EXPECT_FALSE(*comparison->retokenization_matches);
  EXPECT_THAT(FormatKvCacheComparison(*comparison), HasSubstr("DIFFER from position 1"));
}

TEST_F(KvCacheComparisonTest, FailedCallIsAnErrorNamingThePath) {
  auto comparison =
      CompareKvCache(stub_.get(), "fail:14", KvCacheComparisonOptions{.new_tokens = 3});
  EXPECT_EQ(comparison.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(comparison.status().message(), HasSubstr("warm-up"));
  EXPECT_EQ(server_.service().open_streams(), 0);
}

}  // namespace
}  // namespace pdserve::bench
