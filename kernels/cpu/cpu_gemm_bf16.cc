// The bfloat16 skinny GEMM (cpu_gemm.h): the tile and loop nest of
// cpu_gemm_tile.h on bfloat16 pairs, compiled for AVX-512 BW and BF16; and
// the float32 -> bfloat16 rounding of its activations. Every function here
// carries its own target; the backend calls them only after
// CpuHasAvx512Bf16Gemm() says they run here.
#include <immintrin.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/cpu_gemm.h"
#include "kernels/cpu/cpu_math.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512bf16")
#include "kernels/cpu/cpu_gemm_tile.h"

namespace pdserve::cpu {
namespace {

// bfloat16 elements for cpu_gemm_tile.h: vdpbf16ps adds x[2j]·w[2j] +
// x[2j+1]·w[2j+1] to float32 lane j, so one instruction covers 32 columns.
// An odd k's last column pairs with a masked-off zero.
struct Bf16Elements {
  using Element = uint16_t;
  using Vector = __m512i;
  static constexpr int kColumns = 32;
  __attribute__((always_inline)) static inline Vector Load(const uint16_t* p) {
    return _mm512_loadu_si512(p);
  }
  __attribute__((always_inline)) static inline Vector LoadFirst(const uint16_t* p, int n) {
    return _mm512_maskz_loadu_epi16(static_cast<__mmask32>((uint64_t{1} << n) - 1), p);
  }
  __attribute__((always_inline)) static inline __m512 MultiplyAdd(__m512 acc, Vector w, Vector x) {
    return _mm512_dpbf16_ps(acc, (__m512bh)w, (__m512bh)x);
  }
};

}  // namespace
}  // namespace pdserve::cpu
#pragma GCC pop_options

namespace pdserve::cpu {

bool CpuHasAvx512Bf16Gemm() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

void GemmBf16Rows(const uint16_t* x, int m, int k, const uint16_t* w, int n_begin, int n_end,
                  float* out, int ldo, bool accumulate) {
  GemmRows<Bf16Elements>(x, m, k, w, n_begin, n_end, out, ldo, accumulate);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void RoundToBf16(const float* x,
                                                                                 size_t n,
                                                                                 uint16_t* out) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh rounded = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), (__m256i)rounded);
  }
  if (i < n) {
    const __mmask16 mask = TailMask(static_cast<int>(n - i));
    const __m256bh rounded = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, x + i));
    _mm256_mask_storeu_epi16(out + i, mask, (__m256i)rounded);
  }
}

}  // namespace pdserve::cpu
