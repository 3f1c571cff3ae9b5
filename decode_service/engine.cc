#include "decode_service/engine.h"

#include <algorithm>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "shared/sampler.h"

namespace pdserve {

struct Engine::Sequence {
  Sequence(RequestId id_in, GenerationRequest request_in, GenerationObserver* observer_in)
      : id(id_in),
        request(std::move(request_in)),
        observer(observer_in),
        sampler(request.sampling) {}

  const RequestId id;
  const GenerationRequest request;
  GenerationObserver* const observer;

  // Guarded by mu_.
  State state = State::kWaiting;
  bool cancelled = false;
  std::shared_ptr<PrefillCall> prefill;
  std::optional<absl::StatusOr<PrefillResult>> prefill_result;

  // The lease: created under mu_ at admission; afterwards written by the
  // prefill (through KvWriter, under backend_mu_) and then used by the engine
  // thread alone. (Preemption would give it back here and re-admit later; a
  // copy-on-write fork for n > 1 samples would share its prompt blocks.)
  std::unique_ptr<KvCache::Sequence> kv;

  // Engine thread only, once ready.
  Sampler sampler;
  std::vector<int32_t> history;  // prompt + generated ids (repetition penalty)
  int num_generated = 0;
  absl::Time prefill_start;
  absl::Time kv_complete;
  absl::Time first_token;
  absl::Time last_token;

  int prompt_tokens() const { return static_cast<int>(request.prompt.size()); }
};

namespace {

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

int BlocksFor(int tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

}  // namespace

Engine::Engine(Transformer* transformer, KvCache* cache, PrefillRunner* prefill,
               const EngineOptions& options)
    : transformer_(transformer), cache_(cache), prefill_(prefill), options_(options) {
  thread_ = std::thread([this] { Run(); });
}

Engine::~Engine() { Shutdown(); }

absl::StatusOr<Engine::RequestId> Engine::Submit(GenerationRequest request,
                                                 GenerationObserver* observer) {
  if (request.prompt.empty()) {
    return absl::InvalidArgumentError("prompt: no tokens (at least 1 needed)");
  }
  // Admission reserves the prompt plus the slot of the first generated token.
  const int needed_blocks =
      BlocksFor(static_cast<int>(request.prompt.size()) + 1, cache_->block_size());
  if (needed_blocks > cache_->num_blocks()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "prompt: ", request.prompt.size(), " tokens need ", needed_blocks, " KV blocks of ",
        cache_->block_size(), " tokens, but the whole pool has ", cache_->num_blocks(),
        " (--kv_cache_blocks)"));
  }
  Sequence* admitted = nullptr;
  RequestId id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) return absl::UnavailableError("decode engine is shutting down");
    id = next_id_++;
    auto seq = std::make_unique<Sequence>(id, std::move(request), observer);
    // FIFO: a newcomer never overtakes requests already waiting for blocks.
    if (waiting_.empty() && TryAllocateLocked(*seq)) {
      admitted = seq.get();
    } else if (static_cast<int>(waiting_.size()) >= options_.max_queue) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "decode instance over capacity: ", waiting_.size(),
          " requests already wait for KV blocks (--max_queue ", options_.max_queue, ")"));
    } else {
      waiting_.push_back(seq.get());
    }
    sequences_.emplace(id, std::move(seq));
  }
  if (admitted != nullptr) StartPrefill(admitted);
  return id;
}

bool Engine::TryAllocateLocked(Sequence& seq) {
  absl::StatusOr<std::unique_ptr<KvCache::Sequence>> lease =
      cache_->Allocate(seq.prompt_tokens() + 1);
  if (!lease.ok()) return false;
  seq.kv = std::move(lease).value();
  seq.state = State::kPrefilling;
  seq.prefill_start = absl::Now();
  ++num_prefilling_;
  return true;
}

void Engine::AdmitWaiting() {
  std::vector<Sequence*> admitted;
  {
    std::lock_guard<std::mutex> lock(mu_);
    while (!stopping_ && !waiting_.empty() && TryAllocateLocked(*waiting_.front())) {
      admitted.push_back(waiting_.front());
      waiting_.pop_front();
    }
  }
  for (Sequence* seq : admitted) StartPrefill(seq);
}

void Engine::StartPrefill(Sequence* seq) {
  // `seq` may be retired as soon as `done` has run, which can happen inside
  // Start: everything needed afterwards is looked up again by id.
  const RequestId id = seq->id;
  PrefillJob job;
  job.request_id = seq->request.request_id;
  job.token_ids = seq->request.prompt;
  job.deadline = std::min(seq->request.deadline, absl::Now() + options_.prefill_timeout);
  KvCache::Sequence* lease = seq->kv.get();  // alive until `done` has run
  job.write_kv = [this, lease](int layer, int first_token, int num_tokens, const void* k,
                               const void* v, DType dtype) {
    std::lock_guard<std::mutex> lock(backend_mu_);
    return cache_->WriteTokens(*lease, layer, first_token, num_tokens, k, v, dtype);
  };
  std::shared_ptr<PrefillCall> call = prefill_->Start(
      std::move(job),
      [this, id](absl::StatusOr<PrefillResult> result) { OnPrefillDone(id, std::move(result)); });
  bool cancel = false;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sequences_.find(id);
    if (it != sequences_.end() && it->second->state == State::kPrefilling) {
      it->second->prefill = call;
      cancel = it->second->cancelled || stopping_;
    }
  }
  if (cancel && call != nullptr) call->Cancel();
}

void Engine::OnPrefillDone(RequestId id, absl::StatusOr<PrefillResult> result) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = sequences_.find(id);
  if (it == sequences_.end()) return;  // cannot happen: prefilling requests stay until here
  Sequence* seq = it->second.get();
  seq->prefill_result = std::move(result);
  seq->state = State::kReady;
  --num_prefilling_;
  ready_.push_back(seq);
  cv_.notify_all();
}

void Engine::Cancel(RequestId id) {
  std::unique_ptr<Sequence> dequeued;
  std::shared_ptr<PrefillCall> call;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sequences_.find(id);
    if (it == sequences_.end()) return;
    Sequence* seq = it->second.get();
    seq->cancelled = true;
    switch (seq->state) {
      case State::kWaiting:
        waiting_.erase(std::find(waiting_.begin(), waiting_.end(), seq));
        dequeued = std::move(it->second);
        sequences_.erase(it);
        break;
      case State::kPrefilling:
        call = seq->prefill;  // null while Start runs: StartPrefill cancels then
        break;
      case State::kReady:
      case State::kRunning:
        cv_.notify_all();  // the engine thread retires it before its next step
        break;
    }
  }
  if (call != nullptr) call->Cancel();
  if (dequeued != nullptr) {
    dequeued->observer->OnError(absl::CancelledError("Generate: cancelled by the client"));
  }
}

void Engine::Run() {
  while (true) {
    AdmitWaiting();
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Blocks are freed only on this thread (Retire), and the next loop
      // admits waiters right after, so waiting requests need no wake-up here.
      cv_.wait(lock, [this] { return stopping_ || !ready_.empty() || !running_.empty(); });
      if (stopping_) return;
    }
    Iterate();
  }
}

void Engine::Iterate() {
  std::vector<Sequence*> joiners;
  std::vector<std::pair<Sequence*, absl::Status>> ending;
  {
    std::lock_guard<std::mutex> lock(mu_);
    int room = options_.max_batch_size - static_cast<int>(running_.size());
    for (auto it = ready_.begin(); it != ready_.end();) {
      Sequence* seq = *it;
      if (seq->cancelled) {
        ending.emplace_back(seq, absl::CancelledError("Generate: cancelled by the client"));
      } else if (!seq->prefill_result->ok()) {
        ending.emplace_back(seq, seq->prefill_result->status());
      } else if (room > 0) {
        --room;
        joiners.push_back(seq);
      } else {
        ++it;  // the batch is full: joins a later step
        continue;
      }
      it = ready_.erase(it);
    }
    for (Sequence* seq : running_) {
      if (seq->cancelled) {
        ending.emplace_back(seq, absl::CancelledError("Generate: cancelled by the client"));
      }
    }
  }
  for (auto& [seq, status] : ending) Retire(seq, status, nullptr);
  JoinReady(joiners);
  StepRunning();
}

void Engine::JoinReady(const std::vector<Sequence*>& joiners) {
  const int hidden_size = transformer_->config().hidden_size;
  std::vector<Sequence*> joining;
  std::vector<float> hidden;
  for (Sequence* seq : joiners) {
    // Out of ready_, the sequence belongs to this thread: nobody else writes
    // prefill_result any more.
    PrefillResult& result = seq->prefill_result->value();
    if (static_cast<int>(result.final_hidden.size()) != hidden_size) {
      Retire(seq,
             absl::InternalError(absl::StrCat("prefill final hidden state: ",
                                              result.final_hidden.size(),
                                              " values, expected hidden_size ", hidden_size)),
             nullptr);
      continue;
    }
    seq->kv_complete = result.kv_complete;
    hidden.insert(hidden.end(), result.final_hidden.begin(), result.final_hidden.end());
    joining.push_back(seq);
  }
  if (joining.empty()) return;

  const int m = static_cast<int>(joining.size());
  absl::StatusOr<std::vector<float>> logits;
  {
    std::lock_guard<std::mutex> lock(backend_mu_);
    logits = transformer_->ComputeLogits(hidden, m);
  }
  {
    std::lock_guard<std::mutex> lock(mu_);  // Cancel reads `state`
    for (Sequence* seq : joining) {
      seq->prefill_result.reset();  // the hidden state is consumed
      seq->history = seq->request.prompt;
      seq->state = State::kRunning;
      running_.push_back(seq);
      ++num_running_;
    }
  }
  if (!logits.ok()) {
    for (Sequence* seq : joining) Retire(seq, logits.status(), nullptr);
    return;
  }
  const size_t vocab = logits->size() / m;
  for (int i = 0; i < m; ++i) {
    Sequence* seq = joining[i];
    std::span<const float> row(logits->data() + i * vocab, vocab);
    Advance(seq, seq->sampler.Sample(row, seq->history));
  }
}

void Engine::StepRunning() {
  if (running_.empty()) return;
  DecodeBatch batch;
  for (Sequence* seq : running_) {
    // The newest token is fed at the next free position; Advance reserved its slot.
    const int position = seq->prompt_tokens() + seq->num_generated - 1;
    batch.Add(seq->history.back(), position, *seq->kv);
  }
  absl::StatusOr<std::vector<float>> logits;
  {
    std::lock_guard<std::mutex> lock(backend_mu_);
    logits = transformer_->DecodeStep(batch, *cache_);
  }
  const std::vector<Sequence*> stepped = running_;  // Advance may retire
  if (!logits.ok()) {
    for (Sequence* seq : stepped) Retire(seq, logits.status(), nullptr);
    return;
  }
  const size_t vocab = logits->size() / stepped.size();
  for (size_t i = 0; i < stepped.size(); ++i) {
    Sequence* seq = stepped[i];
    std::span<const float> row(logits->data() + i * vocab, vocab);
    Advance(seq, seq->sampler.Sample(row, seq->history));
  }
}

bool Engine::Advance(Sequence* seq, int32_t token) {
  const absl::Time now = absl::Now();
  if (seq->num_generated == 0) seq->first_token = now;
  seq->last_token = now;
  seq->history.push_back(token);
  ++seq->num_generated;

  TokenEvent event;
  event.token_id = token;
  event.index = seq->num_generated - 1;
  event.is_eos = IsEos(token);

  // The new token is fed back at this position by the next step.
  const int next_position = seq->prompt_tokens() + seq->num_generated - 1;
  std::optional<FinishReason> reason;
  if (event.is_eos && !seq->request.ignore_eos) {
    reason = FinishReason::kEos;
  } else if (seq->num_generated >= seq->request.max_new_tokens) {
    reason = FinishReason::kLength;
  } else if (options_.context_limit > 0 && next_position >= options_.context_limit) {
    reason = FinishReason::kLength;
  } else if (!seq->kv->Reserve(next_position + 1).ok()) {
    // The pool is empty and this sequence needs one more block for the token
    // it just produced. Until preemption exists (a later issue: give a
    // victim's blocks back and recompute or swap its KV, as vLLM does), the
    // choice that never stalls the rest of the batch is to end this sequence
    // here with FINISH_REASON_LENGTH; everything it generated stays valid.
    reason = FinishReason::kLength;
  }
  if (!reason.has_value()) {
    seq->observer->OnToken(event);
    return true;
  }
  GenerationSummary summary;
  summary.reason = *reason;
  summary.prompt_tokens = seq->prompt_tokens();
  summary.generated_tokens = seq->num_generated;
  const GenerationRequest& request = seq->request;
  summary.timings.queue_ms = Ms(seq->prefill_start - request.arrival);
  summary.timings.prefill_ms = Ms(seq->kv_complete - seq->prefill_start);
  summary.timings.ttft_ms = Ms(seq->first_token - request.arrival);
  summary.timings.decode_ms = Ms(seq->last_token - seq->first_token);
  summary.timings.total_ms = Ms(seq->last_token - request.arrival);
  event.finish = summary;
  Retire(seq, absl::OkStatus(), &event);
  return false;
}

void Engine::RemoveFromRunning(Sequence* seq) {
  auto it = std::find(running_.begin(), running_.end(), seq);
  if (it == running_.end()) return;
  running_.erase(it);
  --num_running_;
}

void Engine::Retire(Sequence* seq, const absl::Status& error, const TokenEvent* final_event) {
  if (seq->state == State::kRunning) RemoveFromRunning(seq);
  seq->kv.reset();  // blocks return to the pool before anyone hears of the end
  GenerationObserver* observer = seq->observer;
  std::unique_ptr<Sequence> owned;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sequences_.find(seq->id);
    owned = std::move(it->second);
    sequences_.erase(it);
  }
  if (final_event != nullptr) {
    observer->OnToken(*final_event);
  } else {
    observer->OnError(error);
  }
}

bool Engine::IsEos(int32_t token) const {
  return std::find(options_.eos_token_ids.begin(), options_.eos_token_ids.end(), token) !=
         options_.eos_token_ids.end();
}

void Engine::Shutdown() {
  std::vector<std::shared_ptr<PrefillCall>> calls;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (auto& [id, seq] : sequences_) {
      if (seq->state == State::kPrefilling && seq->prefill != nullptr) calls.push_back(seq->prefill);
    }
    cv_.notify_all();
  }
  for (auto& call : calls) call->Cancel();
  if (thread_.joinable()) thread_.join();

  std::vector<std::unique_ptr<Sequence>> remaining;
  {
    std::unique_lock<std::mutex> lock(mu_);
    // A prefill's `done` refers to this engine: wait for every one of them.
    // (StartPrefill cancels the ones whose Start was still running above.)
    cv_.wait(lock, [this] { return num_prefilling_ == 0; });
    for (auto& [id, seq] : sequences_) remaining.push_back(std::move(seq));
    sequences_.clear();
    waiting_.clear();
    ready_.clear();
  }
  running_.clear();
  num_running_ = 0;
  for (auto& seq : remaining) seq->kv.reset();
  for (auto& seq : remaining) {
    seq->observer->OnError(absl::UnavailableError("decode service is shutting down"));
  }
}

EngineStats Engine::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  EngineStats stats;
  stats.waiting = static_cast<int>(waiting_.size());
  stats.prefilling = num_prefilling_;
  stats.ready = static_cast<int>(ready_.size());
  stats.running = num_running_;
  return stats;
}

}  // namespace pdserve
