#include "kernels/cuda/convert.h"

#include "kernels/cuda/device_math.cuh"

namespace pdserve::gpu {
namespace {

constexpr int kThreads = 256;

template <typename Src, typename Dst>
__global__ void ConvertKernel(const Src* src, Dst* dst, size_t n) {
  const size_t stride = GridThreadCount();
  for (size_t i = GridThreadIndex(); i < n; i += stride) {
    dst[i] = FromFloat<Dst>(ToFloat(src[i]));
  }
}

}  // namespace

cudaError_t InvokeConvert(const ConvertParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.n == 0) return cudaSuccess;
  if (params.src_type == params.dst_type) {
    if (params.src == params.dst) return cudaSuccess;
    return cudaMemcpyAsync(params.dst, params.src, params.n * ElementSize(params.src_type),
                           cudaMemcpyDeviceToDevice, stream);
  }
  const unsigned blocks = GridStrideBlocks(params.n, kThreads);
  return DispatchElementType(params.src_type, [&](auto src_tag) {
    using Src = typename decltype(src_tag)::type;
    return DispatchElementType(params.dst_type, [&](auto dst_tag) {
      using Dst = typename decltype(dst_tag)::type;
      ConvertKernel<Src, Dst><<<blocks, kThreads, 0, stream>>>(
          static_cast<const Src*>(params.src), static_cast<Dst*>(params.dst), params.n);
      return cudaGetLastError();
    });
  });
}

}  // namespace pdserve::gpu
