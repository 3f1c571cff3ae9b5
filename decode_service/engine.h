// The decode engine: admission control over the KV block pool, prefill
// hand-off, and one thread doing continuous batching (Orca, Yu et al. 2022;
// paged KV as in vLLM, Kwon et al. 2023).
//
// A request's life:
//   waiting    queued until the pool has blocks for prompt + 1 tokens
//   prefilling its KV lease exists; a PrefillRunner fills it
//   ready      KV complete; joins the batch at the next step
//   running    its n samples each make one token per step; a sample ends
//              on EOS, a stop id or string, max_new_tokens, the context
//              limit or an empty pool; a cancel or error ends them all
// KV blocks are held only from "prefilling" on and return to the pool the
// moment a sample (or the request) ends, before its observer hears about it.
// With n > 1 the samples fork the prompt's lease at the join: they share its
// full blocks and each copies the partly filled last one on its first write
// (KvCache::Fork / PrepareWrite), so the prompt is prefilled and stored once.
//
// Threading. The Backend is not thread-safe and the engine thread is its main
// user (ComputeLogits, DecodeStep). KV chunks arrive on gRPC threads; they are
// written in place under `backend_mu_`, the same lock the engine holds for
// each step (rather than being copied and handed to the engine thread), so a
// chunk waits at most one step and costs no extra copy of its bytes.
// Everything else shared between threads (the queue, the request table) is
// guarded by `mu_`; the running batch belongs to the engine thread alone.
// Observers are never called with either lock held.
#ifndef PDSERVE_DECODE_SERVICE_ENGINE_H_
#define PDSERVE_DECODE_SERVICE_ENGINE_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "decode_service/generation.h"
#include "decode_service/prefill_runner.h"
#include "shared/kv_cache.h"
#include "shared/tokenizer.h"
#include "shared/transformer.h"

namespace pdserve {

struct EngineOptions {
  int max_batch_size = 64;                             // sequences in one DecodeStep
  int max_queue = 256;                                 // requests waiting for KV blocks
  absl::Duration prefill_timeout = absl::Seconds(60);  // per prefill call
  std::vector<int32_t> eos_token_ids;                  // generation_config.json, all of them
  int context_limit = 0;                               // max_position_embeddings, tokens
  // Renders each token's text (TokenEvent::text) and finds stop strings.
  // Null: events carry no text, and requests with stop strings are refused.
  const Tokenizer* tokenizer = nullptr;
  // Called on the engine thread after every decode step with the samples in
  // it and the step's duration: the forward pass (DecodeStep, lm_head
  // included) and sampling every sample, not the streaming of the tokens.
  // For metrics: the gap between the callers' inter-token latency and this
  // is the serving overhead (gRPC, scheduling). Must be quick; may be empty.
  std::function<void(int batch_size, absl::Duration step)> on_step;
};

// Counts for tests and (later) metrics.
struct EngineStats {
  int waiting = 0;
  int prefilling = 0;
  int ready = 0;
  int running = 0;  // samples in the decode batch (n per request)
};

// The seed of sample `sample_index` of a request seeded `request_seed`.
// Sample 0 keeps the request's seed, so n = 1 draws what it always did; the
// others get a SplitMix64 mix of the seed and their index: streams that look
// independent and depend on nothing else in the batch. A client can
// reproduce sample i alone by sending n = 1 with this seed.
uint64_t SampleSeed(uint64_t request_seed, int sample_index);

class Engine {
 public:
  using RequestId = uint64_t;

  // Starts the engine thread. `transformer`, `cache` and `prefill` must
  // outlive the engine; the engine is the only user of transformer's backend
  // while it runs.
  Engine(Transformer* transformer, KvCache* cache, PrefillRunner* prefill,
         const EngineOptions& options);
  // Shutdown().
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Queues `request` (validated, see request_validation.h). `observer` gets
  // the tokens and must outlive its terminal call. Errors, with no observer
  // call: RESOURCE_EXHAUSTED when the wait queue is full (--max_queue) or the
  // prompt needs more blocks than the whole pool has; INVALID_ARGUMENT for
  // more samples than --max_batch_size, or stop strings without a tokenizer;
  // UNAVAILABLE after Shutdown.
  absl::StatusOr<RequestId> Submit(GenerationRequest request, GenerationObserver* observer);

  // Ends the request with CANCELLED as soon as possible: at once while it
  // waits, after the prefill stops while prefilling, before the next step
  // while running. A no-op for a request that has already ended.
  void Cancel(RequestId id);

  // The first step of a graceful shutdown: from now on Submit answers
  // UNAVAILABLE, and every request that has not started generating (waiting
  // for KV blocks, prefilling, or waiting to join the batch) ends at once
  // with UNAVAILABLE saying the instance is shutting down, so its caller can
  // retry elsewhere instead of waiting out the grace period; requests
  // already generating carry on. Idempotent.
  void Drain();

  // Stops the engine: cancels prefills in flight, ends every request with
  // UNAVAILABLE and joins the engine thread. Idempotent.
  void Shutdown();

  EngineStats stats() const;

 private:
  struct Sequence;  // a request: its prefill, its samples
  struct Sample;    // one of a running request's n samples
  enum class State { kWaiting, kPrefilling, kReady, kRunning };

  void Run();
  // Cancel, ending the request with `status` (the first one set wins).
  void EndEarly(RequestId id, const absl::Status& status);
  // Takes blocks for waiting requests in FIFO order while the pool allows.
  void AdmitWaiting();
  // Allocates the lease for the front of the queue (or for `seq` on the fast
  // path); false when the pool is short. Requires mu_.
  bool TryAllocateLocked(Sequence& seq);
  void StartPrefill(Sequence* seq);
  void OnPrefillDone(RequestId id, absl::StatusOr<PrefillResult> result);
  // One engine iteration: joins ready sequences, retires cancelled ones, and
  // runs one decode step over the batch.
  void Iterate();
  void JoinReady(const std::vector<Sequence*>& joiners);
  // The prompt's token logprobs from every position's final hidden state
  // (PrefillResult::all_hidden, [prompt, hidden_size]); INTERNAL for a
  // wrong size, or the backend's error.
  absl::StatusOr<std::vector<PromptTokenLogprob>> PromptLogprobs(const GenerationRequest& request,
                                                                 std::span<const float> all_hidden);
  // Creates the samples of `seq`, which must hold its prompt lease.
  absl::Status StartSamples(Sequence* seq);
  void StepRunning();
  // What a decode step must bring back for `sample`'s next token: the
  // backend's argmax (plain greedy), its top logits (top-k sampling with
  // top_k <= max_candidates, the most a step can return, and no penalty or
  // logprobs: Sampler::SampleTopCandidates), or its whole row.
  enum class StepNeed { kArgmax, kTopCandidates, kLogits };
  static StepNeed NeedOf(const Sample& sample, int max_candidates);
  // Appends `sample`'s next token, streams it and finishes the sample when
  // it is done. The token is `chosen` when >= 0 (picked from the step's
  // argmax or top candidates), else drawn by the sample's Sampler from
  // `logits` [vocab] (raw), which logprobs also need.
  void SampleAndAdvance(Sample* sample, std::span<const float> logits, int32_t chosen = -1);
  // Ends one sample normally: frees its KV and sends `event` (its final
  // token); the request ends with it when it was the last sample.
  void FinishSample(Sample* sample, TokenEvent event);
  // Ends the request and every sample still running: frees all its KV,
  // forgets it and tells its observer `error`.
  void Retire(Sequence* seq, const absl::Status& error);
  void RemoveFromRunning(Sample* sample);
  bool IsEos(int32_t token, const GenerationRequest& request) const;

  Transformer* const transformer_;
  KvCache* const cache_;
  PrefillRunner* const prefill_;
  const EngineOptions options_;

  // Held for every use of the backend: engine steps and KV chunk writes.
  std::mutex backend_mu_;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;                                               // guarded by mu_
  bool draining_ = false;                                               // guarded by mu_
  RequestId next_id_ = 1;                                               // guarded by mu_
  std::unordered_map<RequestId, std::unique_ptr<Sequence>> sequences_;  // guarded by mu_
  std::deque<Sequence*> waiting_;                                       // guarded by mu_
  std::deque<Sequence*> ready_;                                         // guarded by mu_
  int num_prefilling_ = 0;                                              // guarded by mu_
  std::atomic<int> num_running_{0};  // running_.size(), readable from any thread

  std::vector<Sample*> running_;  // engine thread only
  std::thread thread_;
};

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_ENGINE_H_
