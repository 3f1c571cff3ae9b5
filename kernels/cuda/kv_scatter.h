// Writes new tokens' K and V into a paged cache through a slot mapping
// (vLLM's reshape_and_cache): k_cache[slot_mapping[i], :] = k[i, :], same
// for v; slot -1 marks padding and writes nothing.
#ifndef PDSERVE_KERNELS_CUDA_KV_SCATTER_H_
#define PDSERVE_KERNELS_CUDA_KV_SCATTER_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

struct KvScatterParams {
  const void* k = nullptr;  // [n, kv_width], k_type
  ElementType k_type = ElementType::kF32;
  const void* v = nullptr;  // [n, kv_width], v_type
  ElementType v_type = ElementType::kF32;
  const int32_t* slot_mapping = nullptr;  // [n]: slot = block * block_size + offset, or -1
  void* k_cache = nullptr;                // [num_slots, kv_width], cache_type
  void* v_cache = nullptr;                // [num_slots, kv_width], cache_type
  ElementType cache_type = ElementType::kBF16;
  int n = 0;          // tokens; 0 launches nothing
  int kv_width = 0;   // num_kv_heads * head_dim
  int num_slots = 0;  // num_blocks * block_size

  const char* Validate() const {
    if (n < 0 || kv_width <= 0 || num_slots < 0) {
      return "KvScatterParams.n, .num_slots must be >= 0 and .kv_width > 0";
    }
    if (!IsValid(k_type) || !IsValid(v_type) || !IsValid(cache_type)) {
      return "KvScatterParams element type";
    }
    if (n > 0 && (k == nullptr || v == nullptr || slot_mapping == nullptr || k_cache == nullptr ||
                  v_cache == nullptr)) {
      return "KvScatterParams.k, .v, .slot_mapping, .k_cache and .v_cache must be set";
    }
    return nullptr;
  }
};

// A slot outside [0, num_slots) other than -1 is a caller bug the device
// cannot report: that token is skipped, nothing is written out of bounds.
cudaError_t InvokeKvScatter(const KvScatterParams& params, cudaStream_t stream);

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_KV_SCATTER_H_
