// Packs cached tokens into a contiguous range, the inverse of KV scatter:
// k[i, :] = k_cache[slot_mapping[i], :], same for v. Used to stream a paged
// sequence's KV as token ranges.
#ifndef PDSERVE_KERNELS_CUDA_KV_GATHER_H_
#define PDSERVE_KERNELS_CUDA_KV_GATHER_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

struct KvGatherParams {
  const void* k_cache = nullptr;  // [num_slots, kv_width], cache_type
  const void* v_cache = nullptr;  // [num_slots, kv_width], cache_type
  ElementType cache_type = ElementType::kBF16;
  const int32_t* slot_mapping = nullptr;  // [n]; -1 leaves row i of k and v as it is
  void* k = nullptr;                      // [n, kv_width], k_type
  ElementType k_type = ElementType::kBF16;
  void* v = nullptr;  // [n, kv_width], v_type
  ElementType v_type = ElementType::kBF16;
  int n = 0;  // tokens; 0 launches nothing
  int kv_width = 0;
  int num_slots = 0;

  const char* Validate() const {
    if (n < 0 || kv_width <= 0 || num_slots < 0) {
      return "KvGatherParams.n, .num_slots must be >= 0 and .kv_width > 0";
    }
    if (!IsValid(k_type) || !IsValid(v_type) || !IsValid(cache_type)) {
      return "KvGatherParams element type";
    }
    if (n > 0 && (k == nullptr || v == nullptr || slot_mapping == nullptr || k_cache == nullptr ||
                  v_cache == nullptr)) {
      return "KvGatherParams.k, .v, .slot_mapping, .k_cache and .v_cache must be set";
    }
    return nullptr;
  }
};

// A slot outside [0, num_slots) other than -1 is a caller bug: that row is
// left unwritten, nothing is read out of bounds.
cudaError_t InvokeKvGather(const KvGatherParams& params, cudaStream_t stream);

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_KV_GATHER_H_
