#include "prefill_service/prefill_engine.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/backend_factory.h"
#include "shared/status_macros.h"

namespace pdserve {

absl::StatusOr<std::unique_ptr<PrefillEngine>> PrefillEngine::Load(const std::string& model_dir,
                                                                   std::string_view device) {
  std::unique_ptr<PrefillEngine> engine(new PrefillEngine());
  engine->model_dir_ = model_dir;
  PDSERVE_ASSIGN_OR_RETURN(engine->config_, LoadModelConfig(model_dir));
  PDSERVE_ASSIGN_OR_RETURN(engine->weights_, LoadModelWeights(model_dir, engine->config_));
  engine->fingerprint_ = MakeFingerprint(engine->config_, *engine->weights_.store);
  for (const std::string& name : engine->weights_.store->Names()) {
    engine->parameter_count_ += engine->weights_.store->Find(name)->num_elements();
  }
  PDSERVE_ASSIGN_OR_RETURN(engine->backend_, CreateBackend(device));
  PDSERVE_ASSIGN_OR_RETURN(engine->transformer_,
                           Transformer::Create(engine->config_, engine->weights_,
                                               engine->backend_.get()));
  engine->worker_ = std::thread([e = engine.get()] { e->WorkerLoop(); });
  return engine;
}

PrefillEngine::~PrefillEngine() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (worker_.joinable()) worker_.join();
}

void PrefillEngine::Submit(Job job) {
  absl::MutexLock lock(&mu_);
  jobs_.push_back(std::move(job));
}

int PrefillEngine::queued_jobs() {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(jobs_.size());
}

void PrefillEngine::WorkerLoop() {
  while (true) {
    Job job;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](PrefillEngine* e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(e->mu_) {
            return e->stopping_ || !e->jobs_.empty();
          },
          this));
      // Jobs queued before the stop still run: each one owns an RPC that
      // can only finish once its job has reported back.
      if (jobs_.empty()) return;
      job = std::move(jobs_.front());
      jobs_.pop_front();
    }
    std::move(job)(*transformer_);
  }
}

absl::Status PrefillEngine::ValidatePrompt(std::span<const int32_t> token_ids) const {
  const int limit = config_.max_position_embeddings;
  if (token_ids.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token_ids: empty prompt (need 1 to max_position_embeddings=", limit, " tokens)"));
  }
  if (static_cast<int64_t>(token_ids.size()) > limit) {
    return absl::InvalidArgumentError(absl::StrCat("token_ids: ", token_ids.size(),
                                                   " tokens exceed max_position_embeddings=", limit));
  }
  for (size_t i = 0; i < token_ids.size(); ++i) {
    if (token_ids[i] < 0 || token_ids[i] >= config_.vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat("token_ids[", i, "]: id ", token_ids[i],
                                                     " outside the vocabulary [0, ",
                                                     config_.vocab_size, ")"));
    }
  }
  return absl::OkStatus();
}

}  // namespace pdserve
