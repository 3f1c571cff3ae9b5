#include <cmath>
#include <cstdint>

#include "kernels/cuda/device_math.cuh"
#include "kernels/cuda/top_k_rows.h"

// One block per row, a radix select over 64-bit keys (the approach of
// PyTorch's topk and of "Efficient Top-K Query Processing on GPUs",
// Shanbhag et al. 2018, in its simplest form):
//
// 1. Every non-NaN entry j becomes the key (order bits of x[j]) << 32 |
//    (0xffffffff - j). Comparing keys as unsigned integers is exactly the
//    reference's order (larger value first, the smaller index on a tie), and
//    keys are distinct, so "the k largest keys" is one well-defined set.
// 2. Eight bits at a time from the top, a shared-memory histogram of the
//    keys that match the digits chosen so far finds the digit of the k-th
//    largest key. It stops once every key in that digit's bin is wanted
//    (at the latest after the eighth digit, where a bin holds one key); a
//    row of at most k non-NaN entries wants all of them after the first.
// 3. The wanted keys (their top bits above or equal to the chosen digits)
//    are collected into shared memory in any order, each one's rank among
//    them is counted, and the value is re-read from x, so -0.0 stays -0.0.
//
// Every pass reads the row again (from L2 after the first); distinct float
// logits settle after two or three digits.
namespace pdserve::gpu {
namespace {

constexpr int kThreads = 1024;
constexpr int kRadixBits = 8;
constexpr int kBins = 1 << kRadixBits;
constexpr int kBinsPerLane = kBins / 32;
constexpr int kMaxK = TopKRowsParams::kMaxK;
constexpr int kLoadsInFlight = 8;
static_assert(kMaxK <= kThreads, "one thread writes each output slot");
static_assert(kBins % 32 == 0, "the digit search splits the bins over a warp");

// 0 for NaN (below every other key: -inf's key is 0x007fffff'xxxxxxxx);
// otherwise larger keys come first in the reference's order. Negative
// floats' bits are inverted and positive ones get the sign bit, which makes
// the unsigned comparison of the high words the float comparison, once -0.0
// is folded onto +0.0 (they compare equal, so they tie by index). Plain bit
// operations: no dependence on denormal flushing.
__device__ __forceinline__ uint64_t OrderKey(float value, int index) {
  uint32_t bits = __float_as_uint(value);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return 0;
  if (magnitude == 0) bits = 0;
  bits = (bits & 0x80000000u) != 0 ? ~bits : (bits | 0x80000000u);
  return (static_cast<uint64_t>(bits) << 32) | (0xffffffffu - static_cast<uint32_t>(index));
}

__device__ __forceinline__ int KeyIndex(uint64_t key) {
  return static_cast<int>(0xffffffffu - static_cast<uint32_t>(key));
}

// Calls visit(key) for each non-NaN entry of the block's row (the thread's
// strided share, in no particular order). Each thread issues kLoadsInFlight
// loads before it uses any: one block may be all the GPU has for a row, and a
// load at a time would leave it waiting on memory latency.
template <typename Visit>
__device__ __forceinline__ void ForEachKey(const TopKRowsParams& p, size_t row, Visit&& visit) {
  const int64_t stride = blockDim.x;
  for (int64_t first = threadIdx.x; first < p.cols; first += kLoadsInFlight * stride) {
    float values[kLoadsInFlight];
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int64_t j = first + u * stride;
      values[u] = j < p.cols ? LoadAsFloat(p.x, p.x_type, row + j) : 0.0f;
    }
#pragma unroll
    for (int u = 0; u < kLoadsInFlight; ++u) {
      const int64_t j = first + u * stride;
      const uint64_t key = j < p.cols ? OrderKey(values[u], static_cast<int>(j)) : 0;
      if (key != 0) visit(key);
    }
  }
}

// The outcome of one digit's histogram, written by warp 0.
struct DigitChoice {
  bool take_all;  // at most `need` keys match: every matching key is wanted
  unsigned digit;
  unsigned above;   // matching keys in higher bins (all wanted)
  unsigned in_bin;  // matching keys in the chosen bin
};

// Warp 0: the bin holding the need-th largest matching key, i.e. the digit
// d with (keys in bins > d) < need <= (keys in bins >= d). Lane l sums bins
// [8l, 8l + 8); a suffix scan over the lanes finds the one lane whose range
// holds d, and that lane walks its bins from the top.
__device__ void ChooseDigit(const unsigned* histogram, unsigned need, DigitChoice* choice) {
  const int lane = threadIdx.x & 31;
  unsigned counts[kBinsPerLane];
  unsigned lane_total = 0;
#pragma unroll
  for (int i = 0; i < kBinsPerLane; ++i) {
    counts[i] = histogram[lane * kBinsPerLane + i];
    lane_total += counts[i];
  }
  unsigned suffix = lane_total;  // this lane's bins and every higher lane's
#pragma unroll
  for (int offset = 1; offset < 32; offset <<= 1) {
    const unsigned higher = __shfl_down_sync(kFullMask, suffix, offset);
    if (lane + offset < 32) suffix += higher;
  }
  const unsigned total = __shfl_sync(kFullMask, suffix, 0);
  if (total <= need) {
    if (lane == 0) choice->take_all = true;
    return;
  }
  unsigned above = suffix - lane_total;
  if (above >= need || suffix < need) return;  // d is in another lane's bins
  bool found = false;
#pragma unroll
  for (int i = kBinsPerLane - 1; i >= 0; --i) {
    if (found) continue;
    if (above + counts[i] >= need) {
      found = true;
      choice->take_all = false;
      choice->digit = static_cast<unsigned>(lane * kBinsPerLane + i);
      choice->above = above;
      choice->in_bin = counts[i];
    } else {
      above += counts[i];
    }
  }
}

__global__ void __launch_bounds__(kThreads) TopKRowsKernel(TopKRowsParams p) {
  __shared__ unsigned histogram[kBins];
  __shared__ uint64_t wanted[kMaxK];
  __shared__ unsigned wanted_count;
  __shared__ DigitChoice choice;

  const size_t row = static_cast<size_t>(blockIdx.x) * p.cols;
  // Ordered before its first use by the barriers of the first pass.
  if (threadIdx.x == 0) wanted_count = 0;

  // The wanted keys are those whose bits under `mask` are >= `prefix`; `need`
  // of them still lie in the bin the prefix names.
  uint64_t prefix = 0;
  uint64_t mask = 0;
  unsigned need = static_cast<unsigned>(p.k);
  for (int shift = 64 - kRadixBits; shift >= 0; shift -= kRadixBits) {
    for (int b = threadIdx.x; b < kBins; b += blockDim.x) histogram[b] = 0;
    __syncthreads();
    ForEachKey(p, row, [&](uint64_t key) {
      if ((key & mask) == prefix) {
        atomicAdd(&histogram[static_cast<unsigned>(key >> shift) & (kBins - 1)], 1u);
      }
    });
    __syncthreads();
    if (threadIdx.x < 32) ChooseDigit(histogram, need, &choice);
    __syncthreads();
    // `choice` is uniform here and rewritten only after the next pass's two
    // barriers, so every thread takes the same branches.
    if (choice.take_all) break;
    need -= choice.above;
    prefix |= static_cast<uint64_t>(choice.digit) << shift;
    mask |= static_cast<uint64_t>(kBins - 1) << shift;
    if (choice.in_bin == need) break;
  }

  ForEachKey(p, row, [&](uint64_t key) {
    if ((key & mask) >= prefix) {
      const unsigned slot = atomicAdd(&wanted_count, 1u);
      if (slot < kMaxK) wanted[slot] = key;  // never more than k: a guard only
    }
  });
  __syncthreads();

  const int found = min(static_cast<int>(wanted_count), p.k);
  const int slot = threadIdx.x;
  if (slot >= p.k) return;
  const size_t out = static_cast<size_t>(blockIdx.x) * p.k;
  if (slot < found) {
    const uint64_t key = wanted[slot];
    int rank = 0;
    for (int i = 0; i < found; ++i) rank += wanted[i] > key ? 1 : 0;
    const int index = KeyIndex(key);
    p.values[out + rank] = LoadAsFloat(p.x, p.x_type, row + index);
    p.ids[out + rank] = index;
  } else {
    p.values[out + slot] = -INFINITY;
    p.ids[out + slot] = -1;
  }
}

}  // namespace

cudaError_t InvokeTopKRows(const TopKRowsParams& params, cudaStream_t stream) {
  if (params.Validate() != nullptr) return cudaErrorInvalidValue;
  if (params.rows == 0) return cudaSuccess;
  TopKRowsKernel<<<params.rows, kThreads, 0, stream>>>(params);
  return cudaGetLastError();
}

}  // namespace pdserve::gpu
