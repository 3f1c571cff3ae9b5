#include "proto/convert/convert.h"

#include <grpcpp/support/slice.h>

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pdserve/v1/generate.pb.h"
#include "pdserve/v1/prefill.pb.h"
#include "tests/testing/byte_buffer_bytes.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

grpc::ByteBuffer Bytes(const std::string& bytes) {
  grpc::Slice slice(bytes);
  return grpc::ByteBuffer(&slice, 1);
}

TEST(SerializeRawResponseTest, WritesWhatProtobufWrites) {
  v1::PrefillResponse header;
  header.mutable_header()->set_num_tokens(12);
  header.mutable_header()->set_num_layers(32);
  absl::StatusOr<grpc::ByteBuffer> encoded = SerializeRawResponse(header);
  ASSERT_TRUE(encoded.ok()) << encoded.status();
  EXPECT_EQ(ByteBufferBytes(*encoded), header.SerializeAsString());
}

TEST(ParseRawRequestTest, ParsesAValidRequestAndTheEmptyOne) {
  v1::GenerateRequest sent;
  sent.set_prompt("Once upon a time");
  sent.mutable_stopping()->set_max_new_tokens(7);
  v1::GenerateRequest parsed;
  ASSERT_TRUE(ParseRawRequest(Bytes(sent.SerializeAsString()), &parsed).ok());
  EXPECT_EQ(parsed.prompt(), "Once upon a time");
  EXPECT_EQ(parsed.stopping().max_new_tokens(), 7);
  // Zero bytes are the message with every field at its default.
  v1::GenerateRequest empty;
  EXPECT_TRUE(ParseRawRequest(Bytes(""), &empty).ok());
  EXPECT_EQ(empty.prompt(), "");
}

TEST(ParseRawRequestTest, BadBytesAreInvalidArgumentNamingTheMessage) {
  v1::GenerateRequest sent;
  sent.set_prompt("Once");
  std::string bad_utf8 = sent.SerializeAsString();
  bad_utf8.replace(bad_utf8.find("Once"), 4,
                   "\xff\xfe\x80"
                   "A");
  const std::string truncated("\x0a\x64\x01\x02", 4);  // prompt claims 100 bytes, has 2
  for (const std::string& bytes : {bad_utf8, truncated}) {
    v1::GenerateRequest parsed;
    const absl::Status status = ParseRawRequest(Bytes(bytes), &parsed);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(status.message(), HasSubstr("GenerateRequest"));
  }
}

// gRPC hands a raw handler an invalid buffer when no request arrived (the
// client cancelled first): that is a cancel, not a bad request.
TEST(ParseRawRequestTest, NoRequestAtAllIsCancelled) {
  v1::PrefillRequest parsed;
  const absl::Status status = ParseRawRequest(grpc::ByteBuffer(), &parsed);
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled) << status;
  EXPECT_THAT(status.message(), HasSubstr("PrefillRequest"));
}

}  // namespace
}  // namespace pdserve
