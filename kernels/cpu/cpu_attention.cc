// Attention kernels of the CPU backend: causal prefill over contiguous K/V
// (two sgemm calls per head and query chunk) and paged decode attention
// (loops over each sequence's blocks, heads of one KV group together).
//
// softmax(s)_j = exp(s_j - max s) / Σ exp(s_i - max s): subtracting the
// maximum keeps every exponent <= 0, so nothing overflows in float32.
#include <cblas.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <functional>
#include <thread>
#include <vector>

#include "kernels/cpu/cpu_kernels.h"

namespace pdserve::cpu {
namespace {

// In-place numerically stable softmax of s[0, n).
void Softmax(float* s, int n) {
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

// Runs fn(item) for item in [0, count) on up to hardware_concurrency
// threads, handing out items one at a time (their costs differ: sequences
// have different lengths). Stays on the calling thread when `total_flops`
// is too small to pay for starting threads (~tens of microseconds each).
void ParallelFor(int count, double total_flops, const std::function<void(int)>& fn) {
  constexpr double kMinFlopsPerThread = 4e6;
  const int hardware = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  const int by_work = static_cast<int>(total_flops / kMinFlopsPerThread);
  const int num_threads = std::min({hardware, count, std::max(1, by_work)});
  if (num_threads <= 1) {
    for (int i = 0; i < count; ++i) fn(i);
    return;
  }
  std::atomic<int> next{0};
  auto worker = [&] {
    for (int i = next.fetch_add(1); i < count; i = next.fetch_add(1)) fn(i);
  };
  std::vector<std::thread> threads;
  threads.reserve(num_threads - 1);
  for (int t = 1; t < num_threads; ++t) threads.emplace_back(worker);
  worker();
  for (std::thread& thread : threads) thread.join();
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

void PagedAttention(const float* q, const float* k_cache, const float* v_cache,
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
  // One work item per (sequence, KV head): the `group` query heads that
  // share a KV head read each cached K and V row once.
  ParallelFor(params.batch_size * params.num_kv_heads, total_flops, [&](int item) {
    const int b = item / params.num_kv_heads;
    const int g = item % params.num_kv_heads;
    const int context = context_lens[b];
    const int32_t* table = block_tables + static_cast<size_t>(b) * params.max_blocks_per_seq;
    const float* q_group = q + b * q_stride + static_cast<size_t>(g) * group * hd;
    float* out_group = out + b * q_stride + static_cast<size_t>(g) * group * hd;

    std::vector<const float*> k_rows(context), v_rows(context);
    for (int j = 0; j < context; ++j) {
      const size_t slot = static_cast<size_t>(table[j / params.block_size]) * params.block_size +
                          j % params.block_size;
      k_rows[j] = k_cache + slot * kv_width + static_cast<size_t>(g) * hd;
      v_rows[j] = v_cache + slot * kv_width + static_cast<size_t>(g) * hd;
    }
    std::vector<float> scores(context);
    for (int i = 0; i < group; ++i) {
      const float* q_head = q_group + static_cast<size_t>(i) * hd;
      for (int j = 0; j < context; ++j) {
        float dot = 0.0f;
        for (int d = 0; d < hd; ++d) dot += q_head[d] * k_rows[j][d];
        scores[j] = dot * params.scale;
      }
      Softmax(scores.data(), context);
      float* out_head = out_group + static_cast<size_t>(i) * hd;
      std::fill(out_head, out_head + hd, 0.0f);
      for (int j = 0; j < context; ++j) {
        const float p = scores[j];
        for (int d = 0; d < hd; ++d) out_head[d] += p * v_rows[j][d];
      }
    }
  });
}

}  // namespace pdserve::cpu
