// The CPU backend's own GEMM for few activation rows ("skinny": a decode step
// has one row per running sequence) against a weight in nn.Linear's
// row-major [n, k] layout, float32 or bfloat16, with AVX-512.
//
// Why not OpenBLAS for these: its sgemm packs both operands into blocks
// before multiplying, which pays off when the activation has hundreds of rows
// but at m = 2..32 costs more than the multiply (a batch-8 step measured
// slower than a batch-32 one), and the Debian OpenBLAS 0.3.21 build has no
// bfloat16 GEMM (cblas_sbgemm is declared but not exported). Here each
// weight row is read from memory once per call, straight from the caller's
// array, into register tiles of 4 weight rows x up to 6 activation rows
// (8 x 1-2 for one or two rows) that accumulate 16 columns at a time; see
// GemmRows in cpu_gemm_tile.h for the loop order and prefetching.
// Each function computes the rows [n_begin, n_end) of the output, so callers
// split n over threads.
#ifndef PDSERVE_KERNELS_CPU_CPU_GEMM_H_
#define PDSERVE_KERNELS_CPU_CPU_GEMM_H_

#include <cstddef>
#include <cstdint>

namespace pdserve::cpu {

// True when the CPU runs GemmBf16Rows and RoundToBf16 (AVX-512 F, BW, VL and
// BF16: Cooper Lake, Sapphire Rapids, Zen 4 and later).
bool CpuHasAvx512Bf16Gemm();

// out[i, j] (+)= Σ_l x[i, l] · w[j, l] for i in [0, m), j in [n_begin, n_end).
// x: [m, k] row-major float32; w: [n, k] row-major float32 (only rows
// [n_begin, n_end) are read); out: [m, ldo] row-major, ldo >= n_end.
// `accumulate` adds to out instead of overwriting it. Needs CpuHasAvx512F()
// (cpu_math.h).
void GemmF32Rows(const float* x, int m, int k, const float* w, int n_begin, int n_end, float* out,
                 int ldo, bool accumulate);

// As GemmF32Rows with bfloat16 operands and float32 products and sums
// (vdpbf16ps). x: [m, k] bf16 (the activations rounded by the caller);
// w: [n, k] bf16. Needs CpuHasAvx512Bf16Gemm().
void GemmBf16Rows(const uint16_t* x, int m, int k, const uint16_t* w, int n_begin, int n_end,
                  float* out, int ldo, bool accumulate);

// out[i] = x[i] rounded to bfloat16 (nearest even; denormals become zero, as
// vcvtneps2bf16 does). Needs CpuHasAvx512Bf16Gemm().
void RoundToBf16(const float* x, size_t n, uint16_t* out);

// out[i] = x[i] widened from bfloat16 to float32 (exact). Needs
// CpuHasAvx512F() (cpu_math.h).
void WidenBf16(const uint16_t* x, size_t n, float* out);

// Weight rows per unit of work a caller hands to one thread: a multiple of
// every tile height, small enough that a few chunks per thread balance the
// threads, large enough that a chunk streams at full memory speed.
inline constexpr int kGemmChunkRows = 64;

}  // namespace pdserve::cpu

#endif  // PDSERVE_KERNELS_CPU_CPU_GEMM_H_
