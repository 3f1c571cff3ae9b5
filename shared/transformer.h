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

class PrefillBatchRunner;

// Called by Prefill as soon as a layer's K and V are computed, so the caller
// can stream them while later layers run. k, v: backend buffers of
// [num_tokens, num_kv_heads * head_dim] in backend.kv_dtype(), holding the
// prompt's tokens [0, num_tokens). Read them with Backend::CopyToHost, or
// start a Backend::CopyToHostAsync of them, before returning (later layers
// reuse the buffers); a non-OK status aborts the prefill with that status.
using LayerKvSink = std::function<absl::Status(int layer, const DeviceBuffer& k,
                                               const DeviceBuffer& v, int num_tokens)>;

// Called by PrefillBatch as soon as a layer's K and V of a range of a
// prompt's tokens are computed. k, v: backend buffers of at least
// first_token + num_tokens rows of num_kv_heads * head_dim in
// backend.kv_dtype(), row t holding the prompt's token t; the new rows are
// [first_token, first_token + num_tokens) (rows before it were handed out
// with earlier chunks). Read them with Backend::CopyToHost, or start a
// Backend::CopyToHostAsync of them, before returning (later layers reuse the
// buffers); a non-OK status ends this prompt (only) with that status.
using KvRangeSink = std::function<absl::Status(
    int layer, const DeviceBuffer& k, const DeviceBuffer& v, int first_token, int num_tokens)>;

// Receives hidden states of a prompt's tokens [first_token, first_token +
// num_tokens) as they are computed: values [num_tokens, hidden_size] float32
// on the host, valid during the call. layer: -1 the embeddings output,
// [0, num_layers) the residual stream after that decoder layer,
// Transformer::FinalNormLayer(config) = num_layers the final RMSNorm output.
// A non-OK status ends this prompt (only) with that status.
using HiddenStateSink = std::function<absl::Status(int layer, int first_token, int num_tokens,
                                                   std::span<const float> values)>;

// What a prefill hands out besides the KV and the last position's final
// hidden state. Nothing extra is computed or copied unless asked for.
struct PrefillCapture {
  // The final RMSNorm output of every position (HF last_hidden_state[0]),
  // handed to the hidden-state sink as layer num_layers.
  bool all_positions = false;
  // Hidden states after these decoder layers (-1: the embeddings output),
  // each in [-1, num_layers) and at most once.
  std::vector<int> hidden_state_layers;

  bool empty() const { return !all_positions && hidden_state_layers.empty(); }
};

// One prompt of a batched prefill.
struct PrefillSequence {
  std::span<const int32_t> tokens;  // the whole prompt, positions 0..n-1
  KvRangeSink kv_sink;              // may be empty
  PrefillCapture capture;
  HiddenStateSink hidden_sink;  // required when `capture` asks for anything
  // Called once with this prompt's outcome as soon as it is known, before
  // the forward steps that follow: the final hidden state of the last
  // position, [hidden_size] float32, or the error that ended the prompt.
  // May be empty (the outcome is also returned).
  std::function<void(const absl::StatusOr<std::vector<float>>& result)> done;
};

// What a decode step should hand back besides every row's argmax.
struct DecodeStepOptions {
  // [b]: the rows whose logits come back (copied to the host, packed in
  // batch order).
  std::vector<bool> want_logits;
  // 0, or k in [1, min(vocab_size, Backend::kMaxTopKRows)]: every row's k
  // largest logits come back too (Backend::TopKRows), for top-k sampling
  // without the whole row.
  int top_candidates = 0;
};

// What Transformer::DecodeStep hands back when the caller says what it
// needs of each row.
struct DecodeStepOutput {
  // [b]: each row's argmax over its logits (ties to the smallest id).
  std::vector<int32_t> argmax;
  // [rows with want_logits, vocab_size] float32, in batch order.
  std::vector<float> logits;
  // [b, top_candidates]: each row's largest logits and their ids,
  // descending (Backend::TopKRows); empty when top_candidates is 0.
  std::vector<float> candidate_values;
  std::vector<int32_t> candidate_ids;
};

struct PrefillBatchOptions {
  // Most prompt tokens one forward step takes, over all prompts of the
  // batch; 0: everything in one step. A longer batch runs in several steps,
  // each prompt's later chunks attending over the keys of its earlier ones
  // (kept in per-layer buffers), so activations stay [chunk_tokens, ...]
  // however long the prompts.
  int chunk_tokens = 0;
};

struct PrefillBatchResult {
  // Per prompt, in order: as passed to PrefillSequence::done.
  std::vector<absl::StatusOr<std::vector<float>>> final_hidden;
  int forward_steps = 0;  // forward passes run (each over up to chunk_tokens tokens)
};

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

  // Runs several prompts of different lengths through the model together:
  // each forward step concatenates up to options.chunk_tokens of their
  // tokens into one [rows, hidden] activation, so every linear layer is one
  // GEMM over all of them, while attention runs per prompt over its own
  // keys (causal). Each prompt gets its KV per (chunk, layer) through its
  // kv_sink as soon as computed, its captured hidden states through its
  // hidden_sink, and its final hidden state through `done` when its last
  // chunk is through. A prompt fails alone: INVALID_ARGUMENT (as Prefill,
  // plus a bad capture), or its sink's error; the others carry on, the
  // failed one's rows are dropped from later steps. A backend failure ends
  // every unfinished prompt with it. Results equal running each prompt
  // alone up to float rounding of the differently shaped GEMMs.
  PrefillBatchResult PrefillBatch(std::span<const PrefillSequence> sequences,
                                  const PrefillBatchOptions& options);

  // The hidden-state sink's layer number for the final RMSNorm output.
  static int FinalNormLayer(const ModelConfig& config) { return config.num_layers; }

  // logits = lm_head · hidden for `m` rows. hidden: [m, hidden_size] float32;
  // returns [m, vocab_size] float32.
  absl::StatusOr<std::vector<float>> ComputeLogits(std::span<const float> hidden, int m);

  // One token per sequence: writes each token's K and V into `cache` at its
  // slot, attends over the sequence's cached tokens, and returns logits
  // [b, vocab_size] float32.
  absl::StatusOr<std::vector<float>> DecodeStep(const DecodeBatch& batch, KvCache& cache);

  // The same step, handing back only what the caller will use: every row's
  // greedy token, picked on the backend (Backend::ArgmaxRows), the logits of
  // the rows options.want_logits names, and with options.top_candidates = k
  // every row's k largest logits. A greedy or top-k request then needs no
  // logits on the host: with Phi-3's 32064-entry vocabulary that saves
  // 125 KiB of device-to-host copy and a host pass over it per row and
  // step. INVALID_ARGUMENT as DecodeStep, or naming want_logits (size not
  // b) or top_candidates (outside its range).
  absl::StatusOr<DecodeStepOutput> DecodeStep(const DecodeBatch& batch, KvCache& cache,
                                              const DecodeStepOptions& options);

  const ModelConfig& config() const { return config_; }
  Backend& backend() { return *backend_; }

 private:
  struct LayerBuffers {
    BufferPtr input_layernorm, qkv_proj, o_proj, post_attention_layernorm, gate_up_proj, down_proj;
  };
  friend class PrefillBatchRunner;  // PrefillBatch's steps (transformer.cc)
  Transformer(const ModelConfig& config, Backend* backend) : config_(config), backend_(backend) {}

  ModelConfig config_;
  Backend* backend_;
  BufferPtr embed_tokens_, norm_, lm_head_;
  std::vector<LayerBuffers> layers_;
};

}  // namespace pdserve

#endif  // PDSERVE_SHARED_TRANSFORMER_H_
