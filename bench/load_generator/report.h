// The load run's report: JSON for --json_out and the text summary on stdout.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_REPORT_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_REPORT_H_

#include <string>

#include "absl/status/status.h"
#include "bench/load_generator/latency_stats.h"
#include "bench/load_generator/run_summary.h"
#include "nlohmann/json.hpp"

namespace pdserve::bench {

// {"count", "mean", "p50", "p90", "p99", "max"}; the statistics are null
// when count is 0 (no sample, e.g. every call failed).
nlohmann::json LatencySummaryToJson(const LatencySummary& summary);

// The run's figures (docs/load_generator.md lists the fields): requests,
// ok_requests, error_count, errors (by code name), error_samples,
// finish_reasons, duration_s, output_tokens, output_tokens_per_s,
// requests_per_s, prompt_tokens_mean, ttft_ms, itl_ms, latency_ms and
// server {queue_ms, prefill_ms, ttft_ms}.
nlohmann::json RunSummaryToJson(const RunSummary& summary);

// Human-readable table of the same figures.
std::string FormatRunSummary(const RunSummary& summary);

// Writes `json` (indented, trailing newline) to `path`, replacing the file.
// Errors: INTERNAL naming the path when it cannot be written.
absl::Status WriteJsonFile(const std::string& path, const nlohmann::json& json);

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_REPORT_H_
