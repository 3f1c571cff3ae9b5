// The CPU backend: its own AVX-512 GEMM for decode-sized batches, OpenBLAS
// for prefill-sized ones (AMX for bfloat16 weights where the CPU has it),
// plain loops (vectorised where it pays) for the rest. With float32 weights
// it is the numerical reference the CUDA backend is checked against.
#ifndef PDSERVE_KERNELS_CPU_CPU_BACKEND_H_
#define PDSERVE_KERNELS_CPU_CPU_BACKEND_H_

#include <memory>

#include "shared/backend.h"

namespace pdserve {

struct CpuBackendOptions {
  // How UploadWeight stores matrices (rank-2 weights: projections, the
  // embedding table, lm_head); vectors (norm weights) stay float32.
  //  * kF32 (default, the reference): BF16/F16 checkpoints are widened at
  //    upload; one F32 block is used in place.
  //  * kBF16: half the bytes, so a memory-bound decode step reads half as
  //    much. F32/F16 checkpoints are rounded to nearest even at upload.
  //    Activations stay float32 but are rounded to bfloat16 as GEMM inputs
  //    (products and sums in float32, as cuBLAS and OpenBLAS sbgemm do), so
  //    results differ from kF32 by bfloat16 rounding of the activations.
  //    Fastest with AMX-BF16 (Sapphire Rapids on: also 2-4x the float32
  //    prefill rate), then AVX-512 BF16; elsewhere each GEMM widens the
  //    weight a block at a time.
  // Any other dtype is treated as kF32.
  DType weight_dtype = DType::kF32;
  // Threads the ops split over, the calling thread included; 0: one per
  // hardware thread. (OpenBLAS, used for prefill-sized GEMMs, keeps its own
  // threads: OPENBLAS_NUM_THREADS.)
  int num_threads = 0;
};

// Activations and KV cache in float32; weights as `options` say.
std::unique_ptr<Backend> CreateCpuBackend(const CpuBackendOptions& options = {});

}  // namespace pdserve

#endif  // PDSERVE_KERNELS_CPU_CPU_BACKEND_H_
