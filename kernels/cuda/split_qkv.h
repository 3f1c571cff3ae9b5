// Splits a fused q/k/v projection into three head-major tensors.
#ifndef PDSERVE_KERNELS_CUDA_SPLIT_QKV_H_
#define PDSERVE_KERNELS_CUDA_SPLIT_QKV_H_

#include <cuda_runtime.h>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

struct SplitQkvParams {
  // [n, (num_heads + 2 * num_kv_heads) * head_dim]: per row q, then k, then v.
  const void* qkv = nullptr;
  ElementType qkv_type = ElementType::kF32;
  void* q = nullptr;  // [n, num_heads, head_dim]
  ElementType q_type = ElementType::kF32;
  void* k = nullptr;  // [n, num_kv_heads, head_dim]
  ElementType k_type = ElementType::kF32;
  void* v = nullptr;  // [n, num_kv_heads, head_dim]
  ElementType v_type = ElementType::kF32;
  int n = 0;  // tokens; 0 launches nothing
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;

  const char* Validate() const {
    if (n < 0) return "SplitQkvParams.n < 0";
    if (num_heads <= 0 || num_kv_heads <= 0 || head_dim <= 0) {
      return "SplitQkvParams head counts and head_dim must be > 0";
    }
    if (!IsValid(qkv_type) || !IsValid(q_type) || !IsValid(k_type) || !IsValid(v_type)) {
      return "SplitQkvParams element type";
    }
    if (n > 0 && (qkv == nullptr || q == nullptr || k == nullptr || v == nullptr)) {
      return "SplitQkvParams.qkv, .q, .k and .v must be set";
    }
    return nullptr;
  }
};

cudaError_t InvokeSplitQkv(const SplitQkvParams& params, cudaStream_t stream);

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_SPLIT_QKV_H_
