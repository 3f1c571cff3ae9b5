// The one way services obtain a Backend.
#ifndef PDSERVE_KERNELS_BACKEND_FACTORY_H_
#define PDSERVE_KERNELS_BACKEND_FACTORY_H_

#include <memory>
#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/cpu/cpu_backend.h"
#include "shared/backend.h"

namespace pdserve {

// `device`: "cpu"; "cuda" (UNAVAILABLE when built without CUDA or when no
// device is present, naming the reason); "auto" (CUDA when a device is
// present, else CPU). INVALID_ARGUMENT for anything else.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device);

// As CreateBackend(device), building the CPU backend (for "cpu", or "auto"
// without a CUDA device) with `cpu_options`.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device,
                                                       const CpuBackendOptions& cpu_options);

// The value of a `--cpu_weight_dtype` flag: "f32" or "bf16" (see
// CpuBackendOptions::weight_dtype). INVALID_ARGUMENT for anything else.
absl::StatusOr<DType> ParseCpuWeightDtype(std::string_view text);

// True when this build has the CUDA backend and a device is present.
bool CudaDeviceAvailable();

}  // namespace pdserve

#endif  // PDSERVE_KERNELS_BACKEND_FACTORY_H_
