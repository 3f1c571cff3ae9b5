// The CPU backend: OpenBLAS for the GEMMs, plain loops for the rest. It is
// the numerical reference the CUDA backend is checked against.
#ifndef PDSERVE_KERNELS_CPU_CPU_BACKEND_H_
#define PDSERVE_KERNELS_CPU_CPU_BACKEND_H_

#include <memory>

#include "shared/backend.h"

namespace pdserve {

// Activations, weights and KV cache in float32; BF16/F16 weights are
// converted at upload, F32 weights are used in place.
std::unique_ptr<Backend> CreateCpuBackend();

}  // namespace pdserve

#endif  // PDSERVE_KERNELS_CPU_CPU_BACKEND_H_
