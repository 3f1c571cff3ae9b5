// RMSNorm (Zhang & Sennrich 2019) as in Hugging Face LlamaRMSNorm:
// out[i, :] = x[i, :] / sqrt(mean(x[i, :]²) + eps) * weight, with the mean
// computed in float32.
#ifndef PDSERVE_KERNELS_CUDA_RMS_NORM_H_
#define PDSERVE_KERNELS_CUDA_RMS_NORM_H_

#include <cuda_runtime.h>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

struct RmsNormParams {
  const void* x = nullptr;  // [m, d], row-major, x_type
  ElementType x_type = ElementType::kF32;
  const void* weight = nullptr;  // [d], weight_type
  ElementType weight_type = ElementType::kBF16;
  void* out = nullptr;  // [m, d], out_type; may be x itself (same type)
  ElementType out_type = ElementType::kF32;
  int m = 0;  // rows; 0 launches nothing
  int d = 0;
  float eps = 1e-5f;

  const char* Validate() const {
    if (m < 0 || d <= 0) return "RmsNormParams.m must be >= 0 and .d > 0";
    if (!IsValid(x_type) || !IsValid(weight_type) || !IsValid(out_type)) {
      return "RmsNormParams element type";
    }
    if (m > 0 && (x == nullptr || weight == nullptr || out == nullptr)) {
      return "RmsNormParams.x, .weight and .out must be set";
    }
    if (out == x && out_type != x_type) return "RmsNormParams: in place needs out_type == x_type";
    if (!(eps >= 0.0f)) return "RmsNormParams.eps must be >= 0";
    return nullptr;
  }
};

cudaError_t InvokeRmsNorm(const RmsNormParams& params, cudaStream_t stream);

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_RMS_NORM_H_
