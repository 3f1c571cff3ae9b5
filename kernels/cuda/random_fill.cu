#include "kernels/cuda/random_fill.h"

#include "kernels/cuda/device_math.cuh"

namespace pdserve::gpu {
namespace {

constexpr int kThreads = 256;

// SplitMix64's finaliser (Steele, Lea & Flood 2014): a bijective 64-bit mix,
// so distinct (seed, index) pairs give independent-looking words.
__device__ __forceinline__ uint64_t Mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

__global__ void RandomFillKernel(RandomFillParams p) {
  const size_t stride = GridThreadCount();
  const uint64_t key = Mix64(p.seed + 0x9e3779b97f4a7c15ull);
  for (size_t i = GridThreadIndex(); i < p.n; i += stride) {
    const uint64_t bits = Mix64(key ^ (i * 0x9e3779b97f4a7c15ull));
    // 24 random bits -> [0, 1) exactly representable in float32.
    const float unit = static_cast<float>(bits >> 40) * (1.0f / 16777216.0f);
    StoreFromFloat(p.out, p.out_type, i, p.center + p.scale * (2.0f * unit - 1.0f));
  }
}

}  // namespace

cudaError_t InvokeRandomFill(const RandomFillParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.n == 0) return cudaSuccess;
  RandomFillKernel<<<GridStrideBlocks(params.n, kThreads), kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace pdserve::gpu
