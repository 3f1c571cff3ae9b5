// Rotary position embedding (Su et al. 2021, RoFormer) in place, with Hugging
// Face's "rotate_half" pairing: for every head and i < head_dim/2 the pair
// (x[i], x[i + head_dim/2]) turns by positions[t] * theta^(-2i/head_dim)
// radians:
//   x[i]            <- x[i] cos - x[i + hd/2] sin
//   x[i + hd/2]     <- x[i + hd/2] cos + x[i] sin
#ifndef PDSERVE_KERNELS_CUDA_ROPE_H_
#define PDSERVE_KERNELS_CUDA_ROPE_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

struct RopeParams {
  void* q = nullptr;  // [n, num_heads, head_dim], q_type, rotated in place
  ElementType q_type = ElementType::kF32;
  void* k = nullptr;  // [n, num_kv_heads, head_dim], k_type, rotated in place
  ElementType k_type = ElementType::kF32;
  const int32_t* positions = nullptr;  // [n], >= 0
  int n = 0;                           // tokens; 0 launches nothing
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // even
  float theta = 10000.0f;

  const char* Validate() const {
    if (n < 0) return "RopeParams.n < 0";
    if (num_heads <= 0 || num_kv_heads <= 0) return "RopeParams head counts must be > 0";
    if (head_dim <= 0 || head_dim % 2 != 0) return "RopeParams.head_dim must be even and > 0";
    if (!(theta > 0.0f)) return "RopeParams.theta must be > 0";
    if (!IsValid(q_type) || !IsValid(k_type)) return "RopeParams element type";
    if (n > 0 && (q == nullptr || k == nullptr || positions == nullptr)) {
      return "RopeParams.q, .k and .positions must be set";
    }
    return nullptr;
  }
};

// The angle is formed and its sine and cosine taken in double precision, as
// the CPU reference does, so that positions in the thousands keep float32
// accuracy.
cudaError_t InvokeRope(const RopeParams& params, cudaStream_t stream);

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_ROPE_H_
