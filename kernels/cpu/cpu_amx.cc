#include "kernels/cpu/cpu_amx.h"

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "kernels/cpu/cpu_gemm.h"

namespace pdserve::cpu {
namespace {

constexpr int kArchReqXcompPerm = 0x1023;  // arch_prctl code, <asm/prctl.h>
constexpr int kXfeatureXtileData = 18;     // the tile data state component

// CPUID leaf 7, sub-leaf 0, EDX bits 22 (AMX-BF16) and 24 (AMX-TILE).
bool CpuHasAmxBf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  if (!__get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx)) return false;
  return (edx & (1u << 22)) != 0 && (edx & (1u << 24)) != 0;
}

bool RequestAmx() {
  // The activations are rounded with AVX-512 BF16 (RoundToBf16).
  if (!CpuHasAmxBf16() || !CpuHasAvx512Bf16Gemm()) return false;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtileData) == 0;
}

// The LDTILECFG operand: palette 1, per tile register its rows and bytes per
// row (Intel SDM vol. 1, 18.2).
struct TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);

// Tile registers: 0-3 results (2 x 2 blocks of 16 weight rows x 16
// activation rows, float32), 4-5 weight rows (A), 6-7 activations (B).
constexpr int kTileRows = 16;

// out[m0 + c, n0 + r] (+)= tile[r][c] for the activation rows that exist.
void AddTransposed(const float (&tile)[kTileRows][kTileRows], int n0, int m0, int m, float* out,
                   int ldo, bool accumulate) {
  const int rows = std::min(kTileRows, m - m0);
  for (int c = 0; c < rows; ++c) {
    float* dst = out + static_cast<size_t>(m0 + c) * ldo + n0;
    for (int r = 0; r < kTileRows; ++r) dst[r] = accumulate ? dst[r] + tile[r][c] : tile[r][c];
  }
}

}  // namespace

bool AmxBf16Available() {
  static const bool available = RequestAmx();
  return available;
}

PackedActivations::PackedActivations(const float* x, int m, int k) : m_(m), k_(k) {
  const int blocks = (m + kTileRows - 1) / kTileRows;
  data_.assign(static_cast<size_t>(blocks) * kTileRows * k, 0);
  std::vector<uint16_t> row(k);
  const int pairs = k / 2;
  for (int i = 0; i < m; ++i) {
    RoundToBf16(x + static_cast<size_t>(i) * k, k, row.data());
    // Pair p of row i goes to pair p of its block, column i % 16.
    uint16_t* dst = data_.data() + static_cast<size_t>(i / kTileRows) * pairs * 2 * kTileRows +
                    (i % kTileRows) * 2;
    for (int p = 0; p < pairs; ++p) {
      std::memcpy(dst + static_cast<size_t>(p) * 2 * kTileRows, row.data() + 2 * p, 4);
    }
  }
}

__attribute__((target("amx-tile,amx-bf16"))) void AmxGemmBf16Rows(const PackedActivations& x,
                                                                  const uint16_t* w, int n_begin,
                                                                  int n_end, float* out, int ldo,
                                                                  bool accumulate) {
  TileConfig config;
  for (int t = 0; t < 8; ++t) {
    config.rows[t] = kTileRows;
    config.bytes_per_row[t] = 64;
  }
  _tile_loadconfig(&config);
  const int k = x.k();
  const size_t w_stride = static_cast<size_t>(k) * sizeof(uint16_t);
  const int steps = k / kAmxColumns;
  const int pairs_per_step = kAmxColumns / 2;
  const int m_blocks = (x.m() + kTileRows - 1) / kTileRows;
  alignas(64) float tile[kTileRows][kTileRows];
  for (int j = n_begin; j < n_end; j += 2 * kTileRows) {
    const bool two_n = j + 2 * kTileRows <= n_end;
    const uint16_t* a0 = w + static_cast<size_t>(j) * k;
    const uint16_t* a1 = a0 + static_cast<size_t>(kTileRows) * k;
    for (int mb = 0; mb < m_blocks; mb += 2) {
      const bool two_m = mb + 1 < m_blocks;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (int s = 0; s < steps; ++s) {
        _tile_loadd(4, a0 + s * kAmxColumns, w_stride);
        _tile_loadd(6, x.Block(mb, s * pairs_per_step), 64);
        _tile_dpbf16ps(0, 4, 6);
        if (two_m) {
          _tile_loadd(7, x.Block(mb + 1, s * pairs_per_step), 64);
          _tile_dpbf16ps(1, 4, 7);
        }
        if (two_n) {
          _tile_loadd(5, a1 + s * kAmxColumns, w_stride);
          _tile_dpbf16ps(2, 5, 6);
          if (two_m) _tile_dpbf16ps(3, 5, 7);
        }
      }
      const int m0 = mb * kTileRows, m1 = m0 + kTileRows;
      _tile_stored(0, tile, 64);
      AddTransposed(tile, j, m0, x.m(), out, ldo, accumulate);
      if (two_m) {
        _tile_stored(1, tile, 64);
        AddTransposed(tile, j, m1, x.m(), out, ldo, accumulate);
      }
      if (two_n) {
        _tile_stored(2, tile, 64);
        AddTransposed(tile, j + kTileRows, m0, x.m(), out, ldo, accumulate);
        if (two_m) {
          _tile_stored(3, tile, 64);
          AddTransposed(tile, j + kTileRows, m1, x.m(), out, ldo, accumulate);
        }
      }
    }
  }
  _tile_release();
}

}  // namespace pdserve::cpu
