// Causal grouped-query attention over a contiguous K/V range (prefill):
// query i sits at position num_keys - num_queries + i and attends to keys
// 0..that position; query head h reads KV head h / (num_heads / num_kv_heads).
//   out[i, h, :] = Σ_j softmax_j(scale · q[i, h, :] · k[j, g, :]) v[j, g, :]
// Softmax and accumulation in float32.
#ifndef PDSERVE_KERNELS_CUDA_CAUSAL_ATTENTION_H_
#define PDSERVE_KERNELS_CUDA_CAUSAL_ATTENTION_H_

#include <cuda_runtime.h>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

// Largest head_dim the kernel instantiates (Llama and Phi-3 use 64 to 128).
constexpr int kCausalAttentionMaxHeadDim = 256;

struct CausalAttentionParams {
  const void* q = nullptr;  // [num_queries, num_heads, head_dim], q_type
  ElementType q_type = ElementType::kF32;
  const void* k = nullptr;  // [num_keys, num_kv_heads, head_dim], kv_type
  const void* v = nullptr;  // [num_keys, num_kv_heads, head_dim], kv_type
  ElementType kv_type = ElementType::kBF16;
  void* out = nullptr;  // [num_queries, num_heads, head_dim], out_type; not q
  ElementType out_type = ElementType::kF32;
  int num_queries = 0;  // n; 0 launches nothing
  int num_keys = 0;     // t >= n
  int num_heads = 0;
  int num_kv_heads = 0;  // divides num_heads
  int head_dim = 0;      // 1..kCausalAttentionMaxHeadDim
  float scale = 0.0f;    // usually 1/sqrt(head_dim)

  const char* Validate() const {
    if (num_queries < 0 || num_keys < num_queries) {
      return "CausalAttentionParams needs 0 <= num_queries <= num_keys";
    }
    if (num_heads <= 0 || num_kv_heads <= 0 || num_heads % num_kv_heads != 0) {
      return "CausalAttentionParams.num_heads must be a positive multiple of .num_kv_heads";
    }
    if (head_dim <= 0 || head_dim > kCausalAttentionMaxHeadDim) {
      return "CausalAttentionParams.head_dim must be in [1, 256]";
    }
    if (!IsValid(q_type) || !IsValid(kv_type) || !IsValid(out_type)) {
      return "CausalAttentionParams element type";
    }
    if (num_queries > 0 && (q == nullptr || k == nullptr || v == nullptr || out == nullptr)) {
      return "CausalAttentionParams.q, .k, .v and .out must be set";
    }
    if (num_queries > 0 && out == q) return "CausalAttentionParams.out must not alias q";
    return nullptr;
  }
};

// Tiled with an online softmax (Milakov & Gimelshein 2018; Dao et al. 2022,
// FlashAttention), so memory use does not grow with the sequence: a block
// takes 16 queries of one head and walks 32-key tiles of K and V through
// shared memory, stopping at the last key its queries can see.
cudaError_t InvokeCausalAttention(const CausalAttentionParams& params, cudaStream_t stream);

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_CAUSAL_ATTENTION_H_
