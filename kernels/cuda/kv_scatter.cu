#include "kernels/cuda/kv_scatter.h"

#include "kernels/cuda/slot_row_copy.cuh"

namespace pdserve::gpu {

cudaError_t InvokeKvScatter(const KvScatterParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.n == 0) return cudaSuccess;
  const SlotRowCopyPlan plan{{params.k, params.v},
                             {params.k_cache, params.v_cache},
                             {params.k_type, params.v_type},
                             {params.cache_type, params.cache_type},
                             params.slot_mapping,
                             params.n,
                             params.kv_width,
                             params.num_slots};
  return LaunchSlotRowCopy<SlotSide::kDestination>(plan, stream);
}

}  // namespace pdserve::gpu
