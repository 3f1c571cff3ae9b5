// Embedding gather: out[i, :] = table[ids[i], :].
#ifndef PDSERVE_KERNELS_CUDA_EMBEDDING_H_
#define PDSERVE_KERNELS_CUDA_EMBEDDING_H_

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cuda/element_type.h"

namespace pdserve::gpu {

struct EmbeddingParams {
  const void* table = nullptr;  // [vocab, hidden], row-major, table_type
  ElementType table_type = ElementType::kBF16;
  const int32_t* ids = nullptr;  // [n], each in [0, vocab)
  void* out = nullptr;           // [n, hidden], row-major, out_type
  ElementType out_type = ElementType::kF32;
  int n = 0;  // tokens; 0 launches nothing
  int hidden = 0;
  int vocab = 0;

  // nullptr when usable, else the offending field.
  const char* Validate() const {
    if (n < 0) return "EmbeddingParams.n < 0";
    if (hidden <= 0 || vocab <= 0) return "EmbeddingParams.hidden and .vocab must be > 0";
    if (!IsValid(table_type) || !IsValid(out_type)) return "EmbeddingParams element type";
    if (n > 0 && (table == nullptr || ids == nullptr || out == nullptr)) {
      return "EmbeddingParams.table, .ids and .out must be set";
    }
    return nullptr;
  }
};

// An id outside [0, vocab) is a caller bug the device cannot report; its row
// is filled with NaN so that it shows in every later result, and nothing is
// read out of bounds.
cudaError_t InvokeEmbedding(const EmbeddingParams& params, cudaStream_t stream);

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_EMBEDDING_H_
