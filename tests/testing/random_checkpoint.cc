#include "tests/testing/random_checkpoint.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "tests/testing/safetensors_writer.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using OrderedJson = nlohmann::ordered_json;

constexpr int kLlamaTokenizerVocab = 32000;

// Phi-3-mini's added_tokens.json (see tests/data/tokenizers/llama2/README.md).
constexpr std::pair<const char*, int> kPhi3AddedTokens[] = {
    {"<|endoftext|>", 32000},    {"<|assistant|>", 32001},    {"<|placeholder1|>", 32002},
    {"<|placeholder2|>", 32003}, {"<|placeholder3|>", 32004}, {"<|placeholder4|>", 32005},
    {"<|system|>", 32006},       {"<|end|>", 32007},          {"<|placeholder5|>", 32008},
    {"<|placeholder6|>", 32009}, {"<|user|>", 32010},
};
constexpr int kPhi3VocabWithAddedTokens = 32011;

// SplitMix64 (Steele, Lea, Flood 2014): a counter-based generator, so any
// element's value is a pure function of (seed, tensor, index) and chunked
// writing needs no generator state.
uint64_t SplitMix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

uint64_t NameHash(const std::string& name) {
  uint64_t hash = 14695981039346656037ull;  // FNV-1a 64
  for (char c : name) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ull;
  }
  return hash;
}

// Uniform in [-1, 1) from the top 24 bits, exactly representable in float.
float UniformSigned(uint64_t bits) {
  return static_cast<float>(bits >> 40) * (1.0f / 8388608.0f) - 1.0f;
}

bool IsNormWeight(const std::string& name) { return name.find("norm.weight") != std::string::npos; }

bool IsPhi3(const RandomCheckpointOptions& options) {
  return options.architecture == "Phi3ForCausalLM";
}

absl::Status Validate(const RandomCheckpointOptions& o) {
  if (o.architecture != "Phi3ForCausalLM" && o.architecture != "LlamaForCausalLM" &&
      o.architecture != "MistralForCausalLM") {
    return absl::InvalidArgumentError(
        absl::StrCat("architecture '", o.architecture,
                     "' not supported (Phi3ForCausalLM, LlamaForCausalLM, MistralForCausalLM)"));
  }
  const std::pair<const char*, int> positive[] = {
      {"num_layers", o.num_layers},
      {"hidden_size", o.hidden_size},
      {"num_heads", o.num_heads},
      {"num_kv_heads", o.num_kv_heads},
      {"intermediate_size", o.intermediate_size},
      {"max_position_embeddings", o.max_position_embeddings},
      {"num_shards", o.num_shards}};
  for (const auto& [field, value] : positive) {
    if (value < 1)
      return absl::InvalidArgumentError(absl::StrCat(field, " is ", value, ", must be >= 1"));
  }
  if (o.num_heads % o.num_kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_heads ", o.num_heads, " must be a multiple of num_kv_heads ", o.num_kv_heads));
  }
  if (o.hidden_size % o.num_heads != 0 || (o.hidden_size / o.num_heads) % 2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat("hidden_size ", o.hidden_size, " / num_heads ",
                                                   o.num_heads,
                                                   " must be an even integer head_dim"));
  }
  const int min_vocab = IsPhi3(o) ? kPhi3VocabWithAddedTokens : kLlamaTokenizerVocab;
  if (o.vocab_size < min_vocab) {
    return absl::InvalidArgumentError(absl::StrCat("vocab_size ", o.vocab_size, " is below ",
                                                   min_vocab, ", the tokenizer's vocabulary"));
  }
  if (o.dtype != DType::kF32 && o.dtype != DType::kBF16 && o.dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("dtype ", std::string(DTypeName(o.dtype)),
                                                   " is not a float type (F32, BF16, F16)"));
  }
  if (!(o.weight_scale > 0.0f) || !std::isfinite(o.weight_scale)) {
    return absl::InvalidArgumentError(
        absl::StrCat("weight_scale ", o.weight_scale, " must be positive"));
  }
  return absl::OkStatus();
}

// Tensors in the order Hugging Face saves them.
std::vector<TensorSpec> TensorSpecs(const RandomCheckpointOptions& o) {
  const int64_t hidden = o.hidden_size;
  const int64_t head_dim = hidden / o.num_heads;
  const int64_t q_rows = o.num_heads * head_dim;
  const int64_t kv_rows = o.num_kv_heads * head_dim;
  const int64_t ffn = o.intermediate_size;
  std::vector<TensorSpec> specs;
  auto add = [&](std::string name, std::vector<int64_t> shape) {
    specs.push_back(TensorSpec{std::move(name), o.dtype, std::move(shape)});
  };
  add("model.embed_tokens.weight", {o.vocab_size, hidden});
  for (int layer = 0; layer < o.num_layers; ++layer) {
    const std::string prefix = absl::StrCat("model.layers.", layer, ".");
    add(prefix + "input_layernorm.weight", {hidden});
    if (IsPhi3(o)) {
      add(prefix + "self_attn.qkv_proj.weight", {q_rows + 2 * kv_rows, hidden});
    } else {
      add(prefix + "self_attn.q_proj.weight", {q_rows, hidden});
      add(prefix + "self_attn.k_proj.weight", {kv_rows, hidden});
      add(prefix + "self_attn.v_proj.weight", {kv_rows, hidden});
    }
    add(prefix + "self_attn.o_proj.weight", {hidden, q_rows});
    add(prefix + "post_attention_layernorm.weight", {hidden});
    if (IsPhi3(o)) {
      add(prefix + "mlp.gate_up_proj.weight", {2 * ffn, hidden});
    } else {
      add(prefix + "mlp.gate_proj.weight", {ffn, hidden});
      add(prefix + "mlp.up_proj.weight", {ffn, hidden});
    }
    add(prefix + "mlp.down_proj.weight", {hidden, ffn});
  }
  add("model.norm.weight", {hidden});
  if (!o.tie_word_embeddings) add("lm_head.weight", {o.vocab_size, hidden});
  return specs;
}

const char* TorchDTypeName(DType dtype) {
  switch (dtype) {
    case DType::kBF16:
      return "bfloat16";
    case DType::kF16:
      return "float16";
    default:
      return "float32";
  }
}

// The float as a double with 7 significant digits, so config.json reads
// 1e-05 rather than the float's exact 9.99999974737875e-06.
double AsDecimal(float value) { return std::stod(absl::StrFormat("%.7g", value)); }

OrderedJson ConfigJson(const RandomCheckpointOptions& o) {
  OrderedJson config;
  config["architectures"] = {o.architecture};
  config["model_type"] =
      IsPhi3(o) ? "phi3" : (o.architecture == "MistralForCausalLM" ? "mistral" : "llama");
  config["vocab_size"] = o.vocab_size;
  config["hidden_size"] = o.hidden_size;
  config["intermediate_size"] = o.intermediate_size;
  config["num_hidden_layers"] = o.num_layers;
  config["num_attention_heads"] = o.num_heads;
  config["num_key_value_heads"] = o.num_kv_heads;
  config["max_position_embeddings"] = o.max_position_embeddings;
  if (IsPhi3(o)) config["original_max_position_embeddings"] = o.max_position_embeddings;
  config["rms_norm_eps"] = AsDecimal(o.rms_norm_eps);
  config["rope_theta"] = AsDecimal(o.rope_theta);
  config["rope_scaling"] = nullptr;
  config["hidden_act"] = "silu";
  config["attention_bias"] = false;
  config["tie_word_embeddings"] = o.tie_word_embeddings;
  config["bos_token_id"] = 1;
  config["eos_token_id"] = IsPhi3(o) ? 32000 : 2;
  if (IsPhi3(o)) config["pad_token_id"] = 32000;
  config["torch_dtype"] = TorchDTypeName(o.dtype);
  config["use_cache"] = true;
  return config;
}

OrderedJson GenerationConfigJson(const RandomCheckpointOptions& o) {
  OrderedJson generation;
  generation["bos_token_id"] = 1;
  if (IsPhi3(o)) {
    generation["eos_token_id"] = {32000, 32001, 32007};
    generation["pad_token_id"] = 32000;
  } else {
    generation["eos_token_id"] = 2;
  }
  return generation;
}

OrderedJson TokenizerConfigJson(const RandomCheckpointOptions& o) {
  OrderedJson tokenizer;
  tokenizer["tokenizer_class"] = "LlamaTokenizer";
  tokenizer["add_bos_token"] = !IsPhi3(o);
  tokenizer["add_eos_token"] = false;
  tokenizer["bos_token"] = "<s>";
  tokenizer["eos_token"] = IsPhi3(o) ? "<|endoftext|>" : "</s>";
  tokenizer["unk_token"] = "<unk>";
  tokenizer["model_max_length"] = o.max_position_embeddings;
  tokenizer["legacy"] = true;
  return tokenizer;
}

absl::Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

absl::Status WriteJson(const std::string& path, const OrderedJson& json) {
  return WriteText(path, json.dump(2) + "\n");
}

absl::Status CopyTokenizer(const std::string& dir, const RandomCheckpointOptions& o) {
  const std::string source =
      o.tokenizer_model_path.empty() ? Llama2TokenizerModelPath() : o.tokenizer_model_path;
  if (!std::filesystem::is_regular_file(source)) {
    return absl::NotFoundError(absl::StrCat("tokenizer model ", source, " not found"));
  }
  std::error_code error;
  std::filesystem::copy_file(source, dir + "/tokenizer.model",
                             std::filesystem::copy_options::overwrite_existing, error);
  if (error)
    return absl::InternalError(
        absl::StrCat("copying ", source, " to ", dir, ": ", error.message()));
  if (IsPhi3(o)) {
    OrderedJson added = OrderedJson::object();
    for (const auto& [text, id] : kPhi3AddedTokens) added[text] = id;
    return WriteJson(dir + "/added_tokens.json", added);
  }
  return absl::OkStatus();
}

absl::Status WriteWeights(const std::string& dir, const RandomCheckpointOptions& o) {
  const std::vector<TensorSpec> specs = TensorSpecs(o);
  if (o.num_shards > static_cast<int>(specs.size())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "num_shards ", o.num_shards, " exceeds the checkpoint's ", specs.size(), " tensors"));
  }
  const float norm_spread = 0.1f;
  // Uniform on [-a, a] has standard deviation a / sqrt(3).
  const float linear_half_width = o.weight_scale * std::sqrt(3.0f);
  const uint64_t seed_key = SplitMix64(o.seed);
  const TensorFiller fill = [&](size_t, const TensorSpec& spec, int64_t first,
                                std::span<float> out) {
    const uint64_t base = SplitMix64(seed_key ^ NameHash(spec.name));
    const bool norm = IsNormWeight(spec.name);
    for (size_t i = 0; i < out.size(); ++i) {
      const float u = UniformSigned(SplitMix64(base + static_cast<uint64_t>(first) + i));
      out[i] = norm ? 1.0f + norm_spread * u : linear_half_width * u;
    }
  };
  if (o.num_shards == 1) return WriteSafetensorsStreaming(dir + "/model.safetensors", specs, fill);

  OrderedJson weight_map = OrderedJson::object();
  uint64_t total_bytes = 0;
  for (int shard = 0; shard < o.num_shards; ++shard) {
    const size_t begin = specs.size() * shard / o.num_shards;
    const size_t end = specs.size() * (shard + 1) / o.num_shards;
    const std::vector<TensorSpec> shard_specs(specs.begin() + begin, specs.begin() + end);
    const std::string file =
        absl::StrFormat("model-%05d-of-%05d.safetensors", shard + 1, o.num_shards);
    absl::Status status =
        WriteSafetensorsStreaming(dir + "/" + file, shard_specs, fill, {{"format", "pt"}});
    if (!status.ok()) return status;
    for (const TensorSpec& spec : shard_specs) {
      weight_map[spec.name] = file;
      total_bytes += static_cast<uint64_t>(spec.num_elements()) * DTypeSize(spec.dtype);
    }
  }
  OrderedJson index;
  index["metadata"] = {{"total_size", total_bytes}};
  index["weight_map"] = weight_map;
  return WriteJson(dir + "/model.safetensors.index.json", index);
}

}  // namespace

RandomCheckpointOptions Phi3Tiny() {
  RandomCheckpointOptions options;
  options.hidden_size = 256;
  options.num_heads = 4;
  options.num_kv_heads = 4;
  options.intermediate_size = 512;
  return options;
}

RandomCheckpointOptions Phi3Mini(int num_layers) {
  RandomCheckpointOptions options;
  options.num_layers = num_layers;
  return options;
}

RandomCheckpointOptions TinyLlama(int num_layers) {
  RandomCheckpointOptions options;
  options.architecture = "LlamaForCausalLM";
  options.num_layers = num_layers;
  options.hidden_size = 2048;
  options.num_heads = 32;
  options.num_kv_heads = 4;
  options.intermediate_size = 5632;
  options.vocab_size = 32000;
  options.max_position_embeddings = 2048;
  return options;
}

absl::Status WriteRandomCheckpoint(const std::string& dir, const RandomCheckpointOptions& options) {
  absl::Status status = Validate(options);
  if (!status.ok())
    return absl::InvalidArgumentError(absl::StrCat("RandomCheckpointOptions: ", status.message()));
  if (!std::filesystem::is_directory(dir)) {
    return absl::InvalidArgumentError(
        absl::StrCat("checkpoint directory ", dir, " does not exist"));
  }
  for (const auto& [file, json] :
       {std::pair<const char*, OrderedJson>{"config.json", ConfigJson(options)},
        {"generation_config.json", GenerationConfigJson(options)},
        {"tokenizer_config.json", TokenizerConfigJson(options)}}) {
    status = WriteJson(absl::StrCat(dir, "/", file), json);
    if (!status.ok()) return status;
  }
  status = CopyTokenizer(dir, options);
  if (!status.ok()) return status;
  return WriteWeights(dir, options);
}

}  // namespace pdserve
