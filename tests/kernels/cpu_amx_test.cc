// The AMX bfloat16 GEMM against a double-precision loop written here from
// out[i, j] = Σ_l x[i, l] · w[j, l], with x and w rounded to bfloat16 by a
// rounding also written here: activation rows on either side of the 16-row
// blocks (1, 15, 16, 17, 33, 40: a lone block, a pair, a pair and a lone one,
// padded rows), weight-row ranges of one and several 16-row blocks starting
// past 0 inside a wider output, several k steps, and accumulation. Skipped
// where the CPU or Linux offers no AMX.
#include "kernels/cpu/cpu_amx.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

namespace pdserve::cpu {
namespace {

uint16_t RoundToBf16Bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

double Bf16BitsToDouble(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

TEST(CpuBackendAmxTest, MatchesReference) {
  if (!AmxBf16Available()) GTEST_SKIP() << "no AMX-BF16 on this CPU, or Linux refused it";
  std::mt19937 rng(99);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
  struct Range {
    int n_begin, n_end, ldo;
  };
  for (int m : {1, 15, 16, 17, 33, 40}) {
    for (int k : {32, 96, 2048}) {
      for (Range range : {Range{0, 16, 16}, Range{16, 80, 90}, Range{0, 48, 48}}) {
        for (bool accumulate : {false, true}) {
          SCOPED_TRACE(testing::Message()
                       << "m=" << m << " k=" << k << " rows [" << range.n_begin << ", "
                       << range.n_end << ") ldo=" << range.ldo << " accumulate=" << accumulate);
          std::vector<float> x(static_cast<size_t>(m) * k);
          for (float& v : x) v = uniform(rng);
          std::vector<uint16_t> w(static_cast<size_t>(range.n_end) * k);
          for (uint16_t& v : w) v = RoundToBf16Bits(uniform(rng));
          std::vector<float> out(static_cast<size_t>(m) * range.ldo, kNaN);
          std::vector<float> base(out.size());
          for (int i = 0; i < m; ++i) {
            for (int j = range.n_begin; j < range.n_end; ++j) {
              base[i * range.ldo + j] = uniform(rng);
              if (accumulate) out[i * range.ldo + j] = base[i * range.ldo + j];
            }
          }
          const PackedActivations packed(x.data(), m, k);
          ASSERT_EQ(packed.m(), m);
          ASSERT_EQ(packed.k(), k);
          AmxGemmBf16Rows(packed, w.data(), range.n_begin, range.n_end, out.data(), range.ldo,
                          accumulate);
          for (int i = 0; i < m; ++i) {
            for (int j = 0; j < range.ldo; ++j) {
              const float got = out[i * range.ldo + j];
              if (j < range.n_begin || j >= range.n_end) {
                ASSERT_TRUE(std::isnan(got)) << "row " << i << " column " << j << " outside";
                continue;
              }
              double sum = accumulate ? base[i * range.ldo + j] : 0.0, magnitude = std::fabs(sum);
              for (int l = 0; l < k; ++l) {
                const double product = Bf16BitsToDouble(RoundToBf16Bits(x[i * k + l])) *
                                       Bf16BitsToDouble(w[static_cast<size_t>(j) * k + l]);
                sum += product;
                magnitude += std::fabs(product);
              }
              // bfloat16 products are exact in float32; only the float32
              // sums round.
              ASSERT_LE(std::fabs(got - sum), 1e-6 * magnitude)
                  << "row " << i << " column " << j << ": got " << got << ", want " << sum;
            }
          }
        }
      }
    }
  }
}

}  // namespace
}  // namespace pdserve::cpu
