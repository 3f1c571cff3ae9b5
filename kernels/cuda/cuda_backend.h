// The CUDA backend: cuBLAS for the GEMMs, our kernels for the rest.
// Only compiled when CMake found nvcc (PDSERVE_HAVE_CUDA).
#ifndef PDSERVE_KERNELS_CUDA_CUDA_BACKEND_H_
#define PDSERVE_KERNELS_CUDA_CUDA_BACKEND_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "shared/backend.h"

namespace pdserve {

// Number of CUDA devices; 0 when the driver is missing or fails
// (cudaErrorInsufficientDriver and any other error count as "no device").
int CudaDeviceCount();

struct CudaBackendOptions {
  // For benchmarks of full-size models without a checkpoint file:
  // UploadWeight checks shapes and dtypes as usual but ignores the tensors'
  // data (which may be null) and fills each weight on the device with
  // deterministic pseudo-random bf16 (seeded by `synthetic_seed` and the
  // upload's ordinal): matrices uniform with variance 1/cols, vectors
  // uniform in [0.9, 1.1). Never set in a service.
  bool synthetic_weights = false;
  uint64_t synthetic_seed = 0;
};

// A backend on device 0. UNAVAILABLE when no device is present; INTERNAL
// when the stream or the cuBLAS handle cannot be created.
//
// All work goes to one stream created with default (blocking) flags, so
// work on the legacy default stream (stream 0) orders against it: a caller
// may time backend ops with CUDA events recorded on stream 0.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend();
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options);

}  // namespace pdserve

#endif  // PDSERVE_KERNELS_CUDA_CUDA_BACKEND_H_
