#include "shared/transformer.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "shared/status_macros.h"

namespace pdserve {
namespace {

// Activations for `m` rows (prompt tokens in Prefill, sequences in a decode
// step), all in backend.activation_dtype(). Like llama2.c's RunState.
struct Activations {
  BufferPtr x;        // [m, hidden] the residual stream
  BufferPtr xb;       // [m, hidden] x after an RMSNorm
  BufferPtr qkv;      // [m, (heads + 2 * kv_heads) * head_dim]
  BufferPtr q;        // [m, heads, head_dim]
  BufferPtr k, v;     // [m, kv_heads, head_dim]
  BufferPtr attn;     // [m, heads * head_dim] attention output, o_proj's input
  BufferPtr gate_up;  // [m, 2 * intermediate]
  BufferPtr ffn;      // [m, intermediate] silu(gate) * up, down_proj's input
};

int QWidth(const ModelConfig& c) { return c.num_heads * c.head_dim; }
int KvWidth(const ModelConfig& c) { return c.num_kv_heads * c.head_dim; }

absl::StatusOr<Activations> AllocateActivations(Backend& backend, const ModelConfig& c, int m) {
  const DType dtype = backend.activation_dtype();
  const size_t rows = static_cast<size_t>(m);
  Activations a;
  PDSERVE_ASSIGN_OR_RETURN(a.x, backend.Allocate(rows * c.hidden_size, dtype));
  PDSERVE_ASSIGN_OR_RETURN(a.xb, backend.Allocate(rows * c.hidden_size, dtype));
  PDSERVE_ASSIGN_OR_RETURN(a.qkv, backend.Allocate(rows * (QWidth(c) + 2 * KvWidth(c)), dtype));
  PDSERVE_ASSIGN_OR_RETURN(a.q, backend.Allocate(rows * QWidth(c), dtype));
  PDSERVE_ASSIGN_OR_RETURN(a.k, backend.Allocate(rows * KvWidth(c), dtype));
  PDSERVE_ASSIGN_OR_RETURN(a.v, backend.Allocate(rows * KvWidth(c), dtype));
  PDSERVE_ASSIGN_OR_RETURN(a.attn, backend.Allocate(rows * QWidth(c), dtype));
  PDSERVE_ASSIGN_OR_RETURN(a.gate_up, backend.Allocate(rows * 2 * c.intermediate_size, dtype));
  PDSERVE_ASSIGN_OR_RETURN(a.ffn, backend.Allocate(rows * c.intermediate_size, dtype));
  return a;
}

// An I32 index buffer holding `values`.
absl::StatusOr<BufferPtr> UploadIndices(Backend& backend, std::span<const int32_t> values) {
  PDSERVE_ASSIGN_OR_RETURN(BufferPtr buffer,
                           backend.Allocate(std::max<size_t>(values.size(), 1), DType::kI32));
  PDSERVE_RETURN_IF_ERROR(
      backend.CopyToDevice(values.data(), DType::kI32, values.size(), *buffer, 0));
  return buffer;
}

absl::StatusOr<BufferPtr> UploadOne(Backend& backend, const HostTensor& tensor) {
  return backend.UploadWeight(std::span<const HostTensor>(&tensor, 1));
}

// Every id in [0, vocab_size).
absl::Status CheckTokenIds(std::span<const int32_t> tokens, int vocab_size, const char* field) {
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= vocab_size) {
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "]: token id ", tokens[i],
                                                     " outside the vocabulary [0, ", vocab_size,
                                                     ")"));
    }
  }
  return absl::OkStatus();
}

// The attention half of a layer up to the attention itself:
// xb = rmsnorm(x); q, k, v = split(xb · qkv_projᵀ); rope(q, k).
void AttentionInputs(Backend& backend, const ModelConfig& c, const DeviceBuffer& norm,
                     const DeviceBuffer& qkv_proj, const DeviceBuffer& positions, int m,
                     Activations& a) {
  backend.RmsNorm(*a.x, norm, m, c.hidden_size, c.rms_norm_eps, *a.xb);
  backend.MatMul(*a.xb, qkv_proj, m, QWidth(c) + 2 * KvWidth(c), c.hidden_size, *a.qkv,
                 /*accumulate=*/false);
  backend.SplitQkv(*a.qkv, m, c.num_heads, c.num_kv_heads, c.head_dim, *a.q, *a.k, *a.v);
  backend.Rope(*a.q, *a.k, positions, m, c.num_heads, c.num_kv_heads, c.head_dim, c.rope_theta);
}

// The rest of a layer after attention:
// x += attn · o_projᵀ;  x += down_proj(silu(gate) * up), [gate; up] = gate_up_proj(rmsnorm(x)).
void AttentionOutputAndMlp(Backend& backend, const ModelConfig& c, const DeviceBuffer& o_proj,
                           const DeviceBuffer& norm, const DeviceBuffer& gate_up_proj,
                           const DeviceBuffer& down_proj, int m, Activations& a) {
  backend.MatMul(*a.attn, o_proj, m, c.hidden_size, QWidth(c), *a.x, /*accumulate=*/true);
  backend.RmsNorm(*a.x, norm, m, c.hidden_size, c.rms_norm_eps, *a.xb);
  backend.MatMul(*a.xb, gate_up_proj, m, 2 * c.intermediate_size, c.hidden_size, *a.gate_up,
                 /*accumulate=*/false);
  backend.SiluMul(*a.gate_up, m, c.intermediate_size, *a.ffn);
  backend.MatMul(*a.ffn, down_proj, m, c.hidden_size, c.intermediate_size, *a.x,
                 /*accumulate=*/true);
}

}  // namespace

void DecodeBatch::Add(int32_t token, int position, const KvCache::Sequence& sequence) {
  const size_t rows = tokens.size();
  tokens.push_back(token);
  positions.push_back(position);
  slot_mapping.push_back(sequence.Slot(position));
  context_lens.push_back(position + 1);
  const std::vector<int32_t>& table = sequence.block_table();
  const int width = std::max(max_blocks_per_seq, static_cast<int>(table.size()));
  if (width > max_blocks_per_seq) {  // widen the rows already there, padding with 0
    std::vector<int32_t> widened(rows * width, 0);
    for (size_t r = 0; r < rows; ++r) {
      std::copy_n(block_tables.begin() + r * max_blocks_per_seq, max_blocks_per_seq,
                  widened.begin() + r * width);
    }
    block_tables = std::move(widened);
    max_blocks_per_seq = width;
  }
  block_tables.insert(block_tables.end(), table.begin(), table.end());
  block_tables.resize((rows + 1) * max_blocks_per_seq, 0);
}

absl::StatusOr<std::unique_ptr<Transformer>> Transformer::Create(const ModelConfig& config,
                                                                 const ModelWeights& weights,
                                                                 Backend* backend) {
  if (static_cast<int>(weights.layers.size()) != config.num_layers) {
    return absl::InvalidArgumentError(absl::StrCat(
        "weights: ", weights.layers.size(), " layers, config num_layers ", config.num_layers));
  }
  if (config.num_heads <= 0 || config.num_kv_heads <= 0 ||
      config.num_heads % config.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat("config: num_heads ", config.num_heads,
                                                   " must be a positive multiple of num_kv_heads ",
                                                   config.num_kv_heads));
  }
  if (config.head_dim <= 0 || config.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("config: head_dim ", config.head_dim, " must be positive and even (RoPE)"));
  }
  std::unique_ptr<Transformer> model(new Transformer(config, backend));
  PDSERVE_ASSIGN_OR_RETURN(model->embed_tokens_, UploadOne(*backend, weights.embed_tokens));
  PDSERVE_ASSIGN_OR_RETURN(model->norm_, UploadOne(*backend, weights.norm));
  // A tied lm_head is the embedding table itself: upload it once.
  if (weights.lm_head.data != weights.embed_tokens.data) {
    PDSERVE_ASSIGN_OR_RETURN(model->lm_head_, UploadOne(*backend, weights.lm_head));
  }
  for (const LayerWeights& w : weights.layers) {
    LayerBuffers layer;
    PDSERVE_ASSIGN_OR_RETURN(layer.input_layernorm, UploadOne(*backend, w.input_layernorm));
    PDSERVE_ASSIGN_OR_RETURN(layer.qkv_proj, backend->UploadWeight(w.qkv_proj));
    PDSERVE_ASSIGN_OR_RETURN(layer.o_proj, UploadOne(*backend, w.o_proj));
    PDSERVE_ASSIGN_OR_RETURN(layer.post_attention_layernorm,
                             UploadOne(*backend, w.post_attention_layernorm));
    PDSERVE_ASSIGN_OR_RETURN(layer.gate_up_proj, backend->UploadWeight(w.gate_up_proj));
    PDSERVE_ASSIGN_OR_RETURN(layer.down_proj, UploadOne(*backend, w.down_proj));
    model->layers_.push_back(std::move(layer));
  }
  PDSERVE_RETURN_IF_ERROR(backend->Synchronize());
  return model;
}

absl::StatusOr<std::vector<float>> Transformer::Prefill(std::span<const int32_t> tokens,
                                                        const LayerKvSink& sink) {
  const ModelConfig& c = config_;
  if (tokens.empty()) {
    return absl::InvalidArgumentError("prompt: empty; it needs at least 1 token");
  }
  if (static_cast<int64_t>(tokens.size()) > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat("prompt: ", tokens.size(),
                                                   " tokens exceed max_position_embeddings ",
                                                   c.max_position_embeddings));
  }
  PDSERVE_RETURN_IF_ERROR(CheckTokenIds(tokens, c.vocab_size, "prompt"));
  const int n = static_cast<int>(tokens.size());
  Backend& backend = *backend_;

  PDSERVE_ASSIGN_OR_RETURN(Activations a, AllocateActivations(backend, c, n));
  std::vector<int32_t> position_values(n);
  for (int i = 0; i < n; ++i) position_values[i] = i;
  PDSERVE_ASSIGN_OR_RETURN(BufferPtr ids, UploadIndices(backend, tokens));
  PDSERVE_ASSIGN_OR_RETURN(BufferPtr positions, UploadIndices(backend, position_values));
  // Attention and the sink take K and V in kv_dtype(); where that differs
  // from the activations, KvScatter with slots 0..n-1 converts them.
  const bool convert_kv = backend.kv_dtype() != backend.activation_dtype();
  BufferPtr k_kv, v_kv;
  if (convert_kv) {
    const size_t elements = static_cast<size_t>(n) * KvWidth(c);
    PDSERVE_ASSIGN_OR_RETURN(k_kv, backend.Allocate(elements, backend.kv_dtype()));
    PDSERVE_ASSIGN_OR_RETURN(v_kv, backend.Allocate(elements, backend.kv_dtype()));
  }
  const DeviceBuffer& k = convert_kv ? *k_kv : *a.k;
  const DeviceBuffer& v = convert_kv ? *v_kv : *a.v;
  const PrefillAttentionParams attention{
      n,           n,
      c.num_heads, c.num_kv_heads,
      c.head_dim,  1.0f / std::sqrt(static_cast<float>(c.head_dim))};

  backend.Embedding(*embed_tokens_, *ids, n, c.hidden_size, *a.x);
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerBuffers& w = layers_[l];
    AttentionInputs(backend, c, *w.input_layernorm, *w.qkv_proj, *positions, n, a);
    if (convert_kv) {
      backend.KvScatter(*a.k, *a.v, *positions, n, KvWidth(c), *k_kv, *v_kv);
    }
    if (sink) PDSERVE_RETURN_IF_ERROR(sink(l, k, v, n));
    backend.PrefillAttention(*a.q, k, v, attention, *a.attn);
    AttentionOutputAndMlp(backend, c, *w.o_proj, *w.post_attention_layernorm, *w.gate_up_proj,
                          *w.down_proj, n, a);
  }
  // Only the last position's hidden state leaves: normalise that row alone.
  PDSERVE_ASSIGN_OR_RETURN(BufferPtr last, backend.Allocate(c.hidden_size, a.x->dtype()));
  backend.CopyElements(*a.x, static_cast<size_t>(n - 1) * c.hidden_size, *last, 0, c.hidden_size);
  backend.RmsNorm(*last, *norm_, 1, c.hidden_size, c.rms_norm_eps, *last);
  std::vector<float> hidden(c.hidden_size);
  PDSERVE_RETURN_IF_ERROR(backend.Synchronize());
  PDSERVE_RETURN_IF_ERROR(backend.CopyToHost(*last, 0, c.hidden_size, hidden.data(), DType::kF32));
  return hidden;
}

absl::StatusOr<std::vector<float>> Transformer::ComputeLogits(std::span<const float> hidden,
                                                              int m) {
  const ModelConfig& c = config_;
  if (m <= 0 || hidden.size() != static_cast<size_t>(m) * c.hidden_size) {
    return absl::InvalidArgumentError(absl::StrCat("ComputeLogits: hidden holds ", hidden.size(),
                                                   " values, expected m (", m,
                                                   ") >= 1 rows of hidden_size ", c.hidden_size));
  }
  Backend& backend = *backend_;
  PDSERVE_ASSIGN_OR_RETURN(BufferPtr h,
                           backend.Allocate(hidden.size(), backend.activation_dtype()));
  PDSERVE_ASSIGN_OR_RETURN(BufferPtr logits, backend.Allocate(static_cast<size_t>(m) * c.vocab_size,
                                                              backend.activation_dtype()));
  PDSERVE_RETURN_IF_ERROR(backend.CopyToDevice(hidden.data(), DType::kF32, hidden.size(), *h, 0));
  const DeviceBuffer& lm_head = lm_head_ ? *lm_head_ : *embed_tokens_;
  backend.MatMul(*h, lm_head, m, c.vocab_size, c.hidden_size, *logits, /*accumulate=*/false);
  std::vector<float> out(logits->num_elements());
  PDSERVE_RETURN_IF_ERROR(backend.Synchronize());
  PDSERVE_RETURN_IF_ERROR(backend.CopyToHost(*logits, 0, out.size(), out.data(), DType::kF32));
  return out;
}

namespace {

// DecodeStep's argument checks: shapes consistent, ids in the vocabulary,
// positions in the context, slots and blocks inside the cache, and a cache
// laid out for this model.
absl::Status ValidateDecodeBatch(const DecodeBatch& batch, const ModelConfig& c,
                                 const KvCache& cache) {
  const KvCacheOptions& o = cache.options();
  if (o.num_layers != c.num_layers || o.num_kv_heads != c.num_kv_heads ||
      o.head_dim != c.head_dim) {
    return absl::InvalidArgumentError(absl::StrCat(
        "KV cache: layers/kv_heads/head_dim ", o.num_layers, "/", o.num_kv_heads, "/", o.head_dim,
        " differ from the model's ", c.num_layers, "/", c.num_kv_heads, "/", c.head_dim));
  }
  const size_t b = batch.tokens.size();
  if (b == 0) return absl::InvalidArgumentError("decode batch: no sequences");
  if (batch.positions.size() != b || batch.slot_mapping.size() != b ||
      batch.context_lens.size() != b) {
    return absl::InvalidArgumentError(absl::StrCat(
        "decode batch: positions/slot_mapping/context_lens sizes ", batch.positions.size(), "/",
        batch.slot_mapping.size(), "/", batch.context_lens.size(), " differ from tokens' ", b));
  }
  if (batch.max_blocks_per_seq < 1 ||
      batch.block_tables.size() != b * static_cast<size_t>(batch.max_blocks_per_seq)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "decode batch: block_tables holds ", batch.block_tables.size(), " entries, expected ", b,
        " x max_blocks_per_seq ", batch.max_blocks_per_seq, " (>= 1)"));
  }
  PDSERVE_RETURN_IF_ERROR(CheckTokenIds(batch.tokens, c.vocab_size, "decode batch tokens"));
  const int64_t num_slots = static_cast<int64_t>(cache.num_blocks()) * cache.block_size();
  for (size_t i = 0; i < b; ++i) {
    const int position = batch.positions[i];
    if (position < 0 || position >= c.max_position_embeddings) {
      return absl::InvalidArgumentError(absl::StrCat("decode batch positions[", i, "]: ", position,
                                                     " outside [0, ", c.max_position_embeddings,
                                                     ") (max_position_embeddings)"));
    }
    const int context = batch.context_lens[i];
    if (context < 1 || context > batch.max_blocks_per_seq * cache.block_size()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "decode batch context_lens[", i, "]: ", context, " outside [1, ",
          batch.max_blocks_per_seq * cache.block_size(), "] (max_blocks_per_seq * block_size)"));
    }
    if (batch.slot_mapping[i] < -1 || batch.slot_mapping[i] >= num_slots) {
      return absl::InvalidArgumentError(absl::StrCat("decode batch slot_mapping[", i,
                                                     "]: ", batch.slot_mapping[i], " outside [-1, ",
                                                     num_slots, ")"));
    }
    const int used_blocks = (context + cache.block_size() - 1) / cache.block_size();
    for (int j = 0; j < used_blocks; ++j) {
      const int32_t block = batch.block_tables[i * batch.max_blocks_per_seq + j];
      if (block < 0 || block >= cache.num_blocks()) {
        return absl::InvalidArgumentError(absl::StrCat("decode batch block_tables[", i, ", ", j,
                                                       "]: block ", block, " outside [0, ",
                                                       cache.num_blocks(), ")"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::vector<float>> Transformer::DecodeStep(const DecodeBatch& batch,
                                                           KvCache& cache) {
  const ModelConfig& c = config_;
  PDSERVE_RETURN_IF_ERROR(ValidateDecodeBatch(batch, c, cache));
  const int b = batch.size();
  Backend& backend = *backend_;

  PDSERVE_ASSIGN_OR_RETURN(Activations a, AllocateActivations(backend, c, b));
  PDSERVE_ASSIGN_OR_RETURN(BufferPtr logits, backend.Allocate(static_cast<size_t>(b) * c.vocab_size,
                                                              backend.activation_dtype()));
  PDSERVE_ASSIGN_OR_RETURN(BufferPtr ids, UploadIndices(backend, batch.tokens));
  PDSERVE_ASSIGN_OR_RETURN(BufferPtr positions, UploadIndices(backend, batch.positions));
  PDSERVE_ASSIGN_OR_RETURN(BufferPtr slots, UploadIndices(backend, batch.slot_mapping));
  PDSERVE_ASSIGN_OR_RETURN(BufferPtr tables, UploadIndices(backend, batch.block_tables));
  PDSERVE_ASSIGN_OR_RETURN(BufferPtr context_lens, UploadIndices(backend, batch.context_lens));
  const PagedAttentionParams attention{b,
                                       c.num_heads,
                                       c.num_kv_heads,
                                       c.head_dim,
                                       cache.block_size(),
                                       batch.max_blocks_per_seq,
                                       1.0f / std::sqrt(static_cast<float>(c.head_dim))};

  backend.Embedding(*embed_tokens_, *ids, b, c.hidden_size, *a.x);
  for (int l = 0; l < c.num_layers; ++l) {
    const LayerBuffers& w = layers_[l];
    AttentionInputs(backend, c, *w.input_layernorm, *w.qkv_proj, *positions, b, a);
    backend.KvScatter(*a.k, *a.v, *slots, b, KvWidth(c), cache.k(l), cache.v(l));
    backend.PagedAttention(*a.q, cache.k(l), cache.v(l), *tables, *context_lens, attention,
                           *a.attn);
    AttentionOutputAndMlp(backend, c, *w.o_proj, *w.post_attention_layernorm, *w.gate_up_proj,
                          *w.down_proj, b, a);
  }
  backend.RmsNorm(*a.x, *norm_, b, c.hidden_size, c.rms_norm_eps, *a.xb);
  const DeviceBuffer& lm_head = lm_head_ ? *lm_head_ : *embed_tokens_;
  backend.MatMul(*a.xb, lm_head, b, c.vocab_size, c.hidden_size, *logits, /*accumulate=*/false);
  std::vector<float> out(logits->num_elements());
  PDSERVE_RETURN_IF_ERROR(backend.Synchronize());
  PDSERVE_RETURN_IF_ERROR(backend.CopyToHost(*logits, 0, out.size(), out.data(), DType::kF32));
  return out;
}

}  // namespace pdserve
