#include "shared/model_config.h"

#include <cstdint>
#include <limits>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "shared/file_util.h"
#include "shared/status_macros.h"

namespace pdserve {
namespace {

using Json = nlohmann::json;

constexpr char kConfigFile[] = "config.json";
constexpr char kGenerationConfigFile[] = "generation_config.json";
constexpr char kTokenizerConfigFile[] = "tokenizer_config.json";

// Upper bound for every size field: far above any model we serve (Llama 3's
// vocabulary is 128256, long-context models reach ~1M positions), low enough
// that products of two of them cannot overflow int64 byte counts.
constexpr int64_t kMaxDimension = int64_t{1} << 24;

// Token ids must fit in int32 and be non-negative.
constexpr int64_t kMaxTokenId = std::numeric_limits<int32_t>::max();

constexpr const char* kSupportedArchitectures[] = {"LlamaForCausalLM", "MistralForCausalLM",
                                                   "Phi3ForCausalLM"};

absl::StatusOr<Json> ParseJson(const std::string& text, const char* file) {
  try {
    Json parsed = Json::parse(text);
    if (!parsed.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": top level must be a JSON object, got ", parsed.type_name()));
    }
    return parsed;
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": JSON parse error: ", e.what()));
  }
}

// The value of `field` when present and not null.
const Json* FindNonNull(const Json& object, const char* field) {
  auto it = object.find(field);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

// A required integer in [1, kMaxDimension].
absl::StatusOr<int> RequiredDimension(const Json& config, const char* field) {
  const Json* value = FindNonNull(config, field);
  if (value == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kConfigFile, ": required field '", field, "' is missing"));
  }
  if (!value->is_number_integer()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kConfigFile, ": field '", field, "' must be an integer, got ", value->dump()));
  }
  const int64_t v = value->is_number_unsigned() && value->get<uint64_t>() > uint64_t{INT64_MAX}
                        ? INT64_MAX
                        : value->get<int64_t>();
  if (v < 1 || v > kMaxDimension) {
    return absl::InvalidArgumentError(absl::StrCat(kConfigFile, ": field '", field, "' is ",
                                                   value->dump(), ", must be in [1, ",
                                                   kMaxDimension, "]"));
  }
  return static_cast<int>(v);
}

// An optional dimension: `fallback` when absent or null.
absl::StatusOr<int> OptionalDimension(const Json& config, const char* field, int fallback) {
  if (FindNonNull(config, field) == nullptr) return fallback;
  return RequiredDimension(config, field);
}

// An optional positive finite number: `fallback` when absent or null.
absl::StatusOr<float> OptionalPositiveNumber(const Json& config, const char* field,
                                             float fallback) {
  const Json* value = FindNonNull(config, field);
  if (value == nullptr) return fallback;
  if (!value->is_number()) {
    return absl::InvalidArgumentError(
        absl::StrCat(kConfigFile, ": field '", field, "' must be a number, got ", value->dump()));
  }
  const double v = value->get<double>();
  if (!(v > 0.0) || v > std::numeric_limits<float>::max()) {
    return absl::InvalidArgumentError(absl::StrCat(kConfigFile, ": field '", field, "' is ",
                                                   value->dump(),
                                                   ", must be a positive finite number"));
  }
  return static_cast<float>(v);
}

absl::StatusOr<bool> OptionalBool(const Json& object, const char* file, const char* field,
                                  bool fallback) {
  const Json* value = FindNonNull(object, field);
  if (value == nullptr) return fallback;
  if (!value->is_boolean()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": field '", field, "' must be true or false, got ", value->dump()));
  }
  return value->get<bool>();
}

absl::StatusOr<int32_t> TokenId(const Json& value, const char* file, const char* field) {
  if (!value.is_number_integer() || value.get<int64_t>() < 0 ||
      value.get<int64_t>() > kMaxTokenId) {
    return absl::InvalidArgumentError(absl::StrCat(file, ": field '", field,
                                                   "' must hold token ids in [0, ", kMaxTokenId,
                                                   "], got ", value.dump()));
  }
  return static_cast<int32_t>(value.get<int64_t>());
}

// eos_token_id: absent/null (nullopt), an int, or a non-empty list of ints.
absl::StatusOr<std::optional<std::vector<int32_t>>> EosIds(const Json& object, const char* file) {
  const Json* value = FindNonNull(object, "eos_token_id");
  if (value == nullptr) return std::nullopt;
  std::vector<int32_t> ids;
  if (value->is_array()) {
    if (value->empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": field 'eos_token_id' is an empty list"));
    }
    for (const Json& element : *value) {
      PDSERVE_ASSIGN_OR_RETURN(int32_t id, TokenId(element, file, "eos_token_id"));
      ids.push_back(id);
    }
  } else {
    PDSERVE_ASSIGN_OR_RETURN(int32_t id, TokenId(*value, file, "eos_token_id"));
    ids.push_back(id);
  }
  return ids;
}

// bos_token_id: absent/null (nullopt) or an int.
absl::StatusOr<std::optional<int32_t>> BosId(const Json& object, const char* file) {
  const Json* value = FindNonNull(object, "bos_token_id");
  if (value == nullptr) return std::nullopt;
  PDSERVE_ASSIGN_OR_RETURN(int32_t id, TokenId(*value, file, "bos_token_id"));
  return id;
}

absl::StatusOr<DType> CheckpointDType(const Json& config) {
  // Newer transformers releases write "dtype"; older ones "torch_dtype".
  const char* field = "torch_dtype";
  const Json* value = FindNonNull(config, field);
  if (value == nullptr) {
    field = "dtype";
    value = FindNonNull(config, field);
  }
  if (value == nullptr) return DType::kF32;  // PretrainedConfig's default
  if (value->is_string()) {
    const std::string name = value->get<std::string>();
    if (name == "float32") return DType::kF32;
    if (name == "bfloat16") return DType::kBF16;
    if (name == "float16") return DType::kF16;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(kConfigFile, ": field '", field, "' is ", value->dump(),
                   ", must be \"float32\", \"bfloat16\" or \"float16\""));
}

absl::StatusOr<std::string> Architecture(const Json& config) {
  const Json* value = FindNonNull(config, "architectures");
  if (value == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(kConfigFile, ": required field 'architectures' is missing"));
  }
  if (!value->is_array() || value->size() != 1 || !(*value)[0].is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(
        kConfigFile, ": field 'architectures' must be a list of one string, got ", value->dump()));
  }
  const std::string architecture = (*value)[0].get<std::string>();
  for (const char* supported : kSupportedArchitectures) {
    if (architecture == supported) return architecture;
  }
  return absl::InvalidArgumentError(
      absl::StrCat(kConfigFile, ": field 'architectures' names '", architecture,
                   "', supported: ", absl::StrJoin(kSupportedArchitectures, ", ")));
}

// Features of the HF configs that our forward pass does not implement. Each
// is rejected rather than silently ignored, because ignoring it would give
// wrong logits.
absl::Status CheckUnsupportedFeatures(const Json& config) {
  if (const Json* v = FindNonNull(config, "rope_scaling")) {
    return absl::UnimplementedError(absl::StrCat(kConfigFile, ": field 'rope_scaling' is ",
                                                 v->dump(), "; only null is supported"));
  }
  if (const Json* v = FindNonNull(config, "partial_rotary_factor")) {
    if (!v->is_number() || v->get<double>() != 1.0) {
      return absl::UnimplementedError(
          absl::StrCat(kConfigFile, ": field 'partial_rotary_factor' is ", v->dump(),
                       "; only 1.0 (rotate the whole head) is supported"));
    }
  }
  if (const Json* v = FindNonNull(config, "hidden_act")) {
    if (!v->is_string() || v->get<std::string>() != "silu") {
      return absl::UnimplementedError(absl::StrCat(kConfigFile, ": field 'hidden_act' is ",
                                                   v->dump(), "; only \"silu\" is supported"));
    }
  }
  for (const char* bias_field : {"attention_bias", "mlp_bias"}) {
    PDSERVE_ASSIGN_OR_RETURN(bool has_bias, OptionalBool(config, kConfigFile, bias_field, false));
    if (has_bias) {
      return absl::UnimplementedError(absl::StrCat(kConfigFile, ": field '", bias_field,
                                                   "' is true; biases are not supported"));
    }
  }
  return absl::OkStatus();
}

absl::Status ParseShapes(const Json& config, ModelConfig& out) {
  PDSERVE_ASSIGN_OR_RETURN(out.vocab_size, RequiredDimension(config, "vocab_size"));
  PDSERVE_ASSIGN_OR_RETURN(out.hidden_size, RequiredDimension(config, "hidden_size"));
  PDSERVE_ASSIGN_OR_RETURN(out.intermediate_size, RequiredDimension(config, "intermediate_size"));
  PDSERVE_ASSIGN_OR_RETURN(out.num_layers, RequiredDimension(config, "num_hidden_layers"));
  PDSERVE_ASSIGN_OR_RETURN(out.num_heads, RequiredDimension(config, "num_attention_heads"));
  PDSERVE_ASSIGN_OR_RETURN(out.num_kv_heads,
                           OptionalDimension(config, "num_key_value_heads", out.num_heads));
  PDSERVE_ASSIGN_OR_RETURN(out.max_position_embeddings,
                           RequiredDimension(config, "max_position_embeddings"));
  if (out.num_kv_heads > out.num_heads || out.num_heads % out.num_kv_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(kConfigFile, ": field 'num_attention_heads' (", out.num_heads,
                     ") must be a multiple of 'num_key_value_heads' (", out.num_kv_heads, ")"));
  }
  if (FindNonNull(config, "head_dim") != nullptr) {
    PDSERVE_ASSIGN_OR_RETURN(out.head_dim, RequiredDimension(config, "head_dim"));
  } else if (out.hidden_size % out.num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kConfigFile, ": field 'hidden_size' (",
                                                   out.hidden_size,
                                                   ") is not a multiple of 'num_attention_heads' (",
                                                   out.num_heads, ") and 'head_dim' is absent"));
  } else {
    out.head_dim = out.hidden_size / out.num_heads;
  }
  if (out.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(kConfigFile, ": head_dim ", out.head_dim,
                                                   " must be even (RoPE rotates pairs)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& config_json,
                                             const std::string& generation_config_json,
                                             const std::string& tokenizer_config_json) {
  PDSERVE_ASSIGN_OR_RETURN(Json config, ParseJson(config_json, kConfigFile));
  ModelConfig out;
  PDSERVE_ASSIGN_OR_RETURN(out.architecture, Architecture(config));
  if (const Json* model_type = FindNonNull(config, "model_type")) {
    if (!model_type->is_string()) {
      return absl::InvalidArgumentError(absl::StrCat(
          kConfigFile, ": field 'model_type' must be a string, got ", model_type->dump()));
    }
    out.model_type = model_type->get<std::string>();
  }
  PDSERVE_RETURN_IF_ERROR(CheckUnsupportedFeatures(config));
  PDSERVE_RETURN_IF_ERROR(ParseShapes(config, out));
  PDSERVE_ASSIGN_OR_RETURN(out.rms_norm_eps,
                           OptionalPositiveNumber(config, "rms_norm_eps", out.rms_norm_eps));
  PDSERVE_ASSIGN_OR_RETURN(out.rope_theta,
                           OptionalPositiveNumber(config, "rope_theta", out.rope_theta));
  PDSERVE_ASSIGN_OR_RETURN(out.tie_word_embeddings,
                           OptionalBool(config, kConfigFile, "tie_word_embeddings", false));
  PDSERVE_ASSIGN_OR_RETURN(out.torch_dtype, CheckpointDType(config));

  PDSERVE_ASSIGN_OR_RETURN(std::optional<int32_t> bos, BosId(config, kConfigFile));
  PDSERVE_ASSIGN_OR_RETURN(std::optional<std::vector<int32_t>> eos, EosIds(config, kConfigFile));
  if (!generation_config_json.empty()) {
    PDSERVE_ASSIGN_OR_RETURN(Json generation,
                             ParseJson(generation_config_json, kGenerationConfigFile));
    PDSERVE_ASSIGN_OR_RETURN(std::optional<int32_t> generation_bos,
                             BosId(generation, kGenerationConfigFile));
    PDSERVE_ASSIGN_OR_RETURN(std::optional<std::vector<int32_t>> generation_eos,
                             EosIds(generation, kGenerationConfigFile));
    if (generation_bos.has_value()) bos = generation_bos;
    if (generation_eos.has_value()) eos = std::move(generation_eos);
  }
  out.bos_token_id = bos.value_or(-1);
  if (eos.has_value()) out.eos_token_ids = std::move(*eos);

  if (!tokenizer_config_json.empty()) {
    PDSERVE_ASSIGN_OR_RETURN(Json tokenizer,
                             ParseJson(tokenizer_config_json, kTokenizerConfigFile));
    PDSERVE_ASSIGN_OR_RETURN(out.add_bos_token,
                             OptionalBool(tokenizer, kTokenizerConfigFile, "add_bos_token", true));
  }
  return out;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& model_dir) {
  // config.json is required; the other two are optional.
  absl::StatusOr<std::string> config = ReadFileToString(JoinPath(model_dir, kConfigFile));
  if (!config.ok()) return config.status();
  std::string optional_texts[2];
  const char* optional_files[2] = {kGenerationConfigFile, kTokenizerConfigFile};
  for (int i = 0; i < 2; ++i) {
    const std::string path = JoinPath(model_dir, optional_files[i]);
    if (!RegularFileExists(path)) continue;
    PDSERVE_ASSIGN_OR_RETURN(optional_texts[i], ReadFileToString(path));
    if (optional_texts[i].empty()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": file is empty"));
    }
  }
  absl::StatusOr<ModelConfig> parsed =
      ParseModelConfig(*config, optional_texts[0], optional_texts[1]);
  if (!parsed.ok()) {
    // The parser names the file; add the directory so a multi-model host
    // can tell which checkpoint is wrong.
    return absl::Status(parsed.status().code(),
                        absl::StrCat(model_dir, "/", parsed.status().message()));
  }
  return parsed;
}

}  // namespace pdserve
