// The decode service's Prometheus metrics (docs/operations.md lists them):
// request and token counters, latency histograms, errors by status code, and
// gauges sampled from the engine and the KV pool at each scrape.
#ifndef PDSERVE_DECODE_SERVICE_DECODE_METRICS_H_
#define PDSERVE_DECODE_SERVICE_DECODE_METRICS_H_

#include <cstdint>

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
  // A Generate call ended: OK (finished with a reason) or its error code.
  void OnFinished(FinishReason reason, absl::Duration latency);
  void OnError(absl::StatusCode code);
  // The first generated token of a request whose prompt had `prompt_tokens`
  // tokens; `ttft` from the call's arrival.
  void OnFirstToken(int prompt_tokens, absl::Duration ttft);
  // A later token, `gap` after the previous one.
  void OnNextToken(absl::Duration gap);

  // K+V bytes of one KvChunk written into a lease (as received, wire dtype).
  void OnKvBytesReceived(int64_t bytes);
  // A prefill attempt that failed with UNAVAILABLE and is retried.
  void OnPrefillRetry();

 private:
  MetricsRegistry* const registry_;
  Counter requests_;
  Counter prompt_tokens_;
  Counter generated_tokens_;
  Counter kv_bytes_received_;
  Counter prefill_retries_;
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
  absl::Time last_token_;
  bool have_token_ = false;
};

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_DECODE_METRICS_H_
