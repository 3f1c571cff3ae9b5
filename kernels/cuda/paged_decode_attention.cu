#include "kernels/cuda/paged_decode_attention.h"

#include <cmath>

#include "kernels/cuda/device_math.cuh"

namespace pdserve::gpu {
namespace {

constexpr int kWarps = 4;

// kPerLane = ceil(head_dim / 32): the elements of q, k, v and out a lane
// holds, at d = lane + 32 * c. Cache reads are the hot path (the whole
// context, every step), so they are typed at compile time.
template <typename CacheT, int kPerLane>
__global__ void __launch_bounds__(kWarps * 32)
    PagedDecodeAttentionKernel(PagedDecodeAttentionParams p) {
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

  float q[kPerLane];
  const size_t q_base = (static_cast<size_t>(seq) * p.num_heads + head) * hd;
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) {
    const int d = lane + 32 * c;
    q[c] = d < hd ? LoadAsFloat(p.q, p.q_type, q_base + d) * p.scale : 0.0f;
  }

  const int32_t* table = p.block_tables + static_cast<size_t>(seq) * p.max_blocks_per_seq;
  const size_t kv_width = static_cast<size_t>(p.num_kv_heads) * hd;
  const CacheT* k_head = static_cast<const CacheT*>(p.k_cache) + static_cast<size_t>(kv_head) * hd;
  const CacheT* v_head = static_cast<const CacheT*>(p.v_cache) + static_cast<size_t>(kv_head) * hd;

  float running_max = -INFINITY;
  float running_sum = 0.0f;
  float acc[kPerLane];
#pragma unroll
  for (int c = 0; c < kPerLane; ++c) acc[c] = 0.0f;

  for (int j = warp; j < context; j += kWarps) {
    const int block = table[j / p.block_size];
    if (block < 0 || block >= p.num_blocks) continue;  // the same for the whole warp
    const size_t row = (static_cast<size_t>(block) * p.block_size + j % p.block_size) * kv_width;
    // Both rows are requested before either is used.
    float k_j[kPerLane];
    float v_j[kPerLane];
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int d = lane + 32 * c;
      k_j[c] = d < hd ? ToFloat(k_head[row + d]) : 0.0f;
      v_j[c] = d < hd ? ToFloat(v_head[row + d]) : 0.0f;
    }
    float dot = 0.0f;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) dot += q[c] * k_j[c];
    const float score = WarpSum(dot);
    const float new_max = fmaxf(running_max, score);
    const float alpha = expf(running_max - new_max);  // 0 on the first key
    const float prob = expf(score - new_max);
    running_sum = running_sum * alpha + prob;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) acc[c] = acc[c] * alpha + prob * v_j[c];
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
  PagedDecodeAttentionKernel<CacheT, kPerLane><<<grid, kWarps * 32, 0, stream>>>(params);
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
