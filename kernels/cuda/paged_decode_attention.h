// Decode attention: one new query token per sequence over that sequence's
// paged KV cache (vLLM's PagedAttention layout, Kwon et al. 2023). Sequence
// b's token j lives at slot
//   block_tables[b * max_blocks_per_seq + j / block_size] * block_size + j % block_size
// of the caches, and query head h reads KV head h / (num_heads / num_kv_heads).
//   out[b, h, :] = Σ_{j < context_lens[b]} softmax_j(scale · q[b, h, :] · k_j) v_j
// Softmax and accumulation in float32.
#ifndef PDSERVE_KERNELS_CUDA_PAGED_DECODE_ATTENTION_H_
#define PDSERVE_KERNELS_CUDA_PAGED_DECODE_ATTENTION_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

constexpr int kPagedAttentionMaxHeadDim = 256;

struct PagedDecodeAttentionParams {
  const void* q = nullptr;  // [batch, num_heads, head_dim], q_type
  ElementType q_type = ElementType::kF32;
  // [num_blocks * block_size, num_kv_heads * head_dim], cache_type
  const void* k_cache = nullptr;
  const void* v_cache = nullptr;
  ElementType cache_type = ElementType::kBF16;
  const int32_t* block_tables = nullptr;  // [batch, max_blocks_per_seq]
  const int32_t* context_lens = nullptr;  // [batch], each in [1, max_blocks_per_seq * block_size]
  void* out = nullptr;                    // [batch, num_heads, head_dim], out_type; not q
  ElementType out_type = ElementType::kF32;
  int batch = 0;  // sequences; 0 launches nothing
  int num_heads = 0;
  int num_kv_heads = 0;  // divides num_heads
  int head_dim = 0;      // 1..kPagedAttentionMaxHeadDim
  int block_size = 0;
  int max_blocks_per_seq = 0;
  int num_blocks = 0;  // blocks in the caches
  float scale = 0.0f;

  const char* Validate() const {
    if (batch < 0 || batch > 65535) return "PagedDecodeAttentionParams.batch must be in [0, 65535]";
    if (num_heads <= 0 || num_kv_heads <= 0 || num_heads % num_kv_heads != 0) {
      return "PagedDecodeAttentionParams.num_heads must be a positive multiple of .num_kv_heads";
    }
    if (head_dim <= 0 || head_dim > kPagedAttentionMaxHeadDim) {
      return "PagedDecodeAttentionParams.head_dim must be in [1, 256]";
    }
    if (block_size <= 0 || max_blocks_per_seq <= 0 || num_blocks < 0) {
      return "PagedDecodeAttentionParams.block_size and .max_blocks_per_seq must be > 0";
    }
    if (!IsValid(q_type) || !IsValid(cache_type) || !IsValid(out_type)) {
      return "PagedDecodeAttentionParams element type";
    }
    if (batch > 0 && (q == nullptr || k_cache == nullptr || v_cache == nullptr ||
                      block_tables == nullptr || context_lens == nullptr || out == nullptr)) {
      return "PagedDecodeAttentionParams pointers must be set";
    }
    if (batch > 0 && out == q) return "PagedDecodeAttentionParams.out must not alias q";
    return nullptr;
  }
};

// One thread block per (sequence, query head); its eight warps take groups
// of four keys in turn, each warp in one pass with an online softmax
// (Milakov & Gimelshein 2018), then the warps merge. Memory grows with
// nothing: any context length works. Caller bugs the device cannot
// report are contained: a context length above the table's reach is clamped
// to it, a key whose block id is outside [0, num_blocks) is skipped, and a
// sequence with no key gets zeros.
cudaError_t InvokePagedDecodeAttention(const PagedDecodeAttentionParams& params,
                                       cudaStream_t stream);

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_PAGED_DECODE_ATTENTION_H_
