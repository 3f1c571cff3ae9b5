// The float32 skinny GEMM (cpu_gemm.h): the tile and loop nest of
// cpu_gemm_tile.h on float32 elements, compiled for AVX-512F alone; and the
// bfloat16 -> float32 widening. Every function here carries its own target,
// so the rest of the build stays baseline x86-64 and the backend only calls
// them after CpuHasAvx512F() says they run here. (The bfloat16 GEMM is in
// cpu_gemm_bf16.cc, compiled for its own target.)
#include "kernels/cpu/cpu_gemm.h"

#include <immintrin.h>

#include <cstddef>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/cpu_math.h"

#pragma GCC push_options
#pragma GCC target("avx512f")
#include "kernels/cpu/cpu_gemm_tile.h"

namespace pdserve::cpu {
namespace {

// float32 elements for cpu_gemm_tile.h: one FMA per 16 columns.
struct F32Elements {
  using Element = float;
  using Vector = __m512;
  static constexpr int kColumns = 16;
  __attribute__((always_inline)) static inline Vector Load(const float* p) {
    return _mm512_loadu_ps(p);
  }
  __attribute__((always_inline)) static inline Vector LoadFirst(const float* p, int n) {
    return _mm512_maskz_loadu_ps(TailMask(n), p);
  }
  __attribute__((always_inline)) static inline __m512 MultiplyAdd(__m512 acc, Vector w, Vector x) {
    return _mm512_fmadd_ps(w, x, acc);
  }
};

}  // namespace
}  // namespace pdserve::cpu
#pragma GCC pop_options

namespace pdserve::cpu {

void GemmF32Rows(const float* x, int m, int k, const float* w, int n_begin, int n_end, float* out,
                 int ldo, bool accumulate) {
  GemmRows<F32Elements>(x, m, k, w, n_begin, n_end, out, ldo, accumulate);
}

__attribute__((target("avx512f"))) void WidenBf16(const uint16_t* x, size_t n, float* out) {
  // A bfloat16 is the top half of a float32: zero-extend, shift left 16.
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    _mm512_storeu_si512(out + i, _mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
  }
  for (; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(x[i]) << 16;
    std::memcpy(out + i, &bits, 4);
  }
}

}  // namespace pdserve::cpu
