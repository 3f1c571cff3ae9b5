// Device helpers shared by the kernels in this directory: element
// conversions, warp and block reductions, launch geometry. Included only by
// .cu files.
#ifndef PDSERVE_KERNELS_CUDA_DEVICE_MATH_CUH_
#define PDSERVE_KERNELS_CUDA_DEVICE_MATH_CUH_

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

// ---- conversions ------------------------------------------------------------
__device__ __forceinline__ float ToFloat(float v) { return v; }
__device__ __forceinline__ float ToFloat(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float ToFloat(__half v) { return __half2float(v); }

// Round to nearest even, as shared/dtype.h does on the host.
template <typename T>
__device__ __forceinline__ T FromFloat(float v);
template <>
__device__ __forceinline__ float FromFloat<float>(float v) {
  return v;
}
template <>
__device__ __forceinline__ __nv_bfloat16 FromFloat<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}
template <>
__device__ __forceinline__ __half FromFloat<__half>(float v) {
  return __float2half_rn(v);
}

// Run-time typed element access, for memory-bound elementwise kernels whose
// buffers may be float32 or 16-bit. The switch takes the same branch in every
// thread of the grid, so it costs no divergence.
__device__ __forceinline__ float LoadAsFloat(const void* base, ElementType type, size_t i) {
  switch (type) {
    case ElementType::kBF16:
      return __bfloat162float(static_cast<const __nv_bfloat16*>(base)[i]);
    case ElementType::kF16:
      return __half2float(static_cast<const __half*>(base)[i]);
    case ElementType::kF32:
    default:
      return static_cast<const float*>(base)[i];
  }
}

__device__ __forceinline__ void StoreFromFloat(void* base, ElementType type, size_t i, float v) {
  switch (type) {
    case ElementType::kBF16:
      static_cast<__nv_bfloat16*>(base)[i] = __float2bfloat16_rn(v);
      return;
    case ElementType::kF16:
      static_cast<__half*>(base)[i] = __float2half_rn(v);
      return;
    case ElementType::kF32:
    default:
      static_cast<float*>(base)[i] = v;
      return;
  }
}

// ---- reductions -------------------------------------------------------------
constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float WarpSum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = 16; offset > 0; offset >>= 1)
    v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

// Sum over the block, returned to every thread. blockDim.x must be a multiple
// of 32 (at most 1024) and every thread must call it. `scratch` holds 32
// floats of shared memory; it may be reused once the call returns.
__device__ __forceinline__ float BlockSum(float v, float* scratch) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int num_warps = blockDim.x >> 5;
  v = WarpSum(v);
  __syncthreads();  // scratch may still be read by a previous call
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  v = lane < num_warps ? scratch[lane] : 0.0f;
  return WarpSum(v);
}

// ---- launch geometry ----------------------------------------------------------
// A grid-stride loop over n items, launched with GridStrideBlocks:
//   const size_t stride = GridThreadCount();
//   for (size_t i = GridThreadIndex(); i < n; i += stride)
// This thread's first item (1-D grid) and the threads in the grid's x
// dimension, in size_t so that n past 2^32 items does not wrap. (The stride
// read once before the loop compiles to the same code as the loops had
// before these helpers; in the loop's increment it does not.)
__device__ __forceinline__ size_t GridThreadIndex() {
  return static_cast<size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ size_t GridThreadCount() {
  return static_cast<size_t>(gridDim.x) * blockDim.x;
}

// Blocks for a grid-stride loop over n items: enough to fill any current GPU
// many times over, few enough that each thread does several items.
inline unsigned GridStrideBlocks(size_t n, int threads_per_block) {
  constexpr size_t kMaxBlocks = 8192;
  size_t blocks = (n + threads_per_block - 1) / threads_per_block;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return static_cast<unsigned>(blocks == 0 ? 1 : blocks);
}

// Calls f(TypeTag<T>{}) with T the C++ type of `type`; host side, for
// instantiating templated kernels.
template <typename T>
struct TypeTag {
  using type = T;
};

template <typename F>
cudaError_t DispatchElementType(ElementType type, F&& f) {
  switch (type) {
    case ElementType::kF32:
      return f(TypeTag<float>{});
    case ElementType::kBF16:
      return f(TypeTag<__nv_bfloat16>{});
    case ElementType::kF16:
      return f(TypeTag<__half>{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_DEVICE_MATH_CUH_
