#include "kernels/cuda/kv_gather.h"

#include "kernels/cuda/slot_row_copy.cuh"

namespace pdserve::gpu {

cudaError_t InvokeKvGather(const KvGatherParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.n == 0) return cudaSuccess;
  SlotRowCopyPlan plan{};
  plan.src[0] = params.k_cache;
  plan.src[1] = params.v_cache;
  plan.src_type[0] = params.cache_type;
  plan.src_type[1] = params.cache_type;
  plan.dst[0] = params.k;
  plan.dst[1] = params.v;
  plan.dst_type[0] = params.k_type;
  plan.dst_type[1] = params.v_type;
  plan.slots = params.slot_mapping;
  plan.n = params.n;
  plan.width = params.kv_width;
  plan.num_slots = params.num_slots;
  return LaunchSlotRowCopy<SlotSide::kSource>(plan, stream);
}

}  // namespace pdserve::gpu
