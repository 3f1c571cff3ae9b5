#include "shared/kv_cache.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <span>
#include <thread>
#include <vector>

#include "kernels/cpu/cpu_backend.h"

namespace pdserve {
namespace {

class KvCacheTest : public ::testing::Test {
 protected:
  std::unique_ptr<KvCache> MakeCache(int num_blocks, int block_size) {
    KvCacheOptions options;
    options.num_blocks = num_blocks;
    options.block_size = block_size;
    options.num_layers = kLayers;
    options.num_kv_heads = kKvHeads;
    options.head_dim = kHeadDim;
    auto cache = KvCache::Create(backend_.get(), options);
    EXPECT_TRUE(cache.ok()) << cache.status();
    return std::move(*cache);
  }

  static constexpr int kLayers = 3, kKvHeads = 2, kHeadDim = 5, kWidth = kKvHeads * kHeadDim;
  std::unique_ptr<Backend> backend_ = CreateCpuBackend();
};

TEST_F(KvCacheTest, CreateRejectsNonPositiveSizes) {
  const KvCacheOptions valid{8, 16, 2, 2, 4};
  for (int field = 0; field < 5; ++field) {
    KvCacheOptions options = valid;
    int* values[] = {&options.num_blocks, &options.block_size, &options.num_layers,
                     &options.num_kv_heads, &options.head_dim};
    *values[field] = field % 2 == 0 ? 0 : -3;
    auto cache = KvCache::Create(backend_.get(), options);
    EXPECT_EQ(cache.status().code(), absl::StatusCode::kInvalidArgument) << field;
  }
  EXPECT_TRUE(KvCache::Create(backend_.get(), valid).ok());
}

TEST_F(KvCacheTest, CreateTooLargeIsResourceExhausted) {
  KvCacheOptions options{1 << 30, 1, 1, 1 << 15, 1 << 14};  // 2^59 elements per buffer
  auto cache = KvCache::Create(backend_.get(), options);
  EXPECT_EQ(cache.status().code(), absl::StatusCode::kResourceExhausted) << cache.status();
}

TEST_F(KvCacheTest, AllocateReserveAndFreeOnDestruction) {
  auto cache = MakeCache(10, 4);
  EXPECT_EQ(cache->num_free_blocks(), 10);
  EXPECT_EQ(cache->bytes_per_token(), 2u * kLayers * kWidth * sizeof(float));
  {
    auto a = cache->Allocate(5);  // 2 blocks
    ASSERT_TRUE(a.ok()) << a.status();
    EXPECT_EQ((*a)->capacity(), 8);
    EXPECT_EQ((*a)->block_table().size(), 2u);
    EXPECT_EQ(cache->num_free_blocks(), 8);

    auto b = cache->Allocate(0);  // an empty lease that grows later
    ASSERT_TRUE(b.ok());
    EXPECT_EQ((*b)->capacity(), 0);
    ASSERT_TRUE((*b)->Reserve(4).ok());
    EXPECT_EQ((*b)->capacity(), 4);
    ASSERT_TRUE((*b)->Reserve(9).ok());
    EXPECT_EQ((*b)->capacity(), 12);
    ASSERT_TRUE((*b)->Reserve(3).ok());  // never shrinks
    EXPECT_EQ((*b)->capacity(), 12);
    EXPECT_EQ(cache->num_free_blocks(), 5);

    // No block is leased twice, and slots follow the tables.
    std::set<int32_t> used;
    for (const auto* lease : {a->get(), b->get()}) {
      for (int32_t block : lease->block_table()) {
        EXPECT_TRUE(block >= 0 && block < 10);
        EXPECT_TRUE(used.insert(block).second) << "block " << block << " leased twice";
      }
      for (int position = 0; position < lease->capacity(); ++position) {
        EXPECT_EQ(lease->Slot(position), lease->block_table()[position / 4] * 4 + position % 4);
      }
    }
  }
  EXPECT_EQ(cache->num_free_blocks(), 10);
}

TEST_F(KvCacheTest, ExhaustionLeavesCountsAndLeasesUnchanged) {
  auto cache = MakeCache(6, 16);
  auto a = cache->Allocate(64);  // 4 blocks
  ASSERT_TRUE(a.ok());
  const std::vector<int32_t> table = (*a)->block_table();

  auto too_many = cache->Allocate(33);  // 3 blocks, 2 free
  ASSERT_EQ(too_many.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string message(too_many.status().message());
  EXPECT_NE(message.find("3 more blocks"), std::string::npos) << message;
  EXPECT_NE(message.find("only 2 of 6"), std::string::npos) << message;
  EXPECT_EQ(cache->num_free_blocks(), 2);

  EXPECT_EQ((*a)->Reserve(64 + 48).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ((*a)->block_table(), table);
  EXPECT_EQ(cache->num_free_blocks(), 2);

  EXPECT_EQ(cache->Allocate(-1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->num_free_blocks(), 2);

  a->reset();
  EXPECT_EQ(cache->num_free_blocks(), 6);
  EXPECT_TRUE(cache->Allocate(96).ok());  // all 6 blocks, freed again at once
  EXPECT_EQ(cache->num_free_blocks(), 6);
}

TEST_F(KvCacheTest, WriteReadRoundTripAcrossBlocks) {
  for (int block_size : {1, 4, 16}) {
    SCOPED_TRACE(block_size);
    auto cache = MakeCache(64, block_size);
    auto first = cache->Allocate(37);
    auto second = cache->Allocate(21);
    ASSERT_TRUE(first.ok() && second.ok());
    std::mt19937 rng(block_size);
    std::uniform_real_distribution<float> uniform(-1, 1);
    auto random = [&](size_t n) {
      std::vector<float> values(n);
      for (float& x : values) x = uniform(rng);
      return values;
    };
    // Whole sequences in every layer, then a mid-block range in bf16.
    std::vector<std::vector<float>> k1, v1, k2, v2;
    for (int layer = 0; layer < kLayers; ++layer) {
      k1.push_back(random(37 * kWidth));
      v1.push_back(random(37 * kWidth));
      k2.push_back(random(21 * kWidth));
      v2.push_back(random(21 * kWidth));
      ASSERT_TRUE(
          cache->WriteTokens(**first, layer, 0, 37, k1[layer].data(), v1[layer].data(), DType::kF32)
              .ok());
      ASSERT_TRUE(
          cache
              ->WriteTokens(**second, layer, 0, 21, k2[layer].data(), v2[layer].data(), DType::kF32)
              .ok());
    }
    std::vector<float> k_patch = random(9 * kWidth), v_patch = random(9 * kWidth);
    std::vector<uint16_t> k_bf16(k_patch.size()), v_bf16(v_patch.size());
    for (size_t i = 0; i < k_patch.size(); ++i) {
      k_bf16[i] = FloatToBf16(k_patch[i]);
      v_bf16[i] = FloatToBf16(v_patch[i]);
      k_patch[i] = Bf16ToFloat(k_bf16[i]);
      v_patch[i] = Bf16ToFloat(v_bf16[i]);
    }
    ASSERT_TRUE(
        cache->WriteTokens(**first, 1, 3, 9, k_bf16.data(), v_bf16.data(), DType::kBF16).ok());
    std::copy(k_patch.begin(), k_patch.end(), k1[1].begin() + 3 * kWidth);
    std::copy(v_patch.begin(), v_patch.end(), v1[1].begin() + 3 * kWidth);

    for (int layer = 0; layer < kLayers; ++layer) {
      std::vector<float> k(37 * kWidth), v(37 * kWidth);
      ASSERT_TRUE(cache->ReadTokens(**first, layer, 0, 37, k.data(), v.data()).ok());
      EXPECT_EQ(k, k1[layer]) << layer;
      EXPECT_EQ(v, v1[layer]) << layer;
      ASSERT_TRUE(cache->ReadTokens(**second, layer, 0, 21, k.data(), v.data()).ok());
      k.resize(21 * kWidth);
      v.resize(21 * kWidth);
      EXPECT_EQ(k, k2[layer]) << layer;
      EXPECT_EQ(v, v2[layer]) << layer;
    }
    // A sub-range reads the matching rows.
    std::vector<float> k(5 * kWidth), v(5 * kWidth);
    ASSERT_TRUE(cache->ReadTokens(**first, 2, 30, 5, k.data(), v.data()).ok());
    EXPECT_TRUE(std::equal(k.begin(), k.end(), k1[2].begin() + 30 * kWidth));
  }
}

// HostRanges hands out the cache's own bytes: copying a range's tokens in
// through them reads back (through ReadTokens' gather) like WriteTokens.
TEST_F(KvCacheTest, HostRangesTakeTheCachesBytesInTokenOrder) {
  auto cache = MakeCache(16, 4);
  ASSERT_TRUE(cache->writes_run_concurrently());  // the CPU backend's memory is host memory
  auto lease = cache->Allocate(13);
  ASSERT_TRUE(lease.ok());
  std::vector<float> k(9 * kWidth), v(9 * kWidth);
  for (size_t i = 0; i < k.size(); ++i) {
    k[i] = 0.5f * static_cast<float>(i);
    v[i] = -1.0f - static_cast<float>(i);
  }
  std::vector<std::span<char>> k_ranges, v_ranges;
  // Tokens 3..11: a partial block, a whole one, a partial one.
  ASSERT_TRUE(cache->HostRanges(**lease, 2, 3, 9, DType::kF32, &k_ranges, &v_ranges));
  ASSERT_EQ(k_ranges.size(), 3u);
  size_t offset = 0;
  for (size_t r = 0; r < k_ranges.size(); ++r) {
    ASSERT_EQ(k_ranges[r].size(), v_ranges[r].size());
    std::memcpy(k_ranges[r].data(), reinterpret_cast<const char*>(k.data()) + offset,
                k_ranges[r].size());
    std::memcpy(v_ranges[r].data(), reinterpret_cast<const char*>(v.data()) + offset,
                v_ranges[r].size());
    offset += k_ranges[r].size();
  }
  EXPECT_EQ(offset, k.size() * sizeof(float));
  std::vector<float> k_read(k.size()), v_read(v.size());
  ASSERT_TRUE(cache->ReadTokens(**lease, 2, 3, 9, k_read.data(), v_read.data()).ok());
  EXPECT_EQ(k_read, k);
  EXPECT_EQ(v_read, v);

  // Not possible: another dtype, outside the lease or the layers, a shared
  // block. Each leaves the vectors empty.
  EXPECT_FALSE(cache->HostRanges(**lease, 2, 3, 9, DType::kBF16, &k_ranges, &v_ranges));
  EXPECT_TRUE(k_ranges.empty() && v_ranges.empty());
  EXPECT_FALSE(cache->HostRanges(**lease, 2, 10, 9, DType::kF32, &k_ranges, &v_ranges));
  EXPECT_FALSE(cache->HostRanges(**lease, kLayers, 0, 1, DType::kF32, &k_ranges, &v_ranges));
  auto fork = cache->Fork(**lease, 8);
  ASSERT_TRUE(fork.ok());
  EXPECT_FALSE(cache->HostRanges(**lease, 0, 0, 4, DType::kF32, &k_ranges, &v_ranges));
  EXPECT_TRUE(k_ranges.empty() && v_ranges.empty());
  EXPECT_TRUE(cache->HostRanges(**lease, 0, 8, 4, DType::kF32, &k_ranges, &v_ranges));
}

TEST_F(KvCacheTest, WriteAndReadRejectBadRanges) {
  auto cache = MakeCache(8, 4);
  auto lease = cache->Allocate(6);  // capacity 8
  ASSERT_TRUE(lease.ok());
  std::vector<float> data(10 * kWidth);
  const auto invalid = absl::StatusCode::kInvalidArgument;
  EXPECT_EQ(cache->WriteTokens(**lease, 0, 4, 5, data.data(), data.data(), DType::kF32).code(),
            invalid);
  EXPECT_EQ(cache->WriteTokens(**lease, 0, -1, 2, data.data(), data.data(), DType::kF32).code(),
            invalid);
  EXPECT_EQ(
      cache->WriteTokens(**lease, kLayers, 0, 2, data.data(), data.data(), DType::kF32).code(),
      invalid);
  EXPECT_EQ(cache->WriteTokens(**lease, -1, 0, 2, data.data(), data.data(), DType::kF32).code(),
            invalid);
  EXPECT_EQ(cache->WriteTokens(**lease, 0, 0, 2, data.data(), data.data(), DType::kI32).code(),
            invalid);
  EXPECT_EQ(cache->ReadTokens(**lease, 0, 7, 2, data.data(), data.data()).code(), invalid);
  EXPECT_TRUE(cache->WriteTokens(**lease, 0, 0, 8, data.data(), data.data(), DType::kF32).ok());
  EXPECT_EQ(cache->num_free_blocks(), 6);
}

TEST_F(KvCacheTest, ConcurrentLeasesReturnEveryBlock) {
  auto cache = MakeCache(32, 16);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&cache, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 500; ++i) {
        auto lease = cache->Allocate(static_cast<int>(rng() % 100));
        if (lease.ok()) (void)(*lease)->Reserve(static_cast<int>(rng() % 200));
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(cache->num_free_blocks(), 32);
}

// Random K and V rows for `tokens` tokens: [tokens, kWidth] each.
struct KvRows {
  std::vector<float> k, v;
};

class KvCacheForkTest : public KvCacheTest {
 protected:
  KvRows Random(int tokens) {
    std::uniform_real_distribution<float> uniform(-1, 1);
    KvRows rows{std::vector<float>(tokens * kWidth), std::vector<float>(tokens * kWidth)};
    for (float& x : rows.k) x = uniform(rng_);
    for (float& x : rows.v) x = uniform(rng_);
    return rows;
  }
  // Every layer of `lease` at tokens [first, first + rows) equals `rows`
  // (written to every layer with a per-layer offset of +layer).
  void WriteAllLayers(KvCache& cache, const KvCache::Sequence& lease, int first,
                      const KvRows& rows) {
    const int tokens = static_cast<int>(rows.k.size()) / kWidth;
    for (int layer = 0; layer < kLayers; ++layer) {
      KvRows shifted = rows;
      for (float& x : shifted.k) x += layer;
      for (float& x : shifted.v) x -= layer;
      ASSERT_TRUE(cache
                      .WriteTokens(lease, layer, first, tokens, shifted.k.data(), shifted.v.data(),
                                   DType::kF32)
                      .ok());
    }
  }
  void ExpectAllLayers(KvCache& cache, const KvCache::Sequence& lease, int first,
                       const KvRows& rows) {
    const int tokens = static_cast<int>(rows.k.size()) / kWidth;
    for (int layer = 0; layer < kLayers; ++layer) {
      std::vector<float> k(rows.k.size()), v(rows.v.size());
      ASSERT_TRUE(cache.ReadTokens(lease, layer, first, tokens, k.data(), v.data()).ok());
      for (size_t i = 0; i < k.size(); ++i) {
        ASSERT_EQ(k[i], rows.k[i] + layer) << "layer " << layer << " element " << i;
        ASSERT_EQ(v[i], rows.v[i] - layer) << "layer " << layer << " element " << i;
      }
    }
  }

  std::mt19937 rng_{21};
};

TEST_F(KvCacheForkTest, ForksReadThePromptKvAndCopyThePartialBlockOnFirstWrite) {
  auto cache = MakeCache(16, 4);
  // A 10-token prompt plus the first generated token's slot: 3 blocks, the
  // last one (tokens 8..11) partly filled.
  auto parent = cache->Allocate(11);
  ASSERT_TRUE(parent.ok());
  const KvRows prompt = Random(10);
  WriteAllLayers(*cache, **parent, 0, prompt);
  const int free_at_start = cache->num_free_blocks();
  ASSERT_EQ(free_at_start, 13);

  std::vector<std::unique_ptr<KvCache::Sequence>> samples;
  for (int i = 0; i < 3; ++i) {
    auto fork = cache->Fork(**parent, 10);
    ASSERT_TRUE(fork.ok()) << fork.status();
    EXPECT_EQ((*fork)->block_table(), (*parent)->block_table());
    samples.push_back(std::move(fork).value());
  }
  EXPECT_EQ(cache->num_free_blocks(), free_at_start) << "a fork copies nothing";
  for (int32_t block : (*parent)->block_table()) EXPECT_EQ(cache->block_ref_count(block), 4);
  samples.insert(samples.begin(), std::move(*parent));

  // Each sample's first generated token goes to position 10, inside the
  // shared block: the first three writers copy it, the last owns the original.
  std::vector<KvRows> own;
  for (size_t i = 0; i < samples.size(); ++i) {
    ASSERT_TRUE(samples[i]->PrepareWrite(10).ok());
    own.push_back(Random(1));
    WriteAllLayers(*cache, *samples[i], 10, own.back());
  }
  EXPECT_EQ(cache->num_free_blocks(), free_at_start - 3);
  std::set<int32_t> last_blocks;
  for (const auto& sample : samples) last_blocks.insert(sample->block_table()[2]);
  EXPECT_EQ(last_blocks.size(), 4u) << "each sample owns its partial block";
  for (int b = 0; b < 2; ++b) {
    EXPECT_EQ(cache->block_ref_count(samples[0]->block_table()[b]), 4) << "full blocks stay shared";
  }
  for (size_t i = 0; i < samples.size(); ++i) {
    SCOPED_TRACE(i);
    ExpectAllLayers(*cache, *samples[i], 0, prompt);  // the copy carried tokens 8 and 9
    ExpectAllLayers(*cache, *samples[i], 10, own[i]);
  }

  // Growing past the shared blocks takes fresh ones; nothing is copied.
  ASSERT_TRUE(samples[1]->PrepareWrite(12).ok());
  EXPECT_EQ(cache->num_free_blocks(), free_at_start - 4);

  samples[0].reset();  // the original lease first: shared blocks stay
  EXPECT_EQ(cache->num_free_blocks(), free_at_start - 3);
  samples.clear();
  EXPECT_EQ(cache->num_free_blocks(), 16);
  for (int32_t block = 0; block < 16; ++block) EXPECT_EQ(cache->block_ref_count(block), 0);
}

TEST_F(KvCacheForkTest, ForkAtABlockBoundarySharesOnlyFullBlocks) {
  auto cache = MakeCache(8, 4);
  auto parent = cache->Allocate(9);  // 8 prompt tokens + 1: 3 blocks
  ASSERT_TRUE(parent.ok());
  const KvRows prompt = Random(8);
  WriteAllLayers(*cache, **parent, 0, prompt);
  auto fork = cache->Fork(**parent, 8);
  ASSERT_TRUE(fork.ok());
  EXPECT_EQ((*fork)->block_table().size(), 2u);
  EXPECT_EQ((*fork)->capacity(), 8);
  EXPECT_EQ(cache->block_ref_count((*parent)->block_table()[2]), 1);
  ASSERT_TRUE((*fork)->PrepareWrite(8).ok());  // a fresh block, not a copy
  EXPECT_EQ(cache->num_free_blocks(), 4);
  ASSERT_TRUE((*parent)->PrepareWrite(8).ok());  // already its own
  EXPECT_EQ(cache->num_free_blocks(), 4);
  ExpectAllLayers(*cache, **fork, 0, prompt);
  fork->reset();
  parent->reset();
  EXPECT_EQ(cache->num_free_blocks(), 8);
}

TEST_F(KvCacheForkTest, SharedBlocksRefuseWriteTokensAndBadForksAreRejected) {
  auto cache = MakeCache(4, 4);
  auto parent = cache->Allocate(6);
  ASSERT_TRUE(parent.ok());
  EXPECT_EQ(cache->Fork(**parent, 9).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cache->Fork(**parent, -1).status().code(), absl::StatusCode::kInvalidArgument);
  auto fork = cache->Fork(**parent, 6);
  ASSERT_TRUE(fork.ok());
  const KvRows row = Random(1);
  for (const KvCache::Sequence* lease : {parent->get(), fork->get()}) {
    const absl::Status status =
        cache->WriteTokens(*lease, 0, 5, 1, row.k.data(), row.v.data(), DType::kF32);
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << status;
  }
  EXPECT_EQ((*fork)->PrepareWrite(-1).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE((*fork)->PrepareWrite(5).ok());
  EXPECT_TRUE(cache->WriteTokens(**fork, 0, 5, 1, row.k.data(), row.v.data(), DType::kF32).ok());
  EXPECT_TRUE(cache->WriteTokens(**parent, 0, 5, 1, row.k.data(), row.v.data(), DType::kF32).ok());
  fork->reset();
  parent->reset();
  EXPECT_EQ(cache->num_free_blocks(), 4);
}

TEST_F(KvCacheForkTest, NoFreeBlockForTheCopyIsResourceExhaustedAndLeavesTheShare) {
  auto cache = MakeCache(3, 4);
  auto parent = cache->Allocate(11);  // all 3 blocks
  ASSERT_TRUE(parent.ok());
  auto fork = cache->Fork(**parent, 10);
  ASSERT_TRUE(fork.ok());
  const std::vector<int32_t> table = (*fork)->block_table();
  const absl::Status status = (*fork)->PrepareWrite(10);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_EQ((*fork)->block_table(), table);
  EXPECT_EQ(cache->block_ref_count(table[2]), 2);
  EXPECT_EQ(cache->num_free_blocks(), 0);
  parent->reset();  // now the fork alone holds them: writable in place
  EXPECT_TRUE((*fork)->PrepareWrite(10).ok());
  EXPECT_EQ((*fork)->block_table(), table);
  fork->reset();
  EXPECT_EQ(cache->num_free_blocks(), 3);
}

TEST_F(KvCacheForkTest, ConcurrentForksAndCopiesReturnEveryBlock) {
  auto cache = MakeCache(64, 4);
  auto parent = cache->Allocate(10);
  ASSERT_TRUE(parent.ok());
  std::mutex backend_mu;  // PrepareWrite copies through the backend
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      for (int i = 0; i < 300; ++i) {
        auto fork = cache->Fork(**parent, static_cast<int>(rng() % 11));
        ASSERT_TRUE(fork.ok());
        std::lock_guard<std::mutex> lock(backend_mu);
        (void)(*fork)->PrepareWrite(static_cast<int>(rng() % 24));
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(cache->num_free_blocks(), 61);
  parent->reset();
  EXPECT_EQ(cache->num_free_blocks(), 64);
}

}  // namespace
}  // namespace pdserve
