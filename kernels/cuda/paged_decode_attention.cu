#include "kernels/cuda/paged_decode_attention.h"

#include <cmath>

#include "kernels/cuda/device_math.cuh"

namespace pdserve::gpu {
namespace {

constexpr int kWarps = 8;
// Keys a warp takes per step: their table entries and K/V rows are all
// requested before any is used, so each warp keeps several row loads in
// flight instead of waiting one memory latency per key (at batch 1 there
// are only num_heads blocks on the whole GPU).
constexpr int kKeysPerStep = 4;
// Block tables up to this many entries (16 KiB) are staged in shared
// memory, taking the table lookup off each key's chain of dependent loads.
constexpr int kMaxSharedTable = 4096;

// kPerLane = ceil(head_dim / 32): the elements of q, k, v and out a lane
// holds, at d = lane + 32 * c. Cache reads are the hot path (the whole
// context, every step), so they are typed at compile time.
template <typename CacheT, int kPerLane>
__global__ void __launch_bounds__(kWarps * 32)
    PagedDecodeAttentionKernel(PagedDecodeAttentionParams p, bool table_in_shared) {
  extern __shared__ int32_t shared_table[];  // [blocks the sequence uses] when table_in_shared
  __shared__ float warp_max[kWarps];
  __shared__ float warp_sum[kWarps];
  __shared__ float warp_acc[kWarps][kPerLane * 32];

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int head = blockIdx.x;
  const int seq = blockIdx.y;
  const int hd = p.head_dim;
  const int kv_head = head / (p.num_heads / p.num_kv_heads);
  const int reach = p.max_blocks_per_seq * p.block_size;
  const int context = min(max(p.context_lens[seq], 0), reach);

  const int32_t* table = p.block_tables + static_cast<size_t>(seq) * p.max_blocks_per_seq;
  if (table_in_shared) {
    const int used_blocks = (context + p.block_size - 1) / p.block_size;
    for (int i = threadIdx.x; i < used_blocks; i += blockDim.x) shared_table[i] = table[i];
    __syncthreads();
    table = shared_table;
  }

  float q[kPerLane];
  const size_t q_base = (static_cast<size_t>(seq) * p.num_heads + head) * hd;
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int d = lane + 32 * c;
    q[c] = d < hd ? LoadAsFloat(p.q, p.q_type, q_base + d) * p.scale : 0.0f;
  }

  const size_t kv_width = static_cast<size_t>(p.num_kv_heads) * hd;
  const CacheT* k_head = static_cast<const CacheT*>(p.k_cache) + static_cast<size_t>(kv_head) * hd;
  const CacheT* v_head = static_cast<const CacheT*>(p.v_cache) + static_cast<size_t>(kv_head) * hd;

  float running_max = -INFINITY;
  float running_sum = 0.0f;
  float acc[kPerLane];
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) acc[c] = 0.0f;

  // Warp w takes keys [first, first + kKeysPerStep) for first = w * kKeysPerStep,
  // then steps by kWarps * kKeysPerStep. Every condition below depends only
  // on the key, so it is the same across the warp and the shuffles inside
  // WarpSum see all 32 lanes.
  for (int first = warp * kKeysPerStep; first < context; first += kWarps * kKeysPerStep) {
    bool valid[kKeysPerStep];
    size_t row[kKeysPerStep];
#pragma unroll
    for (int u = 0; u < kKeysPerStep; ++u) {
      const int j = first + u;
      const int block = j < context ? table[j / p.block_size] : -1;
      valid[u] = block >= 0 && block < p.num_blocks;
      row[u] =
          valid[u] ? (static_cast<size_t>(block) * p.block_size + j % p.block_size) * kv_width : 0;
    }
    float k_j[kKeysPerStep][kPerLane];
    float v_j[kKeysPerStep][kPerLane];
#pragma unroll
    for (int u = 0; u < kKeysPerStep; ++u) {
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) {
        const int d = lane + 32 * c;
        const bool load = valid[u] && d < hd;
        k_j[u][c] = load ? ToFloat(k_head[row[u] + d]) : 0.0f;
        v_j[u][c] = load ? ToFloat(v_head[row[u] + d]) : 0.0f;
      }
    }
    float score[kKeysPerStep];
    float step_max = -INFINITY;
#pragma unroll
    for (int u = 0; u < kKeysPerStep; ++u) {
      float dot = 0.0f;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) dot += q[c] * k_j[u][c];
      dot = WarpSum(dot);
      score[u] = valid[u] ? dot : -INFINITY;
      step_max = fmaxf(step_max, score[u]);
    }
    const float new_max = fmaxf(running_max, step_max);
    if (new_max == -INFINITY) continue;               // no usable key yet
    const float alpha = expf(running_max - new_max);  // 0 on the first keys
    float step_sum = 0.0f;
    float prob[kKeysPerStep];
#pragma unroll
    for (int u = 0; u < kKeysPerStep; ++u) {
      prob[u] = valid[u] ? expf(score[u] - new_max) : 0.0f;
      step_sum += prob[u];
    }
    running_sum = running_sum * alpha + step_sum;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      float value = acc[c] * alpha;
#pragma unroll
      for (int u = 0; u < kKeysPerStep; ++u) value += prob[u] * v_j[u][c];
      acc[c] = value;
    }
    running_max = new_max;
  }

  // Merge the warps' partial softmaxes: rescale each to the common maximum.
  if (lane == 0) {
    warp_max[warp] = running_max;
    warp_sum[warp] = running_sum;
  }
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) warp_acc[warp][lane + 32 * c] = acc[c];
  __syncthreads();

  float max_all = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) max_all = fmaxf(max_all, warp_max[w]);
  float weight[kWarps];
  float sum_all = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    weight[w] = warp_max[w] == -INFINITY ? 0.0f : expf(warp_max[w] - max_all);
    sum_all += warp_sum[w] * weight[w];
  }
  const float inv_sum = sum_all > 0.0f ? 1.0f / sum_all : 0.0f;
  for (int d = threadIdx.x; d < hd; d += blockDim.x) {
    float value = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) value += warp_acc[w][d] * weight[w];
    StoreFromFloat(p.out, p.out_type, q_base + d, value * inv_sum);
  }
}

template <typename CacheT, int kPerLane>
cudaError_t Launch(const PagedDecodeAttentionParams& params, cudaStream_t stream) {
  const dim3 grid(params.num_heads, params.batch);
  const bool table_in_shared = params.max_blocks_per_seq <= kMaxSharedTable;
  const size_t shared_bytes =
      table_in_shared ? static_cast<size_t>(params.max_blocks_per_seq) * sizeof(int32_t) : 0;
  PagedDecodeAttentionKernel<CacheT, kPerLane>
      <<<grid, kWarps * 32, shared_bytes, stream>>>(params, table_in_shared);
  return cudaGetLastError();
}

template <typename CacheT>
cudaError_t LaunchForHeadDim(const PagedDecodeAttentionParams& params, cudaStream_t stream) {
  switch ((params.head_dim + 31) / 32) {
    case 1:
      return Launch<CacheT, 1>(params, stream);
    case 2:
      return Launch<CacheT, 2>(params, stream);
    case 3:
      return Launch<CacheT, 3>(params, stream);
    case 4:
      return Launch<CacheT, 4>(params, stream);
    case 5:
      return Launch<CacheT, 5>(params, stream);
    case 6:
      return Launch<CacheT, 6>(params, stream);
    case 7:
      return Launch<CacheT, 7>(params, stream);
    case 8:
      return Launch<CacheT, 8>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

cudaError_t InvokePagedDecodeAttention(const PagedDecodeAttentionParams& params,
                                       cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.batch == 0) return cudaSuccess;
  return DispatchElementType(params.cache_type, [&](auto tag) {
    using CacheT = typename decltype(tag)::type;
    return LaunchForHeadDim<CacheT>(params, stream);
  });
}

}  // namespace pdserve::gpu
