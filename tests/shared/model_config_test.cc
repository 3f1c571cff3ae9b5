#include "shared/model_config.h"

#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// microsoft/Phi-3-mini-4k-instruct's config.json, generation_config.json and
// the add_bos_token of its tokenizer_config.json, as published on the
// Hugging Face hub.
constexpr char kPhi3MiniConfig[] = R"({
  "_name_or_path": "Phi-3-mini-4k-instruct",
  "architectures": ["Phi3ForCausalLM"],
  "attention_bias": false,
  "attention_dropout": 0.0,
  "auto_map": {
    "AutoConfig": "configuration_phi3.Phi3Config",
    "AutoModelForCausalLM": "modeling_phi3.Phi3ForCausalLM"
  },
  "bos_token_id": 1,
  "embd_pdrop": 0.0,
  "eos_token_id": 32000,
  "hidden_act": "silu",
  "hidden_size": 3072,
  "initializer_range": 0.02,
  "intermediate_size": 8192,
  "max_position_embeddings": 4096,
  "model_type": "phi3",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 32,
  "original_max_position_embeddings": 4096,
  "pad_token_id": 32000,
  "resid_pdrop": 0.0,
  "rms_norm_eps": 1e-05,
  "rope_scaling": null,
  "rope_theta": 10000.0,
  "sliding_window": 2047,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.40.2",
  "use_cache": true,
  "vocab_size": 32064
})";

constexpr char kPhi3MiniGenerationConfig[] = R"({
  "_from_model_config": true,
  "bos_token_id": 1,
  "eos_token_id": [32000, 32001, 32007],
  "pad_token_id": 32000,
  "transformers_version": "4.39.3"
})";

constexpr char kPhi3MiniTokenizerConfig[] = R"({
  "add_bos_token": false,
  "add_eos_token": false,
  "bos_token": "<s>",
  "eos_token": "<|endoftext|>",
  "legacy": false,
  "model_max_length": 4096,
  "pad_token": "<|endoftext|>",
  "tokenizer_class": "LlamaTokenizer",
  "unk_token": "<unk>"
})";

// mistralai/Mistral-7B-Instruct-v0.2's config.json.
constexpr char kMistralConfig[] = R"({
  "architectures": ["MistralForCausalLM"],
  "attention_dropout": 0.0,
  "bos_token_id": 1,
  "eos_token_id": 2,
  "hidden_act": "silu",
  "hidden_size": 4096,
  "initializer_range": 0.02,
  "intermediate_size": 14336,
  "max_position_embeddings": 32768,
  "model_type": "mistral",
  "num_attention_heads": 32,
  "num_hidden_layers": 32,
  "num_key_value_heads": 8,
  "rms_norm_eps": 1e-05,
  "rope_theta": 1000000.0,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "torch_dtype": "bfloat16",
  "transformers_version": "4.36.0",
  "use_cache": true,
  "vocab_size": 32000
})";

// A minimal valid Llama config to mutate in the error tests.
nlohmann::json MinimalLlama() {
  return nlohmann::json::parse(R"({
    "architectures": ["LlamaForCausalLM"],
    "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
    "num_hidden_layers": 2, "num_attention_heads": 4, "max_position_embeddings": 256
  })");
}

absl::Status ParseStatus(const nlohmann::json& config) {
  return ParseModelConfig(config.dump(), "", "").status();
}

// Every field of `actual` against `expected`.
void ExpectConfig(const ModelConfig& actual, const ModelConfig& expected) {
  EXPECT_EQ(actual.architecture, expected.architecture);
  EXPECT_EQ(actual.model_type, expected.model_type);
  EXPECT_EQ(actual.vocab_size, expected.vocab_size);
  EXPECT_EQ(actual.hidden_size, expected.hidden_size);
  EXPECT_EQ(actual.intermediate_size, expected.intermediate_size);
  EXPECT_EQ(actual.num_layers, expected.num_layers);
  EXPECT_EQ(actual.num_heads, expected.num_heads);
  EXPECT_EQ(actual.num_kv_heads, expected.num_kv_heads);
  EXPECT_EQ(actual.head_dim, expected.head_dim);
  EXPECT_FLOAT_EQ(actual.rms_norm_eps, expected.rms_norm_eps);
  EXPECT_FLOAT_EQ(actual.rope_theta, expected.rope_theta);
  EXPECT_EQ(actual.max_position_embeddings, expected.max_position_embeddings);
  EXPECT_EQ(actual.tie_word_embeddings, expected.tie_word_embeddings);
  EXPECT_EQ(actual.torch_dtype, expected.torch_dtype);
  EXPECT_EQ(actual.bos_token_id, expected.bos_token_id);
  EXPECT_EQ(actual.eos_token_ids, expected.eos_token_ids);
  EXPECT_EQ(actual.add_bos_token, expected.add_bos_token);
}

TEST(ModelConfigTest, LoadsStories260K) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(Stories260KDir());
  ASSERT_TRUE(config.ok()) << config.status();
  // Values from models/stories260K/README.md.
  ExpectConfig(*config, {.architecture = "LlamaForCausalLM",
                         .model_type = "llama",
                         .vocab_size = 512,
                         .hidden_size = 64,
                         .intermediate_size = 172,
                         .num_layers = 5,
                         .num_heads = 8,
                         .num_kv_heads = 4,
                         .head_dim = 8,
                         .rms_norm_eps = 1e-5f,
                         .rope_theta = 10000.0f,
                         .max_position_embeddings = 512,
                         .tie_word_embeddings = true,
                         .torch_dtype = DType::kF32,
                         .bos_token_id = 1,
                         .eos_token_ids = {2},
                         .add_bos_token = true});
}

TEST(ModelConfigTest, ParsesPhi3Mini) {
  absl::StatusOr<ModelConfig> config =
      ParseModelConfig(kPhi3MiniConfig, kPhi3MiniGenerationConfig, kPhi3MiniTokenizerConfig);
  ASSERT_TRUE(config.ok()) << config.status();
  ExpectConfig(*config, {.architecture = "Phi3ForCausalLM",
                         .model_type = "phi3",
                         .vocab_size = 32064,
                         .hidden_size = 3072,
                         .intermediate_size = 8192,
                         .num_layers = 32,
                         .num_heads = 32,
                         .num_kv_heads = 32,
                         .head_dim = 96,
                         .rms_norm_eps = 1e-5f,
                         .rope_theta = 10000.0f,
                         .max_position_embeddings = 4096,
                         .tie_word_embeddings = false,
                         .torch_dtype = DType::kBF16,
                         .bos_token_id = 1,
                         // generation_config.json's list wins over config.json's single 32000.
                         .eos_token_ids = {32000, 32001, 32007},
                         .add_bos_token = false});
}

TEST(ModelConfigTest, ConfigEosUsedWithoutGenerationConfig) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(kPhi3MiniConfig, "", "");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->eos_token_ids, ElementsAre(32000));
  EXPECT_TRUE(config->add_bos_token);  // tokenizer_config.json absent: Llama's default
}

TEST(ModelConfigTest, GenerationConfigWithoutEosKeepsConfigEos) {
  absl::StatusOr<ModelConfig> config =
      ParseModelConfig(kPhi3MiniConfig, R"({"bos_token_id": 5})", "{}");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->eos_token_ids, ElementsAre(32000));
  EXPECT_EQ(config->bos_token_id, 5);
  EXPECT_TRUE(config->add_bos_token);
}

TEST(ModelConfigTest, ParsesMistral) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(kMistralConfig, "", "");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "MistralForCausalLM");
  EXPECT_EQ(config->num_kv_heads, 8);
  EXPECT_EQ(config->head_dim, 128);
  EXPECT_EQ(config->max_position_embeddings, 32768);
  EXPECT_FLOAT_EQ(config->rope_theta, 1e6f);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(2));
}

TEST(ModelConfigTest, DefaultsForOptionalFields) {
  absl::StatusOr<ModelConfig> config = ParseModelConfig(MinimalLlama().dump(), "", "");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->num_kv_heads, 4);  // = num_attention_heads
  EXPECT_EQ(config->head_dim, 16);     // = hidden_size / num_attention_heads
  EXPECT_EQ(config->torch_dtype, DType::kF32);
  EXPECT_FALSE(config->tie_word_embeddings);
  EXPECT_EQ(config->bos_token_id, -1);
  EXPECT_TRUE(config->eos_token_ids.empty());
  EXPECT_FLOAT_EQ(config->rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(config->rope_theta, 10000.0f);
}

TEST(ModelConfigTest, ExplicitHeadDimWins) {
  nlohmann::json config = MinimalLlama();
  config["head_dim"] = 32;  // Mistral-Nemo style: heads * head_dim != hidden
  absl::StatusOr<ModelConfig> parsed = ParseModelConfig(config.dump(), "", "");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->head_dim, 32);
}

TEST(ModelConfigTest, TorchDtypeNames) {
  for (const auto& [name, dtype] :
       {std::pair{"float32", DType::kF32}, {"bfloat16", DType::kBF16}, {"float16", DType::kF16}}) {
    nlohmann::json config = MinimalLlama();
    config["torch_dtype"] = name;
    absl::StatusOr<ModelConfig> parsed = ParseModelConfig(config.dump(), "", "");
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(parsed->torch_dtype, dtype) << name;
  }
}

struct ErrorCase {
  const char* description;
  std::function<void(nlohmann::json&)> mutate;
  absl::StatusCode code;
  const char* field;  // must appear in the message
};

TEST(ModelConfigTest, EveryErrorNamesTheField) {
  const ErrorCase cases[] = {
      {"missing architectures", [](nlohmann::json& c) { c.erase("architectures"); },
       absl::StatusCode::kInvalidArgument, "architectures"},
      {"unsupported architecture",
       [](nlohmann::json& c) { c["architectures"] = {"GPT2LMHeadModel"}; },
       absl::StatusCode::kInvalidArgument, "GPT2LMHeadModel"},
      {"architectures not a list",
       [](nlohmann::json& c) { c["architectures"] = "LlamaForCausalLM"; },
       absl::StatusCode::kInvalidArgument, "architectures"},
      {"missing vocab_size", [](nlohmann::json& c) { c.erase("vocab_size"); },
       absl::StatusCode::kInvalidArgument, "vocab_size"},
      {"zero hidden_size", [](nlohmann::json& c) { c["hidden_size"] = 0; },
       absl::StatusCode::kInvalidArgument, "hidden_size"},
      {"negative layers", [](nlohmann::json& c) { c["num_hidden_layers"] = -2; },
       absl::StatusCode::kInvalidArgument, "num_hidden_layers"},
      {"string ffn", [](nlohmann::json& c) { c["intermediate_size"] = "128"; },
       absl::StatusCode::kInvalidArgument, "intermediate_size"},
      {"fractional heads", [](nlohmann::json& c) { c["num_attention_heads"] = 4.5; },
       absl::StatusCode::kInvalidArgument, "num_attention_heads"},
      {"huge positions", [](nlohmann::json& c) { c["max_position_embeddings"] = 1LL << 40; },
       absl::StatusCode::kInvalidArgument, "max_position_embeddings"},
      {"missing max positions", [](nlohmann::json& c) { c.erase("max_position_embeddings"); },
       absl::StatusCode::kInvalidArgument, "max_position_embeddings"},
      {"heads not a multiple of kv heads", [](nlohmann::json& c) { c["num_key_value_heads"] = 3; },
       absl::StatusCode::kInvalidArgument, "num_key_value_heads"},
      {"hidden not divisible by heads", [](nlohmann::json& c) { c["num_attention_heads"] = 3; },
       absl::StatusCode::kInvalidArgument, "head_dim"},
      {"odd head_dim", [](nlohmann::json& c) { c["head_dim"] = 7; },
       absl::StatusCode::kInvalidArgument, "head_dim"},
      {"rope_scaling",
       [](nlohmann::json& c) {
         c["rope_scaling"] = {{"type", "longrope"}};
       },
       absl::StatusCode::kUnimplemented, "rope_scaling"},
      {"partial_rotary_factor", [](nlohmann::json& c) { c["partial_rotary_factor"] = 0.5; },
       absl::StatusCode::kUnimplemented, "partial_rotary_factor"},
      {"gelu", [](nlohmann::json& c) { c["hidden_act"] = "gelu"; },
       absl::StatusCode::kUnimplemented, "hidden_act"},
      {"attention bias", [](nlohmann::json& c) { c["attention_bias"] = true; },
       absl::StatusCode::kUnimplemented, "attention_bias"},
      {"mlp bias", [](nlohmann::json& c) { c["mlp_bias"] = true; },
       absl::StatusCode::kUnimplemented, "mlp_bias"},
      {"unknown dtype", [](nlohmann::json& c) { c["torch_dtype"] = "float8"; },
       absl::StatusCode::kInvalidArgument, "torch_dtype"},
      {"negative eps", [](nlohmann::json& c) { c["rms_norm_eps"] = -1.0; },
       absl::StatusCode::kInvalidArgument, "rms_norm_eps"},
      {"string theta", [](nlohmann::json& c) { c["rope_theta"] = "1e4"; },
       absl::StatusCode::kInvalidArgument, "rope_theta"},
      {"tie not a bool", [](nlohmann::json& c) { c["tie_word_embeddings"] = 1; },
       absl::StatusCode::kInvalidArgument, "tie_word_embeddings"},
      {"negative eos", [](nlohmann::json& c) { c["eos_token_id"] = -3; },
       absl::StatusCode::kInvalidArgument, "eos_token_id"},
      {"empty eos list", [](nlohmann::json& c) { c["eos_token_id"] = nlohmann::json::array(); },
       absl::StatusCode::kInvalidArgument, "eos_token_id"},
      {"string bos", [](nlohmann::json& c) { c["bos_token_id"] = "<s>"; },
       absl::StatusCode::kInvalidArgument, "bos_token_id"},
      {"model_type not a string", [](nlohmann::json& c) { c["model_type"] = 3; },
       absl::StatusCode::kInvalidArgument, "model_type"},
  };
  for (const ErrorCase& error_case : cases) {
    nlohmann::json config = MinimalLlama();
    error_case.mutate(config);
    absl::Status status = ParseStatus(config);
    EXPECT_EQ(status.code(), error_case.code) << error_case.description << ": " << status;
    EXPECT_THAT(status.message(), HasSubstr(error_case.field)) << error_case.description;
    EXPECT_THAT(status.message(), HasSubstr("config.json")) << error_case.description;
  }
}

TEST(ModelConfigTest, NullOptionalFieldsTakeDefaults) {
  nlohmann::json config = MinimalLlama();
  config["rope_scaling"] = nullptr;
  config["num_key_value_heads"] = nullptr;
  config["head_dim"] = nullptr;
  config["eos_token_id"] = nullptr;
  absl::StatusOr<ModelConfig> parsed = ParseModelConfig(config.dump(), "", "");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->num_kv_heads, 4);
  EXPECT_EQ(parsed->head_dim, 16);
  EXPECT_TRUE(parsed->eos_token_ids.empty());
}

TEST(ModelConfigTest, JsonErrorsNameTheFile) {
  const std::string minimal = MinimalLlama().dump();
  struct Case {
    std::string config, generation_config, tokenizer_config;
    std::vector<const char*> message_parts;
  };
  const Case cases[] = {
      {"{not json", "", "", {"config.json"}},
      {"[1, 2]", "", "", {"config.json"}},
      {minimal, "{\"eos_token_id\": ", "", {"generation_config.json"}},
      {minimal, R"({"eos_token_id": [2, "x"]})", "", {"generation_config.json", "eos_token_id"}},
      {minimal, "", "{,}", {"tokenizer_config.json"}},
      {minimal, "", R"({"add_bos_token": "yes"})", {"add_bos_token"}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message()
                 << "config " << c.config << ", generation_config " << c.generation_config
                 << ", tokenizer_config " << c.tokenizer_config);
    const absl::Status status =
        ParseModelConfig(c.config, c.generation_config, c.tokenizer_config).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    for (const char* part : c.message_parts) {
      EXPECT_THAT(status.message(), HasSubstr(part)) << status;
    }
  }
}

TEST(ModelConfigTest, LoadErrors) {
  TempDir dir;
  absl::Status status = LoadModelConfig(dir.path()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("config.json"));

  std::ofstream(dir.File("config.json")) << MinimalLlama().dump();
  std::ofstream(dir.File("generation_config.json")) << "{\"eos_token_id\": [7, 8]}";
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir.path());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_THAT(config->eos_token_ids, ElementsAre(7, 8));

  std::ofstream(dir.File("tokenizer_config.json")) << "oops";
  status = LoadModelConfig(dir.path()).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr(dir.path()));
  EXPECT_THAT(status.message(), HasSubstr("tokenizer_config.json"));
}

}  // namespace
}  // namespace pdserve
