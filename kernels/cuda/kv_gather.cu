#include "kernels/cuda/kv_gather.h"

#include "kernels/cuda/slot_row_copy.cuh"

namespace pdserve::gpu {

cudaError_t InvokeKvGather(const KvGatherParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.n == 0) return cudaSuccess;
  const SlotRowCopyPlan plan{{params.k_cache, params.v_cache},
                             {params.k, params.v},
                             {params.cache_type, params.cache_type},
                             {params.k_type, params.v_type},
                             params.slot_mapping,
                             params.n,
                             params.kv_width,
                             params.num_slots};
  return LaunchSlotRowCopy<SlotSide::kSource>(plan, stream);
}

}  // namespace pdserve::gpu
