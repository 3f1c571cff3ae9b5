// PrefillServer in this process, on an ephemeral loopback port: chunk
// planning, and that every stream, finished or cancelled, releases its
// reactor (active_streams back to 0) and leaves the engine's worker free.
#include "prefill_service/prefill_server.h"

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "nlohmann/json.hpp"
#include "tests/testing/deferred_copy_backend.h"

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
    channel_ =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
    stub_ = v1::PrefillService::NewStub(channel_);
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
  std::shared_ptr<grpc::Channel> channel_;
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

// Prefill is a raw method (requests parsed by the server itself): bytes that
// are not a PrefillRequest end the call with INVALID_ARGUMENT and no
// message, and the stream is released.
TEST_F(InProcessPrefillTest, UnparseableRequestIsInvalidArgumentAndReleases) {
  ASSERT_NO_FATAL_FAILURE(StartServer(PrefillServerOptions()));
  grpc::GenericStub stub(channel_);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  // Field 2 (token_ids) as a length-delimited run that claims 100 bytes
  // and has 2.
  const std::string garbage("\x12\x64\x01\x02", 4);
  grpc::Slice slice(garbage);
  grpc::ByteBuffer request(&slice, 1);
  auto call = stub.PrepareCall(&context, "/pdserve.v1.PrefillService/Prefill", &cq);
  void* tag = nullptr;
  bool ok = false;
  call->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  call->WriteLast(request, grpc::WriteOptions(), reinterpret_cast<void*>(2));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  grpc::ByteBuffer response;
  call->Read(&response, reinterpret_cast<void*>(3));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  EXPECT_FALSE(ok) << "a message arrived for an unparseable request";
  grpc::Status status;
  call->Finish(&status, reinterpret_cast<void*>(4));
  ASSERT_TRUE(cq.Next(&tag, &ok));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("PrefillRequest"));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
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

// ---- batching, queue, inspection options --------------------------------------

// Everything one Prefill stream brought, K and V as float32.
struct StreamResult {
  grpc::Status status;
  int messages = 0;
  bool header = false;
  std::vector<std::vector<float>> k, v;  // [layer] -> [n, kv_width]
  std::vector<int> kv_seen;              // [layer * n + token]
  int kv_chunks = 0;
  std::map<int, std::vector<float>> hidden;  // layer -> [n, hidden]
  std::map<int, std::vector<int>> hidden_seen;
  int hidden_messages = 0;
  std::vector<float> final_hidden;
  bool kv_after_final_hidden = false;  // the contract: FinalHidden comes last
};

// max_i |a_i - b_i| / max(1, |b_i|): K reaches ~30 in stories260K, where
// differently shaped GEMMs differ by a few ulps.
float MaxScaledDifference(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  float worst = a.size() == b.size() ? 0.0f : INFINITY;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    const float d = std::fabs(a[i] - b[i]) / std::max(1.0f, std::fabs(b[i]));
    worst = std::isnan(d) ? INFINITY : std::max(worst, d);
  }
  return worst;
}

class BatchingPrefillTest : public InProcessPrefillTest {
 protected:
  void SetUp() override {}  // each test loads its engine with its own options

  // backend: null for the "cpu" device's own.
  void Load(PrefillEngineOptions options, PrefillServerOptions server_options = {},
            std::unique_ptr<Backend> backend = nullptr) {
    auto engine = backend == nullptr ? PrefillEngine::Load(kModelDir, "cpu", options)
                                     : PrefillEngine::Load(kModelDir, std::move(backend), options);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    ASSERT_NO_FATAL_FAILURE(StartServer(server_options));
    config_ = engine_->config();
  }

  StreamResult Run(const v1::PrefillRequest& request, grpc::ClientContext* context = nullptr) {
    grpc::ClientContext own_context;
    if (context == nullptr) context = &own_context;
    const int n = request.token_ids_size();
    const int layers = config_.num_layers;
    const int kv_width = config_.num_kv_heads * config_.head_dim;
    const int hidden = config_.hidden_size;
    StreamResult r;
    r.k.assign(layers, std::vector<float>(static_cast<size_t>(n) * kv_width, NAN));
    r.v = r.k;
    r.kv_seen.assign(static_cast<size_t>(layers) * n, 0);
    auto reader = stub_->Prefill(context, request);
    v1::PrefillResponse response;
    while (reader->Read(&response)) {
      ++r.messages;
      if (response.has_header()) {
        r.header = true;
        EXPECT_EQ(response.header().kv_dtype(), v1::DTYPE_F32);
      } else if (response.has_kv()) {
        const v1::KvChunk& chunk = response.kv();
        ++r.kv_chunks;
        if (!r.final_hidden.empty()) r.kv_after_final_hidden = true;
        const size_t offset = static_cast<size_t>(chunk.first_token()) * kv_width;
        EXPECT_EQ(chunk.k().size(), static_cast<size_t>(chunk.num_tokens()) * kv_width * 4);
        std::memcpy(r.k[chunk.layer()].data() + offset, chunk.k().data(), chunk.k().size());
        std::memcpy(r.v[chunk.layer()].data() + offset, chunk.v().data(), chunk.v().size());
        for (int t = 0; t < chunk.num_tokens(); ++t) {
          ++r.kv_seen[static_cast<size_t>(chunk.layer()) * n + chunk.first_token() + t];
        }
      } else if (response.has_hidden_states()) {
        const v1::HiddenStates& states = response.hidden_states();
        ++r.hidden_messages;
        std::vector<float>& rows = r.hidden[states.layer()];
        std::vector<int>& seen = r.hidden_seen[states.layer()];
        rows.resize(static_cast<size_t>(n) * hidden, NAN);
        seen.resize(n, 0);
        EXPECT_EQ(states.values_size(), states.num_tokens() * hidden);
        std::copy(states.values().begin(), states.values().end(),
                  rows.begin() + static_cast<size_t>(states.first_token()) * hidden);
        for (int t = 0; t < states.num_tokens(); ++t) ++seen[states.first_token() + t];
      } else if (response.has_final_hidden()) {
        r.final_hidden.assign(response.final_hidden().values().begin(),
                              response.final_hidden().values().end());
      }
    }
    r.status = reader->Finish();
    return r;
  }

  // A completed stream with the header, every token's KV of every layer
  // once, all before FinalHidden, and KV and FinalHidden equal to `want`'s.
  void ExpectSameStream(const StreamResult& got, const StreamResult& want) {
    ASSERT_TRUE(got.status.ok()) << got.status.error_message();
    EXPECT_TRUE(got.header);
    EXPECT_FALSE(got.kv_after_final_hidden);
    EXPECT_EQ(std::count(got.kv_seen.begin(), got.kv_seen.end(), 1),
              static_cast<std::ptrdiff_t>(got.kv_seen.size()));
    for (int layer = 0; layer < config_.num_layers; ++layer) {
      EXPECT_LT(MaxScaledDifference(got.k[layer], want.k[layer]), 1e-5f);
      EXPECT_LT(MaxScaledDifference(got.v[layer], want.v[layer]), 1e-5f);
    }
    EXPECT_LT(MaxScaledDifference(got.final_hidden, want.final_hidden), 1e-5f);
  }

  static v1::PrefillRequest Request(const std::vector<int32_t>& ids) {
    v1::PrefillRequest request;
    request.mutable_token_ids()->Add(ids.begin(), ids.end());
    return request;
  }

  // Holds the engine's worker: a request submitted directly whose KV sink
  // waits at its first layer until Release().
  void HoldWorker() {
    release_ = std::make_shared<absl::Notification>();
    blocker_done_ = std::make_shared<absl::Notification>();
    PrefillWork work;
    work.tokens = {1, 403, 407};
    work.kv_sink = [release = release_](int, const DeviceBuffer&, const DeviceBuffer&, int, int) {
      release->WaitForNotification();
      return absl::OkStatus();
    };
    work.done = [done = blocker_done_](absl::StatusOr<std::vector<float>> result) {
      EXPECT_TRUE(result.ok()) << result.status();
      done->Notify();
    };
    ASSERT_TRUE(engine_->Submit(std::move(work)).ok());
    ASSERT_TRUE(WaitFor([this] { return engine_->stats().running == 1; }));
  }
  void Release() {
    release_->Notify();
    ASSERT_TRUE(blocker_done_->WaitForNotificationWithTimeout(absl::Seconds(30)));
  }

  static bool WaitFor(const std::function<bool()>& condition) {
    const absl::Time deadline = absl::Now() + absl::Seconds(30);
    while (!condition()) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(2));
    }
    return true;
  }
  bool WaitForIdle() {
    return WaitFor([this] {
      const PrefillEngineStats stats = engine_->stats();
      return stats.running == 0 && stats.queued == 0;
    });
  }

  // 8 prompts of 3 to 47 tokens.
  static std::vector<std::vector<int32_t>> EightPrompts() {
    std::vector<std::vector<int32_t>> prompts;
    for (int i = 0; i < 8; ++i) {
      std::vector<int32_t> ids = {1};
      for (int t = 1; t < 3 + 6 * i; ++t) ids.push_back(3 + (37 * t + 11 * i) % 509);
      prompts.push_back(std::move(ids));
    }
    return prompts;
  }

  ModelConfig config_;
  std::shared_ptr<absl::Notification> release_, blocker_done_;
};

// 8 concurrent calls queued behind a busy worker go through one batched
// forward, and each gets the KV and final hidden state it gets alone.
TEST_F(BatchingPrefillTest, ConcurrentCallsShareOneForwardAndGetTheirOwnKv) {
  for (int chunk_tokens : {0, 16}) {
    SCOPED_TRACE(testing::Message() << "chunk_tokens " << chunk_tokens);
    PrefillEngineOptions options;
    options.chunk_tokens = chunk_tokens;
    ASSERT_NO_FATAL_FAILURE(Load(options));
    const std::vector<std::vector<int32_t>> prompts = EightPrompts();
    int total_tokens = 0;
    std::vector<StreamResult> sequential;
    for (const std::vector<int32_t>& prompt : prompts) {
      sequential.push_back(Run(Request(prompt)));
      ASSERT_TRUE(sequential.back().status.ok()) << sequential.back().status.error_message();
      total_tokens += static_cast<int>(prompt.size());
    }
    ASSERT_TRUE(WaitForIdle());
    const PrefillEngineStats before = engine_->stats();
    EXPECT_EQ(before.batches, 8);
    EXPECT_EQ(before.largest_batch, 1);

    ASSERT_NO_FATAL_FAILURE(HoldWorker());
    std::vector<StreamResult> concurrent(prompts.size());
    std::vector<std::thread> clients;
    for (size_t i = 0; i < prompts.size(); ++i) {
      clients.emplace_back([&, i] { concurrent[i] = Run(Request(prompts[i])); });
    }
    ASSERT_TRUE(WaitFor([this] { return engine_->stats().queued == 8; }));
    ASSERT_NO_FATAL_FAILURE(Release());
    for (std::thread& client : clients) client.join();
    ASSERT_TRUE(WaitForIdle());

    const PrefillEngineStats after = engine_->stats();
    EXPECT_EQ(after.batches - before.batches, 2);  // the blocker, then all 8 together
    EXPECT_EQ(after.requests - before.requests, 9);
    EXPECT_EQ(after.largest_batch, 8);
    const int batch_steps = chunk_tokens == 0 ? 1 : (total_tokens + 15) / 16;
    EXPECT_EQ(after.forward_passes - before.forward_passes, 1 + batch_steps);
    for (size_t i = 0; i < prompts.size(); ++i) {
      SCOPED_TRACE(testing::Message() << "prompt " << i);
      ExpectSameStream(concurrent[i], sequential[i]);
    }
    EXPECT_TRUE(WaitForNoActiveStreams());
    server_->Shutdown();
    server_.reset();
  }
}

// A cancelled call that is still queued leaves the queue at once; one
// cancelled mid-batch does not disturb its batch mates.
TEST_F(BatchingPrefillTest, CancelRemovesAQueuedCallAndSparesBatchMates) {
  PrefillServerOptions server_options;
  server_options.max_queued_bytes = 4096;  // the unread stream holds up the worker
  ASSERT_NO_FATAL_FAILURE(Load(PrefillEngineOptions(), server_options));
  const std::vector<std::vector<int32_t>> prompts = EightPrompts();
  const StreamResult alone = Run(Request(prompts[7]));
  ASSERT_TRUE(alone.status.ok());
  ASSERT_TRUE(WaitForIdle());

  ASSERT_NO_FATAL_FAILURE(HoldWorker());
  grpc::ClientContext queued_context;
  StreamResult queued;
  std::thread queued_client([&] { queued = Run(Request(prompts[3]), &queued_context); });
  ASSERT_TRUE(WaitFor([this] { return engine_->stats().queued == 1; }));
  queued_context.TryCancel();
  queued_client.join();
  EXPECT_EQ(queued.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitFor([this] { return engine_->stats().queued == 0; }));
  EXPECT_EQ(engine_->stats().cancelled_queued, 1);

  // Two batch mates; one stops reading after the header and cancels while
  // the batch runs (its next chunk fails); the other completes.
  v1::PrefillRequest long_request = Request(std::vector<int32_t>(300, 7));
  long_request.set_max_chunk_bytes(256);  // one token per KvChunk: 1500 of them
  grpc::ClientContext cancelled_context;
  std::unique_ptr<grpc::ClientReader<v1::PrefillResponse>> cancelled_reader;
  StreamResult mate;
  std::thread mate_client([&] {
    ASSERT_TRUE(WaitFor([this] { return engine_->stats().queued == 1; }));
    mate = Run(Request(prompts[7]));
  });
  cancelled_reader = stub_->Prefill(&cancelled_context, long_request);
  ASSERT_TRUE(WaitFor([this] { return engine_->stats().queued == 2; }));
  ASSERT_NO_FATAL_FAILURE(Release());
  v1::PrefillResponse response;
  ASSERT_TRUE(cancelled_reader->Read(&response));
  EXPECT_TRUE(response.has_header());
  cancelled_context.TryCancel();
  while (cancelled_reader->Read(&response)) {
  }
  EXPECT_EQ(cancelled_reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  mate_client.join();
  ASSERT_TRUE(mate.status.ok()) << mate.status.error_message();
  for (int layer = 0; layer < config_.num_layers; ++layer) {
    EXPECT_LT(MaxScaledDifference(mate.k[layer], alone.k[layer]), 1e-5f);
  }
  EXPECT_LT(MaxScaledDifference(mate.final_hidden, alone.final_hidden), 1e-5f);
  EXPECT_TRUE(WaitForIdle());
  EXPECT_TRUE(WaitForNoActiveStreams());
}

// A GPU's timing, modelled on the CPU (DeferredCopyBackend): each layer's
// K/V copy to the host ends only when waited for, after later layers have
// overwritten the source. Batched and chunked prefills still stream every
// token's KV once, equal to the plain CPU engine's, all before FinalHidden;
// and completed or cancelled, they leave no host block or copy behind.
TEST_F(BatchingPrefillTest, KvCopiesThatEndLateStreamTheSameKvBeforeFinalHidden) {
  PrefillEngineOptions options;
  options.chunk_tokens = 16;
  ASSERT_NO_FATAL_FAILURE(Load(options));
  const std::vector<std::vector<int32_t>> prompts = EightPrompts();
  std::vector<StreamResult> reference;
  for (const std::vector<int32_t>& prompt : prompts) reference.push_back(Run(Request(prompt)));
  server_->Shutdown();
  server_.reset();

  auto owned = std::make_unique<DeferredCopyBackend>(CreateCpuBackend());
  DeferredCopyBackend* deferred = owned.get();
  PrefillServerOptions server_options;
  server_options.max_queued_bytes = 4096;
  ASSERT_NO_FATAL_FAILURE(Load(options, server_options, std::move(owned)));
  ASSERT_NO_FATAL_FAILURE(HoldWorker());
  std::vector<StreamResult> batched(prompts.size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < prompts.size(); ++i) {
    clients.emplace_back([&, i] { batched[i] = Run(Request(prompts[i])); });
  }
  ASSERT_TRUE(WaitFor([this] { return engine_->stats().queued == 8; }));
  ASSERT_NO_FATAL_FAILURE(Release());
  for (std::thread& client : clients) client.join();
  EXPECT_GT(deferred->copies_started(), 0);
  for (size_t i = 0; i < prompts.size(); ++i) {
    SCOPED_TRACE(testing::Message() << "prompt " << i);
    ExpectSameStream(batched[i], reference[i]);
  }

  // Cancelled while its copies are in flight and its stream is full.
  v1::PrefillRequest long_request = Request(std::vector<int32_t>(300, 7));
  long_request.set_max_chunk_bytes(256);
  grpc::ClientContext context;
  auto reader = stub_->Prefill(&context, long_request);
  v1::PrefillResponse response;
  ASSERT_TRUE(reader->Read(&response));
  ASSERT_TRUE(WaitFor([deferred] { return deferred->live_copies() > 0; }));
  context.TryCancel();
  while (reader->Read(&response)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  ASSERT_TRUE(WaitForIdle());
  EXPECT_TRUE(WaitForNoActiveStreams());
  EXPECT_TRUE(WaitFor([deferred] { return deferred->live_blocks() == 0; }))
      << deferred->live_blocks() << " host blocks still held";
  EXPECT_EQ(deferred->live_copies(), 0);
  EXPECT_EQ(deferred->copies_outliving_destination(), 0);
}

TEST_F(BatchingPrefillTest, FullQueueIsResourceExhaustedWithoutAHeader) {
  PrefillEngineOptions options;
  options.max_queued_requests = 2;
  ASSERT_NO_FATAL_FAILURE(Load(options));
  ASSERT_NO_FATAL_FAILURE(HoldWorker());
  std::vector<StreamResult> waiting(2);
  std::vector<std::thread> clients;
  for (int i = 0; i < 2; ++i) {
    clients.emplace_back([&, i] { waiting[i] = Run(Request({1, 403, 407, 261})); });
  }
  ASSERT_TRUE(WaitFor([this] { return engine_->stats().queued == 2; }));
  const StreamResult refused = Run(Request({1, 403}));
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(refused.status.error_message(), HasSubstr("max_queued_requests 2"));
  EXPECT_EQ(refused.messages, 0);
  EXPECT_EQ(engine_->stats().rejected_queue_full, 1);
  ASSERT_NO_FATAL_FAILURE(Release());
  for (std::thread& client : clients) client.join();
  for (const StreamResult& r : waiting) EXPECT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(engine_->stats().largest_batch, 2);
  EXPECT_TRUE(WaitForNoActiveStreams());
}

// return_all_positions, hidden_state_layers and omit_kv against the float64
// reference (tests/data/golden/stories260K_hidden_states.json).
TEST_F(BatchingPrefillTest, HiddenStatesMatchTheReference) {
  PrefillEngineOptions options;
  options.chunk_tokens = 2;  // hidden states arrive per chunk too
  ASSERT_NO_FATAL_FAILURE(Load(options));
  std::ifstream file(std::string(PDSERVE_SOURCE_DIR) +
                     "/tests/data/golden/stories260K_hidden_states.json");
  ASSERT_TRUE(file.good());
  const nlohmann::json golden = nlohmann::json::parse(file);
  auto flatten = [](const nlohmann::json& rows) {
    std::vector<float> out;
    for (const nlohmann::json& row : rows) {
      for (double value : row.get<std::vector<double>>()) out.push_back(static_cast<float>(value));
    }
    return out;
  };
  v1::PrefillRequest request = Request(golden["prompt"].get<std::vector<int32_t>>());
  request.set_return_all_positions(true);
  request.add_hidden_state_layers(-1);
  request.add_hidden_state_layers(3);
  request.set_omit_kv(true);
  request.set_max_chunk_bytes(256);  // one token of 64 floats per HiddenStates
  const StreamResult r = Run(request);
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  EXPECT_EQ(r.kv_chunks, 0);
  EXPECT_EQ(r.hidden_messages, 3 * 5);
  ASSERT_EQ(r.hidden.size(), 3u);
  for (int layer : {-1, 3}) {
    EXPECT_EQ(r.hidden_seen.at(layer), std::vector<int>(5, 1));
    EXPECT_LT(
        MaxScaledDifference(r.hidden.at(layer), flatten(golden["layers"][std::to_string(layer)])),
        1e-4f);
  }
  const int final_layer = config_.num_layers;
  EXPECT_LT(MaxScaledDifference(r.hidden.at(final_layer), flatten(golden["final_norm"])), 1e-4f);
  EXPECT_EQ(std::vector<float>(r.hidden.at(final_layer).end() - config_.hidden_size,
                               r.hidden.at(final_layer).end()),
            r.final_hidden);

  for (const std::vector<int32_t>& layers :
       {std::vector<int32_t>{5}, std::vector<int32_t>{-2}, std::vector<int32_t>{0, 2, 0}}) {
    v1::PrefillRequest bad = Request({1, 403});
    bad.mutable_hidden_state_layers()->Add(layers.begin(), layers.end());
    const StreamResult refused = Run(bad);
    EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(refused.status.error_message(), HasSubstr("hidden_state_layers["));
    EXPECT_EQ(refused.messages, 0);
  }
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
