// AVX-512 skinny GEMM (see cpu_gemm.h). The functions carry their own
// target attributes, so the rest of the build stays baseline x86-64 and the
// backend only calls them after the CPU checks say they run here.
#include "kernels/cpu/cpu_gemm.h"

#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/cpu_math.h"

namespace pdserve::cpu {
namespace {

// Activation rows one register tile covers, and weight rows per tile. With
// 4 x 6 = 24 accumulators, 4 weight vectors and 1 activation vector the
// tile uses 29 of the 32 zmm registers; per 16-lane step it issues 24 FMAs
// for 10 loads, so with the operands in cache the FMA units, not the loads,
// set the pace.
constexpr int kMaxRows = 6;
constexpr int kRowsPerTile = 4;
// One or two activation rows (decode of one or two sequences) leave the
// FMA units idle while the weight streams in; twice as many weight rows per
// tile keep more of them in flight at once.
constexpr int kTallRowsPerTile = 8;
static_assert(kGemmChunkRows % kRowsPerTile == 0 && kGemmChunkRows % kTallRowsPerTile == 0);

// Stores the tile's sums: out[i * ldo + r] (+)= sum of acc[r][i]'s lanes.
template <int NR, int MR>
__attribute__((target("avx512f"), always_inline)) inline void StoreTile(__m512 (&acc)[NR][MR],
                                                                        float* out, int ldo,
                                                                        bool accumulate) {
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      const float sum = SumLanes(acc[r][i]);
      float& dst = out[static_cast<size_t>(i) * ldo + r];
      dst = accumulate ? dst + sum : sum;
    }
  }
}

// out[i * ldo + r] (+)= x[i, :k] · w[r, :k] for r < NR, i < MR; x and w rows
// `ld` elements apart. Also prefetches `prefetch_rows` rows (ld apart) from
// `prefetch` into L1, one cache line per 16-column step.
template <int NR, int MR>
__attribute__((target("avx512f"))) void TileF32(const float* x, size_t ld, int k, const float* w,
                                                float* out, int ldo, bool accumulate,
                                                const float* prefetch, int prefetch_rows) {
  __m512 acc[NR][MR];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) acc[r][i] = _mm512_setzero_ps();
  }
  int l = 0;
  for (; l + 16 <= k; l += 16) {
    for (int p = 0; p < prefetch_rows; ++p) {
      _mm_prefetch(reinterpret_cast<const char*>(prefetch + p * ld + l), _MM_HINT_T0);
    }
    __m512 wv[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) wv[r] = _mm512_loadu_ps(w + r * ld + l);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_loadu_ps(x + i * ld + l);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) acc[r][i] = _mm512_fmadd_ps(wv[r], xv, acc[r][i]);
    }
  }
  if (l < k) {  // the last k % 16 columns; masked-off lanes load as 0
    const __mmask16 mask = TailMask(k - l);
    __m512 wv[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) wv[r] = _mm512_maskz_loadu_ps(mask, w + r * ld + l);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512 xv = _mm512_maskz_loadu_ps(mask, x + i * ld + l);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) acc[r][i] = _mm512_fmadd_ps(wv[r], xv, acc[r][i]);
    }
  }
  StoreTile<NR, MR>(acc, out, ldo, accumulate);
}

// As TileF32 on bfloat16 pairs: vdpbf16ps adds x[2j]·w[2j] + x[2j+1]·w[2j+1]
// to float32 lane j, so one instruction covers 32 columns. An odd k's last
// column pairs with a masked-off zero. (The two tiles mirror each other
// rather than share a template over the element type: each needs its own
// target attribute, and GCC will not inline AVX-512 BF16 intrinsics into a
// function without it.)
template <int NR, int MR>
__attribute__((target("avx512f,avx512bw,avx512bf16"))) void TileBf16(
    const uint16_t* x, size_t ld, int k, const uint16_t* w, float* out, int ldo, bool accumulate,
    const uint16_t* prefetch, int prefetch_rows) {
  __m512 acc[NR][MR];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) acc[r][i] = _mm512_setzero_ps();
  }
  int l = 0;
  for (; l + 32 <= k; l += 32) {
    for (int p = 0; p < prefetch_rows; ++p) {
      _mm_prefetch(reinterpret_cast<const char*>(prefetch + p * ld + l), _MM_HINT_T0);
    }
    __m512i wv[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) wv[r] = _mm512_loadu_si512(w + r * ld + l);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512i xv = _mm512_loadu_si512(x + i * ld + l);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        acc[r][i] = _mm512_dpbf16_ps(acc[r][i], (__m512bh)wv[r], (__m512bh)xv);
      }
    }
  }
  if (l < k) {
    const __mmask32 mask = static_cast<__mmask32>((uint64_t{1} << (k - l)) - 1);
    __m512i wv[NR];
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) wv[r] = _mm512_maskz_loadu_epi16(mask, w + r * ld + l);
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512i xv = _mm512_maskz_loadu_epi16(mask, x + i * ld + l);
#pragma GCC unroll 8
      for (int r = 0; r < NR; ++r) {
        acc[r][i] = _mm512_dpbf16_ps(acc[r][i], (__m512bh)wv[r], (__m512bh)xv);
      }
    }
  }
  StoreTile<NR, MR>(acc, out, ldo, accumulate);
}

template <typename T>
using TileFn = void (*)(const T* x, size_t ld, int k, const T* w, float* out, int ldo,
                        bool accumulate, const T* prefetch, int prefetch_rows);

// Tiles by activation rows (index MR - 1), full height and one row high.
template <typename T, template <int, int> class Tile>
struct TileTable {
  static constexpr TileFn<T> kFull[kMaxRows] = {
      Tile<kRowsPerTile, 1>::kFn, Tile<kRowsPerTile, 2>::kFn, Tile<kRowsPerTile, 3>::kFn,
      Tile<kRowsPerTile, 4>::kFn, Tile<kRowsPerTile, 5>::kFn, Tile<kRowsPerTile, 6>::kFn};
  static constexpr TileFn<T> kTall[2] = {Tile<kTallRowsPerTile, 1>::kFn,
                                         Tile<kTallRowsPerTile, 2>::kFn};
  static constexpr TileFn<T> kSingle[kMaxRows] = {Tile<1, 1>::kFn, Tile<1, 2>::kFn,
                                                  Tile<1, 3>::kFn, Tile<1, 4>::kFn,
                                                  Tile<1, 5>::kFn, Tile<1, 6>::kFn};
};
template <int NR, int MR>
struct F32Tile {
  static constexpr TileFn<float> kFn = &TileF32<NR, MR>;
};
template <int NR, int MR>
struct Bf16Tile {
  static constexpr TileFn<uint16_t> kFn = &TileBf16<NR, MR>;
};

// The loop nest of cpu_gemm.h. Activation rows are split into groups of
// near-equal size (32 rows: 6, 6, 5, 5, 5, 5 rather than 6 x 5 + 2, whose last
// small tile would run at half speed). For each tile of weight rows every group
// passes over it: the first pass reads the rows from memory, the others from
// cache. While a later pass computes, it prefetches a share of the next tile's
// rows, so fetching memory overlaps with arithmetic instead of stalling the
// next tile's first pass (one pass only: the hardware prefetcher keeps up).
template <typename T, template <int, int> class Tile>
void GemmRows(const T* x, int m, int k, const T* w, int n_begin, int n_end, float* out, int ldo,
              bool accumulate) {
  using Table = TileTable<T, Tile>;
  const size_t ld = static_cast<size_t>(k);
  const int groups = (m + kMaxRows - 1) / kMaxRows;
  int j = n_begin;
  if (m <= 2) {
    for (; j + kTallRowsPerTile <= n_end; j += kTallRowsPerTile) {
      Table::kTall[m - 1](x, ld, k, w + j * ld, out + j, ldo, accumulate, nullptr, 0);
    }
  }
  for (; j + kRowsPerTile <= n_end; j += kRowsPerTile) {
    const bool prefetch = groups > 1 && j + 2 * kRowsPerTile <= n_end;
    int i = 0;
    for (int g = 0; g < groups; ++g) {
      const int rows = (m - i) / (groups - g);  // the remaining rows, evenly
      const int pf_first = g * kRowsPerTile / groups;
      const int pf_rows = prefetch ? (g + 1) * kRowsPerTile / groups - pf_first : 0;
      const T* pf = prefetch ? w + (j + kRowsPerTile + pf_first) * ld : nullptr;
      Table::kFull[rows - 1](x + i * ld, ld, k, w + j * ld, out + static_cast<size_t>(i) * ldo + j,
                             ldo, accumulate, pf, pf_rows);
      i += rows;
    }
  }
  for (; j < n_end; ++j) {
    int i = 0;
    for (int g = 0; g < groups; ++g) {
      const int rows = (m - i) / (groups - g);
      Table::kSingle[rows - 1](x + i * ld, ld, k, w + j * ld,
                               out + static_cast<size_t>(i) * ldo + j, ldo, accumulate, nullptr, 0);
      i += rows;
    }
  }
}

}  // namespace

bool CpuHasAvx512Bf16Gemm() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
}

void GemmF32Rows(const float* x, int m, int k, const float* w, int n_begin, int n_end, float* out,
                 int ldo, bool accumulate) {
  GemmRows<float, F32Tile>(x, m, k, w, n_begin, n_end, out, ldo, accumulate);
}

void GemmBf16Rows(const uint16_t* x, int m, int k, const uint16_t* w, int n_begin, int n_end,
                  float* out, int ldo, bool accumulate) {
  GemmRows<uint16_t, Bf16Tile>(x, m, k, w, n_begin, n_end, out, ldo, accumulate);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16"))) void RoundToBf16(const float* x,
                                                                                 size_t n,
                                                                                 uint16_t* out) {
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256bh rounded = _mm512_cvtneps_pbh(_mm512_loadu_ps(x + i));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), (__m256i)rounded);
  }
  if (i < n) {
    const __mmask16 mask = TailMask(static_cast<int>(n - i));
    const __m256bh rounded = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, x + i));
    _mm256_mask_storeu_epi16(out + i, mask, (__m256i)rounded);
  }
}

__attribute__((target("avx512f"))) void WidenBf16(const uint16_t* x, size_t n, float* out) {
  // A bfloat16 is the top half of a float32: zero-extend, shift left 16.
  size_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m256i half = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(x + i));
    _mm512_storeu_si512(out + i, _mm512_slli_epi32(_mm512_cvtepu16_epi32(half), 16));
  }
  for (; i < n; ++i) {
    const uint32_t bits = static_cast<uint32_t>(x[i]) << 16;
    std::memcpy(out + i, &bits, 4);
  }
}

}  // namespace pdserve::cpu
