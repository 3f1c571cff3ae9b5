// SwiGLU's gate (Shazeer 2020): out[i, j] = silu(gate_up[i, j]) *
// gate_up[i, f + j], silu(x) = x·σ(x) = x / (1 + e^-x).
#ifndef PDSERVE_KERNELS_CUDA_SILU_MUL_H_
#define PDSERVE_KERNELS_CUDA_SILU_MUL_H_

#include <cuda_runtime.h>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

struct SiluMulParams {
  const void* gate_up = nullptr;  // [m, 2f]: gate columns [0, f), up columns [f, 2f)
  ElementType gate_up_type = ElementType::kF32;
  void* out = nullptr;  // [m, f]
  ElementType out_type = ElementType::kF32;
  int m = 0;  // rows; 0 launches nothing
  int f = 0;  // FFN width

  const char* Validate() const {
    if (m < 0 || f <= 0) return "SiluMulParams.m must be >= 0 and .f > 0";
    if (!IsValid(gate_up_type) || !IsValid(out_type)) return "SiluMulParams element type";
    if (m > 0 && (gate_up == nullptr || out == nullptr)) {
      return "SiluMulParams.gate_up and .out must be set";
    }
    if (m > 0 && out == gate_up) return "SiluMulParams.out must not alias gate_up";
    return nullptr;
  }
};

cudaError_t InvokeSiluMul(const SiluMulParams& params, cudaStream_t stream);

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_SILU_MUL_H_
