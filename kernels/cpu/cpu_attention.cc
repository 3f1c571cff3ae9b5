// Attention kernels of the CPU backend: causal prefill over contiguous K/V
// (two sgemm calls per head and query chunk) and paged decode attention
// (one work item per sequence and KV head, the heads of one KV group
// together, spread over the backend's threads).
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/cpu_math.h"

namespace pdserve::cpu {
namespace {

// One work item of PagedAttention: `group` query heads q [group, hd] over
// the same `context` cached keys and values (rows of hd floats, each
// anywhere in the cache), into out [group, hd]. scores: [group, context]
// scratch.
struct GroupAttention {
  const float* q;
  const float* const* k_rows;
  const float* const* v_rows;
  int context;
  int group;
  int head_dim;
  float scale;
  float* scores;
  float* out;
};

void AttendGroupScalar(const GroupAttention& a) {
  const int hd = a.head_dim;
  for (int i = 0; i < a.group; ++i) {
    const float* q_head = a.q + static_cast<size_t>(i) * hd;
    float* scores = a.scores + static_cast<size_t>(i) * a.context;
    for (int j = 0; j < a.context; ++j) {
      float dot = 0.0f;
      for (int d = 0; d < hd; ++d) dot += q_head[d] * a.k_rows[j][d];
      scores[j] = dot * a.scale;
    }
    Softmax(scores, a.context);
    float* out_head = a.out + static_cast<size_t>(i) * hd;
    std::fill(out_head, out_head + hd, 0.0f);
    for (int j = 0; j < a.context; ++j) {
      const float p = scores[j];
      for (int d = 0; d < hd; ++d) out_head[d] += p * a.v_rows[j][d];
    }
  }
}

// As AttendGroupScalar, 16 lanes of head_dim at a time. Scores walk the keys
// in the outer loop so each cached K row is read from memory once for the
// whole group; the weighted sum of V keeps up to 128 output columns in
// registers while it walks the values.
__attribute__((target("avx512f"))) void AttendGroupAvx512(const GroupAttention& a) {
  const int hd = a.head_dim;
  const int full = hd / 16 * 16;
  const __mmask16 tail = TailMask(hd - full);
  for (int j = 0; j < a.context; ++j) {
    const float* k = a.k_rows[j];
    for (int i = 0; i < a.group; ++i) {
      const float* q_head = a.q + static_cast<size_t>(i) * hd;
      __m512 acc = _mm512_setzero_ps();
      for (int d = 0; d < full; d += 16) {
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q_head + d), _mm512_loadu_ps(k + d), acc);
      }
      if (full < hd) {
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, q_head + full),
                              _mm512_maskz_loadu_ps(tail, k + full), acc);
      }
      a.scores[static_cast<size_t>(i) * a.context + j] = SumLanes(acc) * a.scale;
    }
  }
  constexpr int kMaxVectors = 8;  // 128 columns
  for (int i = 0; i < a.group; ++i) {
    float* p = a.scores + static_cast<size_t>(i) * a.context;
    Softmax(p, a.context);
    float* out_head = a.out + static_cast<size_t>(i) * hd;
    for (int first = 0; first < hd; first += 16 * kMaxVectors) {
      const int width = std::min(16 * kMaxVectors, hd - first);
      __mmask16 masks[kMaxVectors];
      __m512 acc[kMaxVectors];
#pragma GCC unroll 8
      for (int t = 0; t < kMaxVectors; ++t) {
        const int lanes = std::clamp(width - 16 * t, 0, 16);
        masks[t] = lanes == 16 ? static_cast<__mmask16>(0xffff) : TailMask(lanes);
        acc[t] = _mm512_setzero_ps();
      }
      for (int j = 0; j < a.context; ++j) {
        const __m512 weight = _mm512_set1_ps(p[j]);
        const float* v = a.v_rows[j] + first;
#pragma GCC unroll 8
        for (int t = 0; t < kMaxVectors; ++t) {
          if (masks[t] != 0) {
            acc[t] = _mm512_fmadd_ps(weight, _mm512_maskz_loadu_ps(masks[t], v + 16 * t), acc[t]);
          }
        }
      }
#pragma GCC unroll 8
      for (int t = 0; t < kMaxVectors; ++t) {
        if (masks[t] != 0) _mm512_mask_storeu_ps(out_head + first + 16 * t, masks[t], acc[t]);
      }
    }
  }
}

}  // namespace

void PrefillAttention(const float* q, const float* k, const float* v,
                      const PrefillAttentionParams& params, float* out) {
  const int n = params.num_queries;
  const int t = params.num_keys;
  const int hd = params.head_dim;
  const int group = params.num_heads / params.num_kv_heads;
  const int past = t - n;  // keys before the first query
  const int q_stride = params.num_heads * hd;
  const int kv_stride = params.num_kv_heads * hd;
  // Queries are processed in chunks so the score block [chunk, t] stays
  // cache-sized while each sgemm is still large enough to run at BLAS speed.
  constexpr int kChunk = 128;
  std::vector<float> scores(static_cast<size_t>(std::min(n, kChunk)) * t);
  for (int h = 0; h < params.num_heads; ++h) {
    const int g = h / group;  // GQA: query head h reads KV head h / (H / KVH)
    const float* k_head = k + g * hd;
    const float* v_head = v + g * hd;
    for (int first = 0; first < n; first += kChunk) {
      const int rows = std::min(kChunk, n - first);
      const int keys = past + first + rows;  // keys the chunk's last query sees
      // scores[rows, keys] = scale · Q[first:first+rows, h] · K[0:keys, g]ᵀ
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, keys, hd, params.scale,
                  q + static_cast<size_t>(first) * q_stride + h * hd, q_stride, k_head, kv_stride,
                  0.0f, scores.data(), keys);
      for (int r = 0; r < rows; ++r) {
        float* row = scores.data() + static_cast<size_t>(r) * keys;
        const int visible = past + first + r + 1;  // causal: keys 0..its position
        Softmax(row, visible);
        std::fill(row + visible, row + keys, 0.0f);
      }
      // out[first:first+rows, h] = P[rows, keys] · V[0:keys, g]
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, hd, keys, 1.0f, scores.data(),
                  keys, v_head, kv_stride, 0.0f,
                  out + static_cast<size_t>(first) * q_stride + h * hd, q_stride);
    }
  }
}

void PagedAttention(ThreadPool& pool, const float* q, const float* k_cache, const float* v_cache,
                    const int32_t* block_tables, const int32_t* context_lens,
                    const PagedAttentionParams& params, float* out) {
  const int hd = params.head_dim;
  const int group = params.num_heads / params.num_kv_heads;
  const size_t kv_width = static_cast<size_t>(params.num_kv_heads) * hd;
  const size_t q_stride = static_cast<size_t>(params.num_heads) * hd;
  double total_flops = 0;
  for (int b = 0; b < params.batch_size; ++b) {
    total_flops += 4.0 * context_lens[b] * params.num_heads * hd;
  }
  // Waking a worker costs a few microseconds: worth it from ~10^5 flops on.
  constexpr double kMinFlopsPerThread = 1e5;
  const int max_threads = std::max(1, static_cast<int>(total_flops / kMinFlopsPerThread));
  const bool avx512 = CpuHasAvx512F();
  // One work item per (sequence, KV head): the `group` query heads that
  // share a KV head read each cached K and V row once.
  pool.Run(params.batch_size * params.num_kv_heads, max_threads, [&](int item) {
    const int b = item / params.num_kv_heads;
    const int g = item % params.num_kv_heads;
    const int context = context_lens[b];
    const int32_t* table = block_tables + static_cast<size_t>(b) * params.max_blocks_per_seq;
    std::vector<const float*> k_rows(context), v_rows(context);
    for (int j = 0; j < context; ++j) {
      const size_t slot = static_cast<size_t>(table[j / params.block_size]) * params.block_size +
                          j % params.block_size;
      k_rows[j] = k_cache + slot * kv_width + static_cast<size_t>(g) * hd;
      v_rows[j] = v_cache + slot * kv_width + static_cast<size_t>(g) * hd;
    }
    std::vector<float> scores(static_cast<size_t>(group) * context);
    const GroupAttention attention{q + b * q_stride + static_cast<size_t>(g) * group * hd,
                                   k_rows.data(),
                                   v_rows.data(),
                                   context,
                                   group,
                                   hd,
                                   params.scale,
                                   scores.data(),
                                   out + b * q_stride + static_cast<size_t>(g) * group * hd};
    if (avx512) {
      AttendGroupAvx512(attention);
    } else {
      AttendGroupScalar(attention);
    }
  });
}

}  // namespace pdserve::cpu
