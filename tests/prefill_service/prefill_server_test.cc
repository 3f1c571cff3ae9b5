// PrefillServer in this process, on an ephemeral loopback port: chunk
// planning, and that every stream, finished or cancelled, releases its
// reactor (active_streams back to 0) and leaves the engine's worker free.
#include "prefill_service/prefill_server.h"

#include <memory>
#include <string>
#include <vector>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

const std::string kModelDir = std::string(PDSERVE_SOURCE_DIR) + "/models/stories260K";

TEST(PlanChunksTest, ZeroSelectsServerLimitAndLargerRequestsAreCapped) {
  // kv_width 32, F32: one token's K+V in one layer is 2 * 32 * 4 = 256 bytes.
  auto plan = PlanChunks(0, 1000, 32, DType::kF32);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->bytes_per_token, 256);
  EXPECT_EQ(plan->tokens_per_chunk, 3);  // floor(1000 / 256)
  plan = PlanChunks(1 << 20, 1000, 32, DType::kF32);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->tokens_per_chunk, 3);
  plan = PlanChunks(512, 1000, 32, DType::kF32);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->tokens_per_chunk, 2);
  // Phi-3-mini in bf16: 2 * 3072 * 2 = 12 KiB per token per layer; 4 MiB
  // holds 341 tokens.
  plan = PlanChunks(0, 4 << 20, 3072, DType::kBF16);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(plan->bytes_per_token, 12288);
  EXPECT_EQ(plan->tokens_per_chunk, (4 << 20) / 12288);
}

TEST(PlanChunksTest, RejectsNegativeAndBelowOneToken) {
  auto plan = PlanChunks(-1, 1000, 32, DType::kF32);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("max_chunk_bytes"));
  plan = PlanChunks(255, 1000, 32, DType::kF32);
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plan.status().message(), HasSubstr("256 bytes"));
}

class InProcessPrefillTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto engine = PrefillEngine::Load(kModelDir, "cpu");
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
  }

  void StartServer(PrefillServerOptions options) {
    service_ = std::make_unique<PrefillServer>(engine_.get(), options);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    stub_ = v1::PrefillService::NewStub(grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                                            grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(absl::ToChronoTime(absl::Now() + absl::Seconds(5)));
  }

  // active_streams() drops in OnDone, which gRPC may run just after the
  // client sees the status: poll briefly.
  bool WaitForNoActiveStreams() {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (service_->active_streams() != 0) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return true;
  }

  grpc::Status RunToEnd(const std::vector<int32_t>& ids, int* messages) {
    v1::PrefillRequest request;
    request.mutable_token_ids()->Add(ids.begin(), ids.end());
    grpc::ClientContext context;
    auto reader = stub_->Prefill(&context, request);
    v1::PrefillResponse response;
    *messages = 0;
    while (reader->Read(&response)) ++*messages;
    return reader->Finish();
  }

  // A 512-token prompt in one-token chunks (2560 KvChunks): reads the
  // header, waits `pause` without reading, cancels, and returns the code.
  grpc::StatusCode CancelAfterHeader(absl::Duration pause) {
    v1::PrefillRequest request;
    for (int t = 0; t < 512; ++t) request.add_token_ids(3 + t % 509);
    request.set_max_chunk_bytes(256);
    grpc::ClientContext context;
    auto reader = stub_->Prefill(&context, request);
    v1::PrefillResponse response;
    EXPECT_TRUE(reader->Read(&response));
    EXPECT_TRUE(response.has_header());
    absl::SleepFor(pause);
    context.TryCancel();
    while (reader->Read(&response)) {
    }
    return reader->Finish().error_code();
  }

  std::unique_ptr<PrefillEngine> engine_;
  std::unique_ptr<PrefillServer> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::PrefillService::Stub> stub_;
};

TEST_F(InProcessPrefillTest, CompletedRejectedAndCancelledStreamsAllRelease) {
  ASSERT_NO_FATAL_FAILURE(StartServer(PrefillServerOptions()));
  ASSERT_EQ(service_->active_streams(), 0);
  int messages = 0;
  grpc::Status status = RunToEnd({1, 403, 407, 261, 378}, &messages);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(messages, 1 + 5 + 1);  // header, one chunk per layer, final hidden
  EXPECT_TRUE(WaitForNoActiveStreams());

  status = RunToEnd({}, &messages);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(messages, 0);
  EXPECT_TRUE(WaitForNoActiveStreams());

  // Cancel while thousands of one-token chunks are still to come, several
  // times over: nothing may stay behind.
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(CancelAfterHeader(absl::ZeroDuration()), grpc::StatusCode::CANCELLED);
  }
  EXPECT_TRUE(WaitForNoActiveStreams()) << service_->active_streams() << " streams still active";
  status = RunToEnd({1, 403}, &messages);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_TRUE(WaitForNoActiveStreams());
}

// A stream the client does not read, with a tiny queue limit: once gRPC's
// flow-control windows fill, the worker waits in back-pressure. A cancel must
// release it, and the next call (queued behind it on the single worker)
// must then run.
TEST_F(InProcessPrefillTest, CancelReleasesWorkerWaitingOnUnreadStream) {
  PrefillServerOptions options;
  options.max_queued_bytes = 4096;
  ASSERT_NO_FATAL_FAILURE(StartServer(options));
  EXPECT_EQ(CancelAfterHeader(absl::Milliseconds(200)), grpc::StatusCode::CANCELLED);
  int messages = 0;
  const grpc::Status status = RunToEnd({1, 403, 407}, &messages);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(messages, 7);
  EXPECT_TRUE(WaitForNoActiveStreams());
}

TEST(FillModelInfoTest, DescribesTheLoadedModel) {
  auto engine = PrefillEngine::Load(kModelDir, "cpu");
  ASSERT_TRUE(engine.ok()) << engine.status();
  v1::ModelInfo info;
  FillModelInfo(**engine, &info);
  EXPECT_EQ(info.fingerprint().architecture(), "LlamaForCausalLM");
  EXPECT_EQ(info.fingerprint().vocab_size(), 512);
  EXPECT_EQ(info.device(), "cpu");
  EXPECT_EQ(info.kv_dtype(), v1::DTYPE_F32);
  EXPECT_EQ(info.parameter_count(), 260032);
}

TEST(PrefillEngineTest, ValidatePromptNamesFieldAndLimit) {
  auto engine = PrefillEngine::Load(kModelDir, "cpu");
  ASSERT_TRUE(engine.ok()) << engine.status();
  EXPECT_TRUE((*engine)->ValidatePrompt(std::vector<int32_t>{1, 2, 511}).ok());
  absl::Status status = (*engine)->ValidatePrompt(std::vector<int32_t>{});
  EXPECT_THAT(status.message(), HasSubstr("token_ids"));
  status = (*engine)->ValidatePrompt(std::vector<int32_t>(513, 5));
  EXPECT_THAT(status.message(), HasSubstr("max_position_embeddings=512"));
  status = (*engine)->ValidatePrompt(std::vector<int32_t>{1, 512});
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("token_ids[1]"));
}

}  // namespace
}  // namespace pdserve
