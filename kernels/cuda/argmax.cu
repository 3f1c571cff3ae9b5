#include "kernels/cuda/argmax.h"

#include <cmath>

#include "kernels/cuda/device_math.cuh"

namespace pdserve::gpu {
namespace {

constexpr int kThreads = 256;

// (value, index) with the larger value winning and, on a tie, the smaller
// index; index -1 stands for "nothing seen yet".
__device__ __forceinline__ void Better(float& best, int& best_index, float value, int index) {
  if (best_index < 0 || value > best || (value == best && index < best_index)) {
    best = value;
    best_index = index;
  }
}

// One block per row.
__global__ void __launch_bounds__(kThreads) ArgmaxKernel(ArgmaxParams p) {
  __shared__ float warp_best[32];
  __shared__ int warp_index[32];
  const size_t base = static_cast<size_t>(blockIdx.x) * p.vocab;
  float best = 0.0f;
  int best_index = -1;
  for (int j = threadIdx.x; j < p.vocab; j += blockDim.x) {
    const float value = LoadAsFloat(p.logits, p.logits_type, base + j);
    if (!isnan(value)) Better(best, best_index, value, j);
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(kFullMask, best, offset);
    const int other_index = __shfl_xor_sync(kFullMask, best_index, offset);
    if (other_index >= 0) Better(best, best_index, other, other_index);
  }
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) {
    warp_best[warp] = best;
    warp_index[warp] = best_index;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < static_cast<int>(blockDim.x >> 5); ++w) {
      if (warp_index[w] >= 0) Better(best, best_index, warp_best[w], warp_index[w]);
    }
    p.out[blockIdx.x] = best_index < 0 ? 0 : best_index;
  }
}

}  // namespace

cudaError_t InvokeArgmax(const ArgmaxParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.b == 0) return cudaSuccess;
  ArgmaxKernel<<<params.b, kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace pdserve::gpu
