#include "shared/kv_cache.h"

#include <algorithm>
#include <limits>
#include <string>

#include "absl/strings/str_cat.h"
#include "shared/status_macros.h"

namespace pdserve {

KvCache::Sequence::~Sequence() { cache_->Release(blocks_); }

int KvCache::Sequence::capacity() const {
  return static_cast<int>(blocks_.size()) * cache_->block_size();
}

int32_t KvCache::Sequence::Slot(int position) const {
  const int block_size = cache_->block_size();
  return blocks_[position / block_size] * block_size + position % block_size;
}

absl::Status KvCache::Sequence::Reserve(int num_tokens) {
  return cache_->Grow(blocks_, num_tokens);
}

absl::Status KvCache::Sequence::PrepareWrite(int position) {
  return cache_->MakeWritable(blocks_, position);
}

KvCache::KvCache(Backend* backend, const KvCacheOptions& options)
    : backend_(backend), options_(options) {}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(Backend* backend,
                                                         const KvCacheOptions& options) {
  const std::pair<const char*, int> sizes[] = {{"num_blocks", options.num_blocks},
                                               {"block_size", options.block_size},
                                               {"num_layers", options.num_layers},
                                               {"num_kv_heads", options.num_kv_heads},
                                               {"head_dim", options.head_dim}};
  for (const auto& [field, value] : sizes) {
    if (value <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("KvCacheOptions.", field, ": ", value, " must be positive"));
    }
  }
  const int64_t slots = static_cast<int64_t>(options.num_blocks) * options.block_size;
  if (slots > std::numeric_limits<int32_t>::max()) {
    // Slots are I32 in slot mappings.
    return absl::InvalidArgumentError(
        absl::StrCat("KvCacheOptions: num_blocks * block_size = ", slots,
                     " exceeds the I32 slot limit ", std::numeric_limits<int32_t>::max()));
  }
  std::unique_ptr<KvCache> cache(new KvCache(backend, options));
  const size_t elements =
      static_cast<size_t>(slots) * static_cast<size_t>(options.num_kv_heads) * options.head_dim;
  for (int layer = 0; layer < options.num_layers; ++layer) {
    PDSERVE_ASSIGN_OR_RETURN(BufferPtr k, backend->Allocate(elements, backend->kv_dtype()));
    PDSERVE_ASSIGN_OR_RETURN(BufferPtr v, backend->Allocate(elements, backend->kv_dtype()));
    cache->k_.push_back(std::move(k));
    cache->v_.push_back(std::move(v));
  }
  // Popped from the back, so blocks are handed out in ascending order.
  cache->free_blocks_.reserve(options.num_blocks);
  for (int block = options.num_blocks - 1; block >= 0; --block)
    cache->free_blocks_.push_back(block);
  cache->ref_counts_.assign(options.num_blocks, 0);
  return cache;
}

absl::StatusOr<std::unique_ptr<KvCache::Sequence>> KvCache::Allocate(int num_tokens) {
  std::unique_ptr<Sequence> sequence(new Sequence(this));
  PDSERVE_RETURN_IF_ERROR(Grow(sequence->blocks_, num_tokens));
  return sequence;
}

absl::StatusOr<std::unique_ptr<KvCache::Sequence>> KvCache::Fork(const Sequence& parent,
                                                                 int num_tokens) {
  if (num_tokens < 0 || num_tokens > parent.capacity()) {
    return absl::InvalidArgumentError(absl::StrCat("KV cache fork: num_tokens ", num_tokens,
                                                   " outside [0, ", parent.capacity(),
                                                   "], the parent lease's capacity"));
  }
  const size_t shared = (num_tokens + options_.block_size - 1) / options_.block_size;
  std::unique_ptr<Sequence> child(new Sequence(this));
  child->blocks_.assign(parent.blocks_.begin(), parent.blocks_.begin() + shared);
  std::lock_guard<std::mutex> lock(mutex_);
  for (int32_t block : child->blocks_) ++ref_counts_[block];
  return child;
}

absl::Status KvCache::Grow(std::vector<int32_t>& blocks, int num_tokens) {
  if (num_tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache reserve: num_tokens ", num_tokens, " must be >= 0"));
  }
  const int needed_blocks = (num_tokens + options_.block_size - 1) / options_.block_size;
  const int more = needed_blocks - static_cast<int>(blocks.size());
  if (more <= 0) return absl::OkStatus();
  std::lock_guard<std::mutex> lock(mutex_);
  const int free = static_cast<int>(free_blocks_.size());
  if (more > free) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "KV cache: ", num_tokens, " tokens need ", more, " more blocks of ", options_.block_size,
        " tokens, but only ", free, " of ", options_.num_blocks, " blocks are free"));
  }
  for (auto it = free_blocks_.end() - more; it != free_blocks_.end(); ++it) ref_counts_[*it] = 1;
  blocks.insert(blocks.end(), free_blocks_.end() - more, free_blocks_.end());
  free_blocks_.resize(free - more);
  return absl::OkStatus();
}

absl::Status KvCache::MakeWritable(std::vector<int32_t>& blocks, int position) {
  if (position < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache PrepareWrite: position ", position, " must be >= 0"));
  }
  PDSERVE_RETURN_IF_ERROR(Grow(blocks, position + 1));
  int32_t& entry = blocks[position / options_.block_size];
  const int32_t shared = entry;
  int32_t fresh = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (ref_counts_[shared] == 1) return absl::OkStatus();
    if (free_blocks_.empty()) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "KV cache: copying shared block ", shared, " before a write at position ", position,
          " needs 1 free block, but none of ", options_.num_blocks, " is free"));
    }
    fresh = free_blocks_.back();
    free_blocks_.pop_back();
    ref_counts_[fresh] = 1;
  }
  // Nobody writes `shared` meanwhile: every writer comes through here and
  // copies it first (or owns it alone, when the others have let go).
  CopyBlock(shared, fresh);
  entry = fresh;
  std::lock_guard<std::mutex> lock(mutex_);
  // Another lease may have released it since the check: the last one frees it.
  if (--ref_counts_[shared] == 0) free_blocks_.push_back(shared);
  return absl::OkStatus();
}

void KvCache::CopyBlock(int32_t from, int32_t to) {
  const size_t block_elements =
      static_cast<size_t>(options_.block_size) * options_.num_kv_heads * options_.head_dim;
  for (int layer = 0; layer < options_.num_layers; ++layer) {
    // Queued in order with the steps that later read or write these blocks.
    backend_->CopyElements(*k_[layer], from * block_elements, *k_[layer], to * block_elements,
                           block_elements);
    backend_->CopyElements(*v_[layer], from * block_elements, *v_[layer], to * block_elements,
                           block_elements);
  }
}

void KvCache::Release(std::vector<int32_t>& blocks) {
  std::lock_guard<std::mutex> lock(mutex_);
  // In reverse, so that a lease's blocks are handed out again in its order.
  for (auto it = blocks.rbegin(); it != blocks.rend(); ++it) {
    if (--ref_counts_[*it] == 0) free_blocks_.push_back(*it);
  }
  blocks.clear();
}

int KvCache::num_free_blocks() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return static_cast<int>(free_blocks_.size());
}

int KvCache::block_ref_count(int32_t block) const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (block < 0 || block >= options_.num_blocks) return 0;
  return ref_counts_[block];
}

size_t KvCache::bytes_per_token() const {
  return 2 * static_cast<size_t>(options_.num_layers) * options_.num_kv_heads * options_.head_dim *
         DTypeSize(backend_->kv_dtype());
}

namespace {

absl::Status CheckTokenRange(const KvCache::Sequence& sequence, int layer, int num_layers,
                             int first_token, int num_tokens) {
  if (layer < 0 || layer >= num_layers) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache: layer ", layer, " outside [0, ", num_layers, ")"));
  }
  if (first_token < 0 || num_tokens < 0 ||
      static_cast<int64_t>(first_token) + num_tokens > sequence.capacity()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: tokens [", first_token, ", ", static_cast<int64_t>(first_token) + num_tokens,
        ") outside the sequence's lease of ", sequence.capacity(), " tokens"));
  }
  return absl::OkStatus();
}

// A contiguous staging pair [num_tokens, kv_width] in the cache's dtype and
// the range's slots. Both directions go through it and one KvScatter /
// KvGather, so a device backend does one host transfer and one kernel per
// call instead of one per block.
struct Staging {
  BufferPtr k, v, slots;
};

absl::StatusOr<Staging> MakeStaging(Backend& backend, const KvCache::Sequence& sequence,
                                    int first_token, int num_tokens, int kv_width) {
  const size_t elements = static_cast<size_t>(num_tokens) * kv_width;
  std::vector<int32_t> slots(num_tokens);
  for (int i = 0; i < num_tokens; ++i) slots[i] = sequence.Slot(first_token + i);
  Staging staging;
  PDSERVE_ASSIGN_OR_RETURN(staging.k, backend.Allocate(elements, backend.kv_dtype()));
  PDSERVE_ASSIGN_OR_RETURN(staging.v, backend.Allocate(elements, backend.kv_dtype()));
  PDSERVE_ASSIGN_OR_RETURN(staging.slots, backend.Allocate(num_tokens, DType::kI32));
  PDSERVE_RETURN_IF_ERROR(
      backend.CopyToDevice(slots.data(), DType::kI32, num_tokens, *staging.slots, 0));
  return staging;
}

}  // namespace

absl::Status KvCache::WriteTokens(const Sequence& sequence, int layer, int first_token,
                                  int num_tokens, const void* k, const void* v, DType dtype) {
  PDSERVE_RETURN_IF_ERROR(
      CheckTokenRange(sequence, layer, options_.num_layers, first_token, num_tokens));
  if (dtype == DType::kI32) {
    return absl::InvalidArgumentError("KV cache WriteTokens: dtype must be a float type, not I32");
  }
  if (num_tokens == 0) return absl::OkStatus();
  PDSERVE_RETURN_IF_ERROR(CheckUnshared(sequence, first_token, num_tokens));
  const int kv_width = options_.num_kv_heads * options_.head_dim;
  if (backend_->host_memory_buffers()) {
    // Tokens of one block occupy consecutive slots: one conversion per
    // block's run, straight from the caller's bytes into the cache.
    const size_t token_bytes = static_cast<size_t>(kv_width) * DTypeSize(dtype);
    absl::Status status;
    ForEachBlockRun(first_token, num_tokens, [&](int token, int run) {
      if (!status.ok()) return;
      const size_t src_offset = static_cast<size_t>(token - first_token) * token_bytes;
      const size_t dst_offset = static_cast<size_t>(sequence.Slot(token)) * kv_width;
      const size_t n = static_cast<size_t>(run) * kv_width;
      status = backend_->CopyToDevice(static_cast<const char*>(k) + src_offset, dtype, n,
                                      *k_[layer], dst_offset);
      if (status.ok()) {
        status = backend_->CopyToDevice(static_cast<const char*>(v) + src_offset, dtype, n,
                                        *v_[layer], dst_offset);
      }
    });
    return status;
  }
  const size_t elements = static_cast<size_t>(num_tokens) * kv_width;
  PDSERVE_ASSIGN_OR_RETURN(Staging staging,
                           MakeStaging(*backend_, sequence, first_token, num_tokens, kv_width));
  PDSERVE_RETURN_IF_ERROR(backend_->CopyToDevice(k, dtype, elements, *staging.k, 0));
  PDSERVE_RETURN_IF_ERROR(backend_->CopyToDevice(v, dtype, elements, *staging.v, 0));
  backend_->KvScatter(*staging.k, *staging.v, *staging.slots, num_tokens, kv_width, *k_[layer],
                      *v_[layer]);
  // The staging buffers die on return; queued work must be done with them.
  return backend_->Synchronize();
}

absl::Status KvCache::CheckUnshared(const Sequence& sequence, int first_token,
                                    int num_tokens) const {
  const int block_size = options_.block_size;
  std::lock_guard<std::mutex> lock(mutex_);
  for (int b = first_token / block_size; b <= (first_token + num_tokens - 1) / block_size; ++b) {
    const int32_t block = sequence.block_table()[b];
    if (ref_counts_[block] > 1) {
      return absl::FailedPreconditionError(absl::StrCat(
          "KV cache WriteTokens: block ", block, " (tokens from ", b * block_size,
          ") is shared by ", ref_counts_[block], " leases; PrepareWrite each position first"));
    }
  }
  return absl::OkStatus();
}

bool KvCache::HostRanges(const Sequence& sequence, int layer, int first_token, int num_tokens,
                         DType dtype, std::vector<std::span<char>>* k,
                         std::vector<std::span<char>>* v) {
  k->clear();
  v->clear();
  if (!backend_->host_memory_buffers() || num_tokens <= 0 ||
      !CheckTokenRange(sequence, layer, options_.num_layers, first_token, num_tokens).ok() ||
      dtype != k_[layer]->dtype() || dtype != v_[layer]->dtype()) {
    return false;
  }
  if (!CheckUnshared(sequence, first_token, num_tokens).ok()) return false;
  const size_t token_bytes =
      static_cast<size_t>(options_.num_kv_heads) * options_.head_dim * DTypeSize(dtype);
  char* k_base = static_cast<char*>(k_[layer]->data());
  char* v_base = static_cast<char*>(v_[layer]->data());
  ForEachBlockRun(first_token, num_tokens, [&](int token, int run) {
    const size_t offset = static_cast<size_t>(sequence.Slot(token)) * token_bytes;
    const size_t bytes = static_cast<size_t>(run) * token_bytes;
    k->emplace_back(k_base + offset, bytes);
    v->emplace_back(v_base + offset, bytes);
  });
  return true;
}

absl::Status KvCache::ReadTokens(const Sequence& sequence, int layer, int first_token,
                                 int num_tokens, float* k, float* v) {
  PDSERVE_RETURN_IF_ERROR(
      CheckTokenRange(sequence, layer, options_.num_layers, first_token, num_tokens));
  if (num_tokens == 0) return absl::OkStatus();
  const int kv_width = options_.num_kv_heads * options_.head_dim;
  const size_t elements = static_cast<size_t>(num_tokens) * kv_width;
  PDSERVE_ASSIGN_OR_RETURN(Staging staging,
                           MakeStaging(*backend_, sequence, first_token, num_tokens, kv_width));
  backend_->KvGather(*k_[layer], *v_[layer], *staging.slots, num_tokens, kv_width, *staging.k,
                     *staging.v);
  PDSERVE_RETURN_IF_ERROR(backend_->CopyToHost(*staging.k, 0, elements, k, DType::kF32));
  PDSERVE_RETURN_IF_ERROR(backend_->CopyToHost(*staging.v, 0, elements, v, DType::kF32));
  return backend_->Synchronize();
}

}  // namespace pdserve
