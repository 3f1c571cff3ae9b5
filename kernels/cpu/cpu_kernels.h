// The CPU backend's kernels on plain pointers. CpuBackend checks shapes and
// dtypes and then calls these; they trust their arguments. Every array is
// row-major; shapes are in each function's comment. Activations are float32;
// weights float32 or bfloat16 (uint16_t bit patterns).
#ifndef PDSERVE_KERNELS_CPU_CPU_KERNELS_H_
#define PDSERVE_KERNELS_CPU_CPU_KERNELS_H_

#include <cstdint>

#include "kernels/cpu/cpu_thread_pool.h"
#include "shared/backend.h"

namespace pdserve::cpu {

// out[i, :] = table[ids[i], :]. table: [vocab, hidden] float32 or bfloat16
// (`table_dtype`); ids: [n]; out: [n, hidden] float32.
void Embedding(const void* table, DType table_dtype, const int32_t* ids, int n, int hidden,
               float* out);

// out = x · wᵀ (+ out when accumulate). x: [m, k]; w: [n, k]; out: [m, n].
// Up to kSkinnyMaxRowsF32 rows on an AVX-512 CPU run cpu_gemm.h's kernel on
// `pool`; more rows (prefill), or a CPU without AVX-512, go to OpenBLAS.
void MatMul(ThreadPool& pool, const float* x, const float* w, int m, int n, int k, float* out,
            bool accumulate);

// As MatMul with a bfloat16 weight. x is rounded to bfloat16 and multiplied
// with float32 sums on the AMX tile unit (cpu_amx.h) when the CPU and Linux
// allow it and k % 32 == 0, else by cpu_gemm.h's AVX-512 BF16 kernel up to
// kSkinnyMaxRowsBf16 rows; otherwise the weight is widened to float32 a
// block of rows at a time for OpenBLAS, x staying float32.
void MatMulBf16(ThreadPool& pool, const float* x, const uint16_t* w, int m, int n, int k,
                float* out, bool accumulate);

// Row counts up to which the skinny kernel beats OpenBLAS's sgemm (measured
// with TinyLlama's projection shapes on a 2-core Sapphire Rapids; the
// bfloat16 limit is higher because the alternative pays for widening the
// weight).
inline constexpr int kSkinnyMaxRowsF32 = 64;
inline constexpr int kSkinnyMaxRowsBf16 = 128;

// out[i, :] = x[i, :] / sqrt(mean(x[i, :]²) + eps) * weight (HF LlamaRMSNorm).
// x, out: [m, d], may alias; weight: [d].
void RmsNorm(const float* x, const float* weight, int m, int d, float eps, float* out);

// qkv: [n, (h + 2*kvh) * hd] -> q: [n, h*hd], k, v: [n, kvh*hd].
void SplitQkv(const float* qkv, int n, int num_heads, int num_kv_heads, int head_dim, float* q,
              float* k, float* v);

// In-place HF rotate_half RoPE: for each head and i < hd/2, the pair
// (x[i], x[i + hd/2]) turns by positions[t] * theta^(-2i/hd) radians. The
// angle is computed in double so long contexts keep full float32 accuracy.
// q: [n, num_heads, hd]; k: [n, num_kv_heads, hd]; positions: [n].
void Rope(float* q, float* k, const int32_t* positions, int n, int num_heads, int num_kv_heads,
          int head_dim, float theta);

// out[i, j] = silu(gate_up[i, j]) * gate_up[i, f + j]. gate_up: [m, 2f]; out: [m, f].
void SiluMul(const float* gate_up, int m, int f, float* out);

// out[r] = the index of the largest x[r, j] (Backend::ArgmaxRows): ties to
// the smallest index, NaN never wins, a row of only NaN gives 0.
// x: [rows, cols]; out: [rows].
void ArgmaxRows(const float* x, int rows, int cols, int32_t* out);

// Each row's k largest entries (Backend::TopKRows): values/ids [rows, k],
// descending, ties to the smaller index, NaN never chosen, (-inf, -1) past
// a row's non-NaN entries.
void TopKRows(const float* x, int rows, int cols, int k, float* values, int32_t* ids);

// Causal grouped-query attention over contiguous K/V (see
// Backend::PrefillAttention). q, out: [n, h, hd]; k, v: [t, kvh, hd].
void PrefillAttention(const float* q, const float* k, const float* v,
                      const PrefillAttentionParams& params, float* out);

// One query per sequence over a paged cache (see Backend::PagedAttention),
// (sequence, KV head) pairs spread over `pool`. q, out: [b, h, hd];
// k_cache, v_cache: [slots, kvh*hd]; block_tables: [b, max_blocks_per_seq];
// context_lens: [b].
void PagedAttention(ThreadPool& pool, const float* q, const float* k_cache, const float* v_cache,
                    const int32_t* block_tables, const int32_t* context_lens,
                    const PagedAttentionParams& params, float* out);

}  // namespace pdserve::cpu

#endif  // PDSERVE_KERNELS_CPU_CPU_KERNELS_H_
