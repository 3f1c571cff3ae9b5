// The data movement shared by KV scatter and KV gather: copy token rows
// between a contiguous [n, width] tensor and a slot-addressed cache
// [num_slots, width], converting the element type when the two differ.
// Included only by kv_scatter.cu and kv_gather.cu.
#ifndef PDSERVE_KERNELS_CUDA_SLOT_ROW_COPY_CUH_
#define PDSERVE_KERNELS_CUDA_SLOT_ROW_COPY_CUH_

#include <cstdint>

#include "kernels/cuda/device_math.cuh"

namespace pdserve::gpu {

// Which side the slot mapping indexes.
enum class SlotSide { kDestination, kSource };

struct SlotRowCopyPlan {
  const void* src[2];  // K and V (blockIdx.y selects)
  void* dst[2];
  ElementType src_type[2];
  ElementType dst_type[2];
  const int32_t* slots;  // [n]; -1 skips the row, other out-of-range slots too
  int n;
  int width;
  int num_slots;
};

// The grid-stride walk both kernels share, over the n * width items of the
// contiguous [n, width] side (width counts elements or 16-byte chunks
// alike): calls copy(src_index, dst_index) with the item's index there and
// in the slot-addressed cache, as the copy's source and destination for
// kSide. Rows whose slot is -1 or outside [0, num_slots) are skipped.
template <SlotSide kSide, typename Copy>
__device__ __forceinline__ void ForEachSlotRowItem(const SlotRowCopyPlan& p, int width,
                                                   const Copy& copy) {
  const size_t total = static_cast<size_t>(p.n) * width;
  const size_t stride = GridThreadCount();
  for (size_t idx = GridThreadIndex(); idx < total; idx += stride) {
    const size_t row = idx / width;
    const size_t col = idx - row * width;
    const int32_t slot = p.slots[row];
    if (slot < 0 || slot >= p.num_slots) continue;
    const size_t slot_index = static_cast<size_t>(slot) * width + col;
    const size_t src_index = kSide == SlotSide::kSource ? slot_index : idx;
    const size_t dst_index = kSide == SlotSide::kDestination ? slot_index : idx;
    copy(src_index, dst_index);
  }
}

// One element at a time, converting; blockIdx.y picks K (0) or V (1).
template <SlotSide kSide>
__global__ void SlotRowCopyKernel(SlotRowCopyPlan p) {
  const int which = blockIdx.y;
  const void* src = p.src[which];
  void* dst = p.dst[which];
  const ElementType src_type = p.src_type[which];
  const ElementType dst_type = p.dst_type[which];
  ForEachSlotRowItem<kSide>(p, p.width, [&](size_t src_index, size_t dst_index) {
    StoreFromFloat(dst, dst_type, dst_index, LoadAsFloat(src, src_type, src_index));
  });
}

// Same-type copy in 16-byte pieces: rows are `chunks` uint4 wide.
template <SlotSide kSide>
__global__ void SlotRowCopyVectorKernel(SlotRowCopyPlan p, int chunks) {
  const int which = blockIdx.y;
  const uint4* src = static_cast<const uint4*>(p.src[which]);
  uint4* dst = static_cast<uint4*>(p.dst[which]);
  ForEachSlotRowItem<kSide>(
      p, chunks, [&](size_t src_index, size_t dst_index) { dst[dst_index] = src[src_index]; });
}

inline bool Aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

template <SlotSide kSide>
cudaError_t LaunchSlotRowCopy(const SlotRowCopyPlan& plan, cudaStream_t stream) {
  constexpr int kThreads = 256;
  bool vector = true;
  for (int which = 0; which < 2; ++which) {
    vector = vector && plan.src_type[which] == plan.dst_type[which] &&
             (static_cast<size_t>(plan.width) * ElementSize(plan.src_type[which])) % 16 == 0 &&
             Aligned16(plan.src[which]) && Aligned16(plan.dst[which]);
  }
  // K and V share the row width but may differ in type; the vector path
  // needs both rows to span the same number of 16-byte chunks.
  vector = vector && ElementSize(plan.src_type[0]) == ElementSize(plan.src_type[1]);
  if (vector) {
    const int chunks =
        static_cast<int>(static_cast<size_t>(plan.width) * ElementSize(plan.src_type[0]) / 16);
    const dim3 grid(GridStrideBlocks(static_cast<size_t>(plan.n) * chunks, kThreads), 2);
    SlotRowCopyVectorKernel<kSide><<<grid, kThreads, 0, stream>>>(plan, chunks);
  } else {
    const dim3 grid(GridStrideBlocks(static_cast<size_t>(plan.n) * plan.width, kThreads), 2);
    SlotRowCopyKernel<kSide><<<grid, kThreads, 0, stream>>>(plan);
  }
  return cudaGetLastError();
}

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_SLOT_ROW_COPY_CUH_
