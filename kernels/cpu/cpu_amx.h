// bfloat16 GEMM on the AMX tile unit (Sapphire Rapids and later) for the
// CPU backend's bfloat16 weights: out[m, n] (+)= x[m, k] · w[n, k]ᵀ.
//
// Why: vdpbf16ps (cpu_gemm.h) multiplies no faster than float32 FMAs on
// Sapphire Rapids (one per cycle), so a batch-32 decode step or a prefill is
// compute-bound there; one TDPBF16PS does 16 x 16 x 32 multiply-adds, enough
// that the same work becomes memory-bound again.
//
// Layout: the weight is the tiles' A operand straight from memory (16 weight
// rows x 32 columns per tile, the row stride is k), so nothing is repacked
// per weight; the activations are the B operand, which AMX wants as pairs of
// consecutive columns ("VNNI" layout): PackedActivations rounds x to
// bfloat16 and lays it out so once per MatMul call. A tile of results is
// outᵀ[16 weight rows, 16 activation rows], added into out transposed.
#ifndef PDSERVE_KERNELS_CPU_CPU_AMX_H_
#define PDSERVE_KERNELS_CPU_CPU_AMX_H_

#include <cstddef>
#include <cstdint>
#include <vector>

namespace pdserve::cpu {

// True when the CPU has AMX-BF16 and Linux lets this process use the tile
// registers. The first call asks for them (arch_prctl ARCH_REQ_XCOMP_PERM,
// a per-process permission, Linux 5.16+); later calls return the answer.
bool AmxBf16Available();

// Columns of x one tile step covers: k must be a multiple of it.
inline constexpr int kAmxColumns = 32;

// x [m, k] float32 rounded to bfloat16 in the B-operand layout: for each
// block of 16 rows (the last padded with zero rows) and each pair of columns
// p, 16 x 2 values: (x[row, 2p], x[row, 2p + 1]) for the block's 16 rows.
class PackedActivations {
 public:
  // k % kAmxColumns == 0. Needs AmxBf16Available() (the rounding uses
  // AVX-512 BF16).
  PackedActivations(const float* x, int m, int k);

  int m() const { return m_; }
  int k() const { return k_; }
  // The 16-row block `block`'s pairs [first_pair, ...), 64 bytes per pair.
  const uint16_t* Block(int block, int first_pair) const {
    return data_.data() + (static_cast<size_t>(block) * (k_ / 2) + first_pair) * 32;
  }

 private:
  int m_;
  int k_;
  std::vector<uint16_t> data_;
};

// out[i, j] (+)= Σ_l x[i, l] · w[j, l] for i in [0, m), j in [n_begin, n_end)
// with n_end - n_begin a multiple of 16. w: [n, k] bfloat16, row-major;
// out: [m, ldo] float32. Configures the tile registers on the calling
// thread and releases them before returning. Needs AmxBf16Available().
void AmxGemmBf16Rows(const PackedActivations& x, const uint16_t* w, int n_begin, int n_end,
                     float* out, int ldo, bool accumulate);

}  // namespace pdserve::cpu

#endif  // PDSERVE_KERNELS_CPU_CPU_AMX_H_
