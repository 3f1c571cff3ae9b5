#include "prefill_service/prefill_engine.h"

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/backend_factory.h"
#include "shared/status_macros.h"

namespace pdserve {

namespace {

absl::Status ValidateOptions(const PrefillEngineOptions& options) {
  if (options.max_batch_tokens < 1 || options.chunk_tokens < 0 || options.max_queued_requests < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "prefill engine: max_batch_tokens (", options.max_batch_tokens,
        ") and max_queued_requests (", options.max_queued_requests,
        ") must be positive and chunk_tokens (", options.chunk_tokens, ") not negative"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<PrefillEngine>> PrefillEngine::Load(
    const std::string& model_dir, std::string_view device, const PrefillEngineOptions& options) {
  // Checked before the backend is made: a bad option should not cost a
  // device initialisation.
  PDSERVE_RETURN_IF_ERROR(ValidateOptions(options));
  PDSERVE_ASSIGN_OR_RETURN(std::unique_ptr<Backend> backend,
                           CreateBackend(device, options.cpu_backend));
  return Load(model_dir, std::move(backend), options);
}

absl::StatusOr<std::unique_ptr<PrefillEngine>> PrefillEngine::Load(
    const std::string& model_dir, std::unique_ptr<Backend> backend,
    const PrefillEngineOptions& options) {
  PDSERVE_RETURN_IF_ERROR(ValidateOptions(options));
  std::unique_ptr<PrefillEngine> engine(new PrefillEngine());
  engine->model_dir_ = model_dir;
  engine->options_ = options;
  PDSERVE_ASSIGN_OR_RETURN(engine->config_, LoadModelConfig(model_dir));
  PDSERVE_ASSIGN_OR_RETURN(engine->weights_, LoadModelWeights(model_dir, engine->config_));
  engine->fingerprint_ = MakeFingerprint(engine->config_, *engine->weights_.store);
  for (const std::string& name : engine->weights_.store->Names()) {
    engine->parameter_count_ += engine->weights_.store->Find(name)->num_elements();
  }
  engine->backend_ = std::move(backend);
  PDSERVE_ASSIGN_OR_RETURN(
      engine->transformer_,
      Transformer::Create(engine->config_, engine->weights_, engine->backend_.get()));
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

absl::StatusOr<PrefillEngine::WorkId> PrefillEngine::Submit(PrefillWork work) {
  absl::MutexLock lock(&mu_);
  if (static_cast<int>(queue_.size()) >= options_.max_queued_requests) {
    ++stats_.rejected_queue_full;
    return absl::ResourceExhaustedError(
        absl::StrCat("prefill queue full: ", queue_.size(),
                     " requests already wait for the model (max_queued_requests ",
                     options_.max_queued_requests, ")"));
  }
  const WorkId id = next_id_++;
  queue_.push_back(Queued{id, std::move(work)});
  return id;
}

bool PrefillEngine::Cancel(WorkId id) {
  PrefillWork removed;
  {
    absl::MutexLock lock(&mu_);
    auto it = std::find_if(queue_.begin(), queue_.end(),
                           [id](const Queued& queued) { return queued.id == id; });
    if (it == queue_.end()) return false;
    removed = std::move(it->work);
    queue_.erase(it);
    ++stats_.cancelled_queued;
  }
  std::move(removed.done)(absl::CancelledError("prefill: cancelled while queued"));
  return true;
}

PrefillEngineStats PrefillEngine::stats() const {
  absl::MutexLock lock(&mu_);
  PrefillEngineStats stats = stats_;
  stats.queued = static_cast<int>(queue_.size());
  return stats;
}

int PrefillEngine::queued_jobs() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(queue_.size());
}

std::vector<PrefillWork> PrefillEngine::TakeBatchLocked() {
  std::vector<PrefillWork> batch;
  int64_t tokens = 0;
  while (!queue_.empty()) {
    const int64_t next = static_cast<int64_t>(queue_.front().work.tokens.size());
    if (!batch.empty() && tokens + next > options_.max_batch_tokens) break;
    tokens += next;
    batch.push_back(std::move(queue_.front().work));
    queue_.pop_front();
  }
  ++stats_.batches;
  stats_.requests += static_cast<int64_t>(batch.size());
  stats_.prompt_tokens += tokens;
  stats_.largest_batch = std::max<int64_t>(stats_.largest_batch, batch.size());
  stats_.running = static_cast<int>(batch.size());
  return batch;
}

void PrefillEngine::RunBatch(std::vector<PrefillWork>& batch) {
  int tokens = 0;
  for (const PrefillWork& work : batch) tokens += static_cast<int>(work.tokens.size());
  std::vector<PrefillSequence> sequences(batch.size());
  for (size_t i = 0; i < batch.size(); ++i) {
    PrefillWork& work = batch[i];
    if (work.started) std::move(work.started)(static_cast<int>(batch.size()), tokens);
    PrefillSequence& sequence = sequences[i];
    sequence.tokens = work.tokens;
    sequence.capture = work.capture;
    sequence.kv_sink = work.kv_sink;
    sequence.hidden_sink = work.hidden_sink;
    sequence.done = [&work](const absl::StatusOr<std::vector<float>>& result) {
      std::move(work.done)(result);
    };
  }
  PrefillBatchOptions options;
  options.chunk_tokens = options_.chunk_tokens;
  const PrefillBatchResult result = transformer_->PrefillBatch(sequences, options);
  absl::MutexLock lock(&mu_);
  stats_.forward_passes += result.forward_steps;
  stats_.running = 0;
}

void PrefillEngine::WorkerLoop() {
  while (true) {
    std::vector<PrefillWork> batch;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](PrefillEngine* e)
               ABSL_EXCLUSIVE_LOCKS_REQUIRED(e->mu_) { return e->stopping_ || !e->queue_.empty(); },
          this));
      // Requests queued before the stop still run: each one owns an RPC
      // that can only finish once its `done` has run.
      if (queue_.empty()) return;
      batch = TakeBatchLocked();
    }
    RunBatch(batch);
  }
}

absl::Status PrefillEngine::ValidatePrompt(std::span<const int32_t> token_ids) const {
  const int limit = config_.max_position_embeddings;
  if (token_ids.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token_ids: empty prompt (need 1 to max_position_embeddings=", limit, " tokens)"));
  }
  if (static_cast<int64_t>(token_ids.size()) > limit) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token_ids: ", token_ids.size(), " tokens exceed max_position_embeddings=", limit));
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
