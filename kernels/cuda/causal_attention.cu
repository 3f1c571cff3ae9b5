#include "kernels/cuda/causal_attention.h"

#include <cmath>

#include "kernels/cuda/device_math.cuh"

namespace pdserve::gpu {
namespace {

constexpr int kWarps = 4;
constexpr int kQueriesPerWarp = 4;
constexpr int kBlockQueries = kWarps * kQueriesPerWarp;
constexpr int kBlockKeys = 32;  // one key per lane when scoring

// Shared memory, in floats: the query tile (pre-scaled), the K tile (rows
// padded by one word so that the 32 lanes, each reading its own key at the
// same column, hit 32 different banks), the V tile and each warp's
// probabilities for the current key tile.
size_t SharedFloats(int head_dim) {
  return static_cast<size_t>(kBlockQueries) * head_dim + kBlockKeys * (head_dim + 1) +
         kBlockKeys * head_dim + kBlockQueries * kBlockKeys;
}

// kPerLane = ceil(head_dim / 32): output elements a lane accumulates, at
// d = lane + 32 * c.
template <int kPerLane>
__global__ void __launch_bounds__(kWarps * 32) CausalAttentionKernel(CausalAttentionParams p) {
  extern __shared__ float smem[];
  const int hd = p.head_dim;
  const int k_stride = hd + 1;
  float* q_tile = smem;                            // [kBlockQueries][hd]
  float* k_tile = q_tile + kBlockQueries * hd;     // [kBlockKeys][hd + 1]
  float* v_tile = k_tile + kBlockKeys * k_stride;  // [kBlockKeys][hd]
  float* p_tile = v_tile + kBlockKeys * hd;        // [kBlockQueries][kBlockKeys]

  const int warp = threadIdx.x >> 5;
  const int lane = threadIdx.x & 31;
  const int head = blockIdx.y;
  const int kv_head = head / (p.num_heads / p.num_kv_heads);
  const int first_query = blockIdx.x * kBlockQueries;
  const int past = p.num_keys - p.num_queries;  // keys before the first query

  for (int idx = threadIdx.x; idx < kBlockQueries * hd; idx += blockDim.x) {
    const int r = idx / hd;
    const int d = idx - r * hd;
    const int query = first_query + r;
    float value = 0.0f;
    if (query < p.num_queries) {
      value =
          LoadAsFloat(p.q, p.q_type, (static_cast<size_t>(query) * p.num_heads + head) * hd + d) *
          p.scale;
    }
    q_tile[idx] = value;
  }

  // Positions of this warp's queries. A row past num_queries (the tail of the
  // last tile) computes like the last real position and is never written, so
  // that every row sees key 0 and its running maximum is finite after the
  // first tile.
  int position[kQueriesPerWarp];
  float running_max[kQueriesPerWarp];
  float running_sum[kQueriesPerWarp];
  float acc[kQueriesPerWarp][kPerLane];
#pragma unroll
  for (int qi = 0; qi < kQueriesPerWarp; ++qi) {
    const int query = first_query + warp * kQueriesPerWarp + qi;
    position[qi] = query < p.num_queries ? past + query : p.num_keys - 1;
    running_max[qi] = -INFINITY;
    running_sum[qi] = 0.0f;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) acc[qi][c] = 0.0f;
  }

  const int last_query = min(first_query + kBlockQueries, p.num_queries) - 1;
  const int key_end = past + last_query + 1;  // keys the block's last query sees
  const float* q_rows = q_tile + warp * kQueriesPerWarp * hd;
  float* p_rows = p_tile + warp * kQueriesPerWarp * kBlockKeys;

  for (int key0 = 0; key0 < key_end; key0 += kBlockKeys) {
    __syncthreads();  // the previous tile is consumed (and q_tile is written)
    for (int idx = threadIdx.x; idx < kBlockKeys * hd; idx += blockDim.x) {
      const int r = idx / hd;
      const int d = idx - r * hd;
      const int key = key0 + r;
      float k_value = 0.0f;
      float v_value = 0.0f;
      if (key < p.num_keys) {
        const size_t index = (static_cast<size_t>(key) * p.num_kv_heads + kv_head) * hd + d;
        k_value = LoadAsFloat(p.k, p.kv_type, index);
        v_value = LoadAsFloat(p.v, p.kv_type, index);
      }
      k_tile[r * k_stride + d] = k_value;
      v_tile[r * hd + d] = v_value;
    }
    __syncthreads();

    // Scores: lane j scores key key0 + j against the warp's queries.
    float score[kQueriesPerWarp];
#pragma unroll
    for (int qi = 0; qi < kQueriesPerWarp; ++qi) score[qi] = 0.0f;
    const float* k_row = k_tile + lane * k_stride;
    for (int d = 0; d < hd; ++d) {
      const float k_d = k_row[d];
#pragma unroll
      for (int qi = 0; qi < kQueriesPerWarp; ++qi) score[qi] += q_rows[qi * hd + d] * k_d;
    }

    // Online softmax update per query: rescale what was accumulated under
    // the old maximum, then record this tile's probabilities.
    const int key = key0 + lane;
#pragma unroll
    for (int qi = 0; qi < kQueriesPerWarp; ++qi) {
      const bool visible = key <= position[qi];
      const float s = visible ? score[qi] : -INFINITY;
      const float new_max = fmaxf(running_max[qi], WarpMax(s));
      const float safe_max = new_max == -INFINITY ? 0.0f : new_max;
      const float alpha = expf(running_max[qi] - safe_max);
      const float prob = visible ? expf(s - safe_max) : 0.0f;
      running_sum[qi] = running_sum[qi] * alpha + WarpSum(prob);
      running_max[qi] = new_max;
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) acc[qi][c] *= alpha;
      p_rows[qi * kBlockKeys + lane] = prob;
    }
    __syncwarp();

    // acc += P · V over the keys of this tile that anyone in the block sees.
    const int keys_here = min(kBlockKeys, key_end - key0);
    for (int j = 0; j < keys_here; ++j) {
      float v_j[kPerLane];
#pragma unroll
      for (int c = 0; c < kPerLane; ++c) {
        const int d = lane + 32 * c;
        v_j[c] = d < hd ? v_tile[j * hd + d] : 0.0f;
      }
#pragma unroll
      for (int qi = 0; qi < kQueriesPerWarp; ++qi) {
        const float prob = p_rows[qi * kBlockKeys + j];
#pragma unroll
        for (int c = 0; c < kPerLane; ++c) acc[qi][c] += prob * v_j[c];
      }
    }
    __syncwarp();  // p_rows is rewritten by the next tile
  }

#pragma unroll
  for (int qi = 0; qi < kQueriesPerWarp; ++qi) {
    const int query = first_query + warp * kQueriesPerWarp + qi;
    if (query >= p.num_queries) continue;
    const float inv_sum = 1.0f / running_sum[qi];
    const size_t base = (static_cast<size_t>(query) * p.num_heads + head) * hd;
#pragma unroll
    for (int c = 0; c < kPerLane; ++c) {
      const int d = lane + 32 * c;
      if (d < hd) StoreFromFloat(p.out, p.out_type, base + d, acc[qi][c] * inv_sum);
    }
  }
}

template <int kPerLane>
cudaError_t Launch(const CausalAttentionParams& params, cudaStream_t stream) {
  const size_t shared_bytes = SharedFloats(params.head_dim) * sizeof(float);
  if (shared_bytes > 48 * 1024) {
    // Above 48 KiB a kernel must opt in to dynamic shared memory.
    const cudaError_t status = cudaFuncSetAttribute(CausalAttentionKernel<kPerLane>,
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize,
                                                    static_cast<int>(shared_bytes));
    if (status != cudaSuccess) return status;
  }
  const dim3 grid((params.num_queries + kBlockQueries - 1) / kBlockQueries, params.num_heads);
  CausalAttentionKernel<kPerLane><<<grid, kWarps * 32, shared_bytes, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace

cudaError_t InvokeCausalAttention(const CausalAttentionParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.num_queries == 0) return cudaSuccess;
  switch ((params.head_dim + 31) / 32) {
    case 1:
      return Launch<1>(params, stream);
    case 2:
      return Launch<2>(params, stream);
    case 3:
      return Launch<3>(params, stream);
    case 4:
      return Launch<4>(params, stream);
    case 5:
      return Launch<5>(params, stream);
    case 6:
      return Launch<6>(params, stream);
    case 7:
      return Launch<7>(params, stream);
    case 8:
      return Launch<8>(params, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace pdserve::gpu
