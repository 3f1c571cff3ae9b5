// The checks both prefill clients apply to a stream: the header against our
// model, and a failed stream's gRPC status as decode's callers see it.
#include "decode_service/prefill_stream_checks.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "proto/convert/convert.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

PrefillExpectation Expected() {
  PrefillExpectation expected;
  expected.fingerprint.architecture = "LlamaForCausalLM";
  expected.fingerprint.num_layers = 5;
  expected.fingerprint.hidden_size = 64;
  expected.fingerprint.num_heads = 8;
  expected.fingerprint.num_kv_heads = 4;
  expected.fingerprint.head_dim = 8;
  expected.fingerprint.vocab_size = 512;
  expected.fingerprint.weights_hash = 42;
  expected.num_layers = 5;
  expected.num_kv_heads = 4;
  expected.head_dim = 8;
  expected.hidden_size = 64;
  return expected;
}

v1::PrefillHeader MatchingHeader(int num_tokens) {
  const PrefillExpectation expected = Expected();
  v1::PrefillHeader header;
  ToProto(expected.fingerprint, header.mutable_fingerprint());
  header.set_num_tokens(num_tokens);
  header.set_num_layers(expected.num_layers);
  header.set_num_kv_heads(expected.num_kv_heads);
  header.set_head_dim(expected.head_dim);
  header.set_hidden_size(expected.hidden_size);
  header.set_kv_dtype(ToProto(DType::kBF16));
  return header;
}

TEST(CheckPrefillHeaderTest, AcceptsAMatchingHeaderAndReturnsItsKvDtype) {
  absl::StatusOr<DType> dtype = CheckPrefillHeader(MatchingHeader(7), Expected(), 7);
  ASSERT_TRUE(dtype.ok()) << dtype.status();
  EXPECT_EQ(*dtype, DType::kBF16);
}

TEST(CheckPrefillHeaderTest, NamesTheFirstDifferingFieldWithBothValues) {
  struct Case {
    const char* field;
    void (*change)(v1::PrefillHeader*);
    absl::StatusCode code;
    const char* message;
  };
  const Case cases[] = {
      {"num_layers", [](v1::PrefillHeader* h) { h->set_num_layers(6); },
       absl::StatusCode::kFailedPrecondition, "num_layers: prefill's 6, ours 5"},
      {"num_kv_heads", [](v1::PrefillHeader* h) { h->set_num_kv_heads(2); },
       absl::StatusCode::kFailedPrecondition, "num_kv_heads: prefill's 2, ours 4"},
      {"head_dim", [](v1::PrefillHeader* h) { h->set_head_dim(16); },
       absl::StatusCode::kFailedPrecondition, "head_dim: prefill's 16, ours 8"},
      {"hidden_size", [](v1::PrefillHeader* h) { h->set_hidden_size(32); },
       absl::StatusCode::kFailedPrecondition, "hidden_size: prefill's 32, ours 64"},
      {"fingerprint", [](v1::PrefillHeader* h) { h->mutable_fingerprint()->set_weights_hash(43); },
       absl::StatusCode::kFailedPrecondition, "weights_hash"},
      {"num_tokens", [](v1::PrefillHeader* h) { h->set_num_tokens(8); },
       absl::StatusCode::kInternal, "num_tokens: 8, but the prompt has 7 tokens"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.field);
    v1::PrefillHeader header = MatchingHeader(7);
    c.change(&header);
    absl::StatusOr<DType> dtype = CheckPrefillHeader(header, Expected(), 7);
    ASSERT_FALSE(dtype.ok());
    EXPECT_EQ(dtype.status().code(), c.code);
    EXPECT_THAT(dtype.status().message(), HasSubstr(c.message));
  }
}

TEST(PrefillStreamStatusTest, MapsGrpcCodesToWhatTheRequestMeans) {
  const grpc::Status unavailable(grpc::StatusCode::UNAVAILABLE, "connection refused");
  absl::Status status = PrefillStreamStatus(unavailable, false, false, "", "prefill");
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(), HasSubstr("no prefill instance reachable: connection refused"));

  // A CANCELLED we did not ask for: the instance went away mid-stream.
  const grpc::Status cancelled(grpc::StatusCode::CANCELLED, "closed");
  status = PrefillStreamStatus(cancelled, false, true, "ipv4:127.0.0.1:9", "prefill");
  EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(status.message(), HasSubstr("failed mid-stream (ipv4:127.0.0.1:9)"));
  // One we asked for stays CANCELLED, whatever gRPC reported.
  status = PrefillStreamStatus(unavailable, true, true, "", "inspect prefill");
  EXPECT_EQ(status.code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(status.message(), HasSubstr("inspect prefill cancelled"));

  status = PrefillStreamStatus(grpc::Status(grpc::StatusCode::DEADLINE_EXCEEDED, "late"), false,
                               true, "", "prefill");
  EXPECT_EQ(status.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(status.message(), HasSubstr("--prefill_timeout_ms"));

  status = PrefillStreamStatus(
      grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "token_ids[3]: 900 outside [0, 512)"), false,
      false, "", "prefill");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("prefill: token_ids[3]: 900 outside [0, 512)"));
}

}  // namespace
}  // namespace pdserve
