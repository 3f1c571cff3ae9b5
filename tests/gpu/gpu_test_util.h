// What the GPU tests share: the skip message and the error measure.
#ifndef PDSERVE_TESTS_GPU_GPU_TEST_UTIL_H_
#define PDSERVE_TESTS_GPU_GPU_TEST_UTIL_H_

#include <cmath>
#include <limits>
#include <vector>

namespace pdserve {

// GTEST_SKIP() text where CudaDeviceCount() is 0.
inline constexpr char kNoCudaDevice[] =
    "no CUDA device: cudaGetDeviceCount found none or the driver is missing; the CUDA backend "
    "is checked on a GPU machine (tests/gpu/run_gpu_checks.sh, docs/cuda.md)";

// ||actual - expected|| / ||expected|| (METHOD: the error measure for
// parity against a reference). NaN when `actual` holds a NaN or infinity, so
// that such a result never passes a "<=" bound; infinity on a size mismatch.
inline double RelativeL2(const std::vector<float>& actual, const std::vector<float>& expected) {
  if (actual.size() != expected.size()) return std::numeric_limits<double>::infinity();
  double diff = 0;
  double norm = 0;
  for (size_t i = 0; i < actual.size(); ++i) {
    if (!std::isfinite(actual[i])) return std::numeric_limits<double>::quiet_NaN();
    const double d = static_cast<double>(actual[i]) - expected[i];
    diff += d * d;
    norm += static_cast<double>(expected[i]) * expected[i];
  }
  if (norm == 0) return diff == 0 ? 0.0 : std::numeric_limits<double>::infinity();
  return std::sqrt(diff / norm);
}

}  // namespace pdserve

#endif  // PDSERVE_TESTS_GPU_GPU_TEST_UTIL_H_
