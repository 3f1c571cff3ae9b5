#include "bench/load_generator/poisson_arrivals.h"

#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace pdserve::bench {

absl::StatusOr<PoissonArrivals> PoissonArrivals::Create(double rate_per_s, uint64_t seed) {
  if (!std::isfinite(rate_per_s) || rate_per_s <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_rate is ", rate_per_s, " requests/s; must be a finite value > 0"));
  }
  return PoissonArrivals(rate_per_s, seed);
}

double PoissonArrivals::NextGapSeconds() {
  // 53 random bits scaled by 2^-53: uniform on [0, 1) with every value a
  // double represents exactly, so 1 - u is never 0 and the log is finite.
  const double u = static_cast<double>(engine_() >> 11) * 0x1.0p-53;
  return -std::log1p(-u) / rate_per_s_;
}

}  // namespace pdserve::bench
