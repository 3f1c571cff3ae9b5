// pdserve-bench from a validated configuration to its report: connect,
// build the prompts, then either the KV-cache comparison or warm-up plus
// the measured load; prints the summary and writes --json_out.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_BENCH_RUNNER_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_BENCH_RUNNER_H_

#include "absl/status/statusor.h"
#include "bench/load_generator/bench_config.h"
#include "nlohmann/json.hpp"

namespace pdserve::bench {

// Runs `config` (ValidateAndComplete already applied), prints the summary on
// stdout and progress/notes on stderr, writes the report to
// config.json_out when set and returns it. Failed requests are part of the
// report ("error_count"), not an error. Errors: the target unreachable,
// prompts that cannot be read or calibrated, a failed comparison call, or
// json_out not writable.
absl::StatusOr<nlohmann::json> RunBench(const BenchConfig& config);

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_BENCH_RUNNER_H_
