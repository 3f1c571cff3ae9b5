// Vector maths the CPU kernels share: AVX-512 building blocks (inline, for
// functions compiled with the same target attribute) and the softmax every
// attention kernel calls.
//
// Why intrinsics rather than loops the compiler vectorises: the build is
// baseline x86-64 at -O2 (RelWithDebInfo) by default, where GCC neither uses
// AVX-512 nor vectorises reductions or calls to std::exp; these functions
// carry their own target and are only called after CpuHasAvx512F().
#ifndef PDSERVE_KERNELS_CPU_CPU_MATH_H_
#define PDSERVE_KERNELS_CPU_CPU_MATH_H_

#include <immintrin.h>

namespace pdserve::cpu {

// True when the CPU has AVX-512 Foundation (Skylake-SP and later, Zen 4).
bool CpuHasAvx512F();

// The sum of v's 16 lanes, staying in 512-bit registers: halves, then
// quarters, then pairs within 128 bits are added across. (The merge-masked
// forms with an all-ones mask are the plain shuffles; GCC 12's plain forms
// warn under -Wall about their undefined pass-through operand.)
__attribute__((target("avx512f"), always_inline)) inline float SumLanes(__m512 v) {
  constexpr __mmask16 kAll = 0xffff;
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, kAll, v, v, 0x4e));  // 256-bit halves
  v = _mm512_add_ps(v, _mm512_mask_shuffle_f32x4(v, kAll, v, v, 0xb1));  // 128-bit lanes
  v = _mm512_add_ps(v, _mm512_mask_permute_ps(v, kAll, v, 0x4e));        // float pairs
  v = _mm512_add_ps(v, _mm512_mask_permute_ps(v, kAll, v, 0xb1));        // neighbours
  return _mm512_cvtss_f32(v);
}

// As SumLanes for the maximum.
__attribute__((target("avx512f"), always_inline)) inline float MaxLanes(__m512 v) {
  constexpr __mmask16 kAll = 0xffff;
  v = _mm512_max_ps(v, _mm512_mask_shuffle_f32x4(v, kAll, v, v, 0x4e));
  v = _mm512_max_ps(v, _mm512_mask_shuffle_f32x4(v, kAll, v, v, 0xb1));
  v = _mm512_max_ps(v, _mm512_mask_permute_ps(v, kAll, v, 0x4e));
  v = _mm512_max_ps(v, _mm512_mask_permute_ps(v, kAll, v, 0xb1));
  return _mm512_cvtss_f32(v);
}

// Lanes [0, n) set, for the last n < 16 elements of a row.
inline __mmask16 TailMask(int n) { return static_cast<__mmask16>((1u << n) - 1); }

// e^x on 16 lanes, within 2 ulp of the exact value for x <= 88 (x below
// -87.3 gives ~1e-38 instead of a denormal or 0, which no softmax or SiLU
// notices). Method (Cody & Waite range reduction, as in Cephes expf):
//   e^x = 2^n · e^r, n = round(x / ln 2), r = x - n·ln 2 in [-ln2/2, ln2/2],
// with ln 2 split in two so n·ln2_hi is exact, e^r by its Taylor series to
// r^7 (truncation error < 0.35^8/8! ≈ 5e-9, below float32 resolution), and
// 2^n written straight into the exponent bits.
__attribute__((target("avx512f"), always_inline)) inline __m512 Exp512(__m512 x) {
  const __m512 kRoundMagic = _mm512_set1_ps(12582912.0f);  // 1.5·2^23: adding it rounds
  x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-87.3f)), _mm512_set1_ps(88.0f));
  const __m512 shifted = _mm512_fmadd_ps(x, _mm512_set1_ps(1.44269504088896341f), kRoundMagic);
  const __m512 n = _mm512_sub_ps(shifted, kRoundMagic);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);  // 8 significant bits
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  // The low mantissa bits of `shifted` hold n offset by the magic's bits
  // (0x4b400000); n + 127 in the exponent field is 2^n.
  const __m512i exponent = _mm512_slli_epi32(
      _mm512_add_epi32(_mm512_castps_si512(shifted), _mm512_set1_epi32(127 - 0x4b400000)), 23);
  return _mm512_mul_ps(p, _mm512_castsi512_ps(exponent));
}

// In-place numerically stable softmax of s[0, n), n >= 1:
// s_j <- exp(s_j - max s) / Σ exp(s_i - max s). Subtracting the maximum
// keeps every exponent <= 0, so nothing overflows in float32.
void Softmax(float* s, int n);

}  // namespace pdserve::cpu

#endif  // PDSERVE_KERNELS_CPU_CPU_MATH_H_
