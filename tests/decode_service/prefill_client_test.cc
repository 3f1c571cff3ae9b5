// PrefillClient against an in-process PrefillService that runs the real
// Transformer::Prefill: the KV that lands in the cache is compared with a
// direct forward pass, and every malformed or broken stream must fail with
// its documented code.
#include "decode_service/prefill_client.h"

#include <future>
#include <memory>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "decode_service/decode_metrics.h"
#include "decode_service/kv_cache_sizing.h"
#include "decode_service/prefill_target.h"
#include "decode_service/serving_model.h"
#include "shared/kv_cache.h"
#include "shared/metrics.h"
#include "tests/decode_service/fake_prefill_service.h"
#include "tests/decode_service/test_models.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

class PrefillClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<FakePrefillServer>> fake =
        FakePrefillServer::Start(Stories260KDir());
    ASSERT_TRUE(fake.ok()) << fake.status();
    fake_ = std::move(fake).value();
    absl::StatusOr<std::unique_ptr<ServingModel>> model =
        ServingModel::Load(Stories260KDir(), "cpu");
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(model).value();
    const ModelConfig& config = model_->config();
    absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(
        &model_->backend(), KvCacheOptionsFor(config, /*num_blocks=*/64, /*block_size=*/4));
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_ = std::move(cache).value();
    client_ = MakeClient(fake_->address());
    prompt_ = model_->tokenizer().Encode("Once upon a time, in a big forest", true);
  }

  std::unique_ptr<PrefillClient> MakeClient(const std::string& addresses,
                                            DecodeMetrics* metrics = nullptr,
                                            int max_attempts = 3) {
    absl::StatusOr<std::vector<std::string>> split = SplitPrefillTargets(addresses);
    EXPECT_TRUE(split.ok());
    absl::StatusOr<std::string> target = PrefillChannelTarget(*split);
    EXPECT_TRUE(target.ok()) << target.status();
    PrefillClientOptions options;
    options.channel_target = *target;
    options.metrics = metrics;
    options.max_attempts = max_attempts;
    return std::make_unique<PrefillClient>(
        options, PrefillExpectation::For(model_->config(), model_->fingerprint()));
  }

  struct Run {
    std::shared_ptr<PrefillCall> call;
    std::future<absl::StatusOr<PrefillResult>> result;
  };

  // Starts a prefill of prompt_ into `lease`.
  Run StartPrefill(PrefillClient& client, KvCache::Sequence* lease,
                   absl::Time deadline = absl::InfiniteFuture()) {
    auto promise = std::make_shared<std::promise<absl::StatusOr<PrefillResult>>>();
    Run run;
    run.result = promise->get_future();
    PrefillJob job;
    job.request_id = "test";
    job.token_ids = prompt_;
    job.deadline = deadline;
    job.write_kv = [this, lease](int layer, int first, int count, const void* k, const void* v,
                                 DType dtype) {
      return cache_->WriteTokens(*lease, layer, first, count, k, v, dtype);
    };
    run.call = client.Start(std::move(job), [promise](absl::StatusOr<PrefillResult> result) {
      promise->set_value(std::move(result));
    });
    return run;
  }

  absl::StatusOr<PrefillResult> PrefillNow(const FakePrefillOptions& options) {
    fake_->service().set_options(options);
    absl::StatusOr<std::unique_ptr<KvCache::Sequence>> lease =
        cache_->Allocate(static_cast<int>(prompt_.size()) + 1);
    EXPECT_TRUE(lease.ok());
    Run run = StartPrefill(*client_, lease->get());
    return run.result.get();
  }

  std::unique_ptr<FakePrefillServer> fake_;
  std::unique_ptr<ServingModel> model_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<PrefillClient> client_;
  std::vector<int32_t> prompt_;
};

TEST_F(PrefillClientTest, KvInTheCacheEqualsADirectForwardPass) {
  for (DType wire : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(std::string(DTypeName(wire)));
    FakePrefillOptions options;
    options.wire_dtype = wire;
    options.chunk_tokens = 3;  // ranges that straddle the cache's 4-token blocks
    fake_->service().set_options(options);
    auto lease = cache_->Allocate(static_cast<int>(prompt_.size()) + 1);
    ASSERT_TRUE(lease.ok());
    absl::StatusOr<PrefillResult> result = StartPrefill(*client_, lease->get()).result.get();
    ASSERT_TRUE(result.ok()) << result.status();

    // The reference: the decode side's own model, run directly.
    const ModelConfig& config = model_->config();
    const int n = static_cast<int>(prompt_.size());
    const size_t width = static_cast<size_t>(config.num_kv_heads) * config.head_dim;
    std::vector<std::vector<float>> ref_k(config.num_layers), ref_v(config.num_layers);
    Backend& backend = model_->backend();
    absl::StatusOr<std::vector<float>> ref_hidden = model_->transformer().Prefill(
        prompt_, [&](int layer, const DeviceBuffer& k, const DeviceBuffer& v, int count) {
          ref_k[layer].resize(count * width);
          ref_v[layer].resize(count * width);
          EXPECT_TRUE(backend.CopyToHost(k, 0, count * width, ref_k[layer].data(), DType::kF32).ok());
          return backend.CopyToHost(v, 0, count * width, ref_v[layer].data(), DType::kF32);
        });
    ASSERT_TRUE(ref_hidden.ok());
    EXPECT_EQ(result->final_hidden, *ref_hidden);

    auto on_wire = [wire](float x) { return wire == DType::kBF16 ? Bf16ToFloat(FloatToBf16(x)) : x; };
    for (int layer = 0; layer < config.num_layers; ++layer) {
      std::vector<float> k(n * width), v(n * width);
      ASSERT_TRUE(cache_->ReadTokens(**lease, layer, 0, n, k.data(), v.data()).ok());
      for (size_t i = 0; i < k.size(); ++i) {
        ASSERT_EQ(k[i], on_wire(ref_k[layer][i])) << "layer " << layer << " k[" << i << "]";
        ASSERT_EQ(v[i], on_wire(ref_v[layer][i])) << "layer " << layer << " v[" << i << "]";
      }
    }
  }
}

struct FaultCase {
  PrefillFault fault;
  absl::StatusCode code;
  const char* message;
};

TEST_F(PrefillClientTest, MalformedStreamsFailWithTheirCode) {
  const FaultCase cases[] = {
      {PrefillFault::kDuplicateChunk, absl::StatusCode::kInternal, "arrived twice"},
      {PrefillFault::kMissingChunk, absl::StatusCode::kInternal, "KV entries"},
      {PrefillFault::kShortChunk, absl::StatusCode::kInternal, "bytes, expected"},
      {PrefillFault::kChunkPastPrompt, absl::StatusCode::kInternal, "outside the prompt"},
      {PrefillFault::kWrongNumTokens, absl::StatusCode::kInternal, "num_tokens"},
      {PrefillFault::kWrongHeadDim, absl::StatusCode::kFailedPrecondition, "head_dim"},
      {PrefillFault::kNoFinalHidden, absl::StatusCode::kInternal, "final hidden"},
      {PrefillFault::kFailAfterFirstLayer, absl::StatusCode::kResourceExhausted, "out of memory"},
  };
  for (const FaultCase& c : cases) {
    SCOPED_TRACE(c.message);
    FakePrefillOptions options;
    options.fault = c.fault;
    absl::StatusOr<PrefillResult> result = PrefillNow(options);
    EXPECT_EQ(result.status().code(), c.code) << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr(c.message));
  }
  EXPECT_EQ(cache_->num_free_blocks(), cache_->num_blocks());
  EXPECT_TRUE(PrefillNow(FakePrefillOptions()).ok());
}

TEST_F(PrefillClientTest, AnotherModelIsFailedPrecondition) {
  TempDir dir;
  ASSERT_TRUE(WriteRandomCheckpoint(dir.path(), SmallLlamaCheckpoint()).ok());
  absl::StatusOr<std::unique_ptr<FakePrefillServer>> other = FakePrefillServer::Start(dir.path());
  ASSERT_TRUE(other.ok()) << other.status();
  std::unique_ptr<PrefillClient> client = MakeClient((*other)->address());
  auto lease = cache_->Allocate(static_cast<int>(prompt_.size()) + 1);
  ASSERT_TRUE(lease.ok());
  absl::StatusOr<PrefillResult> result = StartPrefill(*client, lease->get()).result.get();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kFailedPrecondition) << result.status();

  absl::Status check = CheckPrefillTargets({fake_->address(), (*other)->address()},
                                           model_->fingerprint(), absl::Seconds(30), 64 << 20);
  EXPECT_EQ(check.code(), absl::StatusCode::kFailedPrecondition) << check;
  EXPECT_THAT(check.message(), HasSubstr((*other)->address()));
  EXPECT_TRUE(CheckPrefillTargets({fake_->address()}, model_->fingerprint(), absl::Seconds(30),
                                  64 << 20)
                  .ok());
}

TEST_F(PrefillClientTest, UnreachableTargetIsUnavailable) {
  const std::string dead = fake_->address();
  fake_->Kill();
  absl::StatusOr<PrefillResult> result = PrefillNow(FakePrefillOptions());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();

  absl::Status check =
      CheckPrefillTargets({dead}, model_->fingerprint(), absl::Milliseconds(300), 64 << 20);
  EXPECT_EQ(check.code(), absl::StatusCode::kUnavailable) << check;
  EXPECT_THAT(check.message(), HasSubstr(dead));
}

TEST_F(PrefillClientTest, PrefillDyingMidStreamIsUnavailable) {
  FakePrefillOptions options;
  options.fault = PrefillFault::kHoldAfterFirstChunk;
  fake_->service().set_options(options);
  auto lease = cache_->Allocate(static_cast<int>(prompt_.size()) + 1);
  ASSERT_TRUE(lease.ok());
  Run run = StartPrefill(*client_, lease->get());
  ASSERT_TRUE(fake_->service().WaitForHeld(absl::Seconds(30)));
  fake_->Kill();
  absl::StatusOr<PrefillResult> result = run.result.get();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
}

TEST_F(PrefillClientTest, CancelIsCancelledAndDeadlineIsDeadlineExceeded) {
  FakePrefillOptions options;
  options.fault = PrefillFault::kHoldAfterFirstChunk;
  fake_->service().set_options(options);
  auto lease = cache_->Allocate(static_cast<int>(prompt_.size()) + 1);
  ASSERT_TRUE(lease.ok());

  Run cancelled = StartPrefill(*client_, lease->get());
  ASSERT_TRUE(fake_->service().WaitForHeld(absl::Seconds(30)));
  cancelled.call->Cancel();
  EXPECT_EQ(cancelled.result.get().status().code(), absl::StatusCode::kCancelled);

  Run late = StartPrefill(*client_, lease->get(), absl::Now() + absl::Milliseconds(200));
  EXPECT_EQ(late.result.get().status().code(), absl::StatusCode::kDeadlineExceeded);
  fake_->service().Release();
}

TEST_F(PrefillClientTest, RoundRobinSpreadsPrefillsOverEveryTarget) {
  absl::StatusOr<std::unique_ptr<FakePrefillServer>> second =
      FakePrefillServer::Start(Stories260KDir());
  ASSERT_TRUE(second.ok()) << second.status();
  std::unique_ptr<PrefillClient> client =
      MakeClient(fake_->address() + "," + (*second)->address());
  // round_robin uses a target once its connection is up; within a few calls
  // both are.
  int runs = 0;
  while (runs < 50 && (fake_->service().calls() == 0 || (*second)->service().calls() == 0)) {
    auto lease = cache_->Allocate(static_cast<int>(prompt_.size()) + 1);
    ASSERT_TRUE(lease.ok());
    absl::StatusOr<PrefillResult> result = StartPrefill(*client, lease->get()).result.get();
    ASSERT_TRUE(result.ok()) << result.status();
    ++runs;
  }
  EXPECT_GE(fake_->service().calls(), 1);
  EXPECT_GE((*second)->service().calls(), 1);
  EXPECT_EQ(fake_->service().calls() + (*second)->service().calls(), runs);
}

// The fake that holds a stream (kHoldAfterFirstChunk) among `fakes`, waiting
// up to 30 s for one to.
FakePrefillServer* WaitForHeldOn(const std::vector<FakePrefillServer*>& fakes) {
  for (int i = 0; i < 3000; ++i) {
    for (FakePrefillServer* fake : fakes) {
      if (fake->service().WaitForHeld(absl::Milliseconds(5))) return fake;
    }
  }
  return nullptr;
}

// An instance dying mid-stream: the job is retried on the other instance,
// which rewrites the whole lease, so the KV ends up exactly as a clean
// prefill's; the retry is counted.
TEST_F(PrefillClientTest, StreamDyingMidwayFailsOverToAnotherInstance) {
  absl::StatusOr<std::unique_ptr<FakePrefillServer>> second =
      FakePrefillServer::Start(Stories260KDir());
  ASSERT_TRUE(second.ok()) << second.status();
  FakePrefillOptions hold;
  hold.fault = PrefillFault::kHoldAfterFirstChunk;
  fake_->service().set_options(hold);
  (*second)->service().set_options(hold);
  MetricsRegistry registry;
  DecodeMetrics metrics(&registry);
  std::unique_ptr<PrefillClient> client =
      MakeClient(fake_->address() + "," + (*second)->address(), &metrics);

  auto lease = cache_->Allocate(static_cast<int>(prompt_.size()) + 1);
  ASSERT_TRUE(lease.ok());
  Run run = StartPrefill(*client, lease->get());
  FakePrefillServer* first_held = WaitForHeldOn({fake_.get(), second->get()});
  ASSERT_NE(first_held, nullptr);
  FakePrefillServer* other = first_held == fake_.get() ? second->get() : fake_.get();
  first_held->Kill();
  // The retry reaches the survivor, which holds it too until released.
  ASSERT_TRUE(other->service().WaitForHeld(absl::Seconds(30)));
  other->service().Release();
  absl::StatusOr<PrefillResult> result = run.result.get();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(other->service().calls(), 1);
  EXPECT_EQ(registry.AddCounter("pdserve_decode_prefill_retries_total", "").value(), 1);

  // The same prompt through a clean stream into a fresh lease.
  auto clean = cache_->Allocate(static_cast<int>(prompt_.size()) + 1);
  ASSERT_TRUE(clean.ok());
  absl::StatusOr<PrefillResult> reference = StartPrefill(*client, clean->get()).result.get();
  ASSERT_TRUE(reference.ok()) << reference.status();
  EXPECT_EQ(result->final_hidden, reference->final_hidden);
  const ModelConfig& config = model_->config();
  const int n = static_cast<int>(prompt_.size());
  const size_t width = static_cast<size_t>(config.num_kv_heads) * config.head_dim;
  for (int layer = 0; layer < config.num_layers; ++layer) {
    std::vector<float> k(n * width), v(n * width), ref_k(n * width), ref_v(n * width);
    ASSERT_TRUE(cache_->ReadTokens(**lease, layer, 0, n, k.data(), v.data()).ok());
    ASSERT_TRUE(cache_->ReadTokens(**clean, layer, 0, n, ref_k.data(), ref_v.data()).ok());
    EXPECT_EQ(k, ref_k) << "layer " << layer;
    EXPECT_EQ(v, ref_v) << "layer " << layer;
  }
  lease->reset();
  clean->reset();
  EXPECT_EQ(cache_->num_free_blocks(), cache_->num_blocks());
}

// With every instance gone the job ends UNAVAILABLE after max_attempts
// streams, naming the flag.
TEST_F(PrefillClientTest, FailoverGivesUpAfterMaxAttempts) {
  FakePrefillOptions hold;
  hold.fault = PrefillFault::kHoldAfterFirstChunk;
  fake_->service().set_options(hold);
  MetricsRegistry registry;
  DecodeMetrics metrics(&registry);
  std::unique_ptr<PrefillClient> client = MakeClient(fake_->address(), &metrics, 2);
  auto lease = cache_->Allocate(static_cast<int>(prompt_.size()) + 1);
  ASSERT_TRUE(lease.ok());
  Run run = StartPrefill(*client, lease->get());
  ASSERT_TRUE(fake_->service().WaitForHeld(absl::Seconds(30)));
  fake_->Kill();
  absl::StatusOr<PrefillResult> result = run.result.get();
  EXPECT_EQ(result.status().code(), absl::StatusCode::kUnavailable) << result.status();
  EXPECT_THAT(result.status().message(), HasSubstr("--prefill_max_attempts 2"));
  EXPECT_EQ(registry.AddCounter("pdserve_decode_prefill_retries_total", "").value(), 1);
  lease->reset();
  EXPECT_EQ(cache_->num_free_blocks(), cache_->num_blocks());
}

// A cancel while the retried stream runs ends the job CANCELLED, with no
// further attempt.
TEST_F(PrefillClientTest, CancelDuringFailoverIsCancelled) {
  absl::StatusOr<std::unique_ptr<FakePrefillServer>> second =
      FakePrefillServer::Start(Stories260KDir());
  ASSERT_TRUE(second.ok()) << second.status();
  FakePrefillOptions hold;
  hold.fault = PrefillFault::kHoldAfterFirstChunk;
  fake_->service().set_options(hold);
  (*second)->service().set_options(hold);
  std::unique_ptr<PrefillClient> client = MakeClient(fake_->address() + "," + (*second)->address());
  auto lease = cache_->Allocate(static_cast<int>(prompt_.size()) + 1);
  ASSERT_TRUE(lease.ok());
  Run run = StartPrefill(*client, lease->get());
  FakePrefillServer* first_held = WaitForHeldOn({fake_.get(), second->get()});
  ASSERT_NE(first_held, nullptr);
  FakePrefillServer* other = first_held == fake_.get() ? second->get() : fake_.get();
  first_held->Kill();
  ASSERT_TRUE(other->service().WaitForHeld(absl::Seconds(30)));
  run.call->Cancel();
  EXPECT_EQ(run.result.get().status().code(), absl::StatusCode::kCancelled);
  other->service().Release();
  lease->reset();
  EXPECT_EQ(cache_->num_free_blocks(), cache_->num_blocks());
}

}  // namespace
}  // namespace pdserve
