// The register tile and loop nest of the skinny GEMM (cpu_gemm.h), written
// once for every element type. An element type is a struct of static,
// always-inline operations on one 512-bit vector of it:
//
//   struct Elements {
//     using Element = ...;               // float, or uint16_t for bfloat16
//     using Vector = ...;                // __m512 or __m512i
//     static constexpr int kColumns;     // elements one Vector holds
//     static Vector Load(const Element* p);                // p[0, kColumns)
//     static Vector LoadFirst(const Element* p, int n);    // p[0, n), n < kColumns;
//                                                          // the other lanes 0
//     static __m512 MultiplyAdd(__m512 acc, Vector w, Vector x);
//         // acc + the products w·x, summed into 16 float32 lanes
//   };
//
// How to include it: inside a `#pragma GCC push_options` /
// `#pragma GCC target("...")` region naming the instructions the element
// type needs, after every other header. Why a region rather than target
// attributes on these templates: GCC inlines an intrinsic only into a
// function compiled for the intrinsic's instructions, a template takes its
// target from where it is defined, and float32 must stay on AVX-512F alone
// while bfloat16 needs AVX-512 BW and BF16. So each element type's .cc file
// (cpu_gemm.cc, cpu_gemm_bf16.cc) compiles its own copy of these templates
// for its own target, and the copies live in an unnamed namespace so that
// neither file's machine code can stand in for the other's at link time.
#ifndef PDSERVE_KERNELS_CPU_CPU_GEMM_TILE_H_
#define PDSERVE_KERNELS_CPU_CPU_GEMM_TILE_H_

// Included outside the region: their inline functions must keep their own
// (baseline or explicit) targets.
#if !defined(PDSERVE_KERNELS_CPU_CPU_GEMM_H_) || !defined(PDSERVE_KERNELS_CPU_CPU_MATH_H_)
#error "include cpu_gemm.h and cpu_math.h before the target region that includes cpu_gemm_tile.h"
#endif

namespace pdserve::cpu {
namespace {

// Activation rows one register tile covers, and weight rows per tile. With
// 4 x 6 = 24 accumulators, 4 weight vectors and 1 activation vector the
// tile uses 29 of the 32 zmm registers; per vector step it issues 24
// multiply-adds for 10 loads, so with the operands in cache the FMA units,
// not the loads, set the pace.
constexpr int kMaxRows = 6;
constexpr int kRowsPerTile = 4;
// One or two activation rows (decode of one or two sequences) leave the
// FMA units idle while the weight streams in; twice as many weight rows per
// tile keep more of them in flight at once.
constexpr int kTallRowsPerTile = 8;
static_assert(kGemmChunkRows % kRowsPerTile == 0 && kGemmChunkRows % kTallRowsPerTile == 0);

// One vector of columns from p: all of them (kPartial false) or the first
// `columns`, the other lanes zero (kPartial true).
template <class E, bool kPartial>
__attribute__((always_inline)) inline typename E::Vector LoadColumns(const typename E::Element* p,
                                                                     int columns) {
  if constexpr (kPartial) {
    return E::LoadFirst(p, columns);
  } else {
    return E::Load(p);
  }
}

// acc[r][i] += x[i, l:] · w[r, l:] over one vector of columns (LoadColumns),
// x and w rows `ld` elements apart.
template <class E, int NR, int MR, bool kPartial>
__attribute__((always_inline)) inline void MultiplyAddColumns(__m512 (&acc)[NR][MR],
                                                              const typename E::Element* x,
                                                              const typename E::Element* w,
                                                              size_t ld, int columns) {
  typename E::Vector wv[NR];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) wv[r] = LoadColumns<E, kPartial>(w + r * ld, columns);
#pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const typename E::Vector xv = LoadColumns<E, kPartial>(x + i * ld, columns);
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[r][i] = E::MultiplyAdd(acc[r][i], wv[r], xv);
  }
}

// out[i * ldo + r] (+)= x[i, :k] · w[r, :k] for r < NR, i < MR; x and w rows
// `ld` elements apart. Also prefetches `prefetch_rows` rows (ld apart) from
// `prefetch` into L1, one cache line per vector step.
template <class E, int NR, int MR>
void Tile(const typename E::Element* x, size_t ld, int k, const typename E::Element* w, float* out,
          int ldo, bool accumulate, const typename E::Element* prefetch, int prefetch_rows) {
  __m512 acc[NR][MR];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
#pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) acc[r][i] = _mm512_setzero_ps();
  }
  int l = 0;
  for (; l + E::kColumns <= k; l += E::kColumns) {
    for (int p = 0; p < prefetch_rows; ++p) {
      _mm_prefetch(reinterpret_cast<const char*>(prefetch + p * ld + l), _MM_HINT_T0);
    }
    MultiplyAddColumns<E, NR, MR, false>(acc, x + l, w + l, ld, E::kColumns);
  }
  if (l < k) MultiplyAddColumns<E, NR, MR, true>(acc, x + l, w + l, ld, k - l);
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

template <class E>
using TileFn = void (*)(const typename E::Element* x, size_t ld, int k,
                        const typename E::Element* w, float* out, int ldo, bool accumulate,
                        const typename E::Element* prefetch, int prefetch_rows);

// Tiles by activation rows (index MR - 1), full height, tall and one row high.
template <class E>
struct TileTable {
  static constexpr TileFn<E> kFull[kMaxRows] = {
      &Tile<E, kRowsPerTile, 1>, &Tile<E, kRowsPerTile, 2>, &Tile<E, kRowsPerTile, 3>,
      &Tile<E, kRowsPerTile, 4>, &Tile<E, kRowsPerTile, 5>, &Tile<E, kRowsPerTile, 6>};
  static constexpr TileFn<E> kTall[2] = {&Tile<E, kTallRowsPerTile, 1>,
                                         &Tile<E, kTallRowsPerTile, 2>};
  static constexpr TileFn<E> kSingle[kMaxRows] = {&Tile<E, 1, 1>, &Tile<E, 1, 2>, &Tile<E, 1, 3>,
                                                  &Tile<E, 1, 4>, &Tile<E, 1, 5>, &Tile<E, 1, 6>};
};

// The loop nest of cpu_gemm.h. Activation rows are split into groups of
// near-equal size (32 rows: 6, 6, 5, 5, 5, 5 rather than 6 x 5 + 2, whose last
// small tile would run at half speed). For each tile of weight rows every group
// passes over it: the first pass reads the rows from memory, the others from
// cache. While a later pass computes, it prefetches a share of the next tile's
// rows, so fetching memory overlaps with arithmetic instead of stalling the
// next tile's first pass (one pass only: the hardware prefetcher keeps up).
template <class E>
void GemmRows(const typename E::Element* x, int m, int k, const typename E::Element* w, int n_begin,
              int n_end, float* out, int ldo, bool accumulate) {
  using Table = TileTable<E>;
  using T = typename E::Element;
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
}  // namespace pdserve::cpu

#endif  // PDSERVE_KERNELS_CPU_CPU_GEMM_TILE_H_
