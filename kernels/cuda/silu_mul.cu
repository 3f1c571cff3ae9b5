#include "kernels/cuda/silu_mul.h"

#include "kernels/cuda/device_math.cuh"

namespace pdserve::gpu {
namespace {

constexpr int kThreads = 256;

__global__ void SiluMulKernel(SiluMulParams p) {
  const size_t total = static_cast<size_t>(p.m) * p.f;
  const size_t stride = GridThreadCount();
  for (size_t idx = GridThreadIndex(); idx < total; idx += stride) {
    const size_t row = idx / p.f;
    const size_t col = idx - row * p.f;
    const size_t gate_index = row * 2 * p.f + col;
    const float gate = LoadAsFloat(p.gate_up, p.gate_up_type, gate_index);
    const float up = LoadAsFloat(p.gate_up, p.gate_up_type, gate_index + p.f);
    StoreFromFloat(p.out, p.out_type, idx, gate / (1.0f + expf(-gate)) * up);
  }
}

}  // namespace

cudaError_t InvokeSiluMul(const SiluMulParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.m == 0) return cudaSuccess;
  const size_t total = static_cast<size_t>(params.m) * params.f;
  SiluMulKernel<<<GridStrideBlocks(total, kThreads), kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace pdserve::gpu
