#include "decode_service/engine.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <span>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "shared/logprobs.h"
#include "shared/sampler.h"
#include "shared/stop_matcher.h"

namespace pdserve {

struct Engine::Sequence {
  Sequence(RequestId id_in, GenerationRequest request_in, GenerationObserver* observer_in)
      : id(id_in), request(std::move(request_in)), observer(observer_in) {}

  const RequestId id;
  const GenerationRequest request;
  GenerationObserver* const observer;

  // Guarded by mu_.
  State state = State::kWaiting;
  bool cancelled = false;
  absl::Status end_status;  // with `cancelled`: what the caller is told
  std::shared_ptr<PrefillCall> prefill;
  std::optional<absl::StatusOr<PrefillResult>> prefill_result;

  // The prompt's lease: created under mu_ at admission; afterwards written by
  // the prefill (through KvWriter, under backend_mu_), then handed to the
  // samples at the join (sample 0 takes it, the others fork it). Preemption
  // would give it back here and re-admit later.
  std::unique_ptr<KvCache::Sequence> kv;

  // Engine thread only, once ready.
  std::vector<std::unique_ptr<Sample>> samples;
  int samples_finished = 0;
  int total_generated = 0;
  absl::Time prefill_start;
  absl::Time kv_complete;
  double prefill_compute_ms = 0;
  absl::Time first_token;
  // Computed at the join; sent with the request's first token.
  std::vector<PromptTokenLogprob> prompt_logprobs;

  int prompt_tokens() const { return static_cast<int>(request.prompt.size()); }
};

struct Engine::Sample {
  Sample(Sequence* owner_in, int index_in, const SamplingParams& params, const Tokenizer* tokenizer)
      : owner(owner_in), index(index_in), sampler(params), stop_matcher(owner->request.stop) {
    if (tokenizer != nullptr) detokenizer.emplace(tokenizer, owner->request.prompt);
  }

  Sequence* const owner;
  const int index;
  // Engine thread only.
  std::unique_ptr<KvCache::Sequence> kv;
  Sampler sampler;
  std::vector<int32_t> generated;
  std::optional<IncrementalDetokenizer> detokenizer;
  StopMatcher stop_matcher;
  absl::Time last_token;
  bool finished = false;
};

namespace {

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

int BlocksFor(int tokens, int block_size) { return (tokens + block_size - 1) / block_size; }

template <typename T>
bool Contains(const std::vector<T>& values, const T& value) {
  return std::find(values.begin(), values.end(), value) != values.end();
}

}  // namespace

uint64_t SampleSeed(uint64_t request_seed, int sample_index) {
  if (sample_index == 0) return request_seed;
  // SplitMix64's output function (Steele, Lea, Flood 2014) over seed + i * golden gamma.
  uint64_t z = request_seed + static_cast<uint64_t>(sample_index) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

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
  if (request.num_samples < 1 || request.num_samples > options_.max_batch_size) {
    // All samples of a request step together, so they must fit one batch.
    return absl::InvalidArgumentError(absl::StrCat("output.n: ", request.num_samples,
                                                   " samples outside [1, ", options_.max_batch_size,
                                                   "] (--max_batch_size)"));
  }
  if (!request.stop.empty() && options_.tokenizer == nullptr) {
    return absl::InvalidArgumentError(
        "stopping.stop: stop strings need the engine's tokenizer, and it has none");
  }
  // Admission reserves the prompt plus the slot of the first generated token.
  const int needed_blocks =
      BlocksFor(static_cast<int>(request.prompt.size()) + 1, cache_->block_size());
  if (needed_blocks > cache_->num_blocks()) {
    return absl::ResourceExhaustedError(
        absl::StrCat("prompt: ", request.prompt.size(), " tokens need ", needed_blocks,
                     " KV blocks of ", cache_->block_size(), " tokens, but the whole pool has ",
                     cache_->num_blocks(), " (--kv_cache_blocks)"));
  }
  Sequence* admitted = nullptr;
  RequestId id = 0;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_ || draining_) {
      return absl::UnavailableError("decode instance is shutting down; send the request elsewhere");
    }
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
  job.return_all_positions = seq->request.prompt_logprobs >= 0;
  KvCache::Sequence* lease = seq->kv.get();  // alive until `done` has run
  job.write_kv = [this, lease](int layer, int first_token, int num_tokens, const void* k,
                               const void* v, DType dtype) {
    // On the CPU backend the write goes on while a decode step runs: waiting
    // for the step here would stall the prefill stream once per KV chunk
    // (a step per chunk of TTFT for a request that arrives under load).
    if (cache_->writes_run_concurrently()) {
      return cache_->WriteTokens(*lease, layer, first_token, num_tokens, k, v, dtype);
    }
    std::lock_guard<std::mutex> lock(backend_mu_);
    return cache_->WriteTokens(*lease, layer, first_token, num_tokens, k, v, dtype);
  };
  if (cache_->writes_run_concurrently()) {
    // The receiver may copy a chunk straight into the lease's blocks.
    job.kv_ranges = [this, lease](int layer, int first_token, int num_tokens, DType dtype,
                                  std::vector<std::span<char>>* k,
                                  std::vector<std::span<char>>* v) {
      return cache_->HostRanges(*lease, layer, first_token, num_tokens, dtype, k, v);
    };
  }
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
  EndEarly(id, absl::CancelledError("Generate: cancelled by the client"));
}

void Engine::Drain() {
  std::vector<RequestId> not_started;
  {
    std::lock_guard<std::mutex> lock(mu_);
    draining_ = true;
    for (const auto& [id, seq] : sequences_) {
      if (seq->state != State::kRunning) not_started.push_back(id);
    }
  }
  for (RequestId id : not_started) {
    EndEarly(id, absl::UnavailableError(
                     "decode instance is shutting down before this request started generating; "
                     "retry it on another instance"));
  }
}

void Engine::EndEarly(RequestId id, const absl::Status& status) {
  std::unique_ptr<Sequence> dequeued;
  std::shared_ptr<PrefillCall> call;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sequences_.find(id);
    if (it == sequences_.end()) return;
    Sequence* seq = it->second.get();
    if (!seq->cancelled) seq->end_status = status;
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
  if (dequeued != nullptr) dequeued->observer->OnError(dequeued->end_status);
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
        ending.emplace_back(seq, seq->end_status);
      } else if (!seq->prefill_result->ok()) {
        ending.emplace_back(seq, seq->prefill_result->status());
      } else if (room >= seq->request.num_samples) {
        room -= seq->request.num_samples;
        joiners.push_back(seq);
      } else {
        ++it;  // the batch is full: joins a later step
        continue;
      }
      it = ready_.erase(it);
    }
    for (Sample* sample : running_) {
      Sequence* seq = sample->owner;
      if (seq->cancelled && std::find_if(ending.begin(), ending.end(), [seq](const auto& entry) {
                              return entry.first == seq;
                            }) == ending.end()) {
        ending.emplace_back(seq, seq->end_status);
      }
    }
  }
  for (auto& [seq, status] : ending) Retire(seq, status);
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
      Retire(seq, absl::InternalError(
                      absl::StrCat("prefill final hidden state: ", result.final_hidden.size(),
                                   " values, expected hidden_size ", hidden_size)));
      continue;
    }
    if (seq->request.prompt_logprobs >= 0) {
      absl::StatusOr<std::vector<PromptTokenLogprob>> prompt_logprobs =
          PromptLogprobs(seq->request, result.all_hidden);
      if (!prompt_logprobs.ok()) {
        Retire(seq, prompt_logprobs.status());
        continue;
      }
      seq->prompt_logprobs = std::move(prompt_logprobs).value();
    }
    seq->kv_complete = result.kv_complete;
    seq->prefill_compute_ms = result.remote_prefill_ms;
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
  std::vector<absl::Status> started(m);
  for (int i = 0; i < m; ++i) started[i] = StartSamples(joining[i]);
  {
    std::lock_guard<std::mutex> lock(mu_);  // Cancel reads `state`
    for (int i = 0; i < m; ++i) {
      Sequence* seq = joining[i];
      seq->prefill_result.reset();  // the hidden state is consumed
      seq->state = State::kRunning;
      if (!started[i].ok()) continue;
      for (auto& sample : seq->samples) running_.push_back(sample.get());
      num_running_ += static_cast<int>(seq->samples.size());
    }
  }
  for (int i = 0; i < m; ++i) {
    if (!logits.ok() || !started[i].ok()) {
      Retire(joining[i], logits.ok() ? started[i] : logits.status());
      continue;
    }
    const size_t vocab = logits->size() / m;
    std::span<const float> row(logits->data() + i * vocab, vocab);
    // Every sample draws its first token from the prompt's one distribution.
    // Copied first: the last sample to finish takes the request with it.
    std::vector<Sample*> samples;
    for (auto& sample : joining[i]->samples) samples.push_back(sample.get());
    for (Sample* sample : samples) SampleAndAdvance(sample, row);
  }
}

absl::StatusOr<std::vector<PromptTokenLogprob>> Engine::PromptLogprobs(
    const GenerationRequest& request, std::span<const float> all_hidden) {
  const int hidden_size = transformer_->config().hidden_size;
  const int n = static_cast<int>(request.prompt.size());
  if (all_hidden.size() != static_cast<size_t>(n) * hidden_size) {
    return absl::InternalError(
        absl::StrCat("prefill hidden states of every position: ", all_hidden.size(),
                     " values, expected ", n, " x ", hidden_size));
  }
  // Position p's logits give the token at p + 1. lm_head over a few rows at
  // a time, so a long prompt never needs [n, vocab] logits at once.
  constexpr int kRowsPerCall = 32;
  std::vector<PromptTokenLogprob> out;
  std::vector<float> logprobs;
  for (int first = 0; first < n - 1; first += kRowsPerCall) {
    const int rows = std::min(kRowsPerCall, n - 1 - first);
    absl::StatusOr<std::vector<float>> logits;
    {
      std::lock_guard<std::mutex> lock(backend_mu_);
      logits =
          transformer_->ComputeLogits(all_hidden.subspan(static_cast<size_t>(first) * hidden_size,
                                                         static_cast<size_t>(rows) * hidden_size),
                                      rows);
    }
    if (!logits.ok()) return logits.status();
    const size_t vocab = logits->size() / rows;
    logprobs.resize(vocab);
    for (int i = 0; i < rows; ++i) {
      LogSoftmax(std::span<const float>(logits->data() + i * vocab, vocab), logprobs);
      PromptTokenLogprob entry;
      entry.position = first + i + 1;
      entry.token_id = request.prompt[entry.position];
      entry.logprob = entry.token_id >= 0 && static_cast<size_t>(entry.token_id) < vocab
                          ? logprobs[entry.token_id]
                          : -INFINITY;
      entry.top_logprobs = TopLogprobs(logprobs, request.prompt_logprobs);
      out.push_back(std::move(entry));
    }
  }
  return out;
}

absl::Status Engine::StartSamples(Sequence* seq) {
  const GenerationRequest& request = seq->request;
  for (int index = 0; index < request.num_samples; ++index) {
    SamplingParams params = request.sampling;
    params.seed = SampleSeed(request.sampling.seed, index);
    seq->samples.push_back(std::make_unique<Sample>(seq, index, params, options_.tokenizer));
  }
  // Forks share the prompt's blocks (no copy, no free block needed); the
  // prompt lease's extra slot for the first new token stays sample 0's.
  for (int index = 1; index < request.num_samples; ++index) {
    absl::StatusOr<std::unique_ptr<KvCache::Sequence>> fork =
        cache_->Fork(*seq->kv, seq->prompt_tokens());
    if (!fork.ok()) return fork.status();
    seq->samples[index]->kv = std::move(fork).value();
  }
  seq->samples[0]->kv = std::move(seq->kv);
  return absl::OkStatus();
}

void Engine::StepRunning() {
  if (running_.empty()) return;
  const absl::Time step_start = absl::Now();
  DecodeBatch batch;
  for (Sample* sample : running_) {
    // The newest token is fed at the next free position; SampleAndAdvance
    // made its slot writable.
    const int position =
        sample->owner->prompt_tokens() + static_cast<int>(sample->generated.size()) - 1;
    batch.Add(sample->generated.back(), position, *sample->kv);
  }
  std::vector<StepNeed> needs(running_.size());
  DecodeStepOptions options;
  options.want_logits.resize(running_.size());
  const int max_candidates = std::min(Backend::kMaxTopKRows, transformer_->config().vocab_size);
  for (size_t i = 0; i < running_.size(); ++i) {
    needs[i] = NeedOf(*running_[i], max_candidates);
    options.want_logits[i] = needs[i] == StepNeed::kLogits;
    if (needs[i] == StepNeed::kTopCandidates) {
      options.top_candidates =
          std::max(options.top_candidates, running_[i]->owner->request.sampling.top_k);
    }
  }
  absl::StatusOr<DecodeStepOutput> out;
  {
    std::lock_guard<std::mutex> lock(backend_mu_);
    out = transformer_->DecodeStep(batch, *cache_, options);
  }
  const std::vector<Sample*> stepped = running_;  // samples may finish below
  if (!out.ok()) {
    std::vector<Sequence*> owners;
    for (Sample* sample : stepped) {
      if (!Contains(owners, sample->owner)) owners.push_back(sample->owner);
    }
    for (Sequence* seq : owners) Retire(seq, out.status());
    return;
  }
  const size_t vocab = static_cast<size_t>(transformer_->config().vocab_size);
  const size_t k = static_cast<size_t>(options.top_candidates);
  size_t row = 0;  // into out->logits, which holds the wanted rows only
  for (size_t i = 0; i < stepped.size(); ++i) {
    // A request is deleted only with its last sample, after every other one
    // of it in `stepped` has been handled: no pointer here dangles.
    switch (needs[i]) {
      case StepNeed::kArgmax:
        SampleAndAdvance(stepped[i], {}, out->argmax[i]);
        break;
      case StepNeed::kTopCandidates:
        SampleAndAdvance(stepped[i], {},
                         stepped[i]->sampler.SampleTopCandidates(
                             std::span<const float>(out->candidate_values).subspan(i * k, k),
                             std::span<const int32_t>(out->candidate_ids).subspan(i * k, k)));
        break;
      case StepNeed::kLogits:
        SampleAndAdvance(stepped[i],
                         std::span<const float>(out->logits.data() + row * vocab, vocab));
        ++row;
        break;
    }
  }
  if (options_.on_step)
    options_.on_step(static_cast<int>(stepped.size()), absl::Now() - step_start);
}

Engine::StepNeed Engine::NeedOf(const Sample& sample, int max_candidates) {
  const GenerationRequest& request = sample.owner->request;
  if (request.logprobs || request.top_logprobs > 0) return StepNeed::kLogits;
  if (sample.sampler.IsPlainGreedy()) return StepNeed::kArgmax;
  if (sample.sampler.CanSampleTopCandidates(max_candidates)) {
    return StepNeed::kTopCandidates;
  }
  return StepNeed::kLogits;
}

void Engine::SampleAndAdvance(Sample* sample, std::span<const float> logits, int32_t chosen) {
  Sequence* seq = sample->owner;
  const GenerationRequest& request = seq->request;
  const int32_t token =
      chosen >= 0 ? chosen : sample->sampler.Sample(logits, request.prompt, sample->generated);
  const absl::Time now = absl::Now();
  if (seq->total_generated == 0) seq->first_token = now;
  sample->last_token = now;
  sample->generated.push_back(token);
  ++seq->total_generated;
  const int num_generated = static_cast<int>(sample->generated.size());

  TokenEvent event;
  event.token_id = token;
  event.index = num_generated - 1;
  event.sample_index = sample->index;
  if (seq->total_generated == 1) event.prompt_logprobs = std::move(seq->prompt_logprobs);
  event.is_eos = IsEos(token, request);
  if (request.logprobs || request.top_logprobs > 0) {
    // The model's distribution, not the sampler's (logprobs.h says why).
    std::vector<float> logprobs(logits.size());
    LogSoftmax(logits, logprobs);
    event.logprob = logprobs[token];
    event.top_logprobs = TopLogprobs(logprobs, request.top_logprobs);
  }
  const bool stop_token = Contains(request.stop_token_ids, token);
  // EOS and stop ids render no text; everything else goes through the
  // detokenizer (whole UTF-8 characters) and then the stop matcher.
  std::string delta;
  if (!event.is_eos && !stop_token && sample->detokenizer.has_value()) {
    delta = sample->detokenizer->Push(token);
  }
  StopMatcher::Result matched = sample->stop_matcher.Push(delta);
  event.text = std::move(matched.emit);

  // The new token is fed back at this position by the next step.
  const int next_position = seq->prompt_tokens() + num_generated - 1;
  std::optional<FinishReason> reason;
  if (event.is_eos && !request.ignore_eos) {
    reason = FinishReason::kEos;
  } else if (stop_token || matched.stopped) {
    reason = FinishReason::kStop;
  } else if (num_generated >= request.max_new_tokens) {
    reason = FinishReason::kLength;
  } else if (options_.context_limit > 0 && next_position >= options_.context_limit) {
    reason = FinishReason::kLength;
  } else {
    absl::Status writable;
    {
      std::lock_guard<std::mutex> lock(backend_mu_);  // may copy a shared block
      writable = sample->kv->PrepareWrite(next_position);
    }
    if (!writable.ok()) {
      // The pool is empty and this sample needs one more block (or its own
      // copy of a shared one) for the token it just produced. Until
      // preemption exists (a later issue: give a victim's blocks back and
      // recompute or swap its KV, as vLLM does), the choice that never stalls
      // the rest of the batch is to end this sample here with
      // FINISH_REASON_LENGTH; everything it generated stays valid.
      reason = FinishReason::kLength;
    }
  }
  if (!reason.has_value()) {
    seq->observer->OnToken(event);
    return;
  }
  if (!matched.stopped) {
    // The end: whatever the detokenizer held (an incomplete character) and
    // then whatever the matcher held (a possible stop string's start).
    const std::string rest = sample->detokenizer.has_value() ? sample->detokenizer->Flush() : "";
    StopMatcher::Result last = sample->stop_matcher.Push(rest);
    event.text += last.emit;
    if (last.stopped) {
      reason = FinishReason::kStop;
    } else {
      event.text += sample->stop_matcher.Flush();
    }
  }
  GenerationSummary summary;
  summary.reason = *reason;
  summary.prompt_tokens = seq->prompt_tokens();
  summary.generated_tokens = num_generated;
  GenerationTimings& timings = summary.timings;
  timings.queue_ms = Ms(seq->prefill_start - request.arrival);
  timings.prefill_ms = Ms(seq->kv_complete - seq->prefill_start);
  timings.prefill_compute_ms = seq->prefill_compute_ms;
  timings.transfer_ms = std::max(0.0, timings.prefill_ms - timings.prefill_compute_ms);
  timings.ttft_ms = Ms(seq->first_token - request.arrival);
  timings.decode_ms = Ms(sample->last_token - seq->first_token);
  timings.total_ms = Ms(sample->last_token - request.arrival);
  event.finish = summary;
  FinishSample(sample, std::move(event));
}

void Engine::RemoveFromRunning(Sample* sample) {
  auto it = std::find(running_.begin(), running_.end(), sample);
  if (it == running_.end()) return;
  running_.erase(it);
  --num_running_;
}

void Engine::FinishSample(Sample* sample, TokenEvent event) {
  Sequence* seq = sample->owner;
  RemoveFromRunning(sample);
  sample->kv.reset();  // blocks return to the pool before anyone hears of the end
  sample->finished = true;
  ++seq->samples_finished;
  std::unique_ptr<Sequence> owned;
  if (seq->samples_finished == static_cast<int>(seq->samples.size())) {
    event.ends_request = true;
    event.finish->total_generated_tokens = seq->total_generated;
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sequences_.find(seq->id);
    owned = std::move(it->second);
    sequences_.erase(it);
  }
  // After the terminal call the observer may be gone; `owned` (the request
  // and its samples) dies after it.
  seq->observer->OnToken(event);
}

void Engine::Retire(Sequence* seq, const absl::Status& error) {
  for (auto& sample : seq->samples) {
    if (!sample->finished) RemoveFromRunning(sample.get());
    sample->kv.reset();
  }
  seq->kv.reset();  // blocks return to the pool before anyone hears of the end
  GenerationObserver* observer = seq->observer;
  std::unique_ptr<Sequence> owned;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sequences_.find(seq->id);
    owned = std::move(it->second);
    sequences_.erase(it);
  }
  observer->OnError(error);
}

bool Engine::IsEos(int32_t token, const GenerationRequest& request) const {
  return Contains(options_.eos_token_ids, token) || Contains(request.extra_eos_token_ids, token);
}

void Engine::Shutdown() {
  std::vector<std::shared_ptr<PrefillCall>> calls;
  {
    std::lock_guard<std::mutex> lock(mu_);
    stopping_ = true;
    for (auto& [id, seq] : sequences_) {
      if (seq->state == State::kPrefilling && seq->prefill != nullptr)
        calls.push_back(seq->prefill);
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
  for (auto& seq : remaining) {
    seq->kv.reset();
    for (auto& sample : seq->samples) sample->kv.reset();
  }
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
