#include "kernels/cuda/split_qkv.h"

#include "kernels/cuda/device_math.cuh"

namespace pdserve::gpu {
namespace {

constexpr int kThreads = 256;

// Grid-stride over the fused matrix; each element goes to exactly one of
// q, k, v at the same row.
__global__ void SplitQkvKernel(SplitQkvParams p) {
  const size_t q_width = static_cast<size_t>(p.num_heads) * p.head_dim;
  const size_t kv_width = static_cast<size_t>(p.num_kv_heads) * p.head_dim;
  const size_t width = q_width + 2 * kv_width;
  const size_t total = static_cast<size_t>(p.n) * width;
  const size_t stride = GridThreadCount();
  for (size_t idx = GridThreadIndex(); idx < total; idx += stride) {
    const size_t row = idx / width;
    const size_t col = idx - row * width;
    const float value = LoadAsFloat(p.qkv, p.qkv_type, idx);
    if (col < q_width) {
      StoreFromFloat(p.q, p.q_type, row * q_width + col, value);
    } else if (col < q_width + kv_width) {
      StoreFromFloat(p.k, p.k_type, row * kv_width + (col - q_width), value);
    } else {
      StoreFromFloat(p.v, p.v_type, row * kv_width + (col - q_width - kv_width), value);
    }
  }
}

}  // namespace

cudaError_t InvokeSplitQkv(const SplitQkvParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.n == 0) return cudaSuccess;
  const size_t total = static_cast<size_t>(params.n) *
                       (params.num_heads + 2 * params.num_kv_heads) * params.head_dim;
  SplitQkvKernel<<<GridStrideBlocks(total, kThreads), kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace pdserve::gpu
