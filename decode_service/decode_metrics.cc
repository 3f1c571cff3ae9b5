#include "decode_service/decode_metrics.h"

#include "decode_service/engine.h"
#include "shared/kv_cache.h"

namespace pdserve {
namespace {

constexpr char kErrorsName[] = "pdserve_decode_errors_total";
constexpr char kErrorsHelp[] = "Generate calls that ended with an error, by gRPC status code";
constexpr char kFinishedName[] = "pdserve_decode_sequences_finished_total";
constexpr char kFinishedHelp[] =
    "Sequences (samples; one per Generate call unless output.n > 1) that finished normally, "
    "by finish reason (length, eos, stop)";

const char* ReasonLabel(FinishReason reason) {
  switch (reason) {
    case FinishReason::kLength:
      return "length";
    case FinishReason::kEos:
      return "eos";
    case FinishReason::kStop:
      return "stop";
  }
  return "unknown";
}

}  // namespace

DecodeMetrics::DecodeMetrics(MetricsRegistry* registry)
    : registry_(registry),
      requests_(registry->AddCounter("pdserve_decode_requests_total",
                                     "Generate calls received, valid or not")),
      prompt_tokens_(registry->AddCounter(
          "pdserve_decode_prompt_tokens_total",
          "Prompt tokens of requests whose prefill completed (counted at the first token)")),
      generated_tokens_(registry->AddCounter("pdserve_decode_generated_tokens_total",
                                             "Tokens generated and handed to callers")),
      kv_bytes_received_(registry->AddCounter(
          "pdserve_decode_kv_received_bytes_total",
          "K+V bytes received from prefill instances (wire dtype), retried attempts included")),
      prefill_retries_(registry->AddCounter(
          "pdserve_decode_prefill_retries_total",
          "Prefill attempts that failed with UNAVAILABLE and were retried on another instance")),
      decode_steps_(registry->AddCounter("pdserve_decode_steps_total",
                                         "Decode steps (one forward pass over the running batch)")),
      decode_step_samples_(registry->AddCounter(
          "pdserve_decode_step_samples_total",
          "Samples stepped, summed over decode steps (divided by steps: the mean batch size)")),
      decode_step_ms_(registry->AddHistogram(
          "pdserve_decode_step_ms",
          "One decode step's forward pass and sampling, ms (without streaming the tokens)",
          TokenGapBucketsMs())),
      ttft_ms_(registry->AddHistogram("pdserve_decode_ttft_ms",
                                      "Time to first token: call arrival to the first token, ms",
                                      LatencyBucketsMs())),
      inter_token_ms_(registry->AddHistogram("pdserve_decode_inter_token_latency_ms",
                                             "Gap between consecutive tokens of one request, ms",
                                             TokenGapBucketsMs())),
      request_latency_ms_(registry->AddHistogram(
          "pdserve_decode_request_latency_ms",
          "Call arrival to the last token of requests that finished normally, ms",
          LatencyBucketsMs())),
      running_(
          registry->AddGauge("pdserve_decode_requests_running", "Sequences in the running batch")),
      waiting_(registry->AddGauge("pdserve_decode_requests_waiting",
                                  "Requests queued for KV blocks (admission control)")),
      prefilling_(registry->AddGauge(
          "pdserve_decode_requests_prefilling",
          "Requests holding KV blocks whose prefill is in flight or that wait to join the batch")),
      kv_blocks_used_(registry->AddGauge("pdserve_decode_kv_blocks_used",
                                         "KV cache blocks leased to requests")),
      kv_blocks_free_(registry->AddGauge("pdserve_decode_kv_blocks_free",
                                         "KV cache blocks in the free pool")) {}

void DecodeMetrics::SampleAtCollection(const Engine* engine, const KvCache* cache) {
  registry_->AddCollectHook([this, engine, cache] {
    const EngineStats stats = engine->stats();
    running_.Set(stats.running);
    waiting_.Set(stats.waiting);
    prefilling_.Set(stats.prefilling + stats.ready);
    const int free_blocks = cache->num_free_blocks();
    kv_blocks_free_.Set(free_blocks);
    kv_blocks_used_.Set(cache->num_blocks() - free_blocks);
  });
}

void DecodeMetrics::OnRequest() { requests_.Increment(); }

void DecodeMetrics::OnSequenceFinished(FinishReason reason) {
  registry_->AddCounter(kFinishedName, kFinishedHelp, {{"reason", ReasonLabel(reason)}})
      .Increment();
}

void DecodeMetrics::OnRequestFinished(absl::Duration latency) {
  request_latency_ms_.Observe(absl::ToDoubleMilliseconds(latency));
}

void DecodeMetrics::OnError(absl::StatusCode code) {
  registry_->AddCounter(kErrorsName, kErrorsHelp, {{"code", absl::StatusCodeToString(code)}})
      .Increment();
}

void DecodeMetrics::OnFirstToken(int prompt_tokens, absl::Duration ttft) {
  prompt_tokens_.Increment(prompt_tokens);
  generated_tokens_.Increment();
  ttft_ms_.Observe(absl::ToDoubleMilliseconds(ttft));
}

void DecodeMetrics::OnNextToken(absl::Duration gap) {
  generated_tokens_.Increment();
  inter_token_ms_.Observe(absl::ToDoubleMilliseconds(gap));
}

void DecodeMetrics::OnSampleFirstToken() { generated_tokens_.Increment(); }

void DecodeMetrics::OnDecodeStep(int batch_size, absl::Duration step) {
  decode_steps_.Increment();
  decode_step_samples_.Increment(static_cast<double>(batch_size));
  decode_step_ms_.Observe(absl::ToDoubleMilliseconds(step));
}

void DecodeMetrics::OnKvBytesReceived(int64_t bytes) {
  kv_bytes_received_.Increment(static_cast<double>(bytes));
}

void DecodeMetrics::OnPrefillRetry() { prefill_retries_.Increment(); }

GenerateCallMetrics::GenerateCallMetrics(DecodeMetrics* metrics, absl::Time arrival)
    : metrics_(metrics), arrival_(arrival) {
  if (metrics_ != nullptr) metrics_->OnRequest();
}

void GenerateCallMetrics::Token(const TokenEvent& event) {
  if (metrics_ == nullptr) return;
  const absl::Time now = absl::Now();
  if (event.sample_index < 0) return;
  if (static_cast<size_t>(event.sample_index) >= last_token_.size()) {
    last_token_.resize(event.sample_index + 1, absl::InfinitePast());
  }
  absl::Time& last = last_token_[event.sample_index];
  if (!have_token_) {
    metrics_->OnFirstToken(prompt_tokens_, now - arrival_);
  } else if (last == absl::InfinitePast()) {
    metrics_->OnSampleFirstToken();
  } else {
    metrics_->OnNextToken(now - last);
  }
  have_token_ = true;
  last = now;
  if (event.finish.has_value()) metrics_->OnSequenceFinished(event.finish->reason);
  if (event.ends_request) metrics_->OnRequestFinished(now - arrival_);
}

void GenerateCallMetrics::Ended(absl::StatusCode code) {
  if (metrics_ != nullptr && code != absl::StatusCode::kOk) metrics_->OnError(code);
}

}  // namespace pdserve
