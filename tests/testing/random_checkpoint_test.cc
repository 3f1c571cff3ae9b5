#include "tests/testing/random_checkpoint.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "shared/model_config.h"
#include "shared/safetensors.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream out;
  out << in.rdbuf();
  return out.str();
}

std::vector<float> AsFloats(const HostTensor& tensor) {
  std::vector<float> values(tensor.num_elements());
  ConvertToFloat(tensor.data, tensor.dtype, values.size(), values.data());
  return values;
}

TEST(RandomCheckpointTest, Phi3TinyMatchesItsOptions) {
  TempDir dir;
  const RandomCheckpointOptions options = Phi3Tiny();
  ASSERT_TRUE(WriteRandomCheckpoint(dir.path(), options).ok());
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir.path());
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->architecture, "Phi3ForCausalLM");
  EXPECT_EQ(config->hidden_size, 256);
  EXPECT_EQ(config->num_heads, 4);
  EXPECT_EQ(config->head_dim, 64);
  EXPECT_EQ(config->intermediate_size, 512);
  EXPECT_EQ(config->vocab_size, 32064);
  EXPECT_EQ(config->num_layers, 2);
  EXPECT_EQ(config->torch_dtype, DType::kBF16);
  EXPECT_THAT(config->eos_token_ids, ElementsAre(32000, 32001, 32007));
  EXPECT_FALSE(config->add_bos_token);
  const nlohmann::json added = nlohmann::json::parse(ReadAll(dir.File("added_tokens.json")));
  EXPECT_EQ(added.size(), 11u);
  EXPECT_EQ(added.at("<|user|>"), 32010);
  EXPECT_EQ(added.at("<|endoftext|>"), 32000);
  EXPECT_EQ(ReadAll(dir.File("tokenizer.model")), ReadAll(Llama2TokenizerModelPath()));

  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  // Phi-3's exact names: 2 layers x 6 + embed, norm, lm_head.
  EXPECT_EQ((*store)->Names().size(), 15u);
  for (const char* name :
       {"model.embed_tokens.weight", "model.layers.1.self_attn.qkv_proj.weight",
        "model.layers.1.self_attn.o_proj.weight", "model.layers.1.mlp.gate_up_proj.weight",
        "model.layers.1.mlp.down_proj.weight", "model.layers.1.input_layernorm.weight",
        "model.layers.1.post_attention_layernorm.weight", "model.norm.weight", "lm_head.weight"}) {
    EXPECT_NE((*store)->Find(name), nullptr) << name;
  }
}

TEST(RandomCheckpointTest, WeightStatistics) {
  TempDir dir;
  RandomCheckpointOptions options = Phi3Tiny();
  options.dtype = DType::kF32;
  ASSERT_TRUE(WriteRandomCheckpoint(dir.path(), options).ok());
  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  const std::vector<float> linear =
      AsFloats(*(*store)->Find("model.layers.0.mlp.gate_up_proj.weight"));
  double sum = 0, sum_squares = 0;
  for (float v : linear) {
    sum += v;
    sum_squares += double{v} * v;
  }
  const double mean = sum / linear.size();
  const double stddev = std::sqrt(sum_squares / linear.size() - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.001);
  EXPECT_NEAR(stddev, 0.02, 0.001);
  for (float v : AsFloats(*(*store)->Find("model.norm.weight"))) {
    EXPECT_GE(v, 0.9f);
    EXPECT_LE(v, 1.1f);
  }
}

TEST(RandomCheckpointTest, DeterministicPerSeed) {
  TempDir a, b, c;
  RandomCheckpointOptions options = Phi3Tiny();
  options.num_layers = 1;
  ASSERT_TRUE(WriteRandomCheckpoint(a.path(), options).ok());
  ASSERT_TRUE(WriteRandomCheckpoint(b.path(), options).ok());
  options.seed = 7;
  ASSERT_TRUE(WriteRandomCheckpoint(c.path(), options).ok());
  EXPECT_EQ(ReadAll(a.File("model.safetensors")), ReadAll(b.File("model.safetensors")));
  EXPECT_NE(ReadAll(a.File("model.safetensors")), ReadAll(c.File("model.safetensors")));
}

TEST(RandomCheckpointTest, ShardedLlamaSameValuesAsSingleFile) {
  TempDir single, sharded;
  RandomCheckpointOptions options = Phi3Tiny();
  options.architecture = "LlamaForCausalLM";
  options.vocab_size = 32000;
  options.num_kv_heads = 2;
  ASSERT_TRUE(WriteRandomCheckpoint(single.path(), options).ok());
  options.num_shards = 4;
  ASSERT_TRUE(WriteRandomCheckpoint(sharded.path(), options).ok());
  const nlohmann::json index =
      nlohmann::json::parse(ReadAll(sharded.File("model.safetensors.index.json")));
  EXPECT_EQ(index.at("weight_map").at("model.layers.0.self_attn.k_proj.weight"),
            "model-00001-of-00004.safetensors");
  EXPECT_EQ(index.at("weight_map").at("lm_head.weight"), "model-00004-of-00004.safetensors");

  absl::StatusOr<std::unique_ptr<TensorStore>> a = TensorStore::Open(single.path());
  absl::StatusOr<std::unique_ptr<TensorStore>> b = TensorStore::Open(sharded.path());
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  ASSERT_EQ((*a)->Names(), (*b)->Names());
  EXPECT_EQ((*a)->Names().size(), 2u * 9 + 3);  // Llama: q, k, v, o, gate, up, down, 2 norms
  for (const std::string& name : (*a)->Names()) {
    const HostTensor* x = (*a)->Find(name);
    const HostTensor* y = (*b)->Find(name);
    ASSERT_EQ(x->num_bytes, y->num_bytes) << name;
    EXPECT_EQ(std::memcmp(x->data, y->data, x->num_bytes), 0) << name;
  }
  EXPECT_THAT((*a)->Find("model.layers.1.self_attn.k_proj.weight")->shape, ElementsAre(128, 256));
}

TEST(RandomCheckpointTest, PresetsHaveTheRealShapes) {
  const RandomCheckpointOptions mini = Phi3Mini(32);
  EXPECT_EQ(mini.num_layers, 32);
  EXPECT_EQ(mini.hidden_size, 3072);
  EXPECT_EQ(mini.num_heads, 32);
  EXPECT_EQ(mini.intermediate_size, 8192);
  EXPECT_EQ(mini.vocab_size, 32064);
  EXPECT_EQ(mini.dtype, DType::kBF16);
  const RandomCheckpointOptions tinyllama = TinyLlama();
  EXPECT_EQ(tinyllama.architecture, "LlamaForCausalLM");
  EXPECT_EQ(tinyllama.num_layers, 22);
  EXPECT_EQ(tinyllama.num_kv_heads, 4);
  EXPECT_EQ(tinyllama.intermediate_size, 5632);
}

TEST(RandomCheckpointTest, BadOptionsAreNamed) {
  TempDir dir;
  struct Case {
    std::function<void(RandomCheckpointOptions&)> change;
    const char* field;
  };
  const Case cases[] = {
      {[](RandomCheckpointOptions& o) { o.architecture = "GPT2"; }, "architecture"},
      {[](RandomCheckpointOptions& o) { o.num_layers = 0; }, "num_layers"},
      {[](RandomCheckpointOptions& o) { o.num_kv_heads = 3; }, "num_kv_heads"},
      {[](RandomCheckpointOptions& o) { o.vocab_size = 512; }, "vocab_size"},
      {[](RandomCheckpointOptions& o) { o.dtype = DType::kI32; }, "dtype"},
      {[](RandomCheckpointOptions& o) { o.num_shards = 100; }, "num_shards"},
      {[](RandomCheckpointOptions& o) { o.weight_scale = 0; }, "weight_scale"},
  };
  for (const Case& c : cases) {
    RandomCheckpointOptions options = Phi3Tiny();
    c.change(options);
    const absl::Status status = WriteRandomCheckpoint(dir.path(), options);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field << ": " << status;
    EXPECT_THAT(status.message(), HasSubstr(c.field));
  }
  RandomCheckpointOptions options = Phi3Tiny();
  options.tokenizer_model_path = dir.File("missing.model");
  EXPECT_EQ(WriteRandomCheckpoint(dir.path(), options).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(WriteRandomCheckpoint(dir.File("no/such/dir"), Phi3Tiny()).code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pdserve
