// The module tree of a checkpoint, as printing a Hugging Face model shows it:
//
//   Phi3ForCausalLM(
//     (model): Phi3Model(
//       (embed_tokens): Embedding(32064, 3072)
//       (layers): ModuleList(
//         (0-31): 32 x Phi3DecoderLayer(
//           (self_attn): Phi3Attention(
//             (qkv_proj): Linear(in_features=3072, out_features=9216, bias=False)
//             ...
//     (lm_head): Linear(in_features=3072, out_features=32064, bias=False)
//
// built from config.json and the safetensors tensor table alone (names and
// shapes; no data is read), with parameter counts.
#ifndef PDSERVE_SHARED_MODULE_SUMMARY_H_
#define PDSERVE_SHARED_MODULE_SUMMARY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "shared/model_config.h"
#include "shared/safetensors.h"

namespace pdserve {

struct ModuleSummary {
  std::string name;   // attribute name under the parent ("model", "q_proj", "0-31"); "" at the root
  std::string type;   // "LlamaForCausalLM", "Embedding", "Linear", "LlamaRMSNorm", "SiLU", ...
  std::string extra;  // HF's extra_repr: "512, 64", "in_features=64, out_features=64, bias=False"
  int repeat = 1;     // > 1: stands for that many identical siblings
  // Elements of the tensors under this module, every repeat included. A
  // tied lm_head counts 0: its weight is the embedding's, counted there.
  int64_t parameters = 0;
  std::vector<int64_t> weight_shape;  // the module's own `weight` tensor, if any
  std::string tied_to;                // "model.embed_tokens" for a tied lm_head
  std::vector<ModuleSummary> children;
};

// The tree of `tensors` (dotted names: "model.layers.3.mlp.down_proj.weight"
// is parameter "weight" of module model/layers/3/mlp/down_proj). Types follow
// Hugging Face's classes for the architecture's family prefix ("Phi3",
// "Llama", "Mistral"): <P>Model, <P>DecoderLayer, <P>Attention, <P>MLP,
// <P>RMSNorm, plus Embedding, Linear and ModuleList, and the activation
// (SiLU) that has no parameters. Children come in Hugging Face's order where
// known, numbered layers in numeric order; identical consecutive layers fold
// into one node "first-last" with `repeat`. A tied model without an
// lm_head tensor gets an lm_head node tied to model.embed_tokens. The root's
// parameters equal the sum over the tensor table. INVALID_ARGUMENT naming
// the tensor for a name that is not "<module path>.<parameter>".
absl::StatusOr<ModuleSummary> SummarizeModules(const ModelConfig& config,
                                               const TensorStore& tensors);

}  // namespace pdserve

#endif  // PDSERVE_SHARED_MODULE_SUMMARY_H_
