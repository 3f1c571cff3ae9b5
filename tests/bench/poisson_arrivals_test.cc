#include "bench/load_generator/poisson_arrivals.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace pdserve::bench {
namespace {

constexpr int kSamples = 200000;

TEST(PoissonArrivalsTest, MeanRateWithinTolerance) {
  for (double rate : {0.5, 20.0, 1000.0}) {
    auto arrivals = PoissonArrivals::Create(rate, /*seed=*/42);
    ASSERT_TRUE(arrivals.ok()) << arrivals.status();
    double total_s = 0;
    for (int i = 0; i < kSamples; ++i) total_s += arrivals->NextGapSeconds();
    // The sum of n exponential gaps has relative standard deviation
    // 1/sqrt(n) ~ 0.22%; 1% is about 4.5 standard deviations.
    const double measured_rate = kSamples / total_s;
    EXPECT_NEAR(measured_rate / rate, 1.0, 0.01) << "rate " << rate;
  }
}

TEST(PoissonArrivalsTest, CountsPerIntervalArePoisson) {
  // In unit-length windows a Poisson process has count mean = variance =
  // rate (index of dispersion 1), which evenly spaced or bursty arrivals
  // would fail.
  const double rate = 8.0;
  auto arrivals = PoissonArrivals::Create(rate, /*seed=*/7);
  ASSERT_TRUE(arrivals.ok());
  const int windows = 20000;
  std::vector<int> counts(windows, 0);
  double t = arrivals->NextGapSeconds();
  while (t < windows) {
    ++counts[static_cast<int>(t)];
    t += arrivals->NextGapSeconds();
  }
  double mean = 0;
  for (int c : counts) mean += c;
  mean /= windows;
  double variance = 0;
  for (int c : counts) variance += (c - mean) * (c - mean);
  variance /= windows - 1;
  EXPECT_NEAR(mean, rate, 0.03 * rate);
  EXPECT_NEAR(variance / mean, 1.0, 0.05);
}

TEST(PoissonArrivalsTest, GapsAreExponential) {
  // P(gap > mean) = exp(-1) for an exponential distribution.
  auto arrivals = PoissonArrivals::Create(5.0, /*seed=*/3);
  ASSERT_TRUE(arrivals.ok());
  int above_mean = 0;
  for (int i = 0; i < kSamples; ++i) {
    const double gap = arrivals->NextGapSeconds();
    ASSERT_GE(gap, 0.0);
    ASSERT_TRUE(std::isfinite(gap));
    if (gap > 1.0 / 5.0) ++above_mean;
  }
  EXPECT_NEAR(static_cast<double>(above_mean) / kSamples, std::exp(-1.0), 0.005);
}

TEST(PoissonArrivalsTest, SeedDeterminesTheSequence) {
  auto a = PoissonArrivals::Create(10.0, 123);
  auto b = PoissonArrivals::Create(10.0, 123);
  auto c = PoissonArrivals::Create(10.0, 124);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  int differing = 0;
  for (int i = 0; i < 100; ++i) {
    const double gap_a = a->NextGapSeconds();
    EXPECT_EQ(gap_a, b->NextGapSeconds());
    if (gap_a != c->NextGapSeconds()) ++differing;
  }
  EXPECT_GT(differing, 90);
}

TEST(PoissonArrivalsTest, RejectsNonPositiveOrNonFiniteRate) {
  for (double rate : {0.0, -1.0, std::nan(""), HUGE_VAL}) {
    EXPECT_EQ(PoissonArrivals::Create(rate, 1).status().code(), absl::StatusCode::kInvalidArgument)
        << rate;
  }
}

}  // namespace
}  // namespace pdserve::bench
