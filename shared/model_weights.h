// The tensors of a Llama / Mistral / Phi-3 checkpoint, mapped onto one
// internal layout.
#ifndef PDSERVE_SHARED_MODEL_WEIGHTS_H_
#define PDSERVE_SHARED_MODEL_WEIGHTS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "shared/host_tensor.h"
#include "shared/model_config.h"
#include "shared/safetensors.h"

namespace pdserve {

// One decoder layer. Linear weights are in PyTorch nn.Linear layout
// [out_features, in_features], row-major. A fused projection is a list of
// row blocks whose concatenation (along rows) is the fused matrix: Phi-3's
// `qkv_proj` is one block, Llama's q/k/v are three.
struct LayerWeights {
  HostTensor input_layernorm;  // [hidden]
  // rows: q [num_heads*head_dim], then k [num_kv_heads*head_dim], then v
  // [num_kv_heads*head_dim]; columns: hidden.
  std::vector<HostTensor> qkv_proj;
  HostTensor o_proj;                    // [hidden, num_heads*head_dim]
  HostTensor post_attention_layernorm;  // [hidden]
  // rows: gate [intermediate], then up [intermediate]; columns: hidden.
  // (Phi-3's gate_up_proj is gate first, then up: Phi3MLP chunks it in two.)
  std::vector<HostTensor> gate_up_proj;
  HostTensor down_proj;  // [hidden, intermediate]
};

struct ModelWeights {
  HostTensor embed_tokens;  // [vocab, hidden]
  std::vector<LayerWeights> layers;
  HostTensor norm;     // [hidden], final RMSNorm
  HostTensor lm_head;  // [vocab, hidden]; equals embed_tokens when tied
  std::unique_ptr<TensorStore> store;  // owns the mappings behind the views
};

// Opens the safetensors of `model_dir` and checks every tensor `config`
// implies against its expected shape. Accepts HF names
//   model.embed_tokens.weight, model.norm.weight, lm_head.weight,
//   model.layers.{i}.input_layernorm.weight, ...post_attention_layernorm.weight,
//   ...self_attn.{q,k,v,o}_proj.weight or ...self_attn.qkv_proj.weight,
//   ...mlp.{gate,up,down}_proj.weight or ...mlp.gate_up_proj.weight.
// Errors: those of TensorStore::Open; NOT_FOUND naming a missing tensor;
// INVALID_ARGUMENT naming a tensor whose shape differs from the expected one
// (both shapes in the message) or whose dtype is not F32/BF16/F16.
absl::StatusOr<ModelWeights> LoadModelWeights(const std::string& model_dir,
                                              const ModelConfig& config);

}  // namespace pdserve

#endif  // PDSERVE_SHARED_MODEL_WEIGHTS_H_
