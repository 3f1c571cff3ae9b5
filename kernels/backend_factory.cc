#include "kernels/backend_factory.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"
#ifdef PDSERVE_HAVE_CUDA
#include "kernels/cuda/cuda_backend.h"
#endif

namespace pdserve {

bool CudaDeviceAvailable() {
#ifdef PDSERVE_HAVE_CUDA
  return CudaDeviceCount() > 0;
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device) {
  if (device == "cpu") return CreateCpuBackend();
  if (device == "cuda" || device == "auto") {
#ifdef PDSERVE_HAVE_CUDA
    if (CudaDeviceCount() > 0) return CreateCudaBackend();
    if (device == "auto") return CreateCpuBackend();
    return absl::UnavailableError("--device cuda: no CUDA device is present (or the driver failed)");
#else
    if (device == "auto") return CreateCpuBackend();
    return absl::UnavailableError(
        "--device cuda: this build has no CUDA backend (configure with -DPDSERVE_CUDA=ON)");
#endif
  }
  return absl::InvalidArgumentError(
      absl::StrCat("--device: unknown device '", std::string(device), "' (expected cpu, cuda or auto)"));
}

}  // namespace pdserve
