// Element-wise and GEMM kernels of the CPU backend (attention is in
// cpu_attention.cc, the skinny GEMM in cpu_gemm.cc and cpu_gemm_bf16.cc).
// Written like llama2.c's run.c: one plain loop nest per op, innermost loop
// over contiguous memory so the compiler vectorises it.
#include "kernels/cpu/cpu_kernels.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/cpu_amx.h"
#include "kernels/cpu/cpu_gemm.h"
#include "kernels/cpu/cpu_math.h"

namespace pdserve::cpu {

void Embedding(const void* table, DType table_dtype, const int32_t* ids, int n, int hidden,
               float* out) {
  const size_t row_bytes = static_cast<size_t>(hidden) * DTypeSize(table_dtype);
  for (int i = 0; i < n; ++i) {
    ConvertToFloat(static_cast<const char*>(table) + ids[i] * row_bytes, table_dtype, hidden,
                   out + static_cast<size_t>(i) * hidden);
  }
}

namespace {

// out[m, n] (ldo apart) = x[m, k] · w[n, k]ᵀ + beta · out through OpenBLAS.
void BlasMatMul(const float* x, const float* w, int m, int n, int k, float* out, int ldo,
                float beta) {
  if (m == 1) {
    // A single row is a matrix-vector product; sgemv avoids sgemm's packing
    // of a 1-row operand.
    cblas_sgemv(CblasRowMajor, CblasNoTrans, n, k, 1.0f, w, k, x, 1, beta, out, 1);
    return;
  }
  // Row-major out[m, n] = x[m, k] · w[n, k]ᵀ: w is nn.Linear's [out, in].
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, n, k, 1.0f, x, k, w, k, beta, out, ldo);
}

// Calls fn(begin, end) for consecutive kGemmChunkRows-row ranges of [0, n)
// of an [m, n, k] GEMM on the pool. Chunks are handed out one at a time, so
// a thread whose core is busy with another process takes fewer of them. A
// small GEMM stays on fewer threads (one below ~2 * 10^5 flops): waking a
// sleeping worker costs tens of microseconds on a VM, more than a small
// model's whole GEMM (stories260K's decode step ran 10x slower in the
// decode service, where workers sleep between steps, than back-to-back).
template <typename Fn>
void ForRowChunks(ThreadPool& pool, int m, int n, int k, const Fn& fn) {
  constexpr double kMinFlopsPerThread = 2e5;
  const double flops = 2.0 * m * n * k;
  const int max_threads = static_cast<int>(
      std::clamp(flops / kMinFlopsPerThread, 1.0, static_cast<double>(pool.size())));
  const int chunks = (n + kGemmChunkRows - 1) / kGemmChunkRows;
  pool.Run(chunks, max_threads, [&](int chunk) {
    const int begin = chunk * kGemmChunkRows;
    fn(begin, std::min(n, begin + kGemmChunkRows));
  });
}

}  // namespace

void MatMul(ThreadPool& pool, const float* x, const float* w, int m, int n, int k, float* out,
            bool accumulate) {
  if (m <= kSkinnyMaxRowsF32 && CpuHasAvx512F()) {
    ForRowChunks(pool, m, n, k, [&](int begin, int end) {
      GemmF32Rows(x, m, k, w, begin, end, out, n, accumulate);
    });
    return;
  }
  BlasMatMul(x, w, m, n, k, out, n, accumulate ? 1.0f : 0.0f);
}

void MatMulBf16(ThreadPool& pool, const float* x, const uint16_t* w, int m, int n, int k,
                float* out, bool accumulate) {
  if (k % kAmxColumns == 0 && AmxBf16Available()) {
    // AMX for every batch size: as fast as the AVX-512 kernel when the weight
    // read dominates (one row), 3-5x faster from a few rows on. Weight rows
    // past the last multiple of 16 go to the AVX-512 kernel.
    const PackedActivations packed(x, m, k);
    const int amx_rows = n / 16 * 16;
    std::vector<uint16_t> x_bf16;
    if (amx_rows < n) {
      x_bf16.resize(static_cast<size_t>(m) * k);
      RoundToBf16(x, x_bf16.size(), x_bf16.data());
    }
    ForRowChunks(pool, m, n, k, [&](int begin, int end) {
      const int amx_end = std::min(end, amx_rows);
      if (begin < amx_end) AmxGemmBf16Rows(packed, w, begin, amx_end, out, n, accumulate);
      if (amx_end < end) {
        GemmBf16Rows(x_bf16.data(), m, k, w, std::max(begin, amx_end), end, out, n, accumulate);
      }
    });
    return;
  }
  if (m <= kSkinnyMaxRowsBf16 && CpuHasAvx512Bf16Gemm()) {
    std::vector<uint16_t> x_bf16(static_cast<size_t>(m) * k);
    RoundToBf16(x, x_bf16.size(), x_bf16.data());
    ForRowChunks(pool, m, n, k, [&](int begin, int end) {
      GemmBf16Rows(x_bf16.data(), m, k, w, begin, end, out, n, accumulate);
    });
    return;
  }
  // Widening costs one pass over the weight, small next to the m·n·k
  // multiply-adds at prefill sizes; blocks of rows keep the float32 copy
  // cache-sized rather than weight-sized.
  constexpr int kWidenRows = 256;
  const bool avx512 = CpuHasAvx512F();
  std::vector<float> block(static_cast<size_t>(std::min(n, kWidenRows)) * k);
  for (int begin = 0; begin < n; begin += kWidenRows) {
    const int rows = std::min(kWidenRows, n - begin);
    const uint16_t* w_rows = w + static_cast<size_t>(begin) * k;
    const size_t elements = static_cast<size_t>(rows) * k;
    if (avx512) {
      WidenBf16(w_rows, elements, block.data());
    } else {
      ConvertToFloat(w_rows, DType::kBF16, elements, block.data());
    }
    BlasMatMul(x, block.data(), m, rows, k, out + begin, n, accumulate ? 1.0f : 0.0f);
  }
}

void RmsNorm(const float* x, const float* weight, int m, int d, float eps, float* out) {
  for (int i = 0; i < m; ++i) {
    const float* row = x + static_cast<size_t>(i) * d;
    float* dst = out + static_cast<size_t>(i) * d;
    // HF computes the mean of squares in float32; a double sum is at least
    // as accurate and costs nothing next to the GEMMs.
    double sum_squares = 0.0;
    for (int j = 0; j < d; ++j) sum_squares += static_cast<double>(row[j]) * row[j];
    const float inv_rms = static_cast<float>(1.0 / std::sqrt(sum_squares / d + eps));
    for (int j = 0; j < d; ++j) dst[j] = row[j] * inv_rms * weight[j];
  }
}

void SplitQkv(const float* qkv, int n, int num_heads, int num_kv_heads, int head_dim, float* q,
              float* k, float* v) {
  const size_t q_width = static_cast<size_t>(num_heads) * head_dim;
  const size_t kv_width = static_cast<size_t>(num_kv_heads) * head_dim;
  const size_t row_width = q_width + 2 * kv_width;
  for (int i = 0; i < n; ++i) {
    const float* row = qkv + i * row_width;
    std::memcpy(q + i * q_width, row, sizeof(float) * q_width);
    std::memcpy(k + i * kv_width, row + q_width, sizeof(float) * kv_width);
    std::memcpy(v + i * kv_width, row + q_width + kv_width, sizeof(float) * kv_width);
  }
}

namespace {

// Rotates every head of one token: (x[i], x[i+half]) -> (x[i]·c - x[i+half]·s,
// x[i+half]·c + x[i]·s), which is HF's x·cos + rotate_half(x)·sin.
void RotateHeads(float* x, int num_heads, int head_dim, const float* cos, const float* sin) {
  const int half = head_dim / 2;
  for (int h = 0; h < num_heads; ++h) {
    float* head = x + static_cast<size_t>(h) * head_dim;
    for (int i = 0; i < half; ++i) {
      const float x0 = head[i];
      const float x1 = head[i + half];
      head[i] = x0 * cos[i] - x1 * sin[i];
      head[i + half] = x1 * cos[i] + x0 * sin[i];
    }
  }
}

}  // namespace

void Rope(float* q, float* k, const int32_t* positions, int n, int num_heads, int num_kv_heads,
          int head_dim, float theta) {
  const int half = head_dim / 2;
  std::vector<double> inv_freq(half);
  for (int i = 0; i < half; ++i) {
    inv_freq[i] = std::pow(static_cast<double>(theta), -2.0 * i / head_dim);
  }
  std::vector<float> cos(half), sin(half);
  const size_t q_width = static_cast<size_t>(num_heads) * head_dim;
  const size_t k_width = static_cast<size_t>(num_kv_heads) * head_dim;
  for (int t = 0; t < n; ++t) {
    for (int i = 0; i < half; ++i) {
      const double angle = positions[t] * inv_freq[i];
      cos[i] = static_cast<float>(std::cos(angle));
      sin[i] = static_cast<float>(std::sin(angle));
    }
    RotateHeads(q + t * q_width, num_heads, head_dim, cos.data(), sin.data());
    RotateHeads(k + t * k_width, num_kv_heads, head_dim, cos.data(), sin.data());
  }
}

namespace {

// dst[j] = gate[j] · σ(gate[j]) · up[j] = gate[j] · up[j] / (1 + e^-gate[j]).
__attribute__((target("avx512f"))) void SiluMulRowAvx512(const float* gate, const float* up, int f,
                                                         float* dst) {
  const __m512 one = _mm512_set1_ps(1.0f);
  int j = 0;
  for (; j + 16 <= f; j += 16) {
    const __m512 g = _mm512_loadu_ps(gate + j);
    const __m512 e = Exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    _mm512_storeu_ps(
        dst + j, _mm512_div_ps(_mm512_mul_ps(g, _mm512_loadu_ps(up + j)), _mm512_add_ps(one, e)));
  }
  if (j < f) {
    const __mmask16 tail = TailMask(f - j);
    const __m512 g = _mm512_maskz_loadu_ps(tail, gate + j);
    const __m512 e = Exp512(_mm512_sub_ps(_mm512_setzero_ps(), g));
    _mm512_mask_storeu_ps(dst + j, tail,
                          _mm512_div_ps(_mm512_mul_ps(g, _mm512_maskz_loadu_ps(tail, up + j)),
                                        _mm512_add_ps(one, e)));
  }
}

}  // namespace

void ArgmaxRows(const float* x, int rows, int cols, int32_t* out) {
  for (int r = 0; r < rows; ++r) {
    const float* row = x + static_cast<size_t>(r) * cols;
    int best = -1;
    for (int j = 0; j < cols; ++j) {
      // Strictly greater: the first of equal values stays (smallest index).
      if (!std::isnan(row[j]) && (best < 0 || row[j] > row[best])) best = j;
    }
    out[r] = best < 0 ? 0 : best;
  }
}

void TopKRows(const float* x, int rows, int cols, int k, float* values, int32_t* ids) {
  std::vector<int32_t> order;
  for (int r = 0; r < rows; ++r) {
    const float* row = x + static_cast<size_t>(r) * cols;
    order.clear();
    for (int j = 0; j < cols; ++j) {
      if (!std::isnan(row[j])) order.push_back(j);
    }
    const auto before = [row](int32_t a, int32_t b) {
      return row[a] > row[b] || (row[a] == row[b] && a < b);
    };
    const size_t kept = std::min<size_t>(order.size(), static_cast<size_t>(k));
    // Select, then sort only the k: O(cols + k log k), where a partial sort
    // would cost O(cols log k) for the whole vocabulary.
    if (kept > 0 && kept < order.size()) {
      std::nth_element(order.begin(), order.begin() + (kept - 1), order.end(), before);
    }
    std::sort(order.begin(), order.begin() + kept, before);
    float* out_values = values + static_cast<size_t>(r) * k;
    int32_t* out_ids = ids + static_cast<size_t>(r) * k;
    for (int i = 0; i < k; ++i) {
      const bool real = static_cast<size_t>(i) < kept;
      out_values[i] = real ? row[order[i]] : -std::numeric_limits<float>::infinity();
      out_ids[i] = real ? order[i] : -1;
    }
  }
}

void SiluMul(const float* gate_up, int m, int f, float* out) {
  const bool avx512 = CpuHasAvx512F();
  for (int i = 0; i < m; ++i) {
    const float* gate = gate_up + static_cast<size_t>(i) * 2 * f;
    const float* up = gate + f;
    float* dst = out + static_cast<size_t>(i) * f;
    if (avx512) {
      SiluMulRowAvx512(gate, up, f, dst);
    } else {
      for (int j = 0; j < f; ++j) dst[j] = gate[j] / (1.0f + std::exp(-gate[j])) * up[j];
    }
  }
}

}  // namespace pdserve::cpu
