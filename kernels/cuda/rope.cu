#include "kernels/cuda/rope.h"

#include "kernels/cuda/device_math.cuh"

namespace pdserve::gpu {
namespace {

__device__ __forceinline__ void RotatePair(void* base, ElementType type, size_t first, int half,
                                           float cos_a, float sin_a) {
  const float x1 = LoadAsFloat(base, type, first);
  const float x2 = LoadAsFloat(base, type, first + half);
  StoreFromFloat(base, type, first, x1 * cos_a - x2 * sin_a);
  StoreFromFloat(base, type, first + half, x2 * cos_a + x1 * sin_a);
}

// One block per token. A thread owns pair index i for every head, so each
// (cos, sin) is computed once per token and reused across the heads; for a
// fixed head, consecutive threads touch consecutive elements.
__global__ void RopeKernel(RopeParams p) {
  const int token = blockIdx.x;
  const int half = p.head_dim / 2;
  const double position = static_cast<double>(p.positions[token]);
  for (int i = threadIdx.x; i < half; i += blockDim.x) {
    const double inv_freq = pow(static_cast<double>(p.theta), -2.0 * i / p.head_dim);
    double sin_d, cos_d;
    sincos(position * inv_freq, &sin_d, &cos_d);
    const float cos_a = static_cast<float>(cos_d);
    const float sin_a = static_cast<float>(sin_d);
    for (int h = 0; h < p.num_heads; ++h) {
      const size_t first = (static_cast<size_t>(token) * p.num_heads + h) * p.head_dim + i;
      RotatePair(p.q, p.q_type, first, half, cos_a, sin_a);
    }
    for (int h = 0; h < p.num_kv_heads; ++h) {
      const size_t first = (static_cast<size_t>(token) * p.num_kv_heads + h) * p.head_dim + i;
      RotatePair(p.k, p.k_type, first, half, cos_a, sin_a);
    }
  }
}

}  // namespace

cudaError_t InvokeRope(const RopeParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.n == 0) return cudaSuccess;
  const int half = params.head_dim / 2;
  const int threads = half >= 128 ? 128 : ((half + 31) / 32) * 32;
  RopeKernel<<<params.n, threads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace pdserve::gpu
