// The CPU backend's AVX-512 skinny GEMM against a double-precision loop
// written here from the definition out[i, j] = Σ_l x[i, l] · w[j, l], on
// sizes that hit every tile shape and tail: activation rows 1..13 and 32
// (one- and two-row tall tiles, groups of 6 split evenly), weight-row ranges
// that start mid-tile and end off a tile boundary, k with and without a
// 16 / 32-column remainder, an output wider than the range (ldo) and
// accumulation. Skipped on CPUs without the instructions.
#include "kernels/cpu/cpu_gemm.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_math.h"

namespace pdserve::cpu {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

// bfloat16 bits of f, rounded to nearest even (f finite): written here from
// the format's definition rather than taken from shared/dtype.h.
uint16_t RoundToBf16Bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  const uint32_t lsb = (bits >> 16) & 1u;
  return static_cast<uint16_t>((bits + 0x7fffu + lsb) >> 16);
}

float Bf16BitsToFloat(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

struct Case {
  int m, k, n_begin, n_end, ldo;
};

std::string Describe(const Case& c, bool accumulate) {
  return "m=" + std::to_string(c.m) + " k=" + std::to_string(c.k) + " rows [" +
         std::to_string(c.n_begin) + ", " + std::to_string(c.n_end) +
         ") ldo=" + std::to_string(c.ldo) + " accumulate=" + std::to_string(accumulate);
}

std::vector<Case> Cases() {
  std::vector<Case> cases;
  for (int m : {1, 2, 3, 4, 5, 6, 7, 8, 11, 12, 13, 32}) {
    for (int k : {1, 15, 16, 33, 64, 200}) {
      cases.push_back({m, k, 0, 37, 37});  // tall / full tiles, then single rows
      cases.push_back({m, k, 3, 70, 75});  // a range inside a wider output
    }
  }
  return cases;
}

class CpuBackendGemmTest : public ::testing::Test {
 protected:
  std::vector<float> Random(size_t n) {
    std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
    std::vector<float> values(n);
    for (float& v : values) v = uniform(rng_);
    return values;
  }

  // The output before the call: NaN everywhere but, when accumulating,
  // random values (also returned in *base) inside the computed range.
  std::vector<float> StartingOutput(const Case& c, bool accumulate, std::vector<float>* base) {
    std::vector<float> out(static_cast<size_t>(c.m) * c.ldo, kNaN);
    if (!accumulate) return out;
    *base = Random(out.size());
    for (int i = 0; i < c.m; ++i) {
      for (int j = c.n_begin; j < c.n_end; ++j) {
        out[static_cast<size_t>(i) * c.ldo + j] = (*base)[static_cast<size_t>(i) * c.ldo + j];
      }
    }
    return out;
  }

  // Checks out's rows [0, m) x columns [n_begin, n_end) against
  // base + Σ x·w (in double) within tolerance · Σ|x·w|, and that every other
  // column kept its NaN.
  void Check(const Case& c, const std::vector<float>& out, const std::vector<double>& x,
             const std::vector<double>& w, const std::vector<float>& base, double tolerance) {
    for (int i = 0; i < c.m; ++i) {
      for (int j = 0; j < c.ldo; ++j) {
        const float got = out[static_cast<size_t>(i) * c.ldo + j];
        if (j < c.n_begin || j >= c.n_end) {
          ASSERT_TRUE(std::isnan(got)) << "row " << i << " column " << j << " outside the range";
          continue;
        }
        double sum = base.empty() ? 0.0 : base[static_cast<size_t>(i) * c.ldo + j];
        double magnitude = std::fabs(sum);
        for (int l = 0; l < c.k; ++l) {
          const double product =
              x[static_cast<size_t>(i) * c.k + l] * w[static_cast<size_t>(j) * c.k + l];
          sum += product;
          magnitude += std::fabs(product);
        }
        ASSERT_LE(std::fabs(got - sum), tolerance * (magnitude + 1e-30))
            << "row " << i << " column " << j << ": got " << got << ", want " << sum;
      }
    }
  }

  std::mt19937 rng_{20240712};
};

TEST_F(CpuBackendGemmTest, F32RowsMatchReference) {
  if (!CpuHasAvx512F()) GTEST_SKIP() << "no AVX-512F on this CPU";
  for (const Case& c : Cases()) {
    for (bool accumulate : {false, true}) {
      SCOPED_TRACE(Describe(c, accumulate));
      const std::vector<float> x = Random(static_cast<size_t>(c.m) * c.k);
      const std::vector<float> w = Random(static_cast<size_t>(c.n_end) * c.k);
      std::vector<float> base;
      std::vector<float> out = StartingOutput(c, accumulate, &base);
      GemmF32Rows(x.data(), c.m, c.k, w.data(), c.n_begin, c.n_end, out.data(), c.ldo, accumulate);
      Check(c, out, std::vector<double>(x.begin(), x.end()),
            std::vector<double>(w.begin(), w.end()), base, 1e-6);
    }
  }
}

// bfloat16 products are exact in float32 and sums are float32, so the
// result is as close to the exact sum of the bfloat16 inputs as float32
// allows.
TEST_F(CpuBackendGemmTest, Bf16RowsMatchReference) {
  if (!CpuHasAvx512Bf16Gemm()) GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
  for (const Case& c : Cases()) {
    for (bool accumulate : {false, true}) {
      SCOPED_TRACE(Describe(c, accumulate));
      const std::vector<float> xf = Random(static_cast<size_t>(c.m) * c.k);
      const std::vector<float> wf = Random(static_cast<size_t>(c.n_end) * c.k);
      std::vector<uint16_t> x(xf.size()), w(wf.size());
      std::vector<double> x_exact(xf.size()), w_exact(wf.size());
      for (size_t i = 0; i < xf.size(); ++i)
        x_exact[i] = Bf16BitsToFloat(x[i] = RoundToBf16Bits(xf[i]));
      for (size_t i = 0; i < wf.size(); ++i)
        w_exact[i] = Bf16BitsToFloat(w[i] = RoundToBf16Bits(wf[i]));
      std::vector<float> base;
      std::vector<float> out = StartingOutput(c, accumulate, &base);
      GemmBf16Rows(x.data(), c.m, c.k, w.data(), c.n_begin, c.n_end, out.data(), c.ldo, accumulate);
      Check(c, out, x_exact, w_exact, base, 1e-6);
    }
  }
}

TEST_F(CpuBackendGemmTest, RoundToBf16IsNearestEven) {
  if (!CpuHasAvx512Bf16Gemm()) GTEST_SKIP() << "no AVX-512 BF16 on this CPU";
  for (size_t n : {1, 15, 16, 17, 100}) {
    SCOPED_TRACE(testing::Message() << "n=" << n);
    std::vector<float> x = Random(n);
    x[0] = Bf16BitsToFloat(0x3f80) + std::ldexp(1.0f, -8);  // a tie: 1 + half a bf16 step -> 1
    std::vector<uint16_t> out(n + 1, 0xdead);               // one past the end stays untouched
    RoundToBf16(x.data(), n, out.data());
    for (size_t i = 0; i < n; ++i) EXPECT_EQ(out[i], RoundToBf16Bits(x[i])) << "element " << i;
    EXPECT_EQ(out[0], 0x3f80);
    EXPECT_EQ(out[n], 0xdead);
  }
}

TEST_F(CpuBackendGemmTest, WidenBf16IsExact) {
  if (!CpuHasAvx512F()) GTEST_SKIP() << "no AVX-512F on this CPU";
  for (size_t n : {1, 15, 16, 17, 100}) {
    SCOPED_TRACE(testing::Message() << "n=" << n);
    std::vector<uint16_t> x(n);
    for (size_t i = 0; i < n; ++i) x[i] = static_cast<uint16_t>(rng_());
    x[0] = 0xff80;                        // -infinity
    std::vector<float> out(n + 1, 7.0f);  // one past the end stays untouched
    WidenBf16(x.data(), n, out.data());
    for (size_t i = 0; i < n; ++i) {
      const float expected = Bf16BitsToFloat(x[i]);
      if (std::isnan(expected)) {
        EXPECT_TRUE(std::isnan(out[i])) << "element " << i;
      } else {
        EXPECT_EQ(out[i], expected) << "element " << i;
      }
    }
    EXPECT_EQ(out[n], 7.0f);
  }
}

}  // namespace
}  // namespace pdserve::cpu
