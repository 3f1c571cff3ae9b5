#include "shared/model_weights.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "shared/model_config.h"
#include "tests/testing/random_checkpoint.h"
#include "tests/testing/safetensors_writer.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;

TEST(ModelWeightsTest, LoadsStories260K) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(Stories260KDir());
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(Stories260KDir(), *config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  ASSERT_NE(weights->store, nullptr);
  // Shapes from models/stories260K/README.md.
  EXPECT_THAT(weights->embed_tokens.shape, ElementsAre(512, 64));
  EXPECT_THAT(weights->norm.shape, ElementsAre(64));
  ASSERT_THAT(weights->layers, SizeIs(5));
  for (const LayerWeights& layer : weights->layers) {
    EXPECT_THAT(layer.input_layernorm.shape, ElementsAre(64));
    EXPECT_THAT(layer.post_attention_layernorm.shape, ElementsAre(64));
    ASSERT_THAT(layer.qkv_proj, SizeIs(3));  // Llama: separate q, k, v
    EXPECT_THAT(layer.qkv_proj[0].shape, ElementsAre(64, 64));
    EXPECT_THAT(layer.qkv_proj[1].shape, ElementsAre(32, 64));
    EXPECT_THAT(layer.qkv_proj[2].shape, ElementsAre(32, 64));
    EXPECT_THAT(layer.o_proj.shape, ElementsAre(64, 64));
    ASSERT_THAT(layer.gate_up_proj, SizeIs(2));
    EXPECT_THAT(layer.gate_up_proj[0].shape, ElementsAre(172, 64));
    EXPECT_THAT(layer.gate_up_proj[1].shape, ElementsAre(172, 64));
    EXPECT_THAT(layer.down_proj.shape, ElementsAre(64, 172));
  }
  EXPECT_THAT(weights->layers[3].qkv_proj[1].name, "model.layers.3.self_attn.k_proj.weight");
  EXPECT_THAT(weights->layers[3].gate_up_proj[0].name, "model.layers.3.mlp.gate_proj.weight");
  // Tied: the classifier is the embedding itself, not a copy.
  EXPECT_EQ(weights->lm_head.data, weights->embed_tokens.data);
  EXPECT_THAT(weights->lm_head.shape, ElementsAre(512, 64));
}

TEST(ModelWeightsTest, LoadsRandomPhi3WithFusedBlocks) {
  TempDir dir;
  RandomCheckpointOptions options = Phi3Tiny();
  options.num_kv_heads = 2;  // exercise GQA row counts in the fused block
  options.num_shards = 3;
  ASSERT_TRUE(WriteRandomCheckpoint(dir.path(), options).ok());
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir.path());
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(dir.path(), *config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_THAT(weights->embed_tokens.shape, ElementsAre(32064, 256));
  EXPECT_EQ(weights->embed_tokens.dtype, DType::kBF16);
  ASSERT_THAT(weights->layers, SizeIs(2));
  for (const LayerWeights& layer : weights->layers) {
    ASSERT_THAT(layer.qkv_proj, SizeIs(1));
    // q: 4 heads * 64, k and v: 2 kv heads * 64.
    EXPECT_THAT(layer.qkv_proj[0].shape, ElementsAre(4 * 64 + 2 * 2 * 64, 256));
    ASSERT_THAT(layer.gate_up_proj, SizeIs(1));
    EXPECT_THAT(layer.gate_up_proj[0].shape, ElementsAre(2 * 512, 256));
    EXPECT_THAT(layer.down_proj.shape, ElementsAre(256, 512));
    EXPECT_THAT(layer.o_proj.shape, ElementsAre(256, 256));
  }
  EXPECT_EQ(weights->layers[1].qkv_proj[0].name, "model.layers.1.self_attn.qkv_proj.weight");
  EXPECT_EQ(weights->layers[1].gate_up_proj[0].name, "model.layers.1.mlp.gate_up_proj.weight");
  EXPECT_EQ(weights->lm_head.name, "lm_head.weight");
  EXPECT_NE(weights->lm_head.data, weights->embed_tokens.data);
}

TEST(ModelWeightsTest, TiedRandomLlamaHasNoLmHead) {
  TempDir dir;
  RandomCheckpointOptions options = Phi3Tiny();
  options.architecture = "LlamaForCausalLM";
  options.vocab_size = 32000;
  options.tie_word_embeddings = true;
  options.dtype = DType::kF16;
  ASSERT_TRUE(WriteRandomCheckpoint(dir.path(), options).ok());
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir.path());
  ASSERT_TRUE(config.ok()) << config.status();
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(dir.path(), *config);
  ASSERT_TRUE(weights.ok()) << weights.status();
  EXPECT_EQ(weights->store->Find("lm_head.weight"), nullptr);
  EXPECT_EQ(weights->lm_head.data, weights->embed_tokens.data);
  EXPECT_THAT(weights->layers[0].qkv_proj, SizeIs(3));
  EXPECT_THAT(weights->layers[0].gate_up_proj, SizeIs(2));
}

// A random Llama checkpoint with one tensor replaced or removed.
class BrokenCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    RandomCheckpointOptions options = Phi3Tiny();
    options.architecture = "LlamaForCausalLM";
    options.vocab_size = 32000;
    options.num_layers = 1;
    options.dtype = DType::kF32;
    ASSERT_TRUE(WriteRandomCheckpoint(dir_.path(), options).ok());
    absl::StatusOr<ModelConfig> config = LoadModelConfig(dir_.path());
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
  }

  // Rewrites model.safetensors with `name` dropped, or given `shape` (zeros)
  // and `dtype` when shape is not empty.
  void Rewrite(const std::string& name, std::vector<int64_t> shape, DType dtype = DType::kF32) {
    std::vector<NamedTensor> tensors;
    {
      absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(dir_.path());
      ASSERT_TRUE(store.ok()) << store.status();
      for (const std::string& existing : (*store)->Names()) {
        if (existing == name) continue;
        const HostTensor* t = (*store)->Find(existing);
        NamedTensor copy{{existing, DType::kF32, t->shape}, std::vector<float>(t->num_elements())};
        std::memcpy(copy.values.data(), t->data, t->num_bytes);
        tensors.push_back(std::move(copy));
      }
    }
    if (!shape.empty()) {
      NamedTensor replacement{{name, dtype, shape}, {}};
      replacement.values.assign(replacement.spec.num_elements(), 0.0f);
      tensors.push_back(std::move(replacement));
    }
    ASSERT_TRUE(WriteSafetensors(dir_.path() + "/model.safetensors", tensors).ok());
  }

  TempDir dir_;
  ModelConfig config_;
};

TEST_F(BrokenCheckpointTest, MissingTensorIsNamed) {
  for (const char* name :
       {"model.layers.0.self_attn.k_proj.weight", "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.input_layernorm.weight", "model.norm.weight", "lm_head.weight",
        "model.embed_tokens.weight"}) {
    SetUp();
    Rewrite(name, {});
    absl::Status status = LoadModelWeights(dir_.path(), config_).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << name << ": " << status;
    EXPECT_THAT(status.message(), HasSubstr(name));
  }
}

TEST_F(BrokenCheckpointTest, WrongShapeNamesTensorAndBothShapes) {
  Rewrite("model.layers.0.self_attn.v_proj.weight", {64, 255});
  absl::Status status = LoadModelWeights(dir_.path(), config_).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("model.layers.0.self_attn.v_proj.weight"));
  EXPECT_THAT(status.message(), HasSubstr("[64, 255]"));
  EXPECT_THAT(status.message(), HasSubstr("[256, 256]"));
}

TEST_F(BrokenCheckpointTest, WrongEmbeddingRowsNamed) {
  Rewrite("model.embed_tokens.weight", {31999, 256});
  absl::Status status = LoadModelWeights(dir_.path(), config_).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("model.embed_tokens.weight"));
  EXPECT_THAT(status.message(), HasSubstr("[31999, 256]"));
  EXPECT_THAT(status.message(), HasSubstr("[32000, 256]"));
}

TEST_F(BrokenCheckpointTest, FusedBlockWithWrongRowsNamed) {
  // A fused qkv_proj takes precedence over separate ones and is checked.
  Rewrite("model.layers.0.self_attn.qkv_proj.weight", {700, 256});
  absl::Status status = LoadModelWeights(dir_.path(), config_).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("qkv_proj"));
  EXPECT_THAT(status.message(), HasSubstr("[768, 256]"));
}

TEST_F(BrokenCheckpointTest, IntegerWeightRejected) {
  Rewrite("model.norm.weight", {256}, DType::kI32);
  absl::Status status = LoadModelWeights(dir_.path(), config_).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(status.message(), HasSubstr("model.norm.weight"));
  EXPECT_THAT(status.message(), HasSubstr("I32"));
}

TEST(ModelWeightsErrorsTest, MissingCheckpointFiles) {
  TempDir dir;
  absl::StatusOr<ModelConfig> config = LoadModelConfig(Stories260KDir());
  ASSERT_TRUE(config.ok()) << config.status();
  absl::Status status = LoadModelWeights(dir.path(), *config).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("model.safetensors"));
}

TEST(ModelWeightsErrorsTest, ConfigLayersBeyondCheckpoint) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(Stories260KDir());
  ASSERT_TRUE(config.ok()) << config.status();
  config->num_layers = 6;
  absl::Status status = LoadModelWeights(Stories260KDir(), *config).status();
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound) << status;
  EXPECT_THAT(status.message(), HasSubstr("model.layers.5."));
}

}  // namespace
}  // namespace pdserve
