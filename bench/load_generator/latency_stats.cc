#include "bench/load_generator/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pdserve::bench {
namespace {

// Percentile over `work`, which this reorders. Precondition: non-empty and
// 0 <= percent <= 100. std::nth_element keeps whatever order an earlier call
// left, so several percentiles can share one buffer.
double PercentileInPlace(std::vector<double>& work, double percent) {
  const double rank = static_cast<double>(work.size() - 1) * percent / 100.0;
  const size_t lower = static_cast<size_t>(std::floor(rank));
  const double fraction = rank - static_cast<double>(lower);
  std::nth_element(work.begin(), work.begin() + lower, work.end());
  const double low_value = work[lower];
  if (fraction == 0.0 || lower + 1 >= work.size()) return low_value;
  // After nth_element everything past `lower` is >= work[lower], so the next
  // order statistic is the smallest of them.
  const double high_value = *std::min_element(work.begin() + lower + 1, work.end());
  return low_value + fraction * (high_value - low_value);
}

}  // namespace

absl::StatusOr<double> Percentile(absl::Span<const double> values, double percent) {
  if (values.empty()) {
    return absl::InvalidArgumentError("Percentile: values is empty; need at least 1 sample");
  }
  if (!(percent >= 0.0 && percent <= 100.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("Percentile: percent is ", percent, "; must be within [0, 100]"));
  }
  std::vector<double> work(values.begin(), values.end());
  return PercentileInPlace(work, percent);
}

LatencySummary Summarize(absl::Span<const double> values) {
  LatencySummary summary;
  if (values.empty()) return summary;
  std::vector<double> work(values.begin(), values.end());
  summary.count = work.size();
  summary.mean = std::accumulate(work.begin(), work.end(), 0.0) / static_cast<double>(work.size());
  summary.max = *std::max_element(work.begin(), work.end());
  summary.p50 = PercentileInPlace(work, 50);
  summary.p90 = PercentileInPlace(work, 90);
  summary.p99 = PercentileInPlace(work, 99);
  return summary;
}

}  // namespace pdserve::bench
