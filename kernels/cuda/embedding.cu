#include "kernels/cuda/embedding.h"

#include "kernels/cuda/device_math.cuh"

namespace pdserve::gpu {
namespace {

// One block per token row; threads stride over the hidden dimension.
__global__ void EmbeddingKernel(EmbeddingParams p) {
  const int row = blockIdx.x;
  const int32_t id = p.ids[row];
  const size_t out_base = static_cast<size_t>(row) * p.hidden;
  if (id < 0 || id >= p.vocab) {
    for (int j = threadIdx.x; j < p.hidden; j += blockDim.x) {
      StoreFromFloat(p.out, p.out_type, out_base + j, __int_as_float(0x7fc00000));
    }
    return;
  }
  const size_t in_base = static_cast<size_t>(id) * p.hidden;
  for (int j = threadIdx.x; j < p.hidden; j += blockDim.x) {
    StoreFromFloat(p.out, p.out_type, out_base + j,
                   LoadAsFloat(p.table, p.table_type, in_base + j));
  }
}

}  // namespace

cudaError_t InvokeEmbedding(const EmbeddingParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.n == 0) return cudaSuccess;
  EmbeddingKernel<<<params.n, 256, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace pdserve::gpu
