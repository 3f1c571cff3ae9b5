// Deterministic pseudo-random fill on the device, for synthetic weights
// (benchmarks of full-size models without a checkpoint file): element i is
// center + scale * u_i with u_i uniform in [-1, 1), a hash of (seed, i).
#ifndef PDSERVE_KERNELS_CUDA_RANDOM_FILL_H_
#define PDSERVE_KERNELS_CUDA_RANDOM_FILL_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

struct RandomFillParams {
  void* out = nullptr;  // [n], out_type
  ElementType out_type = ElementType::kBF16;
  size_t n = 0;  // 0 launches nothing
  uint64_t seed = 0;
  float center = 0.0f;
  float scale = 1.0f;

  const char* Validate() const {
    if (!IsValid(out_type)) return "RandomFillParams element type";
    if (n > 0 && out == nullptr) return "RandomFillParams.out must be set";
    return nullptr;
  }
};

cudaError_t InvokeRandomFill(const RandomFillParams& params, cudaStream_t stream);

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_RANDOM_FILL_H_
