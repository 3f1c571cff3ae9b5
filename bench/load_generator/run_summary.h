// Aggregate figures of a load run, computed from its per-call results.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_RUN_SUMMARY_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_RUN_SUMMARY_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "bench/load_generator/latency_stats.h"
#include "bench/load_generator/request_result.h"

namespace pdserve::bench {

struct RunSummary {
  int64_t requests = 0;     // calls that finished, successful or not
  int64_t ok_requests = 0;  // status OK
  int64_t error_count = 0;  // requests - ok_requests
  // Failed calls by gRPC status code name ("UNAVAILABLE": 3).
  std::map<std::string, int64_t> errors_by_code;
  // Up to 5 distinct "CODE: message" strings of failed calls, first seen first.
  std::vector<std::string> error_samples;
  // Successful calls by finish reason ("LENGTH": 14, "EOS": 2).
  std::map<std::string, int64_t> finish_reasons;
  double duration_s = 0;           // wall time of the measured run
  int64_t output_tokens = 0;       // token messages received by all calls
  double output_tokens_per_s = 0;  // output_tokens / duration_s
  double requests_per_s = 0;       // ok_requests / duration_s
  double prompt_tokens_mean = 0;   // from the server's usage, successful calls; 0 if absent
  // Client-side, over successful calls only (milliseconds). itl_ms pools the
  // gaps of every successful call, so long outputs weigh more.
  LatencySummary ttft_ms;
  LatencySummary itl_ms;
  LatencySummary latency_ms;
  // Server-reported (Timings), successful calls that carried them.
  LatencySummary server_queue_ms;
  LatencySummary server_prefill_ms;
  LatencySummary server_ttft_ms;
};

// Summary of `results` over a run that took `duration_s` seconds.
RunSummary SummarizeRun(absl::Span<const RequestResult> results, double duration_s);

// Name of a gRPC/absl status code: "OK", "INVALID_ARGUMENT", ...
std::string StatusCodeName(absl::StatusCode code);

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_RUN_SUMMARY_H_
