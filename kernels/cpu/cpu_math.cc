#include "kernels/cpu/cpu_math.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace pdserve::cpu {
namespace {

__attribute__((target("avx512f"))) void SoftmaxAvx512(float* s, int n) {
  const __m512 lowest = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 max_lanes = lowest;
  int j = 0;
  for (; j + 16 <= n; j += 16) max_lanes = _mm512_max_ps(max_lanes, _mm512_loadu_ps(s + j));
  const __mmask16 tail = TailMask(n - j);
  if (j < n) max_lanes = _mm512_max_ps(max_lanes, _mm512_mask_loadu_ps(lowest, tail, s + j));
  const __m512 max_value = _mm512_set1_ps(MaxLanes(max_lanes));
  __m512 sum = _mm512_setzero_ps();
  for (j = 0; j + 16 <= n; j += 16) {
    const __m512 e = Exp512(_mm512_sub_ps(_mm512_loadu_ps(s + j), max_value));
    _mm512_storeu_ps(s + j, e);
    sum = _mm512_add_ps(sum, e);
  }
  if (j < n) {
    const __m512 e = Exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, s + j), max_value));
    _mm512_mask_storeu_ps(s + j, tail, e);
    sum = _mm512_mask_add_ps(sum, tail, sum, e);
  }
  const __m512 inv_sum = _mm512_set1_ps(1.0f / SumLanes(sum));
  for (j = 0; j + 16 <= n; j += 16) {
    _mm512_storeu_ps(s + j, _mm512_mul_ps(_mm512_loadu_ps(s + j), inv_sum));
  }
  if (j < n)
    _mm512_mask_storeu_ps(s + j, tail, _mm512_mul_ps(_mm512_maskz_loadu_ps(tail, s + j), inv_sum));
}

}  // namespace

bool CpuHasAvx512F() { return __builtin_cpu_supports("avx512f"); }

void Softmax(float* s, int n) {
  if (CpuHasAvx512F()) {
    SoftmaxAvx512(s, n);
    return;
  }
  float max_value = s[0];
  for (int j = 1; j < n; ++j) max_value = std::max(max_value, s[j]);
  float sum = 0.0f;
  for (int j = 0; j < n; ++j) {
    s[j] = std::exp(s[j] - max_value);
    sum += s[j];
  }
  const float inv_sum = 1.0f / sum;
  for (int j = 0; j < n; ++j) s[j] *= inv_sum;
}

}  // namespace pdserve::cpu
