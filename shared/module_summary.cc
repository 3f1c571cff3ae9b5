#include "shared/module_summary.h"

#include <algorithm>
#include <cstdio>
#include <iterator>
#include <map>
#include <string_view>
#include <utility>

#include "absl/strings/str_cat.h"

namespace pdserve {
namespace {

// The module tree as the tensor names spell it, before it gets types.
struct RawModule {
  std::map<std::string, RawModule> children;
  std::map<std::string, const HostTensor*> parameters;  // "weight", "bias"
};

// "Phi3ForCausalLM" -> "Phi3": the prefix of Hugging Face's class names.
std::string FamilyPrefix(const std::string& architecture) {
  constexpr std::string_view kSuffix = "ForCausalLM";
  if (architecture.size() > kSuffix.size() &&
      std::string_view(architecture).substr(architecture.size() - kSuffix.size()) == kSuffix) {
    return architecture.substr(0, architecture.size() - kSuffix.size());
  }
  return architecture;
}

bool IsNumber(const std::string& name) {
  return !name.empty() &&
         std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Position of a module name in Hugging Face's definition order (the order
// printing a model shows); unknown names go last.
int DefinitionRank(const std::string& name) {
  static constexpr std::string_view kOrder[] = {"model",           "embed_tokens",
                                                "layers",          "norm",
                                                "rotary_emb",      "lm_head",
                                                "self_attn",       "mlp",
                                                "input_layernorm", "post_attention_layernorm",
                                                "q_proj",          "k_proj",
                                                "v_proj",          "qkv_proj",
                                                "o_proj",          "gate_proj",
                                                "up_proj",         "gate_up_proj",
                                                "down_proj",       "act_fn",
                                                "activation_fn"};
  const auto* found = std::find(std::begin(kOrder), std::end(kOrder), name);
  return static_cast<int>(found - std::begin(kOrder));
}

bool ComesBefore(const ModuleSummary& a, const ModuleSummary& b) {
  if (IsNumber(a.name) && IsNumber(b.name)) {
    return a.name.size() != b.name.size() ? a.name.size() < b.name.size() : a.name < b.name;
  }
  const int rank_a = DefinitionRank(a.name);
  const int rank_b = DefinitionRank(b.name);
  return rank_a != rank_b ? rank_a < rank_b : a.name < b.name;
}

// Equal but for the name: what lets consecutive layers fold into one node.
bool SameModule(const ModuleSummary& a, const ModuleSummary& b) {
  if (a.type != b.type || a.extra != b.extra || a.repeat != b.repeat ||
      a.parameters != b.parameters || a.weight_shape != b.weight_shape || a.tied_to != b.tied_to ||
      a.children.size() != b.children.size()) {
    return false;
  }
  for (size_t i = 0; i < a.children.size(); ++i) {
    if (a.children[i].name != b.children[i].name || !SameModule(a.children[i], b.children[i])) {
      return false;
    }
  }
  return true;
}

// Folds runs of identical numbered siblings into "first-last" nodes.
std::vector<ModuleSummary> FoldRepeats(std::vector<ModuleSummary> children) {
  std::vector<ModuleSummary> folded;
  for (ModuleSummary& child : children) {
    ModuleSummary* previous = folded.empty() ? nullptr : &folded.back();
    if (previous != nullptr && IsNumber(child.name)) {
      // A folded node's name is "first-last"; compare with one of its layers.
      const std::string first = previous->name.substr(0, previous->name.find('-'));
      ModuleSummary one = *previous;
      one.repeat = 1;
      one.parameters = previous->parameters / previous->repeat;
      if (IsNumber(first) && SameModule(one, child)) {
        previous->repeat += 1;
        previous->parameters += child.parameters;
        previous->name = absl::StrCat(first, "-", child.name);
        continue;
      }
    }
    folded.push_back(std::move(child));
  }
  return folded;
}

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string text;
  for (int64_t d : shape) absl::StrAppend(&text, text.empty() ? "" : ", ", d);
  return text;
}

// Python's repr of a small float as HF prints eps: 1e-05, 1e-06.
std::string FloatRepr(float value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%g", static_cast<double>(value));
  return buffer;
}

class Summarizer {
 public:
  explicit Summarizer(const ModelConfig& config)
      : config_(config), prefix_(FamilyPrefix(config.architecture)) {}

  ModuleSummary Summarize(const RawModule& raw, const std::string& name,
                          const std::string& parent_name, bool is_root) const {
    ModuleSummary node;
    node.name = name;
    for (const auto& [child_name, child] : raw.children) {
      node.children.push_back(Summarize(child, child_name, name, false));
    }
    for (const auto& [parameter, tensor] : raw.parameters)
      node.parameters += tensor->num_elements();
    const auto weight = raw.parameters.find("weight");
    const HostTensor* w = weight == raw.parameters.end() ? nullptr : weight->second;
    if (w != nullptr) node.weight_shape = w->shape;
    Classify(node, w, raw.parameters.count("bias") > 0, parent_name, is_root);
    for (const ModuleSummary& child : node.children) node.parameters += child.parameters;
    std::sort(node.children.begin(), node.children.end(), ComesBefore);
    if (node.type == "ModuleList") node.children = FoldRepeats(std::move(node.children));
    return node;
  }

  // Modules Hugging Face prints that own no tensor.
  void AddParameterless(ModuleSummary& node) const {
    for (ModuleSummary& child : node.children) AddParameterless(child);
    if (node.name == "mlp") {
      ModuleSummary act;
      act.name = prefix_ == "Phi3" ? "activation_fn" : "act_fn";
      act.type = "SiLU";
      node.children.push_back(std::move(act));
    }
    if (node.name == "model") {
      ModuleSummary rotary;
      rotary.name = "rotary_emb";
      rotary.type = absl::StrCat(prefix_, "RotaryEmbedding");
      node.children.push_back(std::move(rotary));
    }
    std::stable_sort(node.children.begin(), node.children.end(), ComesBefore);
  }

  // A tied model's classifier: HF prints it like any Linear.
  ModuleSummary TiedLmHead() const {
    ModuleSummary head;
    head.name = "lm_head";
    head.type = "Linear";
    head.extra = LinearExtra(config_.hidden_size, config_.vocab_size, false);
    head.weight_shape = {config_.vocab_size, config_.hidden_size};
    head.tied_to = "model.embed_tokens";
    return head;
  }

 private:
  static std::string LinearExtra(int64_t in, int64_t out, bool bias) {
    return absl::StrCat("in_features=", in, ", out_features=", out,
                        ", bias=", bias ? "True" : "False");
  }

  void Classify(ModuleSummary& node, const HostTensor* weight, bool bias,
                const std::string& parent_name, bool is_root) const {
    const std::string& name = node.name;
    if (is_root) {
      node.type = config_.architecture;
    } else if (name == "model" && parent_name.empty()) {
      node.type = absl::StrCat(prefix_, "Model");
    } else if (name == "layers") {
      node.type = "ModuleList";
    } else if (parent_name == "layers" && IsNumber(name)) {
      node.type = absl::StrCat(prefix_, "DecoderLayer");
    } else if (name == "self_attn") {
      node.type = absl::StrCat(prefix_, "Attention");
    } else if (name == "mlp") {
      node.type = absl::StrCat(prefix_, "MLP");
    } else if (weight != nullptr && weight->shape.size() == 1 &&
               name.find("norm") != std::string::npos) {
      node.type = absl::StrCat(prefix_, "RMSNorm");
      node.extra = absl::StrCat("(", weight->shape[0], ",), eps=", FloatRepr(config_.rms_norm_eps));
    } else if (weight != nullptr && weight->shape.size() == 2 && name == "embed_tokens") {
      node.type = "Embedding";
      node.extra = ShapeText(weight->shape);
    } else if (weight != nullptr && weight->shape.size() == 2) {
      node.type = "Linear";
      node.extra = LinearExtra(weight->shape[1], weight->shape[0], bias);
    } else {
      node.type = "Module";
      if (weight != nullptr) node.extra = ShapeText(weight->shape);
    }
  }

  const ModelConfig& config_;
  const std::string prefix_;
};

}  // namespace

absl::StatusOr<ModuleSummary> SummarizeModules(const ModelConfig& config,
                                               const TensorStore& tensors) {
  RawModule root;
  for (const std::string& name : tensors.Names()) {
    const size_t dot = name.rfind('.');
    if (dot == std::string::npos || dot == 0 || dot + 1 == name.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "': not <module path>.<parameter>, so it has no module"));
    }
    RawModule* module = &root;
    size_t begin = 0;
    while (begin < dot) {
      const size_t end = std::min(name.find('.', begin), dot);
      if (end == begin) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", name, "': empty module name in its path"));
      }
      module = &module->children[name.substr(begin, end - begin)];
      begin = end + 1;
    }
    module->parameters[name.substr(dot + 1)] = tensors.Find(name);
  }
  const Summarizer summarizer(config);
  ModuleSummary summary = summarizer.Summarize(root, "", "", true);
  const bool has_lm_head = std::any_of(summary.children.begin(), summary.children.end(),
                                       [](const ModuleSummary& m) { return m.name == "lm_head"; });
  if (!has_lm_head) summary.children.push_back(summarizer.TiedLmHead());
  summarizer.AddParameterless(summary);
  return summary;
}

}  // namespace pdserve
