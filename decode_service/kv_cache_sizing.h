// How many KV blocks the decode service allocates.
#ifndef PDSERVE_DECODE_SERVICE_KV_CACHE_SIZING_H_
#define PDSERVE_DECODE_SERVICE_KV_CACHE_SIZING_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "shared/kv_cache.h"
#include "shared/model_config.h"

namespace pdserve {

struct KvCacheSizing {
  int context_tokens = 0;          // max_position_embeddings
  int block_size = 16;             // tokens per block
  size_t bytes_per_token = 0;      // K and V of one token, all layers, in the cache dtype
  int full_sequences = 64;         // how many full-context sequences to fit by default
  int64_t max_bytes = 0;           // the memory budget (--kv_cache_bytes)
};

// Blocks for `full_sequences` full-context sequences, reduced to what fits in
// `max_bytes`. INVALID_ARGUMENT for non-positive sizes or a budget smaller
// than one block (naming --kv_cache_bytes and the bytes a block needs).
absl::StatusOr<int> DefaultKvCacheBlocks(const KvCacheSizing& sizing);

// The pool layout `config` implies: its layers, KV heads and head_dim, with
// `num_blocks` blocks of `block_size` tokens.
KvCacheOptions KvCacheOptionsFor(const ModelConfig& config, int num_blocks, int block_size);

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_KV_CACHE_SIZING_H_
