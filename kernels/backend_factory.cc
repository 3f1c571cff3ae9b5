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
  return CreateBackend(device, CpuBackendOptions{});
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device,
                                                       const CpuBackendOptions& cpu_options) {
  if (device == "cpu") return CreateCpuBackend(cpu_options);
  if (device == "cuda" || device == "auto") {
#ifdef PDSERVE_HAVE_CUDA
    if (CudaDeviceCount() > 0) return CreateCudaBackend();
    if (device == "auto") return CreateCpuBackend(cpu_options);
    return absl::UnavailableError(
        "--device cuda: no CUDA device is present (or the driver failed)");
#else
    if (device == "auto") return CreateCpuBackend(cpu_options);
    return absl::UnavailableError(
        "--device cuda: this build has no CUDA backend (configure with -DPDSERVE_CUDA=ON)");
#endif
  }
  return absl::InvalidArgumentError(absl::StrCat("--device: unknown device '", std::string(device),
                                                 "' (expected cpu, cuda or auto)"));
}

absl::StatusOr<DType> ParseCpuWeightDtype(std::string_view text) {
  if (text == "f32") return DType::kF32;
  if (text == "bf16") return DType::kBF16;
  return absl::InvalidArgumentError(absl::StrCat("--cpu_weight_dtype: unknown dtype '",
                                                 std::string(text), "' (expected f32 or bf16)"));
}

}  // namespace pdserve
