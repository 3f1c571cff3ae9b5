// The op-level compute interface. The model code (Transformer) is written
// against it and never knows which device runs it; kernels/cpu is the
// numerical reference, kernels/cuda the fast path.
//
// Conventions:
//  * Every tensor is a DeviceBuffer holding a row-major array. Shapes are
//    given in each op's comment and passed as plain ints.
//  * Activations (buffers the Transformer allocates with
//    Allocate(n, activation_dtype())) use activation_dtype(); weights use the
//    backend's own storage format (from UploadWeight); KV cache buffers use
//    kv_dtype(); index buffers (ids, positions, slot mappings, block tables,
//    lengths) are DType::kI32.
//  * Ops are asynchronous on devices that queue work. They do not return
//    errors: an invalid argument is a programmer error (CHECK), and a device
//    failure is sticky and reported by the next Synchronize(), which every
//    caller runs before reading results on the host.
#ifndef PDSERVE_SHARED_BACKEND_H_
#define PDSERVE_SHARED_BACKEND_H_

#include <cstddef>
#include <memory>
#include <span>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "shared/dtype.h"
#include "shared/host_block.h"
#include "shared/host_tensor.h"

namespace pdserve {

// Memory owned by one Backend; released when destroyed.
class DeviceBuffer {
 public:
  virtual ~DeviceBuffer() = default;
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;

  // Pointer in the backend's address space (host for CPU, device for CUDA).
  virtual void* data() = 0;
  virtual const void* data() const = 0;
  size_t num_elements() const { return num_elements_; }
  DType dtype() const { return dtype_; }
  size_t num_bytes() const { return num_elements_ * DTypeSize(dtype_); }

 protected:
  DeviceBuffer(size_t num_elements, DType dtype) : num_elements_(num_elements), dtype_(dtype) {}

 private:
  size_t num_elements_;
  DType dtype_;
};

using BufferPtr = std::unique_ptr<DeviceBuffer>;

// Shapes of a causal attention over a contiguous K/V range (prefill).
struct PrefillAttentionParams {
  int num_queries = 0;   // n: new tokens, the last n of the t keys
  int num_keys = 0;      // t >= n: past tokens + new tokens
  int num_heads = 0;     // query heads
  int num_kv_heads = 0;  // num_heads % num_kv_heads == 0 (grouped-query)
  int head_dim = 0;
  float scale = 0.0f;  // 1/sqrt(head_dim)
};

// Shapes of attention for one new token per sequence over a paged KV cache.
// The layout follows vLLM / FlashInfer: a cache of `num_blocks` blocks of
// `block_size` tokens; sequence b's token j lives in block
// block_tables[b * max_blocks_per_seq + j / block_size] at offset
// j % block_size.
struct PagedAttentionParams {
  int batch_size = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int block_size = 0;          // tokens per block
  int max_blocks_per_seq = 0;  // row stride of block_tables
  float scale = 0.0f;
};

// A device-to-host copy started by Backend::CopyToHostAsync. Used on the
// thread that started it; destroying it waits for the copy (the DMA engine
// must not write into a destination that is being freed).
class HostCopy {
 public:
  virtual ~HostCopy() = default;
  HostCopy(const HostCopy&) = delete;
  HostCopy& operator=(const HostCopy&) = delete;

  // Does not block: true once the copy has ended (its bytes are in the
  // destination, or it failed and Wait() says why).
  virtual bool Ready() = 0;
  // Blocks until the copy has ended. OK: every byte is in the destination.
  // Otherwise the device error (INTERNAL naming it); the destination is then
  // garbage.
  virtual absl::Status Wait() = 0;

 protected:
  HostCopy() = default;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string_view name() const = 0;  // "cpu", "cuda"
  virtual DType activation_dtype() const = 0;
  virtual DType kv_dtype() const = 0;
  // True when data() of this backend's buffers is ordinary host memory that
  // any thread may write, and CopyToDevice into one buffer range is safe
  // while other threads run ops on other buffers (the CPU backend). KvCache
  // then writes received KV straight into its blocks, without staging and
  // without waiting for a running decode step. Default: false (a device
  // backend whose ops share one stream).
  virtual bool host_memory_buffers() const { return false; }

  // ---- memory -------------------------------------------------------------
  // Uninitialised buffer. RESOURCE_EXHAUSTED when the device is out of memory.
  virtual absl::StatusOr<BufferPtr> Allocate(size_t num_elements, DType dtype) = 0;

  // A weight matrix [sum of rows, cols] made of `row_blocks` (each
  // [rows_i, cols] or, for vectors, [n]), converted to the backend's weight
  // format. May alias the host memory (CPU, F32, one block): the caller keeps
  // the views' owner alive as long as the returned buffer.
  // INVALID_ARGUMENT when the blocks' column counts differ.
  virtual absl::StatusOr<BufferPtr> UploadWeight(std::span<const HostTensor> row_blocks) = 0;

  // Copies `n` elements from host `src` (of `src_dtype`) into `dst` starting at
  // element `dst_offset`, converting to dst.dtype(). Blocks until `src` may be
  // reused.
  virtual absl::Status CopyToDevice(const void* src, DType src_dtype, size_t n, DeviceBuffer& dst,
                                    size_t dst_offset) = 0;
  // Copies `n` elements of `src` from element `src_offset` to host `dst`,
  // converting to `dst_dtype`. Waits for queued work first.
  virtual absl::Status CopyToHost(const DeviceBuffer& src, size_t src_offset, size_t n, void* dst,
                                  DType dst_dtype) = 0;
  // Waits for queued work; returns the first device error since the last call.
  virtual absl::Status Synchronize() = 0;

  // ---- asynchronous device-to-host copies (prefill's KV stream) ---------
  // Host memory to receive CopyToHostAsync: page-locked on CUDA (cached in
  // a pool, since cudaHostAlloc costs far more than a copy), heap memory by
  // default. Thread-safe. RESOURCE_EXHAUSTED when no memory is left.
  virtual absl::StatusOr<HostBlockPtr> AllocateHostBlock(size_t bytes);

  // Starts copying `n` elements of `src` from element `src_offset` into host
  // `dst` (n * DTypeSize(src.dtype()) bytes, src's dtype: no conversion) and
  // returns without waiting for queued work. The copy sees `src` as the ops
  // queued before this call leave it, so ops queued after it may overwrite
  // `src` at once. `dst` must stay alive and unread until the returned
  // copy's Wait() has returned OK; for the copy to really overlap later
  // work on CUDA it must be a block from AllocateHostBlock. Errors: those of
  // CopyToHost (INVALID_ARGUMENT for a range outside `src`, a device failure
  // since the last Synchronize). The default runs CopyToHost and returns a
  // copy that has already ended (the CPU backend: nothing to overlap).
  virtual absl::StatusOr<std::unique_ptr<HostCopy>> CopyToHostAsync(const DeviceBuffer& src,
                                                                    size_t src_offset, size_t n,
                                                                    void* dst);

  // ---- ops ----------------------------------------------------------------
  // out[i, :] = table[ids[i], :]. table: weight [vocab, hidden]; ids: I32 [n];
  // out: [n, hidden].
  virtual void Embedding(const DeviceBuffer& table, const DeviceBuffer& ids, int n, int hidden,
                         DeviceBuffer& out) = 0;

  // out = x · wᵀ (+ out when accumulate). x: [m, k]; w: weight [n, k];
  // out: [m, n]. `accumulate` fuses the residual add after o_proj/down_proj.
  virtual void MatMul(const DeviceBuffer& x, const DeviceBuffer& w, int m, int n, int k,
                      DeviceBuffer& out, bool accumulate) = 0;

  // out[i, :] = x[i, :] / sqrt(mean(x[i, :]²) + eps) * weight. x, out: [m, d]
  // (may alias); weight: [d]. (Zhang & Sennrich 2019, as in HF LlamaRMSNorm:
  // the mean is computed in float32.)
  virtual void RmsNorm(const DeviceBuffer& x, const DeviceBuffer& weight, int m, int d, float eps,
                       DeviceBuffer& out) = 0;

  // Splits the fused projection qkv [n, (h + 2*kvh) * head_dim] into
  // q [n, h, head_dim], k [n, kvh, head_dim], v [n, kvh, head_dim].
  virtual void SplitQkv(const DeviceBuffer& qkv, int n, int num_heads, int num_kv_heads,
                        int head_dim, DeviceBuffer& q, DeviceBuffer& k, DeviceBuffer& v) = 0;

  // Rotary position embedding in place, Hugging Face "rotate_half" pairing
  // (x[i], x[i + head_dim/2]) with inv_freq[i] = theta^(-2i/head_dim)
  // (Su et al. 2021, RoFormer). q: [n, num_heads, head_dim];
  // k: [n, num_kv_heads, head_dim]; positions: I32 [n].
  virtual void Rope(DeviceBuffer& q, DeviceBuffer& k, const DeviceBuffer& positions, int n,
                    int num_heads, int num_kv_heads, int head_dim, float theta) = 0;

  // out[i, j] = silu(gate_up[i, j]) * gate_up[i, f + j], silu(x) = x·σ(x)
  // (SwiGLU, Shazeer 2020). gate_up: [m, 2f]; out: [m, f].
  virtual void SiluMul(const DeviceBuffer& gate_up, int m, int f, DeviceBuffer& out) = 0;

  // Causal attention of the last num_queries positions over num_keys keys:
  // query i sits at position num_keys - num_queries + i and sees keys
  // 0..that position. q: [n, h, hd]; k, v: [t, kvh, hd] (kv_dtype());
  // out: [n, h, hd]. Softmax in float32.
  virtual void PrefillAttention(const DeviceBuffer& q, const DeviceBuffer& k, const DeviceBuffer& v,
                                const PrefillAttentionParams& params, DeviceBuffer& out) = 0;

  // Writes n tokens' K and V into a paged cache. k, v: [n, kvh*hd] (any float
  // dtype); k_cache, v_cache: [num_blocks * block_size, kvh*hd] (kv_dtype());
  // slot_mapping: I32 [n], slot = block * block_size + offset; slot -1 skips
  // the token (padding, as in vLLM's reshape_and_cache).
  virtual void KvScatter(const DeviceBuffer& k, const DeviceBuffer& v,
                         const DeviceBuffer& slot_mapping, int n, int kv_width,
                         DeviceBuffer& k_cache, DeviceBuffer& v_cache) = 0;

  // The inverse of KvScatter: k[i] = k_cache[slot_mapping[i]] (and v), for
  // packing a paged sequence into a contiguous token range. k, v: [n, kv_width].
  virtual void KvGather(const DeviceBuffer& k_cache, const DeviceBuffer& v_cache,
                        const DeviceBuffer& slot_mapping, int n, int kv_width, DeviceBuffer& k,
                        DeviceBuffer& v) = 0;

  // One query token per sequence over its paged KV. q: [b, h, hd];
  // k_cache, v_cache: as in KvScatter; block_tables: I32 [b, max_blocks_per_seq];
  // context_lens: I32 [b], tokens each sequence attends to (its new token
  // included, already written); out: [b, h, hd].
  virtual void PagedAttention(const DeviceBuffer& q, const DeviceBuffer& k_cache,
                              const DeviceBuffer& v_cache, const DeviceBuffer& block_tables,
                              const DeviceBuffer& context_lens, const PagedAttentionParams& params,
                              DeviceBuffer& out) = 0;

  // Greedy decoding's pick: out[r] = the index of the largest x[r, j]. Ties
  // go to the smallest index (as std::max_element and torch.argmax), NaN
  // never wins, a row of only NaN gives 0. x: [rows, cols] float32
  // (activation dtype); out: I32 [rows]. On a device it saves copying the
  // rows (a vocabulary of floats each) to the host.
  virtual void ArgmaxRows(const DeviceBuffer& x, int rows, int cols, DeviceBuffer& out) = 0;

  // The k largest entries of each row, for sampling from a few candidates
  // on the host instead of copying the whole vocabulary (top-k sampling
  // keeps only these). values[r, i], ids[r, i] for i < k: row r's entries in
  // descending value order, ties to the smaller index (the order
  // std::partial_sort with that comparison gives); NaN is never chosen, and
  // when a row has fewer than k other entries the rest are (-inf, -1).
  // x: [rows, cols] float32 (activation dtype); values: F32 [rows, k];
  // ids: I32 [rows, k]; 1 <= k <= min(cols, kMaxTopKRows).
  static constexpr int kMaxTopKRows = 64;
  virtual void TopKRows(const DeviceBuffer& x, int rows, int cols, int k, DeviceBuffer& values,
                        DeviceBuffer& ids) = 0;

  // Copies n elements from src[src_offset] to dst[dst_offset], same dtype.
  virtual void CopyElements(const DeviceBuffer& src, size_t src_offset, DeviceBuffer& dst,
                            size_t dst_offset, size_t n) = 0;
};

}  // namespace pdserve

#endif  // PDSERVE_SHARED_BACKEND_H_
