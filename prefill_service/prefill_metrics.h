// The prefill service's Prometheus metrics (docs/operations.md lists them):
// requests, prompt tokens, KV bytes sent, forward passes and their latency,
// cancellations by stage, errors by status code, and the queue.
#ifndef PDSERVE_PREFILL_SERVICE_PREFILL_METRICS_H_
#define PDSERVE_PREFILL_SERVICE_PREFILL_METRICS_H_

#include <cstdint>
#include <functional>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "shared/metrics.h"

namespace pdserve {

// Thread-safe; every method is a few atomic updates. `registry` must outlive
// it.
class PrefillMetrics {
 public:
  explicit PrefillMetrics(MetricsRegistry* registry);

  // Where a cancelled call was when it stopped.
  enum class CancelStage {
    kQueued,   // before its forward pass started: dropped from the queue
    kForward,  // during its forward pass (or while sending its result): stopped there
  };

  // Sets the gauges from `queued_jobs` (forward passes waiting for the
  // worker) and `active_streams` (Prefill calls not yet done) at every
  // scrape. Both must stay callable while the registry is collected.
  void SampleAtCollection(std::function<int()> queued_jobs, std::function<int()> active_streams);

  // A Prefill call arrived (valid or not).
  void OnRequest();
  // A valid call's prompt, queued for a forward pass.
  void OnAccepted(int prompt_tokens);
  // A forward pass started on the worker.
  void OnForwardStarted();
  // A forward pass ran to its end (KV all queued, final hidden computed).
  void OnForwardCompleted(absl::Duration forward);
  void OnCancelled(CancelStage stage);
  // K+V bytes of one KvChunk written to the stream.
  void OnKvBytesSent(int64_t bytes);
  // A call ended with this status code; counted when not OK.
  void OnEnded(absl::StatusCode code);

 private:
  MetricsRegistry* const registry_;
  Counter requests_;
  Counter prompt_tokens_;
  Counter forward_passes_;
  Counter kv_bytes_sent_;
  Histogram prefill_ms_;
  Gauge queue_length_;
  Gauge active_streams_;
};

}  // namespace pdserve

#endif  // PDSERVE_PREFILL_SERVICE_PREFILL_METRICS_H_
