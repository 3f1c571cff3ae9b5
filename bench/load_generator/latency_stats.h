// Percentile summaries of latency samples (milliseconds) for the load
// generator's report.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_LATENCY_STATS_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_LATENCY_STATS_H_

#include <cstddef>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace pdserve::bench {

// The `percent`-th percentile of `values`, by linear interpolation between
// the closest ranks (Hyndman & Fan 1996, definition 7; numpy.percentile's
// default): with the values sorted ascending as x[0..n-1] and
// h = (n - 1) * percent / 100, the result is
// x[floor(h)] + (h - floor(h)) * (x[floor(h) + 1] - x[floor(h)]).
// Runs in O(n) expected time on a copy (selection, no full sort).
// Errors: INVALID_ARGUMENT when `values` is empty or `percent` is outside
// [0, 100] or NaN.
absl::StatusOr<double> Percentile(absl::Span<const double> values, double percent);

// Count, mean and the percentiles the report prints, in the unit of the
// samples. All zero when count is 0.
struct LatencySummary {
  size_t count = 0;
  double mean = 0;
  double p50 = 0;
  double p90 = 0;
  double p99 = 0;
  double max = 0;
};

// Summary of `values` (any order). An empty span gives count 0.
LatencySummary Summarize(absl::Span<const double> values);

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_LATENCY_STATS_H_
