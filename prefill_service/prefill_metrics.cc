#include "prefill_service/prefill_metrics.h"

#include <utility>

namespace pdserve {
namespace {

constexpr char kErrorsName[] = "pdserve_prefill_errors_total";
constexpr char kErrorsHelp[] = "Prefill calls that ended with an error, by gRPC status code";
constexpr char kCancelledName[] = "pdserve_prefill_cancelled_total";
constexpr char kCancelledHelp[] =
    "Prefill calls cancelled (client cancel, deadline or broken stream), by where they were: "
    "queued (dropped before the forward pass) or forward (stopped during it)";

}  // namespace

PrefillMetrics::PrefillMetrics(MetricsRegistry* registry)
    : registry_(registry),
      requests_(registry->AddCounter("pdserve_prefill_requests_total",
                                     "Prefill calls received, valid or not")),
      prompt_tokens_(registry->AddCounter("pdserve_prefill_prompt_tokens_total",
                                          "Prompt tokens of valid Prefill calls")),
      forward_passes_(registry->AddCounter("pdserve_prefill_forward_passes_total",
                                           "Forward passes started")),
      kv_bytes_sent_(registry->AddCounter("pdserve_prefill_kv_sent_bytes_total",
                                          "K+V bytes of KvChunk messages written to streams")),
      prefill_ms_(registry->AddHistogram(
          "pdserve_prefill_forward_ms",
          "Forward passes that ran to their end: start to the final hidden state, ms",
          LatencyBucketsMs())),
      queue_length_(registry->AddGauge("pdserve_prefill_queue_length",
                                       "Forward passes waiting for the model's worker thread")),
      active_streams_(registry->AddGauge("pdserve_prefill_streams_active",
                                         "Prefill calls in progress (queued, running or sending)")) {
  // Exported from the start, so a scrape shows them at 0.
  for (const char* stage : {"queued", "forward"}) {
    registry_->AddCounter(kCancelledName, kCancelledHelp, {{"stage", stage}});
  }
}

void PrefillMetrics::SampleAtCollection(std::function<int()> queued_jobs,
                                        std::function<int()> active_streams) {
  registry_->AddCollectHook(
      [this, queued_jobs = std::move(queued_jobs), active_streams = std::move(active_streams)] {
        queue_length_.Set(queued_jobs());
        active_streams_.Set(active_streams());
      });
}

void PrefillMetrics::OnRequest() { requests_.Increment(); }

void PrefillMetrics::OnAccepted(int prompt_tokens) { prompt_tokens_.Increment(prompt_tokens); }

void PrefillMetrics::OnForwardStarted() { forward_passes_.Increment(); }

void PrefillMetrics::OnForwardCompleted(absl::Duration forward) {
  prefill_ms_.Observe(absl::ToDoubleMilliseconds(forward));
}

void PrefillMetrics::OnCancelled(CancelStage stage) {
  registry_
      ->AddCounter(kCancelledName, kCancelledHelp,
                   {{"stage", stage == CancelStage::kQueued ? "queued" : "forward"}})
      .Increment();
}

void PrefillMetrics::OnKvBytesSent(int64_t bytes) {
  kv_bytes_sent_.Increment(static_cast<double>(bytes));
}

void PrefillMetrics::OnEnded(absl::StatusCode code) {
  if (code == absl::StatusCode::kOk) return;
  registry_->AddCounter(kErrorsName, kErrorsHelp, {{"code", absl::StatusCodeToString(code)}})
      .Increment();
}

}  // namespace pdserve
