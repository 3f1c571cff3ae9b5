#include "bench/load_generator/generate_call.h"

#include <grpcpp/grpcpp.h>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/bench/fake_generate_service.h"

namespace pdserve::bench {
namespace {

using ::testing::ElementsAre;

class GenerateCallTest : public ::testing::Test {
 protected:
  GenerateCallTest() : stub_(server_.NewStub()) {}

  static v1::GenerateRequest Request(const std::string& prompt, int max_new_tokens) {
    v1::GenerateRequest request;
    request.set_prompt(prompt);
    request.mutable_stopping()->set_max_new_tokens(max_new_tokens);
    return request;
  }

  testing::FakeServer server_;
  std::unique_ptr<v1::GenerateService::Stub> stub_;
};

TEST_F(GenerateCallTest, MeasuresEveryTokenMessage) {
  const RequestResult r =
      RunGenerateCall(stub_.get(), Request("one two three", 4), CallOptions{.record_tokens = true});
  EXPECT_EQ(r.code, absl::StatusCode::kOk) << r.error_message;
  EXPECT_EQ(r.output_tokens, 4);
  ASSERT_TRUE(r.ttft_ms.has_value());
  EXPECT_GE(*r.ttft_ms, 0);
  EXPECT_EQ(r.itl_ms.size(), 3u);
  double sum = *r.ttft_ms;
  for (double gap : r.itl_ms) {
    EXPECT_GE(gap, 0);
    sum += gap;
  }
  EXPECT_LE(sum, r.latency_ms);  // the last token arrives before the stream ends
  EXPECT_THAT(r.token_ids, ElementsAre(3, 4, 5, 6));
  EXPECT_EQ(r.text, " w0 w1 w2 w3");
  EXPECT_EQ(r.finish_reason, "LENGTH");
  EXPECT_EQ(r.prompt_tokens, 4);
  ASSERT_TRUE(r.server_timings.has_value());
  EXPECT_EQ(r.server_timings->prefill_ms, 2);
  EXPECT_EQ(server_.service().open_streams(), 0);
}

TEST_F(GenerateCallTest, TokensAreNotKeptUnlessAsked) {
  const RequestResult r = RunGenerateCall(stub_.get(), Request("a b", 3), CallOptions{});
  EXPECT_EQ(r.output_tokens, 3);
  EXPECT_TRUE(r.token_ids.empty());
  EXPECT_TRUE(r.text.empty());
}

TEST_F(GenerateCallTest, FailedCallKeepsCodeAndMessageAndNoTtft) {
  const RequestResult r = RunGenerateCall(stub_.get(), Request("fail:8", 4), CallOptions{});
  EXPECT_EQ(r.code, absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(r.error_message, "fake failure");
  EXPECT_EQ(r.output_tokens, 0);
  EXPECT_FALSE(r.ttft_ms.has_value());
  EXPECT_TRUE(r.itl_ms.empty());
  EXPECT_EQ(server_.service().open_streams(), 0);
}

TEST_F(GenerateCallTest, UnreachableTargetIsUnavailable) {
  // Port 1 on loopback: nothing listens there in a test environment.
  auto stub = v1::GenerateService::NewStub(
      grpc::CreateChannel("127.0.0.1:1", grpc::InsecureChannelCredentials()));
  const RequestResult r =
      RunGenerateCall(stub.get(), Request("x", 1), CallOptions{.timeout = absl::Seconds(5)});
  EXPECT_NE(r.code, absl::StatusCode::kOk);
  EXPECT_EQ(r.output_tokens, 0);
}

}  // namespace
}  // namespace pdserve::bench
