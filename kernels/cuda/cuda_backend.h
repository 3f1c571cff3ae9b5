// The CUDA backend: cuBLAS for the GEMMs, our kernels for the rest.
// Only compiled when CMake found nvcc (PDSERVE_HAVE_CUDA).
#ifndef PDSERVE_KERNELS_CUDA_CUDA_BACKEND_H_
#define PDSERVE_KERNELS_CUDA_CUDA_BACKEND_H_

#include <memory>

#include "absl/status/statusor.h"
#include "shared/backend.h"

namespace pdserve {

// Number of CUDA devices; 0 when the driver is missing or fails
// (cudaErrorInsufficientDriver and any other error count as "no device").
int CudaDeviceCount();

// A backend on device 0. UNAVAILABLE when no device is present.
absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend();

}  // namespace pdserve

#endif  // PDSERVE_KERNELS_CUDA_CUDA_BACKEND_H_
