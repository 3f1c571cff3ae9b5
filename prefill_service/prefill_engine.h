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

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "shared/backend.h"
#include "shared/model_config.h"
#include "shared/model_fingerprint.h"
#include "shared/model_weights.h"
#include "shared/transformer.h"

namespace pdserve {

// Loads a checkpoint onto a backend and runs jobs that use it on a single
// worker thread, in submission order. A Backend is not thread-safe and one
// forward pass already uses the whole device (or every BLAS thread), so one
// forward at a time is the simplest correct schedule; gRPC threads never
// touch the model.
class PrefillEngine {
 public:
  // Reads `model_dir` (config.json, safetensors), creates the backend for
  // `device` ("cpu", "cuda", "auto") and uploads the weights. Errors: those
  // of LoadModelConfig, LoadModelWeights, CreateBackend and
  // Transformer::Create.
  static absl::StatusOr<std::unique_ptr<PrefillEngine>> Load(const std::string& model_dir,
                                                             std::string_view device);

  // Runs the jobs still queued, then joins the worker.
  ~PrefillEngine();
  PrefillEngine(const PrefillEngine&) = delete;
  PrefillEngine& operator=(const PrefillEngine&) = delete;

  using Job = absl::AnyInvocable<void(Transformer& transformer) &&>;
  // Queues `job` for the worker thread; it runs after every job queued
  // before it. A job must not block on anything but its own stream's
  // back-pressure (which gives way on cancellation).
  void Submit(Job job);
  // Jobs queued and not yet started (metrics). Thread-safe.
  int queued_jobs();

  // OK, or INVALID_ARGUMENT naming the field `token_ids` and the limit: an
  // empty prompt, one longer than max_position_embeddings, or an id outside
  // [0, vocab_size).
  absl::Status ValidatePrompt(std::span<const int32_t> token_ids) const;

  const std::string& model_dir() const { return model_dir_; }
  const ModelConfig& config() const { return config_; }
  const ModelFingerprint& fingerprint() const { return fingerprint_; }
  // Backend name ("cpu", "cuda") and the dtype of the K/V it produces.
  std::string_view device() const { return backend_->name(); }
  DType kv_dtype() const { return backend_->kv_dtype(); }
  // Elements over every tensor of the checkpoint (tied weights once).
  int64_t parameter_count() const { return parameter_count_; }

 private:
  PrefillEngine() = default;
  void WorkerLoop();

  std::string model_dir_;
  ModelConfig config_;
  ModelFingerprint fingerprint_;
  int64_t parameter_count_ = 0;
  // Destroyed in reverse order: the transformer before the backend it uses,
  // the backend before the mapped weights it may alias.
  ModelWeights weights_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Transformer> transformer_;

  absl::Mutex mu_;
  std::deque<Job> jobs_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread worker_;
};

}  // namespace pdserve

#endif  // PDSERVE_PREFILL_SERVICE_PREFILL_ENGINE_H_
