// The decoder-only transformer forward pass (Llama / Mistral / Phi-3) on a
// Backend. Reads like llama2.c's forward(): per layer
//   x += o_proj(attn(rope(split(qkv_proj(rmsnorm(x))))))
//   x += down_proj(silu(gate) * up),  [gate; up] = gate_up_proj(rmsnorm(x))
// then the final RMSNorm and lm_head.
#ifndef PDSERVE_SHARED_TRANSFORMER_H_
#define PDSERVE_SHARED_TRANSFORMER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "shared/backend.h"
#include "shared/kv_cache.h"
#include "shared/model_config.h"
#include "shared/model_weights.h"

namespace pdserve {

// Called by Prefill as soon as a layer's K and V are computed, so the caller
// can stream them while later layers run. k, v: backend buffers of
// [num_tokens, num_kv_heads * head_dim] in backend.kv_dtype(), holding the
// prompt's tokens [0, num_tokens). Read them with Backend::CopyToHost before
// returning; a non-OK status aborts the prefill with that status.
using LayerKvSink = std::function<absl::Status(int layer, const DeviceBuffer& k,
                                               const DeviceBuffer& v, int num_tokens)>;

// One decode step's batch: one new token per running sequence.
struct DecodeBatch {
  std::vector<int32_t> tokens;        // [b] the token to feed
  std::vector<int32_t> positions;     // [b] its position (tokens already cached)
  std::vector<int32_t> slot_mapping;  // [b] KV cache slot for its K and V
  std::vector<int32_t> context_lens;  // [b] positions[i] + 1
  int max_blocks_per_seq = 0;         // row stride of block_tables
  std::vector<int32_t> block_tables;  // [b, max_blocks_per_seq], padded with 0

  int size() const { return static_cast<int>(tokens.size()); }
  // Appends a sequence whose token `token` goes at `position`; `sequence`
  // must already hold position + 1 tokens (KvCache::Sequence::Reserve).
  void Add(int32_t token, int position, const KvCache::Sequence& sequence);
};

class Transformer {
 public:
  // Uploads the weights to `backend` (which must outlive the Transformer, as
  // must `weights`' store). INVALID_ARGUMENT / RESOURCE_EXHAUSTED from the
  // backend.
  static absl::StatusOr<std::unique_ptr<Transformer>> Create(const ModelConfig& config,
                                                             const ModelWeights& weights,
                                                             Backend* backend);

  // Runs `tokens` (the whole prompt, positions 0..n-1) through every layer,
  // calling `sink` per layer (may be empty). Returns the final hidden state
  // of the last position after the final RMSNorm: [hidden_size] float32
  // (Hugging Face's last_hidden_state[0, -1]). INVALID_ARGUMENT for an empty
  // prompt, one longer than max_position_embeddings, or an id outside the
  // vocabulary.
  absl::StatusOr<std::vector<float>> Prefill(std::span<const int32_t> tokens,
                                             const LayerKvSink& sink);

  // logits = lm_head · hidden for `m` rows. hidden: [m, hidden_size] float32;
  // returns [m, vocab_size] float32.
  absl::StatusOr<std::vector<float>> ComputeLogits(std::span<const float> hidden, int m);

  // One token per sequence: writes each token's K and V into `cache` at its
  // slot, attends over the sequence's cached tokens, and returns logits
  // [b, vocab_size] float32.
  absl::StatusOr<std::vector<float>> DecodeStep(const DecodeBatch& batch, KvCache& cache);

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return *backend_; }

 private:
  struct LayerBuffers {
    BufferPtr input_layernorm, qkv_proj, o_proj, post_attention_layernorm, gate_up_proj, down_proj;
  };
  Transformer(const ModelConfig& config, Backend* backend) : config_(config), backend_(backend) {}

  ModelConfig config_;
  Backend* backend_;
  BufferPtr embed_tokens_, norm_, lm_head_;
  std::vector<LayerBuffers> layers_;
};

}  // namespace pdserve

#endif  // PDSERVE_SHARED_TRANSFORMER_H_
