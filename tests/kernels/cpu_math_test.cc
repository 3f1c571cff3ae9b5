// The CPU kernels' vector maths against the C library in double precision:
// Exp512 within 2 ulp over the whole range softmax and SiLU use, Softmax
// against the definition on awkward lengths. Exp512 needs AVX-512F; Softmax
// has a portable path and is tested on whichever this CPU takes.
#include "kernels/cpu/cpu_math.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

namespace pdserve::cpu {
namespace {

__attribute__((target("avx512f"))) void ExpOf16(const float* x, float* out) {
  _mm512_storeu_ps(out, Exp512(_mm512_loadu_ps(x)));
}

TEST(CpuBackendMathTest, Exp512WithinTwoUlp) {
  if (!CpuHasAvx512F()) GTEST_SKIP() << "no AVX-512F on this CPU";
  std::vector<float> x;
  for (float v = -87.0f; v <= 88.0f; v += 0.00391f) x.push_back(v);
  for (float v : {0.0f, -0.0f, 1.0f, -1.0f, 0.6931472f, -0.6931472f, 1e-8f, -1e-8f}) x.push_back(v);
  while (x.size() % 16 != 0) x.push_back(0.5f);
  std::vector<float> out(x.size());
  for (size_t i = 0; i < x.size(); i += 16) ExpOf16(&x[i], &out[i]);
  for (size_t i = 0; i < x.size(); ++i) {
    const double exact = std::exp(static_cast<double>(x[i]));
    const float rounded = static_cast<float>(exact);
    const double ulp = std::nextafter(rounded, INFINITY) - rounded;
    ASSERT_LE(std::fabs(out[i] - exact), 2 * ulp) << "exp(" << x[i] << ") = " << out[i];
  }
}

TEST(CpuBackendMathTest, Exp512SaturatesInsteadOfOverflowing) {
  if (!CpuHasAvx512F()) GTEST_SKIP() << "no AVX-512F on this CPU";
  std::vector<float> x = {-1e30f, -200.0f, -88.0f, -87.3f, 88.0f, 89.0f, 1e30f};
  x.resize(16, 0.0f);
  std::vector<float> out(16);
  ExpOf16(x.data(), out.data());
  for (int i = 0; i < 4; ++i) {
    EXPECT_GE(out[i], 0.0f) << "exp(" << x[i] << ")";
    EXPECT_LT(out[i], 1e-37f) << "exp(" << x[i] << ")";
  }
  for (int i = 4; i < 7; ++i) {
    EXPECT_TRUE(std::isfinite(out[i])) << "exp(" << x[i] << ")";
    EXPECT_GT(out[i], 1e38f) << "exp(" << x[i] << ")";
  }
}

TEST(CpuBackendMathTest, SoftmaxMatchesDefinition) {
  std::mt19937 rng(7);
  for (int n : {1, 2, 15, 16, 17, 100, 1000}) {
    for (float scale : {1.0f, 30.0f}) {  // 30: peaky, most terms underflow
      SCOPED_TRACE(testing::Message() << "n=" << n << " scale=" << scale);
      std::uniform_real_distribution<float> uniform(-scale, scale);
      std::vector<float> s(n + 1);
      for (float& v : s) v = uniform(rng);
      const float sentinel = s[n];
      std::vector<double> expected(n);
      const double max_value = *std::max_element(s.begin(), s.begin() + n);
      double sum = 0;
      for (int j = 0; j < n; ++j) sum += expected[j] = std::exp(s[j] - max_value);
      Softmax(s.data(), n);
      for (int j = 0; j < n; ++j) {
        ASSERT_NEAR(s[j], expected[j] / sum, 1e-6 * (expected[j] / sum) + 1e-12) << "element " << j;
      }
      EXPECT_EQ(s[n], sentinel);
    }
  }
}

}  // namespace
}  // namespace pdserve::cpu
