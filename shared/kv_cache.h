// Paged KV cache: a pool of fixed-size blocks per layer plus per-sequence
// block tables (the vLLM PagedAttention layout, Kwon et al. 2023).
#ifndef PDSERVE_SHARED_KV_CACHE_H_
#define PDSERVE_SHARED_KV_CACHE_H_

#include <algorithm>
#include <cstdint>
#include <memory>
#include <mutex>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "shared/backend.h"

namespace pdserve {

struct KvCacheOptions {
  int num_blocks = 0;   // blocks in the pool, shared by all layers' tables
  int block_size = 16;  // tokens per block
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
};

// Storage: for every layer one K and one V buffer of
// [num_blocks * block_size, num_kv_heads * head_dim] in backend.kv_dtype().
// Bookkeeping (free list, reference counts, leases) is thread-safe; the
// storage is written through the Backend, which callers must not use from two
// threads at once.
//
// Blocks are reference-counted so that leases can share them (Fork): n
// samples of one prompt read the prompt's KV from the same blocks, as in
// vLLM's parallel sampling (Kwon et al. 2023, section 4.4). A shared block is
// copied on the first write through a lease (PrepareWrite); it returns to the
// pool when its last lease lets go.
class KvCache {
 public:
  // A sequence's lease on blocks: block b of its table holds its tokens
  // [b*block_size, (b+1)*block_size). The blocks return to the pool when the
  // lease is destroyed, so an abandoned request cannot leak them.
  class Sequence {
   public:
    ~Sequence();
    Sequence(const Sequence&) = delete;
    Sequence& operator=(const Sequence&) = delete;

    // Tokens the lease has room for (num_blocks * block_size).
    int capacity() const;
    const std::vector<int32_t>& block_table() const { return blocks_; }
    // Cache slot of the token at `position` (< capacity()).
    int32_t Slot(int position) const;
    // Grows the lease to hold at least `num_tokens` tokens. RESOURCE_EXHAUSTED
    // (blocks needed and free in the message) leaves the lease unchanged.
    absl::Status Reserve(int num_tokens);
    // Makes token `position` writable through this lease: Reserve(position +
    // 1), then, when the block holding `position` is shared with another lease
    // (Fork), copies that block (every layer's K and V, all block_size slots)
    // into a free block that replaces it in this table (copy-on-write). Call
    // it before anything writes the token's KV by slot (a decode step's
    // slot_mapping); WriteTokens refuses shared blocks. Uses the backend for
    // the copy, so it needs the same serialisation as any backend use.
    // RESOURCE_EXHAUSTED when no block is free for the growth or the copy
    // (the lease keeps any block the growth took and still shares the other);
    // INVALID_ARGUMENT for a negative position.
    absl::Status PrepareWrite(int position);

   private:
    friend class KvCache;
    explicit Sequence(KvCache* cache) : cache_(cache) {}
    KvCache* cache_;
    std::vector<int32_t> blocks_;
  };

  // INVALID_ARGUMENT for non-positive sizes; RESOURCE_EXHAUSTED when the
  // backend cannot allocate the pool.
  static absl::StatusOr<std::unique_ptr<KvCache>> Create(Backend* backend,
                                                         const KvCacheOptions& options);

  // A lease holding `num_tokens` tokens. RESOURCE_EXHAUSTED when too few
  // blocks are free (the message names both counts).
  absl::StatusOr<std::unique_ptr<Sequence>> Allocate(int num_tokens);

  // A new lease that shares `parent`'s blocks holding tokens [0, num_tokens)
  // (ceil(num_tokens / block_size) blocks, reference-counted; no copy and no
  // free block needed), so it reads the same KV for those tokens. Either
  // lease may then grow on its own; a write into a shared block goes through
  // PrepareWrite, which gives the writer its own copy. INVALID_ARGUMENT when
  // num_tokens is negative or beyond parent.capacity().
  absl::StatusOr<std::unique_ptr<Sequence>> Fork(const Sequence& parent, int num_tokens);

  // Writes tokens [first_token, first_token + num_tokens) of `layer` for
  // `sequence` from host arrays k, v: [num_tokens, num_kv_heads * head_dim]
  // of `dtype`. INVALID_ARGUMENT when the range exceeds the lease or the layer
  // is out of range; FAILED_PRECONDITION when a block of the range is shared
  // with another lease (see PrepareWrite).
  //
  // On a backend with host_memory_buffers() (CPU) each block's run of tokens
  // is converted straight into the cache, and the call may run on any thread
  // while other threads use the backend (writes_run_concurrently()): it
  // touches only the lease's own blocks, which a lease being filled by a
  // prefill shares with nobody. Otherwise it stages the range on the device
  // and scatters it there, and the caller must serialise it with other
  // backend use.
  absl::Status WriteTokens(const Sequence& sequence, int layer, int first_token, int num_tokens,
                           const void* k, const void* v, DType dtype);
  // Whether WriteTokens may run concurrently with other backend work.
  bool writes_run_concurrently() const { return backend_->host_memory_buffers(); }
  // Where tokens [first_token, first_token + num_tokens) of `layer` live in
  // the cache, as host byte ranges in token order (one per block's run of
  // tokens; K ranges in `k`, V in `v`, both replaced), so that bytes of the
  // cache's dtype can be copied straight in: what WriteTokens would write
  // for `dtype` == the cache's dtype. False, with the vectors cleared, when
  // that is not possible: a device backend (!host_memory_buffers()), another
  // dtype (conversion needed), a range outside the lease or the layers, or a
  // block shared with another lease. The ranges stay valid while the lease
  // holds its blocks; the same rules as WriteTokens apply to writing them.
  bool HostRanges(const Sequence& sequence, int layer, int first_token, int num_tokens, DType dtype,
                  std::vector<std::span<char>>* k, std::vector<std::span<char>>* v);
  // Reads the same range back to host float32 arrays (tests, inspection).
  absl::Status ReadTokens(const Sequence& sequence, int layer, int first_token, int num_tokens,
                          float* k, float* v);

  DeviceBuffer& k(int layer) { return *k_[layer]; }
  DeviceBuffer& v(int layer) { return *v_[layer]; }
  const KvCacheOptions& options() const { return options_; }
  int block_size() const { return options_.block_size; }
  int num_blocks() const { return options_.num_blocks; }
  int num_free_blocks() const;
  // Leases holding `block` (0 when free). For tests and inspection.
  int block_ref_count(int32_t block) const;
  // Bytes of K and V for one token across all layers.
  size_t bytes_per_token() const;

 private:
  KvCache(Backend* backend, const KvCacheOptions& options);
  void Release(std::vector<int32_t>& blocks);
  absl::Status Grow(std::vector<int32_t>& blocks, int num_tokens);
  absl::Status MakeWritable(std::vector<int32_t>& blocks, int position);
  // Copies every layer's K and V of block `from` to block `to`.
  void CopyBlock(int32_t from, int32_t to);
  // FAILED_PRECONDITION naming the block when one holding tokens
  // [first_token, first_token + num_tokens) (num_tokens > 0) is shared
  // with another lease: it may not be written in place.
  absl::Status CheckUnshared(const Sequence& sequence, int first_token, int num_tokens) const;
  // Calls fn(token, run) for each run of consecutive tokens in one block
  // (consecutive slots), in token order, covering [first_token,
  // first_token + num_tokens).
  template <typename Fn>
  void ForEachBlockRun(int first_token, int num_tokens, const Fn& fn) const {
    for (int token = first_token; token < first_token + num_tokens;) {
      const int run = std::min(options_.block_size - token % options_.block_size,
                               first_token + num_tokens - token);
      fn(token, run);
      token += run;
    }
  }

  Backend* backend_;
  KvCacheOptions options_;
  std::vector<BufferPtr> k_, v_;
  mutable std::mutex mutex_;
  std::vector<int32_t> free_blocks_;  // guarded by mutex_
  std::vector<int> ref_counts_;       // guarded by mutex_; [num_blocks], leases per block
};

}  // namespace pdserve

#endif  // PDSERVE_SHARED_KV_CACHE_H_
