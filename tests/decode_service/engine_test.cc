// The decode engine in-process, with an in-process prefill (no gRPC): greedy
// output against the model's known continuation, batching against solo runs,
// seeded sampling, and every way a request can end, each checked for KV
// blocks coming back.
#include "decode_service/engine.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "decode_service/kv_cache_sizing.h"
#include "decode_service/serving_model.h"
#include "tests/decode_service/local_prefill_runner.h"
#include "tests/decode_service/recording_observer.h"
#include "tests/decode_service/test_models.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<ServingModel>> model =
        ServingModel::Load(Stories260KDir(), "cpu");
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(model).value();
    absl::StatusOr<std::unique_ptr<LocalPrefillRunner>> runner =
        LocalPrefillRunner::Create(Stories260KDir());
    ASSERT_TRUE(runner.ok()) << runner.status();
    runner_ = std::move(runner).value();
  }

  void TearDown() override {
    if (engine_ != nullptr) engine_->Shutdown();
    if (cache_ != nullptr) {
      EXPECT_EQ(cache_->num_free_blocks(), cache_->num_blocks()) << "KV blocks leaked";
    }
  }

  void MakeEngine(int num_blocks = 512, int block_size = 16, int max_batch_size = 64,
                  int max_queue = 256, std::vector<int32_t> eos_token_ids = {}) {
    const ModelConfig& config = model_->config();
    absl::StatusOr<std::unique_ptr<KvCache>> cache =
        KvCache::Create(&model_->backend(), KvCacheOptionsFor(config, num_blocks, block_size));
    ASSERT_TRUE(cache.ok()) << cache.status();
    cache_ = std::move(cache).value();
    EngineOptions options;
    options.max_batch_size = max_batch_size;
    options.max_queue = max_queue;
    options.eos_token_ids = eos_token_ids.empty() ? config.eos_token_ids : eos_token_ids;
    options.context_limit = config.max_position_embeddings;
    options.tokenizer = &model_->tokenizer();
    options.on_step = on_step_;
    engine_ =
        std::make_unique<Engine>(&model_->transformer(), cache_.get(), runner_.get(), options);
  }

  GenerationRequest Request(const std::string& prompt, int max_new_tokens) {
    GenerationRequest request;
    request.prompt = model_->tokenizer().Encode(prompt, /*add_bos=*/true);
    request.max_new_tokens = max_new_tokens;
    return request;
  }

  // Runs one request to its end.
  std::vector<int32_t> GenerateAlone(const GenerationRequest& request) {
    RecordingObserver observer;
    absl::StatusOr<Engine::RequestId> id = engine_->Submit(request, &observer);
    EXPECT_TRUE(id.ok()) << id.status();
    if (!id.ok()) return {};
    EXPECT_TRUE(observer.WaitDone());
    EXPECT_TRUE(observer.status().ok()) << observer.status();
    return observer.token_ids();
  }

  std::string Text(const std::vector<int32_t>& ids) { return model_->tokenizer().Decode(ids); }

  std::unique_ptr<ServingModel> model_;
  std::unique_ptr<LocalPrefillRunner> runner_;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<Engine> engine_;
  std::function<void(int, absl::Duration)> on_step_;  // EngineOptions::on_step
};

TEST_F(EngineTest, GreedyContinuationOfOnceUponATimeNamesLily) {
  MakeEngine();
  RecordingObserver observer;
  ASSERT_TRUE(engine_->Submit(Request("Once upon a time", 64), &observer).ok());
  ASSERT_TRUE(observer.WaitDone());
  ASSERT_TRUE(observer.status().ok()) << observer.status();
  EXPECT_THAT(Text(observer.token_ids()), HasSubstr("there was a little girl named Lily"));

  const std::vector<TokenEvent> events = observer.events();
  for (size_t i = 0; i < events.size(); ++i) {
    EXPECT_EQ(events[i].index, static_cast<int>(i));
    EXPECT_EQ(events[i].finish.has_value(), i + 1 == events.size());
  }
  const GenerationSummary summary = *observer.summary();
  EXPECT_EQ(summary.generated_tokens, static_cast<int>(events.size()));
  EXPECT_EQ(summary.prompt_tokens, static_cast<int>(Request("Once upon a time", 1).prompt.size()));
  EXPECT_GE(summary.timings.total_ms, summary.timings.ttft_ms);
  EXPECT_GE(summary.timings.ttft_ms, 0);
  EXPECT_EQ(observer.terminal_calls(), 1);
  EXPECT_EQ(observer.calls_after_terminal(), 0);
}

// The first token of a request comes from its prefill's hidden state; each
// later one from a decode step. So the steps' batch sizes add up to every
// token but the first of each request, and none exceeds the cap.
TEST_F(EngineTest, OnStepReportsEveryStepWithItsBatchSize) {
  std::mutex mu;
  std::vector<int> batch_sizes;
  int non_positive_durations = 0;
  on_step_ = [&](int batch_size, absl::Duration step) {
    std::lock_guard<std::mutex> lock(mu);
    batch_sizes.push_back(batch_size);
    if (step <= absl::ZeroDuration()) ++non_positive_durations;
  };
  MakeEngine(/*num_blocks=*/512, /*block_size=*/16, /*max_batch_size=*/2);
  const int lengths[] = {5, 9, 12};
  std::vector<std::unique_ptr<RecordingObserver>> observers;
  for (int length : lengths) {
    GenerationRequest request = Request("Once upon a time", length);
    request.ignore_eos = true;
    observers.push_back(std::make_unique<RecordingObserver>());
    ASSERT_TRUE(engine_->Submit(request, observers.back().get()).ok());
  }
  for (auto& observer : observers) {
    ASSERT_TRUE(observer->WaitDone());
    ASSERT_TRUE(observer->status().ok()) << observer->status();
  }
  engine_->Shutdown();
  std::lock_guard<std::mutex> lock(mu);
  int stepped = 0;
  for (int batch_size : batch_sizes) {
    EXPECT_GE(batch_size, 1);
    EXPECT_LE(batch_size, 2);
    stepped += batch_size;
  }
  EXPECT_EQ(stepped, (5 - 1) + (9 - 1) + (12 - 1));
  EXPECT_EQ(non_positive_durations, 0);
}

// A graceful shutdown's first step: the generating request finishes, the
// one still waiting to join the batch ends at once with UNAVAILABLE (its
// caller can go elsewhere), and new requests are refused. Blocks come back
// (TearDown).
TEST_F(EngineTest, DrainEndsRequestsNotYetGeneratingAndLetsTheOthersFinish) {
  MakeEngine(/*num_blocks=*/512, /*block_size=*/16, /*max_batch_size=*/1);
  GenerationRequest long_request = Request("Once upon a time", 300);
  long_request.ignore_eos = true;
  RecordingObserver generating;
  ASSERT_TRUE(engine_->Submit(long_request, &generating).ok());
  ASSERT_TRUE(generating.WaitTokens(2));
  RecordingObserver queued;  // the batch (max 1) is full: it cannot join
  ASSERT_TRUE(engine_->Submit(Request("Once upon a time", 8), &queued).ok());

  engine_->Drain();
  ASSERT_TRUE(queued.WaitDone());
  EXPECT_EQ(queued.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(queued.status().message(), HasSubstr("shutting down"));
  EXPECT_TRUE(queued.token_ids().empty());
  EXPECT_EQ(queued.terminal_calls(), 1);

  RecordingObserver refused;
  absl::StatusOr<Engine::RequestId> id = engine_->Submit(Request("Once", 4), &refused);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnavailable);

  ASSERT_TRUE(generating.WaitDone());
  ASSERT_TRUE(generating.status().ok()) << generating.status();
  EXPECT_EQ(generating.token_ids().size(), 300u);
}

TEST_F(EngineTest, MaxNewTokensEndsWithLengthAfterExactlyThatMany) {
  MakeEngine();
  GenerationRequest request = Request("Once upon a time", 7);
  request.ignore_eos = true;
  RecordingObserver observer;
  ASSERT_TRUE(engine_->Submit(request, &observer).ok());
  ASSERT_TRUE(observer.WaitDone());
  ASSERT_TRUE(observer.status().ok()) << observer.status();
  EXPECT_EQ(observer.token_ids().size(), 7u);
  EXPECT_EQ(observer.summary()->reason, FinishReason::kLength);
  EXPECT_EQ(observer.summary()->generated_tokens, 7);
}

TEST_F(EngineTest, AnEosIdEndsTheSequenceUnlessIgnored) {
  // stories260K never emits its EOS id (its stories end with BOS), so the
  // test makes " Lily", which the greedy continuation contains, the EOS id.
  const std::vector<int32_t> lily = model_->tokenizer().Encode("Lily", /*add_bos=*/false);
  ASSERT_EQ(lily.size(), 1u);
  MakeEngine(512, 16, 64, 256, /*eos_token_ids=*/{lily[0]});

  RecordingObserver stopped;
  ASSERT_TRUE(engine_->Submit(Request("Once upon a time", 64), &stopped).ok());
  ASSERT_TRUE(stopped.WaitDone());
  ASSERT_TRUE(stopped.status().ok()) << stopped.status();
  const std::vector<TokenEvent> events = stopped.events();
  EXPECT_EQ(events.back().token_id, lily[0]);
  EXPECT_TRUE(events.back().is_eos);
  EXPECT_EQ(stopped.summary()->reason, FinishReason::kEos);
  for (size_t i = 0; i + 1 < events.size(); ++i) EXPECT_FALSE(events[i].is_eos) << i;
  EXPECT_THAT(Text(stopped.token_ids()), ::testing::EndsWith("there was a little girl named Lily"));

  GenerationRequest request = Request("Once upon a time", 64);
  request.ignore_eos = true;
  RecordingObserver through;
  ASSERT_TRUE(engine_->Submit(request, &through).ok());
  ASSERT_TRUE(through.WaitDone());
  EXPECT_EQ(through.token_ids().size(), 64u);
  EXPECT_EQ(through.summary()->reason, FinishReason::kLength);
  int flagged = 0;
  for (const TokenEvent& event : through.events()) {
    EXPECT_EQ(event.is_eos, event.token_id == lily[0]);
    flagged += event.is_eos;
  }
  EXPECT_GT(flagged, 0);
}

TEST_F(EngineTest, ConcurrentSequencesGetTheirSoloGreedyTokens) {
  MakeEngine();
  std::vector<std::vector<int32_t>> alone;
  for (const std::string& prompt : StoryPrompts())
    alone.push_back(GenerateAlone(Request(prompt, 40)));

  std::vector<std::unique_ptr<RecordingObserver>> observers;
  for (const std::string& prompt : StoryPrompts()) {
    observers.push_back(std::make_unique<RecordingObserver>());
    ASSERT_TRUE(engine_->Submit(Request(prompt, 40), observers.back().get()).ok());
  }
  for (size_t i = 0; i < observers.size(); ++i) {
    ASSERT_TRUE(observers[i]->WaitDone());
    ASSERT_TRUE(observers[i]->status().ok()) << observers[i]->status();
    EXPECT_EQ(observers[i]->token_ids(), alone[i]) << "prompt: " << StoryPrompts()[i];
  }
}

// A step's rows differ in what they need from it: plain greedy rows take
// the backend's argmax, top-k rows its top candidates, the others
// (sampling over all tokens, a penalty, logprobs) their packed logits. In
// one batch each still gets its solo tokens, so no row reads another's.
TEST_F(EngineTest, MixedBatchOfGreedyTopKAndLogitRowsGetTheirSoloTokens) {
  MakeEngine();
  std::vector<GenerationRequest> requests;
  for (const std::string& prompt : StoryPrompts()) requests.push_back(Request(prompt, 32));
  ASSERT_GE(requests.size(), 6u);
  requests[1].sampling.temperature = 0.8f;
  requests[1].sampling.seed = 7;
  requests[2].logprobs = true;
  requests[3].sampling.repetition_penalty = 1.3f;
  requests[4].sampling = SamplingParams{1.0f, 40, 0.9f};
  requests[4].sampling.seed = 11;
  requests[5].sampling = SamplingParams{0.7f, 8, 1.0f};
  requests[5].sampling.seed = 12;
  for (GenerationRequest& request : requests) request.ignore_eos = true;
  std::vector<std::vector<int32_t>> alone;
  for (const GenerationRequest& request : requests) alone.push_back(GenerateAlone(request));
  RecordingObserver logprobs_alone;
  ASSERT_TRUE(engine_->Submit(requests[2], &logprobs_alone).ok());
  ASSERT_TRUE(logprobs_alone.WaitDone());
  std::vector<std::unique_ptr<RecordingObserver>> observers;
  for (const GenerationRequest& request : requests) {
    observers.push_back(std::make_unique<RecordingObserver>());
    ASSERT_TRUE(engine_->Submit(request, observers.back().get()).ok());
  }
  for (size_t i = 0; i < observers.size(); ++i) {
    ASSERT_TRUE(observers[i]->WaitDone());
    ASSERT_TRUE(observers[i]->status().ok()) << observers[i]->status();
    EXPECT_EQ(observers[i]->token_ids(), alone[i]) << "request " << i;
  }
  const std::vector<TokenEvent>& solo = logprobs_alone.events();
  const std::vector<TokenEvent>& batched = observers[2]->events();
  ASSERT_EQ(batched.size(), solo.size());
  for (size_t t = 0; t < solo.size(); ++t) {
    ASSERT_TRUE(batched[t].logprob.has_value() && solo[t].logprob.has_value()) << "token " << t;
    EXPECT_NEAR(*batched[t].logprob, *solo[t].logprob, 1e-4f) << "token " << t;
  }
}

// Top-k sampling from the step's top candidates draws the same tokens as
// from the whole row: the same seeded request, once as is (top candidates)
// and once with logprobs (which brings the whole row back), agrees token
// for token.
TEST_F(EngineTest, TopKSamplingFromCandidatesEqualsSamplingFromTheWholeRow) {
  MakeEngine();
  for (const SamplingParams& params :
       {SamplingParams{1.0f, 40, 0.9f}, SamplingParams{1.5f, 64, 1.0f},
        SamplingParams{0.9f, 5, 0.8f, 1.0f, 0, 0.05f}}) {
    GenerationRequest request = Request("Once upon a time", 48);
    request.sampling = params;
    request.sampling.seed = 2026;
    request.ignore_eos = true;
    const std::vector<int32_t> from_candidates = GenerateAlone(request);
    request.logprobs = true;
    const std::vector<int32_t> from_row = GenerateAlone(request);
    ASSERT_EQ(from_candidates.size(), 48u);
    EXPECT_EQ(from_candidates, from_row) << "top_k " << params.top_k;
  }
}

TEST_F(EngineTest, BatchCapBelowTheLoadStillGivesSoloTokens) {
  MakeEngine(/*num_blocks=*/512, /*block_size=*/16, /*max_batch_size=*/3);
  std::vector<std::vector<int32_t>> alone;
  for (const std::string& prompt : StoryPrompts())
    alone.push_back(GenerateAlone(Request(prompt, 24)));
  std::vector<std::unique_ptr<RecordingObserver>> observers;
  for (const std::string& prompt : StoryPrompts()) {
    observers.push_back(std::make_unique<RecordingObserver>());
    ASSERT_TRUE(engine_->Submit(Request(prompt, 24), observers.back().get()).ok());
  }
  for (size_t i = 0; i < observers.size(); ++i) {
    ASSERT_TRUE(observers[i]->WaitDone());
    EXPECT_EQ(observers[i]->token_ids(), alone[i]) << "prompt: " << StoryPrompts()[i];
  }
}

TEST_F(EngineTest, SeededSamplingIsReproducibleAndSeedsMatter) {
  MakeEngine();
  auto sampled = [&](uint64_t seed) {
    GenerationRequest request = Request("Once upon a time", 48);
    request.sampling.temperature = 1.0f;
    request.sampling.top_k = 40;
    request.sampling.top_p = 0.95f;
    request.sampling.seed = seed;
    request.ignore_eos = true;
    return GenerateAlone(request);
  };
  const std::vector<int32_t> first = sampled(1234);
  EXPECT_EQ(sampled(1234), first);
  bool any_differs = false;
  for (uint64_t seed = 1; seed <= 4; ++seed) any_differs |= sampled(seed) != first;
  EXPECT_TRUE(any_differs) << "four other seeds all reproduced seed 1234's tokens";
}

TEST_F(EngineTest, CancelMidStreamFreesBlocksAndTheEngineKeepsServing) {
  MakeEngine();
  const int free_at_start = cache_->num_free_blocks();
  GenerationRequest request = Request("Once upon a time", 400);
  request.ignore_eos = true;
  RecordingObserver observer;
  std::atomic<Engine::RequestId> id{0};
  observer.on_token = [&](const TokenEvent& event) {
    if (event.index == 3) {
      while (id.load() == 0) std::this_thread::yield();
      engine_->Cancel(id.load());  // from the engine thread itself
    }
  };
  absl::StatusOr<Engine::RequestId> submitted = engine_->Submit(request, &observer);
  ASSERT_TRUE(submitted.ok());
  id = *submitted;
  ASSERT_TRUE(observer.WaitDone());
  EXPECT_EQ(observer.status().code(), absl::StatusCode::kCancelled) << observer.status();
  EXPECT_LT(observer.token_ids().size(), 400u);
  EXPECT_EQ(observer.terminal_calls(), 1);
  EXPECT_EQ(cache_->num_free_blocks(), free_at_start);
  engine_->Cancel(*submitted);  // already ended: a no-op

  EXPECT_THAT(Text(GenerateAlone(Request("Once upon a time", 64))),
              HasSubstr("there was a little girl named Lily"));
  EXPECT_EQ(cache_->num_free_blocks(), free_at_start);
}

TEST_F(EngineTest, CancelWhilePrefillingOrWaitingFreesBlocks) {
  // One block: the first request holds it during its (held) prefill, the
  // second waits in the queue.
  MakeEngine(/*num_blocks=*/1, /*block_size=*/16);
  runner_->set_hold(true);
  RecordingObserver prefilling, waiting;
  absl::StatusOr<Engine::RequestId> a =
      engine_->Submit(Request("Once upon a time", 8), &prefilling);
  absl::StatusOr<Engine::RequestId> b = engine_->Submit(Request("The little dog", 8), &waiting);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(runner_->WaitForHeld(1, absl::Seconds(30)));
  EXPECT_EQ(engine_->stats().waiting, 1);
  EXPECT_EQ(cache_->num_free_blocks(), 0);

  engine_->Cancel(*b);
  ASSERT_TRUE(waiting.WaitDone());
  EXPECT_EQ(waiting.status().code(), absl::StatusCode::kCancelled);
  EXPECT_TRUE(waiting.token_ids().empty());

  engine_->Cancel(*a);
  ASSERT_TRUE(prefilling.WaitDone());
  EXPECT_EQ(prefilling.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(cache_->num_free_blocks(), 1);
  EXPECT_EQ(engine_->stats().waiting, 0);

  runner_->set_hold(false);
  EXPECT_FALSE(GenerateAlone(Request("Once upon a time", 4)).empty());
}

TEST_F(EngineTest, FullQueueIsResourceExhaustedAndQueuedRequestsRunLater) {
  MakeEngine(/*num_blocks=*/1, /*block_size=*/16, /*max_batch_size=*/64, /*max_queue=*/1);
  runner_->set_hold(true);
  RecordingObserver first, second, third;
  ASSERT_TRUE(engine_->Submit(Request("Once upon a time", 4), &first).ok());
  ASSERT_TRUE(engine_->Submit(Request("The little dog", 4), &second).ok());
  absl::StatusOr<Engine::RequestId> rejected = engine_->Submit(Request("Mom said", 4), &third);
  EXPECT_EQ(rejected.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(rejected.status().message(), HasSubstr("--max_queue 1"));
  EXPECT_EQ(third.terminal_calls(), 0);

  runner_->set_hold(false);
  ASSERT_TRUE(first.WaitDone());
  ASSERT_TRUE(second.WaitDone());
  EXPECT_TRUE(first.status().ok()) << first.status();
  EXPECT_TRUE(second.status().ok()) << second.status();
  EXPECT_EQ(cache_->num_free_blocks(), 1);
}

TEST_F(EngineTest, PromptLargerThanThePoolIsRejectedAtOnce) {
  MakeEngine(/*num_blocks=*/1, /*block_size=*/4);
  RecordingObserver observer;
  absl::StatusOr<Engine::RequestId> id = engine_->Submit(Request("Once upon a time", 4), &observer);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(id.status().message(), HasSubstr("--kv_cache_blocks"));
  EXPECT_EQ(cache_->num_free_blocks(), 1);
}

TEST_F(EngineTest, EmptyPoolEndsAGrowingSequenceWithLength) {
  // Two blocks of 4 tokens hold 8 positions. The last generated token never
  // needs a slot of its own, so a prompt of p tokens can produce 8 - p + 1.
  MakeEngine(/*num_blocks=*/2, /*block_size=*/4);
  GenerationRequest request = Request("Once upon a time", 100);
  request.ignore_eos = true;
  const int prompt_tokens = static_cast<int>(request.prompt.size());
  ASSERT_LE(prompt_tokens + 1, 8);
  RecordingObserver observer;
  ASSERT_TRUE(engine_->Submit(request, &observer).ok());
  ASSERT_TRUE(observer.WaitDone());
  ASSERT_TRUE(observer.status().ok()) << observer.status();
  EXPECT_EQ(observer.summary()->reason, FinishReason::kLength);
  EXPECT_EQ(observer.summary()->generated_tokens, 8 - prompt_tokens + 1);
  EXPECT_EQ(cache_->num_free_blocks(), 2);
}

TEST_F(EngineTest, PrefillFailureReachesTheObserverAndFreesBlocks) {
  MakeEngine();
  const int free_at_start = cache_->num_free_blocks();
  runner_->set_failure(absl::UnavailableError("prefill went away"));
  RecordingObserver observer;
  ASSERT_TRUE(engine_->Submit(Request("Once upon a time", 8), &observer).ok());
  ASSERT_TRUE(observer.WaitDone());
  EXPECT_EQ(observer.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(observer.status().message(), HasSubstr("prefill went away"));
  EXPECT_EQ(cache_->num_free_blocks(), free_at_start);

  runner_->set_failure(absl::OkStatus());
  EXPECT_FALSE(GenerateAlone(Request("Once upon a time", 4)).empty());
}

TEST_F(EngineTest, ShutdownEndsEveryRequestWithUnavailable) {
  MakeEngine(/*num_blocks=*/1, /*block_size=*/16);
  runner_->set_hold(true);
  RecordingObserver prefilling, waiting;
  ASSERT_TRUE(engine_->Submit(Request("Once upon a time", 8), &prefilling).ok());
  ASSERT_TRUE(engine_->Submit(Request("The little dog", 8), &waiting).ok());
  ASSERT_TRUE(runner_->WaitForHeld(1, absl::Seconds(30)));
  engine_->Shutdown();
  EXPECT_EQ(prefilling.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(waiting.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(prefilling.terminal_calls(), 1);
  EXPECT_EQ(waiting.terminal_calls(), 1);
  EXPECT_EQ(cache_->num_free_blocks(), 1);

  RecordingObserver late;
  EXPECT_EQ(engine_->Submit(Request("Mom said", 4), &late).status().code(),
            absl::StatusCode::kUnavailable);
}

TEST_F(EngineTest, ARequestsExtraEosIdsEndItWithEosUnlessIgnored) {
  MakeEngine();  // the engine's EOS ids: generation_config.json's alone
  const std::vector<int32_t> lily = model_->tokenizer().Encode("Lily", /*add_bos=*/false);
  ASSERT_EQ(lily.size(), 1u);
  GenerationRequest request = Request("Once upon a time", 64);
  request.extra_eos_token_ids = {lily[0]};
  RecordingObserver stopped;
  ASSERT_TRUE(engine_->Submit(request, &stopped).ok());
  ASSERT_TRUE(stopped.WaitDone());
  ASSERT_TRUE(stopped.status().ok()) << stopped.status();
  EXPECT_EQ(stopped.token_ids().back(), lily[0]);
  EXPECT_TRUE(stopped.events().back().is_eos);
  EXPECT_EQ(stopped.summary()->reason, FinishReason::kEos);

  request.ignore_eos = true;
  RecordingObserver through;
  ASSERT_TRUE(engine_->Submit(request, &through).ok());
  ASSERT_TRUE(through.WaitDone());
  EXPECT_EQ(through.token_ids().size(), 64u);
  EXPECT_EQ(through.summary()->reason, FinishReason::kLength);
}

TEST_F(EngineTest, SamplesOfOneRequestEachEndOnceAndTheLastEndsTheRequest) {
  MakeEngine(/*num_blocks=*/64, /*block_size=*/4);
  GenerationRequest request = Request("Once upon a time", 12);
  request.ignore_eos = true;
  request.sampling.temperature = 1.0f;
  request.sampling.seed = 77;
  request.num_samples = 3;
  RecordingObserver observer;
  ASSERT_TRUE(engine_->Submit(request, &observer).ok());
  ASSERT_TRUE(observer.WaitDone());
  ASSERT_TRUE(observer.status().ok()) << observer.status();
  const std::vector<TokenEvent> events = observer.events();
  ASSERT_EQ(events.size(), 36u);
  std::map<int, std::vector<int32_t>> tokens;
  std::map<int, std::string> texts;
  int finals = 0;
  for (size_t i = 0; i < events.size(); ++i) {
    const TokenEvent& event = events[i];
    EXPECT_EQ(event.index, static_cast<int>(tokens[event.sample_index].size()));
    tokens[event.sample_index].push_back(event.token_id);
    texts[event.sample_index] += event.text;
    EXPECT_EQ(event.ends_request, i + 1 == events.size());
    if (event.finish.has_value()) {
      ++finals;
      EXPECT_EQ(event.finish->generated_tokens, 12);
      EXPECT_EQ(event.finish->total_generated_tokens, event.ends_request ? 36 : 0);
    }
  }
  EXPECT_EQ(finals, 3);
  ASSERT_EQ(tokens.size(), 3u);
  for (const auto& [index, ids] : tokens) {
    // Each sample's text is its own ids' text after the prompt.
    std::vector<int32_t> all = request.prompt;
    all.insert(all.end(), ids.begin(), ids.end());
    EXPECT_EQ(texts[index], Text(all).substr(Text(request.prompt).size())) << index;
  }
  EXPECT_EQ(observer.terminal_calls(), 1);
  EXPECT_EQ(observer.calls_after_terminal(), 0);
  EXPECT_EQ(cache_->num_free_blocks(), 64);
}

TEST_F(EngineTest, ForksWithoutABlockForTheirCopyEndWithLengthAndFreeEverything) {
  // "Once upon a time" is 5 tokens: 2 blocks of 4 (the second holds token 4
  // and the first new token's slot). The 4 samples share both; writing the
  // first new token (position 5) into the shared second block needs a copy,
  // and the pool has no third block. Samples 0..2 in turn find the block
  // still shared and end after 1 token; sample 3 is then its only holder,
  // writes in place and grows until position 8 needs a third block:
  // positions 5, 6, 7 plus the token that needs no slot = 4 tokens.
  MakeEngine(/*num_blocks=*/2, /*block_size=*/4);
  GenerationRequest request = Request("Once upon a time", 100);
  ASSERT_EQ(request.prompt.size(), 5u);
  request.ignore_eos = true;
  request.num_samples = 4;
  RecordingObserver observer;
  ASSERT_TRUE(engine_->Submit(request, &observer).ok());
  ASSERT_TRUE(observer.WaitDone());
  ASSERT_TRUE(observer.status().ok()) << observer.status();
  std::map<int, int> generated;
  for (const TokenEvent& event : observer.events()) {
    if (!event.finish.has_value()) continue;
    EXPECT_EQ(event.finish->reason, FinishReason::kLength);
    generated[event.sample_index] = event.finish->generated_tokens;
  }
  EXPECT_EQ(generated, (std::map<int, int>{{0, 1}, {1, 1}, {2, 1}, {3, 4}}));
  EXPECT_EQ(cache_->num_free_blocks(), 2);
}

TEST_F(EngineTest, MoreSamplesThanTheBatchIsRejectedAtOnce) {
  MakeEngine(512, 16, /*max_batch_size=*/4);
  GenerationRequest request = Request("Once upon a time", 4);
  request.num_samples = 5;
  RecordingObserver observer;
  absl::StatusOr<Engine::RequestId> id = engine_->Submit(request, &observer);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(id.status().message(), HasSubstr("--max_batch_size"));
  EXPECT_EQ(cache_->num_free_blocks(), 512);
}

}  // namespace
}  // namespace pdserve
