#include "shared/model_weights.h"

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "shared/status_macros.h"

namespace pdserve {
namespace {

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Checks a tensor's dtype and shape; returns a copy of the view.
absl::StatusOr<HostTensor> Checked(const HostTensor& tensor,
                                   const std::vector<int64_t>& expected_shape) {
  if (tensor.dtype != DType::kF32 && tensor.dtype != DType::kBF16 && tensor.dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' has dtype ",
                                                   std::string(DTypeName(tensor.dtype)),
                                                   "; weights must be F32, BF16 or F16"));
  }
  if (tensor.shape != expected_shape) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' has shape ",
                                                   ShapeString(tensor.shape), ", expected ",
                                                   ShapeString(expected_shape)));
  }
  return tensor;
}

absl::StatusOr<HostTensor> Required(const TensorStore& store, const std::string& name,
                                    const std::vector<int64_t>& expected_shape) {
  PDSERVE_ASSIGN_OR_RETURN(const HostTensor* tensor, store.Get(name));
  return Checked(*tensor, expected_shape);
}

// A projection stored either fused (one tensor, e.g. Phi-3's qkv_proj) or as
// separate row blocks (Llama's q/k/v). Returns the row blocks in order.
absl::StatusOr<std::vector<HostTensor>> FusedOrSplit(const TensorStore& store,
                                                     const std::string& prefix,
                                                     const std::string& fused_name,
                                                     const std::vector<std::string>& part_names,
                                                     const std::vector<int64_t>& part_rows,
                                                     int64_t columns) {
  int64_t total_rows = 0;
  for (int64_t rows : part_rows) total_rows += rows;
  std::vector<HostTensor> blocks;
  if (const HostTensor* fused = store.Find(prefix + fused_name)) {
    PDSERVE_ASSIGN_OR_RETURN(HostTensor block, Checked(*fused, {total_rows, columns}));
    blocks.push_back(std::move(block));
    return blocks;
  }
  for (size_t i = 0; i < part_names.size(); ++i) {
    const std::string name = prefix + part_names[i];
    const HostTensor* part = store.Find(name);
    if (part == nullptr) {
      return absl::NotFoundError(absl::StrCat("tensor '", name,
                                              "' not found in the checkpoint (nor the fused '",
                                              prefix, fused_name, "')"));
    }
    PDSERVE_ASSIGN_OR_RETURN(HostTensor block, Checked(*part, {part_rows[i], columns}));
    blocks.push_back(std::move(block));
  }
  return blocks;
}

absl::StatusOr<LayerWeights> LoadLayer(const TensorStore& store, const ModelConfig& config,
                                       int layer) {
  const std::string prefix = absl::StrCat("model.layers.", layer, ".");
  const int64_t hidden = config.hidden_size;
  const int64_t q_rows = int64_t{config.num_heads} * config.head_dim;
  const int64_t kv_rows = int64_t{config.num_kv_heads} * config.head_dim;
  const int64_t ffn = config.intermediate_size;
  LayerWeights weights;
  PDSERVE_ASSIGN_OR_RETURN(weights.input_layernorm,
                           Required(store, prefix + "input_layernorm.weight", {hidden}));
  PDSERVE_ASSIGN_OR_RETURN(weights.qkv_proj,
                           FusedOrSplit(store, prefix, "self_attn.qkv_proj.weight",
                                        {"self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                         "self_attn.v_proj.weight"},
                                        {q_rows, kv_rows, kv_rows}, hidden));
  PDSERVE_ASSIGN_OR_RETURN(weights.o_proj,
                           Required(store, prefix + "self_attn.o_proj.weight", {hidden, q_rows}));
  PDSERVE_ASSIGN_OR_RETURN(weights.post_attention_layernorm,
                           Required(store, prefix + "post_attention_layernorm.weight", {hidden}));
  PDSERVE_ASSIGN_OR_RETURN(
      weights.gate_up_proj,
      FusedOrSplit(store, prefix, "mlp.gate_up_proj.weight",
                   {"mlp.gate_proj.weight", "mlp.up_proj.weight"}, {ffn, ffn}, hidden));
  PDSERVE_ASSIGN_OR_RETURN(weights.down_proj,
                           Required(store, prefix + "mlp.down_proj.weight", {hidden, ffn}));
  return weights;
}

}  // namespace

absl::StatusOr<ModelWeights> LoadModelWeights(const std::string& model_dir,
                                              const ModelConfig& config) {
  if (config.num_layers < 1 || config.hidden_size < 1 || config.vocab_size < 1 ||
      config.head_dim < 1 || config.num_heads < 1 || config.num_kv_heads < 1 ||
      config.intermediate_size < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model config for ", model_dir, " has a non-positive dimension; use LoadModelConfig"));
  }
  ModelWeights weights;
  PDSERVE_ASSIGN_OR_RETURN(weights.store, TensorStore::Open(model_dir));
  const TensorStore& store = *weights.store;
  const int64_t vocab = config.vocab_size;
  const int64_t hidden = config.hidden_size;
  PDSERVE_ASSIGN_OR_RETURN(weights.embed_tokens,
                           Required(store, "model.embed_tokens.weight", {vocab, hidden}));
  weights.layers.reserve(config.num_layers);
  for (int layer = 0; layer < config.num_layers; ++layer) {
    PDSERVE_ASSIGN_OR_RETURN(LayerWeights layer_weights, LoadLayer(store, config, layer));
    weights.layers.push_back(std::move(layer_weights));
  }
  PDSERVE_ASSIGN_OR_RETURN(weights.norm, Required(store, "model.norm.weight", {hidden}));
  // With tied embeddings Hugging Face uses embed_tokens as the classifier even
  // when a (redundant) lm_head.weight was saved, so we do the same.
  if (config.tie_word_embeddings) {
    weights.lm_head = weights.embed_tokens;
  } else {
    const HostTensor* lm_head = store.Find("lm_head.weight");
    if (lm_head == nullptr) {
      return absl::NotFoundError(
          "tensor 'lm_head.weight' not found in the checkpoint and config.json has "
          "tie_word_embeddings false");
    }
    PDSERVE_ASSIGN_OR_RETURN(weights.lm_head, Checked(*lm_head, {vocab, hidden}));
  }
  return weights;
}

}  // namespace pdserve
