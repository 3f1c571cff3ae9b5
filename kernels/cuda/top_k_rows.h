// Each row's k largest entries on the device (Backend::TopKRows), so the
// host samples from k candidates instead of copying a vocabulary of logits.
#ifndef PDSERVE_KERNELS_CUDA_TOP_K_ROWS_H_
#define PDSERVE_KERNELS_CUDA_TOP_K_ROWS_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

struct TopKRowsParams {
  static constexpr int kMaxK = 64;  // Backend::kMaxTopKRows

  const void* x = nullptr;  // [rows, cols], row-major, x_type
  ElementType x_type = ElementType::kF32;
  float* values = nullptr;  // [rows, k]
  int32_t* ids = nullptr;   // [rows, k]
  int rows = 0;             // 0 launches nothing
  int cols = 0;
  int k = 0;  // 1 <= k <= min(cols, kMaxK)

  const char* Validate() const {
    if (rows < 0 || cols <= 0) return "TopKRowsParams.rows must be >= 0 and .cols > 0";
    if (k < 1 || k > cols || k > kMaxK) return "TopKRowsParams.k must be in [1, min(cols, 64)]";
    if (!IsValid(x_type)) return "TopKRowsParams element type";
    if (rows > 0 && (x == nullptr || values == nullptr || ids == nullptr)) {
      return "TopKRowsParams.x, .values and .ids must be set";
    }
    return nullptr;
  }
};

// values[r, i], ids[r, i]: row r's i-th entry in the order "larger value
// first, the smaller index on a tie" (the CPU reference's std::partial_sort
// comparison); NaN is never chosen, and slots past a row's non-NaN entries
// are (-inf, -1). -0.0 and +0.0 tie; values are written as read (-0.0 stays
// -0.0).
cudaError_t InvokeTopKRows(const TopKRowsParams& params, cudaStream_t stream);

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_TOP_K_ROWS_H_
