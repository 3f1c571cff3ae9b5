// The model a prefill instance serves, and the one thread that runs it.
#ifndef PDSERVE_PREFILL_SERVICE_PREFILL_ENGINE_H_
#define PDSERVE_PREFILL_SERVICE_PREFILL_ENGINE_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kernels/cpu/cpu_backend.h"
#include "shared/backend.h"
#include "shared/model_config.h"
#include "shared/model_fingerprint.h"
#include "shared/model_weights.h"
#include "shared/transformer.h"

namespace pdserve {

struct PrefillEngineOptions {
  // Prompt tokens the worker takes into one batched forward: it takes queued
  // requests in order while their total stays within this (always at least
  // one request, however long).
  int max_batch_tokens = 8192;
  // Most tokens of one forward step (Transformer chunked prefill: a longer
  // batch runs in several steps, a long prompt in chunks); 0: no limit.
  // Bounds the activations' memory.
  int chunk_tokens = 2048;
  // Requests that may wait for the worker; Submit beyond is RESOURCE_EXHAUSTED.
  int max_queued_requests = 256;
  // The CPU backend's options (weight dtype, threads) when the device is
  // "cpu", or "auto" without a CUDA device; ignored by CUDA.
  CpuBackendOptions cpu_backend;
};

// Counts since the engine started, for tests, logs and metrics.
struct PrefillEngineStats {
  int64_t batches = 0;              // batched forwards (Transformer::PrefillBatch calls)
  int64_t forward_passes = 0;       // forward steps over them (several for chunked batches)
  int64_t requests = 0;             // requests that went into a batch
  int64_t prompt_tokens = 0;        // their prompt tokens
  int64_t largest_batch = 0;        // most requests in one batch so far
  int64_t cancelled_queued = 0;     // removed from the queue by Cancel
  int64_t rejected_queue_full = 0;  // Submit refused: the queue was full
  int queued = 0;                   // requests waiting now
  int running = 0;                  // requests of the batch running now (0 when idle)
};

// One prompt for the worker, with where its results go. The sinks and
// `done` run on the worker thread (`done` also on the thread that cancels a
// queued request); a sink may block on its own stream's back-pressure, which
// must give way (return an error) on cancellation.
struct PrefillWork {
  std::vector<int32_t> tokens;  // the whole prompt, already validated
  PrefillCapture capture;
  KvRangeSink kv_sink;          // may be empty (no KV wanted)
  HiddenStateSink hidden_sink;  // required when `capture` asks for anything
  // Called once the batch holding this request starts (may be empty).
  absl::AnyInvocable<void(int batch_requests, int batch_tokens)> started;
  // Called exactly once: the final hidden state of the last position
  // ([hidden_size] float32) or the error that ended the request (its sink's,
  // INVALID_ARGUMENT, a backend failure, or CANCELLED when Cancel removed it
  // from the queue).
  absl::AnyInvocable<void(absl::StatusOr<std::vector<float>> result)> done;
};

// Loads a checkpoint onto a backend and runs prefills on a single worker
// thread. A Backend is not thread-safe and one forward pass already uses the
// whole device (or every BLAS thread), so there is one forward at a time;
// gRPC threads never touch the model. Under load the worker batches: it takes
// every queued request up to max_batch_tokens and runs them as one
// Transformer::PrefillBatch, one GEMM per linear layer over all their
// tokens, each request's KV still streamed per (chunk, layer) as computed
// and its final hidden state handed over as soon as its last chunk is done.
class PrefillEngine {
 public:
  // Reads `model_dir` (config.json, safetensors), creates the backend for
  // `device` ("cpu", "cuda", "auto") and uploads the weights. Errors: those
  // of LoadModelConfig, LoadModelWeights, CreateBackend and
  // Transformer::Create; INVALID_ARGUMENT naming an option out of range.
  static absl::StatusOr<std::unique_ptr<PrefillEngine>> Load(
      const std::string& model_dir, std::string_view device,
      const PrefillEngineOptions& options = PrefillEngineOptions());
  // The same on a backend the caller made (tests wrap one to model a
  // device's timing). options.cpu_backend is then unused. Errors as above,
  // less CreateBackend's.
  static absl::StatusOr<std::unique_ptr<PrefillEngine>> Load(
      const std::string& model_dir, std::unique_ptr<Backend> backend,
      const PrefillEngineOptions& options = PrefillEngineOptions());

  // Runs the requests still queued (each owns an RPC that ends only once its
  // `done` has run), then joins the worker.
  ~PrefillEngine();
  PrefillEngine(const PrefillEngine&) = delete;
  PrefillEngine& operator=(const PrefillEngine&) = delete;

  using WorkId = uint64_t;
  // Queues `work` behind the requests already waiting. RESOURCE_EXHAUSTED
  // naming max_queued_requests when that many wait (`done` is then never
  // called).
  absl::StatusOr<WorkId> Submit(PrefillWork work);
  // Removes a request that is still queued and calls its `done` with
  // CANCELLED on this thread (with no lock held); true then. False when it
  // has already gone to the worker (its sinks must then fail to stop it) or
  // has ended. Thread-safe.
  bool Cancel(WorkId id);

  PrefillEngineStats stats() const;
  // Requests queued and not yet started (metrics). Thread-safe.
  int queued_jobs() const;

  // OK, or INVALID_ARGUMENT naming the field `token_ids` and the limit: an
  // empty prompt, one longer than max_position_embeddings, or an id outside
  // [0, vocab_size).
  absl::Status ValidatePrompt(std::span<const int32_t> token_ids) const;

  const std::string& model_dir() const { return model_dir_; }
  const ModelConfig& config() const { return config_; }
  const ModelFingerprint& fingerprint() const { return fingerprint_; }
  const PrefillEngineOptions& options() const { return options_; }
  // Backend name ("cpu", "cuda") and the dtype of the K/V it produces.
  std::string_view device() const { return backend_->name(); }
  DType kv_dtype() const { return backend_->kv_dtype(); }
  // For the sinks' CopyToHost calls, which run on the worker thread; no
  // other thread may use it.
  Backend& backend() { return *backend_; }
  // Elements over every tensor of the checkpoint (tied weights once).
  int64_t parameter_count() const { return parameter_count_; }

 private:
  struct Queued {
    WorkId id = 0;
    PrefillWork work;
  };
  PrefillEngine() = default;
  void WorkerLoop();
  // Takes the next batch off the queue (requires mu_ and a non-empty queue).
  std::vector<PrefillWork> TakeBatchLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void RunBatch(std::vector<PrefillWork>& batch);

  std::string model_dir_;
  ModelConfig config_;
  ModelFingerprint fingerprint_;
  PrefillEngineOptions options_;
  int64_t parameter_count_ = 0;
  // Destroyed in reverse order: the transformer before the backend it uses,
  // the backend before the mapped weights it may alias.
  ModelWeights weights_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Transformer> transformer_;

  mutable absl::Mutex mu_;
  std::deque<Queued> queue_ ABSL_GUARDED_BY(mu_);
  WorkId next_id_ ABSL_GUARDED_BY(mu_) = 1;
  PrefillEngineStats stats_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread worker_;
};

}  // namespace pdserve

#endif  // PDSERVE_PREFILL_SERVICE_PREFILL_ENGINE_H_
