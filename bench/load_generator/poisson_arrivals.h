// Arrival times of an open-loop load: a homogeneous Poisson process.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_POISSON_ARRIVALS_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_POISSON_ARRIVALS_H_

#include <cstdint>
#include <random>

#include "absl/status/statusor.h"

namespace pdserve::bench {

// Gaps between consecutive arrivals of a Poisson process with `rate`
// arrivals per second: independent exponential variables with mean 1/rate,
// drawn by inversion, gap = -ln(1 - U) / rate with U uniform on [0, 1)
// (Devroye, "Non-Uniform Random Variate Generation", 1986, ch. 2). U takes
// the top 53 bits of a std::mt19937_64 draw, so a seed gives the same
// sequence on every platform. Not thread-safe; one dispatcher owns it.
class PoissonArrivals {
 public:
  // Errors: INVALID_ARGUMENT when `rate_per_s` is not a finite value > 0.
  static absl::StatusOr<PoissonArrivals> Create(double rate_per_s, uint64_t seed);

  // Seconds from the previous arrival (or the start) to the next one; >= 0.
  double NextGapSeconds();

  double rate_per_s() const { return rate_per_s_; }

 private:
  PoissonArrivals(double rate_per_s, uint64_t seed) : rate_per_s_(rate_per_s), engine_(seed) {}

  double rate_per_s_;
  std::mt19937_64 engine_;
};

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_POISSON_ARRIVALS_H_
