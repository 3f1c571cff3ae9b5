// Element type conversion on the device (float32 <-> bfloat16 <-> float16,
// round to nearest even), for host<->device copies that change the dtype and
// for the bf16 copies of activations that the GEMMs read.
#ifndef PDSERVE_KERNELS_CUDA_CONVERT_H_
#define PDSERVE_KERNELS_CUDA_CONVERT_H_

#include <cuda_runtime.h>

#include <cstddef>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

struct ConvertParams {
  const void* src = nullptr;  // [n], src_type
  ElementType src_type = ElementType::kF32;
  void* dst = nullptr;  // [n], dst_type; must not overlap src unless it is src
  ElementType dst_type = ElementType::kBF16;
  size_t n = 0;  // 0 launches nothing

  const char* Validate() const {
    if (!IsValid(src_type) || !IsValid(dst_type)) return "ConvertParams element type";
    if (n > 0 && (src == nullptr || dst == nullptr))
      return "ConvertParams.src and .dst must be set";
    if (n > 0 && src == dst && src_type != dst_type) {
      return "ConvertParams: in place needs src_type == dst_type";
    }
    return nullptr;
  }
};

cudaError_t InvokeConvert(const ConvertParams& params, cudaStream_t stream);

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_CONVERT_H_
