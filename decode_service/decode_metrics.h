// The decode service's Prometheus metrics (docs/operations.md lists them):
// request and token counters, latency histograms, errors by status code, and
// gauges sampled from the engine and the KV pool at each scrape.
#ifndef PDSERVE_DECODE_SERVICE_DECODE_METRICS_H_
#define PDSERVE_DECODE_SERVICE_DECODE_METRICS_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "decode_service/generation.h"
#include "shared/metrics.h"

namespace pdserve {

class Engine;
class KvCache;

// Thread-safe; every method is a few atomic updates (no locks held by the
// caller are taken). `registry` must outlive it.
class DecodeMetrics {
 public:
  explicit DecodeMetrics(MetricsRegistry* registry);

  // Sets the request and KV-block gauges from `engine` and `cache` at every
  // scrape. Both must outlive the registry's collections (stop the metrics
  // HTTP server before destroying them).
  void SampleAtCollection(const Engine* engine, const KvCache* cache);

  // A Generate call arrived (valid or not).
  void OnRequest();
  // One sequence (a sample: one per request unless output.n > 1) finished
  // normally for `reason`.
  void OnSequenceFinished(FinishReason reason);
  // A Generate call's last sample finished, `latency` after its arrival.
  void OnRequestFinished(absl::Duration latency);
  // A Generate call ended with this error.
  void OnError(absl::StatusCode code);
  // The first generated token of a request (of any of its samples) whose
  // prompt had `prompt_tokens` tokens; `ttft` from the call's arrival.
  void OnFirstToken(int prompt_tokens, absl::Duration ttft);
  // Another token of a sample that already had one, `gap` after that
  // sample's previous token.
  void OnNextToken(absl::Duration gap);
  // The first token of a second or later sample: counted, no gap.
  void OnSampleFirstToken();

  // K+V bytes of one KvChunk written into a lease (as received, wire dtype).
  void OnKvBytesReceived(int64_t bytes);
  // A prefill attempt that failed with UNAVAILABLE and is retried.
  void OnPrefillRetry();
  // One decode step over `batch_size` samples took `step` (EngineOptions::
  // on_step): forward pass and sampling, without streaming.
  void OnDecodeStep(int batch_size, absl::Duration step);

 private:
  MetricsRegistry* const registry_;
  Counter requests_;
  Counter prompt_tokens_;
  Counter generated_tokens_;
  Counter kv_bytes_received_;
  Counter prefill_retries_;
  Counter decode_steps_;
  Counter decode_step_samples_;
  Histogram decode_step_ms_;
  Histogram ttft_ms_;
  Histogram inter_token_ms_;
  Histogram request_latency_ms_;
  Gauge running_;
  Gauge waiting_;
  Gauge prefilling_;
  Gauge kv_blocks_used_;
  Gauge kv_blocks_free_;
};

// Follows one Generate call for DecodeMetrics. Not thread-safe: a call's
// observer events never overlap. A null `metrics` makes every method a no-op.
class GenerateCallMetrics {
 public:
  GenerateCallMetrics(DecodeMetrics* metrics, absl::Time arrival);
  // Validation passed; the prompt has `prompt_tokens` tokens.
  void Accepted(int prompt_tokens) { prompt_tokens_ = prompt_tokens; }
  // A token reached the observer (`finish` on the last one).
  void Token(const TokenEvent& event);
  // The call's final status code (gRPC's codes equal absl's), counted when
  // not OK.
  void Ended(absl::StatusCode code);

 private:
  DecodeMetrics* const metrics_;
  const absl::Time arrival_;
  int prompt_tokens_ = 0;
  bool have_token_ = false;
  // Per sample: the time of its previous token (InfinitePast: none yet).
  std::vector<absl::Time> last_token_;
};

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_DECODE_METRICS_H_
