#include "bench/load_generator/run_summary.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace pdserve::bench {
namespace {

constexpr size_t kMaxErrorSamples = 5;

}  // namespace

std::string StatusCodeName(absl::StatusCode code) { return absl::StatusCodeToString(code); }

RunSummary SummarizeRun(absl::Span<const RequestResult> results, double duration_s) {
  RunSummary summary;
  summary.duration_s = duration_s;
  std::vector<double> ttft, itl, latency, server_queue, server_prefill, server_ttft;
  int64_t prompt_tokens_sum = 0;
  int64_t prompt_tokens_count = 0;
  for (const RequestResult& result : results) {
    ++summary.requests;
    summary.output_tokens += result.output_tokens;
    if (result.code != absl::StatusCode::kOk) {
      ++summary.errors_by_code[StatusCodeName(result.code)];
      std::string sample = absl::StrCat(StatusCodeName(result.code), ": ", result.error_message);
      if (summary.error_samples.size() < kMaxErrorSamples &&
          std::find(summary.error_samples.begin(), summary.error_samples.end(), sample) ==
              summary.error_samples.end()) {
        summary.error_samples.push_back(std::move(sample));
      }
      continue;
    }
    ++summary.ok_requests;
    if (!result.finish_reason.empty()) ++summary.finish_reasons[result.finish_reason];
    if (result.ttft_ms.has_value()) ttft.push_back(*result.ttft_ms);
    itl.insert(itl.end(), result.itl_ms.begin(), result.itl_ms.end());
    latency.push_back(result.latency_ms);
    if (result.prompt_tokens >= 0) {
      prompt_tokens_sum += result.prompt_tokens;
      ++prompt_tokens_count;
    }
    if (result.server_timings.has_value()) {
      server_queue.push_back(result.server_timings->queue_ms);
      server_prefill.push_back(result.server_timings->prefill_ms);
      server_ttft.push_back(result.server_timings->ttft_ms);
    }
  }
  summary.error_count = summary.requests - summary.ok_requests;
  if (duration_s > 0) {
    summary.output_tokens_per_s = static_cast<double>(summary.output_tokens) / duration_s;
    summary.requests_per_s = static_cast<double>(summary.ok_requests) / duration_s;
  }
  if (prompt_tokens_count > 0) {
    summary.prompt_tokens_mean =
        static_cast<double>(prompt_tokens_sum) / static_cast<double>(prompt_tokens_count);
  }
  summary.ttft_ms = Summarize(ttft);
  summary.itl_ms = Summarize(itl);
  summary.latency_ms = Summarize(latency);
  summary.server_queue_ms = Summarize(server_queue);
  summary.server_prefill_ms = Summarize(server_prefill);
  summary.server_ttft_ms = Summarize(server_ttft);
  return summary;
}

}  // namespace pdserve::bench
