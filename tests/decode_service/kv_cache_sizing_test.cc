// The default KV pool size: full-context sequences, capped by the byte budget.
#include "decode_service/kv_cache_sizing.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace pdserve {
namespace {

KvCacheSizing Stories() {
  KvCacheSizing sizing;
  sizing.context_tokens = 512;
  sizing.block_size = 16;
  sizing.bytes_per_token = 5 * 2 * 4 * 8 * 4;  // layers x (K, V) x kv heads x head_dim x f32
  sizing.full_sequences = 64;
  sizing.max_bytes = int64_t{4} << 30;
  return sizing;
}

TEST(KvCacheSizingTest, FitsTheRequestedFullContextSequences) {
  EXPECT_EQ(*DefaultKvCacheBlocks(Stories()), 64 * 512 / 16);
  KvCacheSizing odd = Stories();
  odd.context_tokens = 500;  // 31.25 blocks: a sequence needs 32
  EXPECT_EQ(*DefaultKvCacheBlocks(odd), 64 * 32);
}

TEST(KvCacheSizingTest, TheByteBudgetCapsThePool) {
  KvCacheSizing phi3 = Stories();
  phi3.context_tokens = 4096;
  phi3.bytes_per_token = 32 * 2 * 32 * 96 * 2;  // Phi-3-mini in bf16: 384 KiB
  phi3.max_bytes = int64_t{8} << 30;
  const int64_t block_bytes = int64_t{384} * 1024 * 16;
  EXPECT_EQ(*DefaultKvCacheBlocks(phi3), (int64_t{8} << 30) / block_bytes);
}

TEST(KvCacheSizingTest, RejectsABudgetBelowOneBlockAndBadSizes) {
  KvCacheSizing tiny = Stories();
  tiny.max_bytes = 100;
  absl::StatusOr<int> blocks = DefaultKvCacheBlocks(tiny);
  EXPECT_EQ(blocks.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(blocks.status().message(), ::testing::HasSubstr("--kv_cache_bytes"));
  KvCacheSizing zero = Stories();
  zero.block_size = 0;
  EXPECT_EQ(DefaultKvCacheBlocks(zero).status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pdserve
