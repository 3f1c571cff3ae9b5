// Greedy decoding on the device: the index of each row's largest value.
#ifndef PDSERVE_KERNELS_CUDA_ARGMAX_H_
#define PDSERVE_KERNELS_CUDA_ARGMAX_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

struct ArgmaxParams {
  const void* logits = nullptr;  // [b, vocab], logits_type
  ElementType logits_type = ElementType::kF32;
  int32_t* out = nullptr;  // [b]
  int b = 0;               // rows; 0 launches nothing
  int vocab = 0;

  const char* Validate() const {
    if (b < 0 || vocab <= 0) return "ArgmaxParams.b must be >= 0 and .vocab > 0";
    if (!IsValid(logits_type)) return "ArgmaxParams element type";
    if (b > 0 && (logits == nullptr || out == nullptr))
      return "ArgmaxParams.logits and .out must be set";
    return nullptr;
  }
};

// Ties go to the smallest index (as std::max_element and torch.argmax on
// CPU); NaN never wins; a row of only NaN gives 0.
cudaError_t InvokeArgmax(const ArgmaxParams& params, cudaStream_t stream);

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_ARGMAX_H_
