// Element types the CUDA kernels read and write. The kernels see only plain
// pointers and this enum, never shared/dtype.h or the Backend interface, so
// the .cu files compile from CUDA alone; cuda_backend.cc maps DType onto it.
#ifndef PDSERVE_KERNELS_CUDA_ELEMENT_TYPE_H_
#define PDSERVE_KERNELS_CUDA_ELEMENT_TYPE_H_

#include <cstddef>

namespace pdserve::gpu {

enum class ElementType : int {
  kF32 = 0,   // IEEE float32
  kBF16 = 1,  // bfloat16 (__nv_bfloat16)
  kF16 = 2,   // IEEE binary16 (__half)
};

constexpr size_t ElementSize(ElementType type) { return type == ElementType::kF32 ? 4 : 2; }

constexpr bool IsValid(ElementType type) {
  return type == ElementType::kF32 || type == ElementType::kBF16 || type == ElementType::kF16;
}

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_ELEMENT_TYPE_H_
