#include "decode_service/kv_cache_sizing.h"

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"

namespace pdserve {

absl::StatusOr<int> DefaultKvCacheBlocks(const KvCacheSizing& sizing) {
  if (sizing.context_tokens <= 0 || sizing.block_size <= 0 || sizing.bytes_per_token == 0 ||
      sizing.full_sequences <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache sizing: context_tokens ", sizing.context_tokens, ", block_size ",
        sizing.block_size, ", bytes_per_token ", sizing.bytes_per_token, ", full_sequences ",
        sizing.full_sequences, " must all be positive"));
  }
  const int64_t blocks_per_sequence =
      (sizing.context_tokens + sizing.block_size - 1) / sizing.block_size;
  const int64_t wanted = blocks_per_sequence * sizing.full_sequences;
  const int64_t block_bytes = static_cast<int64_t>(sizing.bytes_per_token) * sizing.block_size;
  const int64_t affordable = sizing.max_bytes / block_bytes;
  if (affordable < 1) {
    return absl::InvalidArgumentError(absl::StrCat("--kv_cache_bytes: ", sizing.max_bytes,
                                                   " bytes hold no KV block (one block needs ",
                                                   block_bytes, " bytes)"));
  }
  return static_cast<int>(
      std::min<int64_t>({wanted, affordable, std::numeric_limits<int32_t>::max()}));
}

KvCacheOptions KvCacheOptionsFor(const ModelConfig& config, int num_blocks, int block_size) {
  KvCacheOptions options;
  options.num_blocks = num_blocks;
  options.block_size = block_size;
  options.num_layers = config.num_layers;
  options.num_kv_heads = config.num_kv_heads;
  options.head_dim = config.head_dim;
  return options;
}

}  // namespace pdserve
