#include "bench/load_generator/latency_stats.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace pdserve::bench {
namespace {

// Reference: sort everything, then interpolate between the two closest
// ranks exactly as numpy.percentile(method="linear") documents.
double NaivePercentile(std::vector<double> values, double percent) {
  std::sort(values.begin(), values.end());
  const double rank = (values.size() - 1) * percent / 100.0;
  const size_t lo = static_cast<size_t>(rank);
  const size_t hi = std::min(lo + 1, values.size() - 1);
  return values[lo] + (rank - lo) * (values[hi] - values[lo]);
}

std::vector<double> RandomSamples(size_t n, uint32_t seed, bool with_ties) {
  std::mt19937 engine(seed);
  std::vector<double> values(n);
  for (double& v : values) {
    // Ties: a small integer range forces many equal values around each rank.
    v = with_ties ? static_cast<double>(engine() % 5)
                  : std::exponential_distribution<double>(0.1)(engine);
  }
  return values;
}

TEST(PercentileTest, MatchesSortBasedReference) {
  const double percents[] = {0, 0.1, 1, 25, 50, 63.7, 90, 99, 99.9, 100};
  for (size_t n : {1u, 2u, 3u, 7u, 10u, 101u, 1000u, 4097u}) {
    for (bool ties : {false, true}) {
      const std::vector<double> values =
          RandomSamples(n, static_cast<uint32_t>(n * 2 + ties), ties);
      for (double p : percents) {
        auto got = Percentile(values, p);
        ASSERT_TRUE(got.ok()) << got.status();
        const double want = NaivePercentile(values, p);
        EXPECT_NEAR(*got, want, 1e-9 * std::max(1.0, std::fabs(want)))
            << "n=" << n << " ties=" << ties << " p=" << p;
      }
    }
  }
}

TEST(PercentileTest, KnownValuesFromTheDefinition) {
  // numpy.percentile([1, 2, 3, 4], q) = 2.5 at 50, 3.7 at 90, 1 at 0, 4 at 100.
  const std::vector<double> values = {4, 1, 3, 2};
  EXPECT_DOUBLE_EQ(*Percentile(values, 50), 2.5);
  EXPECT_DOUBLE_EQ(*Percentile(values, 90), 3.7);
  EXPECT_DOUBLE_EQ(*Percentile(values, 0), 1);
  EXPECT_DOUBLE_EQ(*Percentile(values, 100), 4);
  EXPECT_DOUBLE_EQ(*Percentile(std::vector<double>{7}, 99), 7);
}

TEST(PercentileTest, RejectsEmptyInputAndOutOfRangePercent) {
  EXPECT_EQ(Percentile({}, 50).status().code(), absl::StatusCode::kInvalidArgument);
  const std::vector<double> values = {1, 2};
  EXPECT_EQ(Percentile(values, -0.5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Percentile(values, 100.5).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Percentile(values, std::nan("")).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(SummarizeTest, MatchesSortBasedReference) {
  for (size_t n : {1u, 2u, 9u, 500u, 2001u}) {
    for (bool ties : {false, true}) {
      const std::vector<double> values =
          RandomSamples(n, static_cast<uint32_t>(n + 77 + ties), ties);
      const LatencySummary s = Summarize(values);
      double sum = 0;
      for (double v : values) sum += v;
      EXPECT_EQ(s.count, n);
      EXPECT_NEAR(s.mean, sum / n, 1e-9 * std::max(1.0, sum / n));
      EXPECT_DOUBLE_EQ(s.max, *std::max_element(values.begin(), values.end()));
      EXPECT_NEAR(s.p50, NaivePercentile(values, 50), 1e-9 * std::max(1.0, s.p50)) << n;
      EXPECT_NEAR(s.p90, NaivePercentile(values, 90), 1e-9 * std::max(1.0, s.p90)) << n;
      EXPECT_NEAR(s.p99, NaivePercentile(values, 99), 1e-9 * std::max(1.0, s.p99)) << n;
    }
  }
}

TEST(SummarizeTest, EmptyInputGivesZeroCount) {
  const LatencySummary s = Summarize({});
  EXPECT_EQ(s.count, 0u);
  EXPECT_EQ(s.max, 0);
}

}  // namespace
}  // namespace pdserve::bench
