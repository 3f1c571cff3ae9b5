#include "shared/transformer.h"

#include <algorithm>
#include <climits>
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

namespace {

// The single-prompt checks Prefill has always made: INVALID_ARGUMENT naming
// `field` for an empty prompt, one beyond the context, or an unknown id.
absl::Status ValidatePrompt(std::span<const int32_t> tokens, const ModelConfig& c,
                            const std::string& field) {
  if (tokens.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": empty; it needs at least 1 token"));
  }
  if (static_cast<int64_t>(tokens.size()) > c.max_position_embeddings) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", tokens.size(),
                                                   " tokens exceed max_position_embeddings ",
                                                   c.max_position_embeddings));
  }
  return CheckTokenIds(tokens, c.vocab_size, field.c_str());
}

// Layers in [-1, num_layers), each once, and a sink to receive them.
absl::Status ValidateCapture(const PrefillSequence& sequence, const ModelConfig& c,
                             const std::string& field) {
  const std::vector<int>& layers = sequence.capture.hidden_state_layers;
  for (size_t i = 0; i < layers.size(); ++i) {
    if (layers[i] < -1 || layers[i] >= c.num_layers) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".hidden_state_layers[", i, "]: layer ",
                                                     layers[i], " outside [-1, num_layers ",
                                                     c.num_layers, ")"));
    }
    if (std::find(layers.begin(), layers.begin() + i, layers[i]) != layers.begin() + i) {
      return absl::InvalidArgumentError(absl::StrCat(field, ".hidden_state_layers[", i, "]: layer ",
                                                     layers[i], " asked for twice"));
    }
  }
  if (!sequence.capture.empty() && !sequence.hidden_sink) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ".hidden_sink: missing, but the capture asks for hidden states"));
  }
  return absl::OkStatus();
}

}  // namespace

// One PrefillBatch call. Each forward step takes the next tokens of the
// unfinished prompts in order, up to the step budget, as "pieces": prompt
// tokens [first_token, first_token + count) at activation rows
// [row, row + count). Everything but attention runs once over all rows.
// Attention needs each prompt's queries and keys on their own (the backend's
// PrefillAttention reads whole buffers), so per piece:
//   * a prompt that spans several steps keeps per-layer K/V buffers [n, kv]
//     its pieces are appended to (chunked prefill: later chunks attend over
//     them);
//   * a prompt done in one step uses the step's K/V buffer directly when it
//     is the step's only piece, or a scratch copy of its rows otherwise;
//   * queries and outputs go through scratch copies unless the piece is the
//     step's only one.
class PrefillBatchRunner {
 public:
  PrefillBatchRunner(Transformer& model, std::span<const PrefillSequence> sequences,
                     const PrefillBatchOptions& options)
      : model_(model),
        c_(model.config_),
        backend_(*model.backend_),
        sequences_(sequences),
        prompts_(sequences.size()) {
    result_.final_hidden.resize(sequences.size());
    budget_ = options.chunk_tokens > 0 ? options.chunk_tokens : INT_MAX;
    if (options.chunk_tokens < 0) {
      for (size_t i = 0; i < sequences.size(); ++i) {
        Finish(i, absl::InvalidArgumentError(absl::StrCat("chunk_tokens: ", options.chunk_tokens,
                                                          " is negative (0: no chunking)")));
      }
    }
  }

  PrefillBatchResult Run() {
    int64_t total_tokens = 0;
    for (size_t i = 0; i < sequences_.size(); ++i) {
      if (prompts_[i].finished) continue;
      const std::string field =
          sequences_.size() == 1 ? std::string("prompt") : absl::StrCat("prompts[", i, "]");
      absl::Status valid = ValidatePrompt(sequences_[i].tokens, c_, field);
      if (valid.ok()) valid = ValidateCapture(sequences_[i], c_, field);
      if (!valid.ok()) {
        Finish(i, valid);
        continue;
      }
      Prompt& prompt = prompts_[i];
      prompt.num_tokens = static_cast<int>(sequences_[i].tokens.size());
      prompt.captures.assign(c_.num_layers + 1, false);  // index: layer + 1
      for (int layer : sequences_[i].capture.hidden_state_layers) prompt.captures[layer + 1] = true;
      total_tokens += prompt.num_tokens;
    }
    if (total_tokens == 0) return std::move(result_);
    max_rows_ = static_cast<int>(std::min<int64_t>(total_tokens, budget_));
    absl::Status status = Allocate();
    while (status.ok()) {
      const std::vector<Piece> pieces = NextStep();
      if (pieces.empty()) break;
      ++result_.forward_steps;
      status = RunStep(pieces);
      for (const Piece& piece : pieces) {  // a finished prompt's keys are no longer needed
        Prompt& prompt = prompts_[piece.prompt];
        if (prompt.finished) {
          prompt.k.clear();
          prompt.v.clear();
        }
      }
    }
    if (!status.ok()) {
      for (size_t i = 0; i < sequences_.size(); ++i) Finish(i, status);
    }
    return std::move(result_);
  }

 private:
  struct Piece {
    int prompt = 0;
    int first_token = 0;
    int count = 0;
    int row = 0;
  };
  struct Prompt {
    int num_tokens = 0;
    int next_token = 0;          // tokens before it have been through a step
    bool finished = false;       // its outcome is in result_ (and `done` has run)
    std::vector<bool> captures;  // [num_layers + 1]: hidden states after layer i - 1
    // Prompts spanning several steps: K and V of every layer, [n, kv] each.
    std::vector<BufferPtr> k, v;
  };

  int KvWidth() const { return c_.num_kv_heads * c_.head_dim; }
  int QWidth() const { return c_.num_heads * c_.head_dim; }
  bool Live(const Piece& piece) const { return !prompts_[piece.prompt].finished; }

  void Finish(size_t i, absl::StatusOr<std::vector<float>> outcome) {
    if (prompts_[i].finished) return;
    prompts_[i].finished = true;
    result_.final_hidden[i] = std::move(outcome);
    if (sequences_[i].done) sequences_[i].done(result_.final_hidden[i]);
  }

  // Buffers sized for the largest step, reused by every step.
  absl::Status Allocate() {
    PDSERVE_ASSIGN_OR_RETURN(a_, AllocateActivations(backend_, c_, max_rows_));
    const size_t rows = static_cast<size_t>(max_rows_);
    PDSERVE_ASSIGN_OR_RETURN(ids_, backend_.Allocate(rows, DType::kI32));
    PDSERVE_ASSIGN_OR_RETURN(positions_, backend_.Allocate(rows, DType::kI32));
    // Attention and the sinks take K and V in kv_dtype(); where that differs
    // from the activations, KvScatter with slots 0..rows-1 converts them.
    if (backend_.kv_dtype() != backend_.activation_dtype()) {
      std::vector<int32_t> identity(max_rows_);
      for (int i = 0; i < max_rows_; ++i) identity[i] = i;
      PDSERVE_ASSIGN_OR_RETURN(identity_slots_, UploadIndices(backend_, identity));
      PDSERVE_ASSIGN_OR_RETURN(k_step_, backend_.Allocate(rows * KvWidth(), backend_.kv_dtype()));
      PDSERVE_ASSIGN_OR_RETURN(v_step_, backend_.Allocate(rows * KvWidth(), backend_.kv_dtype()));
    }
    return absl::OkStatus();
  }

  // Scratch for steps of several pieces, allocated the first time one comes.
  absl::Status AllocateScratch() {
    if (q_scratch_ != nullptr) return absl::OkStatus();
    const size_t rows = static_cast<size_t>(max_rows_);
    const DType act = backend_.activation_dtype();
    PDSERVE_ASSIGN_OR_RETURN(q_scratch_, backend_.Allocate(rows * QWidth(), act));
    PDSERVE_ASSIGN_OR_RETURN(attn_scratch_, backend_.Allocate(rows * QWidth(), act));
    PDSERVE_ASSIGN_OR_RETURN(k_scratch_, backend_.Allocate(rows * KvWidth(), backend_.kv_dtype()));
    PDSERVE_ASSIGN_OR_RETURN(v_scratch_, backend_.Allocate(rows * KvWidth(), backend_.kv_dtype()));
    return absl::OkStatus();
  }

  // The next step's pieces: unfinished prompts in order, up to the budget.
  std::vector<Piece> NextStep() {
    std::vector<Piece> pieces;
    int rows = 0;
    for (size_t i = 0; i < prompts_.size() && rows < budget_; ++i) {
      Prompt& prompt = prompts_[i];
      if (prompt.finished || prompt.next_token >= prompt.num_tokens) continue;
      const int count = std::min(prompt.num_tokens - prompt.next_token, budget_ - rows);
      pieces.push_back(Piece{static_cast<int>(i), prompt.next_token, count, rows});
      prompt.next_token += count;
      rows += count;
    }
    return pieces;
  }

  // Gives every live piece whose prompt asked for `layer` its rows of `x`
  // ([rows, hidden], activation dtype).
  absl::Status Capture(int layer, const DeviceBuffer& x, const std::vector<Piece>& pieces) {
    std::vector<float> values;
    for (const Piece& piece : pieces) {
      if (!Live(piece)) continue;
      const PrefillSequence& sequence = sequences_[piece.prompt];
      const bool wanted = layer == c_.num_layers ? sequence.capture.all_positions
                                                 : prompts_[piece.prompt].captures[layer + 1];
      if (!wanted) continue;
      values.resize(static_cast<size_t>(piece.count) * c_.hidden_size);
      PDSERVE_RETURN_IF_ERROR(backend_.CopyToHost(x,
                                                  static_cast<size_t>(piece.row) * c_.hidden_size,
                                                  values.size(), values.data(), DType::kF32));
      absl::Status sunk = sequence.hidden_sink(layer, piece.first_token, piece.count, values);
      if (!sunk.ok()) Finish(piece.prompt, sunk);
    }
    return absl::OkStatus();
  }

  // Places a piece's K and V of layer `l` where its attention reads them,
  // hands them to its sink, and runs its attention.
  absl::Status AttendPiece(int l, const Piece& piece, bool alone, const DeviceBuffer& k_step,
                           const DeviceBuffer& v_step) {
    Prompt& prompt = prompts_[piece.prompt];
    const size_t kv = static_cast<size_t>(KvWidth());
    const size_t rows = static_cast<size_t>(piece.count);
    const DeviceBuffer* k = &k_step;
    const DeviceBuffer* v = &v_step;
    if (piece.first_token + piece.count < prompt.num_tokens && prompt.k.empty()) {
      // More chunks follow: keep this prompt's keys for them.
      for (int layer = 0; layer < c_.num_layers; ++layer) {
        const size_t elements = static_cast<size_t>(prompt.num_tokens) * kv;
        absl::StatusOr<BufferPtr> k_all = backend_.Allocate(elements, backend_.kv_dtype());
        absl::StatusOr<BufferPtr> v_all = backend_.Allocate(elements, backend_.kv_dtype());
        if (!k_all.ok() || !v_all.ok()) {
          prompt.k.clear();
          prompt.v.clear();
          Finish(piece.prompt, k_all.ok() ? v_all.status() : k_all.status());
          return absl::OkStatus();
        }
        prompt.k.push_back(std::move(*k_all));
        prompt.v.push_back(std::move(*v_all));
      }
    }
    if (!prompt.k.empty()) {
      k = prompt.k[l].get();
      v = prompt.v[l].get();
      backend_.CopyElements(k_step, piece.row * kv, *prompt.k[l], piece.first_token * kv,
                            rows * kv);
      backend_.CopyElements(v_step, piece.row * kv, *prompt.v[l], piece.first_token * kv,
                            rows * kv);
    } else if (!alone) {
      k = k_scratch_.get();
      v = v_scratch_.get();
      backend_.CopyElements(k_step, piece.row * kv, *k_scratch_, 0, rows * kv);
      backend_.CopyElements(v_step, piece.row * kv, *v_scratch_, 0, rows * kv);
    }
    const PrefillSequence& sequence = sequences_[piece.prompt];
    if (sequence.kv_sink) {
      absl::Status sunk = sequence.kv_sink(l, *k, *v, piece.first_token, piece.count);
      if (!sunk.ok()) {
        Finish(piece.prompt, sunk);
        return absl::OkStatus();  // its rows run on unattended; nobody reads them
      }
    }
    const PrefillAttentionParams params{
        piece.count,  piece.first_token + piece.count,
        c_.num_heads, c_.num_kv_heads,
        c_.head_dim,  1.0f / std::sqrt(static_cast<float>(c_.head_dim))};
    if (alone) {
      backend_.PrefillAttention(*a_.q, *k, *v, params, *a_.attn);
      return absl::OkStatus();
    }
    const size_t q = static_cast<size_t>(QWidth());
    backend_.CopyElements(*a_.q, piece.row * q, *q_scratch_, 0, rows * q);
    backend_.PrefillAttention(*q_scratch_, *k, *v, params, *attn_scratch_);
    backend_.CopyElements(*attn_scratch_, 0, *a_.attn, piece.row * q, rows * q);
    return absl::OkStatus();
  }

  // One forward pass over `pieces`. Non-OK only for a failure of the whole
  // step (the backend); a prompt's own failure just finishes that prompt.
  absl::Status RunStep(const std::vector<Piece>& pieces) {
    const int rows = pieces.back().row + pieces.back().count;
    const bool alone = pieces.size() == 1;
    if (!alone) PDSERVE_RETURN_IF_ERROR(AllocateScratch());
    std::vector<int32_t> ids, positions;
    ids.reserve(rows);
    positions.reserve(rows);
    for (const Piece& piece : pieces) {
      const std::span<const int32_t> tokens = sequences_[piece.prompt].tokens;
      for (int t = piece.first_token; t < piece.first_token + piece.count; ++t) {
        ids.push_back(tokens[t]);
        positions.push_back(t);
      }
    }
    PDSERVE_RETURN_IF_ERROR(backend_.CopyToDevice(ids.data(), DType::kI32, ids.size(), *ids_, 0));
    PDSERVE_RETURN_IF_ERROR(
        backend_.CopyToDevice(positions.data(), DType::kI32, positions.size(), *positions_, 0));
    const DeviceBuffer& k_step = k_step_ ? *k_step_ : *a_.k;
    const DeviceBuffer& v_step = v_step_ ? *v_step_ : *a_.v;

    backend_.Embedding(*model_.embed_tokens_, *ids_, rows, c_.hidden_size, *a_.x);
    PDSERVE_RETURN_IF_ERROR(Capture(-1, *a_.x, pieces));
    for (int l = 0; l < c_.num_layers; ++l) {
      const Transformer::LayerBuffers& w = model_.layers_[l];
      AttentionInputs(backend_, c_, *w.input_layernorm, *w.qkv_proj, *positions_, rows, a_);
      if (k_step_)
        backend_.KvScatter(*a_.k, *a_.v, *identity_slots_, rows, KvWidth(), *k_step_, *v_step_);
      for (const Piece& piece : pieces) {
        if (Live(piece)) PDSERVE_RETURN_IF_ERROR(AttendPiece(l, piece, alone, k_step, v_step));
      }
      AttentionOutputAndMlp(backend_, c_, *w.o_proj, *w.post_attention_layernorm, *w.gate_up_proj,
                            *w.down_proj, rows, a_);
      PDSERVE_RETURN_IF_ERROR(Capture(l, *a_.x, pieces));
    }
    return FinishStep(pieces, rows);
  }

  // The final RMSNorm: of every row when some prompt wants all positions,
  // else only of the last row of each prompt this step completes.
  absl::Status FinishStep(const std::vector<Piece>& pieces, int rows) {
    bool norm_all = false;
    std::vector<const Piece*> completing;
    for (const Piece& piece : pieces) {
      if (!Live(piece)) continue;
      norm_all = norm_all || sequences_[piece.prompt].capture.all_positions;
      if (piece.first_token + piece.count == prompts_[piece.prompt].num_tokens) {
        completing.push_back(&piece);
      }
    }
    const int hidden = c_.hidden_size;
    if (norm_all) {
      backend_.RmsNorm(*a_.x, *model_.norm_, rows, hidden, c_.rms_norm_eps, *a_.xb);
      PDSERVE_RETURN_IF_ERROR(Capture(c_.num_layers, *a_.xb, pieces));
    }
    if (completing.empty()) return backend_.Synchronize();
    if (last_ == nullptr) {
      PDSERVE_ASSIGN_OR_RETURN(last_,
                               backend_.Allocate(prompts_.size() * static_cast<size_t>(hidden),
                                                 backend_.activation_dtype()));
    }
    const int m = static_cast<int>(completing.size());
    for (int j = 0; j < m; ++j) {
      const size_t last_row = static_cast<size_t>(completing[j]->row + completing[j]->count - 1);
      backend_.CopyElements(norm_all ? *a_.xb : *a_.x, last_row * hidden, *last_,
                            static_cast<size_t>(j) * hidden, hidden);
    }
    if (!norm_all) backend_.RmsNorm(*last_, *model_.norm_, m, hidden, c_.rms_norm_eps, *last_);
    std::vector<float> values(static_cast<size_t>(m) * hidden);
    PDSERVE_RETURN_IF_ERROR(backend_.Synchronize());
    PDSERVE_RETURN_IF_ERROR(
        backend_.CopyToHost(*last_, 0, values.size(), values.data(), DType::kF32));
    for (int j = 0; j < m; ++j) {
      // A sink of the final-norm capture may have ended it meanwhile.
      if (!Live(*completing[j])) continue;
      Finish(completing[j]->prompt,
             std::vector<float>(values.begin() + static_cast<size_t>(j) * hidden,
                                values.begin() + static_cast<size_t>(j + 1) * hidden));
    }
    return absl::OkStatus();
  }

  Transformer& model_;
  const ModelConfig& c_;
  Backend& backend_;
  std::span<const PrefillSequence> sequences_;
  std::vector<Prompt> prompts_;
  PrefillBatchResult result_;
  int budget_ = INT_MAX;
  int max_rows_ = 0;

  Activations a_;
  BufferPtr ids_, positions_;           // I32 [max_rows]
  BufferPtr identity_slots_;            // I32 0..max_rows-1, when K/V need converting
  BufferPtr k_step_, v_step_;           // [max_rows, kv] kv_dtype, when converting
  BufferPtr q_scratch_, attn_scratch_;  // [max_rows, heads * head_dim]
  BufferPtr k_scratch_, v_scratch_;     // [max_rows, kv] kv_dtype
  BufferPtr last_;                      // [prompts, hidden] final hidden rows
};

absl::StatusOr<std::vector<float>> Transformer::Prefill(std::span<const int32_t> tokens,
                                                        const LayerKvSink& sink) {
  PrefillSequence sequence;
  sequence.tokens = tokens;
  if (sink) {
    // One step (no chunking), so every call covers tokens [0, n).
    sequence.kv_sink = [&sink](int layer, const DeviceBuffer& k, const DeviceBuffer& v,
                               int /*first_token*/,
                               int num_tokens) { return sink(layer, k, v, num_tokens); };
  }
  PrefillBatchResult result = PrefillBatch(std::span<const PrefillSequence>(&sequence, 1), {});
  return std::move(result.final_hidden[0]);
}

PrefillBatchResult Transformer::PrefillBatch(std::span<const PrefillSequence> sequences,
                                             const PrefillBatchOptions& options) {
  return PrefillBatchRunner(*this, sequences, options).Run();
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
  DecodeStepOptions options;
  options.want_logits.assign(batch.size(), true);
  PDSERVE_ASSIGN_OR_RETURN(DecodeStepOutput out, DecodeStep(batch, cache, options));
  return std::move(out.logits);
}

absl::StatusOr<DecodeStepOutput> Transformer::DecodeStep(const DecodeBatch& batch, KvCache& cache,
                                                         const DecodeStepOptions& options) {
  const ModelConfig& c = config_;
  PDSERVE_RETURN_IF_ERROR(ValidateDecodeBatch(batch, c, cache));
  const int b = batch.size();
  const std::vector<bool>& want_logits = options.want_logits;
  if (want_logits.size() != static_cast<size_t>(b)) {
    return absl::InvalidArgumentError(
        absl::StrCat("decode want_logits: ", want_logits.size(), " entries for a batch of ", b));
  }
  const int k = options.top_candidates;
  const int max_k = std::min(c.vocab_size, Backend::kMaxTopKRows);
  if (k < 0 || k > max_k) {
    return absl::InvalidArgumentError(
        absl::StrCat("decode top_candidates: ", k, " outside [0, min(vocab_size, ", max_k, ")]"));
  }
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
  PDSERVE_ASSIGN_OR_RETURN(BufferPtr argmax, backend.Allocate(b, DType::kI32));
  backend.ArgmaxRows(*logits, b, c.vocab_size, *argmax);
  BufferPtr candidate_values, candidate_ids;
  if (k > 0) {
    const size_t elements = static_cast<size_t>(b) * k;
    PDSERVE_ASSIGN_OR_RETURN(candidate_values, backend.Allocate(elements, DType::kF32));
    PDSERVE_ASSIGN_OR_RETURN(candidate_ids, backend.Allocate(elements, DType::kI32));
    backend.TopKRows(*logits, b, c.vocab_size, k, *candidate_values, *candidate_ids);
  }
  DecodeStepOutput out;
  out.argmax.resize(b);
  const size_t vocab = static_cast<size_t>(c.vocab_size);
  out.logits.resize(std::count(want_logits.begin(), want_logits.end(), true) * vocab);
  PDSERVE_RETURN_IF_ERROR(backend.Synchronize());
  PDSERVE_RETURN_IF_ERROR(backend.CopyToHost(*argmax, 0, b, out.argmax.data(), DType::kI32));
  if (k > 0) {
    out.candidate_values.resize(static_cast<size_t>(b) * k);
    out.candidate_ids.resize(static_cast<size_t>(b) * k);
    PDSERVE_RETURN_IF_ERROR(backend.CopyToHost(*candidate_values, 0, out.candidate_values.size(),
                                               out.candidate_values.data(), DType::kF32));
    PDSERVE_RETURN_IF_ERROR(backend.CopyToHost(*candidate_ids, 0, out.candidate_ids.size(),
                                               out.candidate_ids.data(), DType::kI32));
  }
  // Consecutive wanted rows are one copy.
  size_t copied = 0;
  for (int first = 0; first < b;) {
    if (!want_logits[first]) {
      ++first;
      continue;
    }
    int end = first;
    while (end < b && want_logits[end]) ++end;
    const size_t elements = static_cast<size_t>(end - first) * vocab;
    PDSERVE_RETURN_IF_ERROR(backend.CopyToHost(*logits, static_cast<size_t>(first) * vocab,
                                               elements, out.logits.data() + copied, DType::kF32));
    copied += elements;
    first = end;
  }
  return out;
}

}  // namespace pdserve
