// A read-only view of a tensor in host memory (typically inside a
// memory-mapped safetensors file).
#ifndef PDSERVE_SHARED_HOST_TENSOR_H_
#define PDSERVE_SHARED_HOST_TENSOR_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "shared/dtype.h"

namespace pdserve {

// Row-major tensor; `data` stays valid while the object that produced the
// view (e.g. SafetensorsFile, ModelWeights) is alive.
struct HostTensor {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t num_bytes = 0;

  int64_t num_elements() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

}  // namespace pdserve

#endif  // PDSERVE_SHARED_HOST_TENSOR_H_
