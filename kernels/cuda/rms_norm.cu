#include "kernels/cuda/rms_norm.h"

#include "kernels/cuda/device_math.cuh"

namespace pdserve::gpu {
namespace {

constexpr int kThreads = 256;

// One block per row. Each thread reads its elements twice (sum of squares,
// then scale) and writes each only after reading it, so out may alias x.
__global__ void __launch_bounds__(kThreads) RmsNormKernel(RmsNormParams p) {
  __shared__ float scratch[32];
  const size_t base = static_cast<size_t>(blockIdx.x) * p.d;
  float sum_squares = 0.0f;
  for (int j = threadIdx.x; j < p.d; j += blockDim.x) {
    const float v = LoadAsFloat(p.x, p.x_type, base + j);
    sum_squares += v * v;
  }
  sum_squares = BlockSum(sum_squares, scratch);
  const float inv_rms = 1.0f / sqrtf(sum_squares / static_cast<float>(p.d) + p.eps);
  for (int j = threadIdx.x; j < p.d; j += blockDim.x) {
    const float v = LoadAsFloat(p.x, p.x_type, base + j);
    const float w = LoadAsFloat(p.weight, p.weight_type, j);
    StoreFromFloat(p.out, p.out_type, base + j, v * inv_rms * w);
  }
}

}  // namespace

cudaError_t InvokeRmsNorm(const RmsNormParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.m == 0) return cudaSuccess;
  RmsNormKernel<<<params.m, kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace pdserve::gpu
