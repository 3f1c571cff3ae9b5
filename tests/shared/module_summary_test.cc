// The module tree against what Hugging Face prints for these architectures
// and against parameter counts read independently: the tensor table summed
// here, and the reference script's count from the safetensors header
// (tests/data/golden/stories260K_hidden_states.json).
#include "shared/module_summary.h"

#include <fstream>
#include <string>
#include <vector>

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

// The child named `name`; fails the test and returns an empty node if absent.
const ModuleSummary& Child(const ModuleSummary& node, const std::string& name) {
  static const ModuleSummary kMissing;
  for (const ModuleSummary& child : node.children) {
    if (child.name == name) return child;
  }
  ADD_FAILURE() << "no child '" << name << "' under '" << node.name << "' (" << node.type << ")";
  return kMissing;
}

std::vector<std::string> ChildNames(const ModuleSummary& node) {
  std::vector<std::string> names;
  for (const ModuleSummary& child : node.children) names.push_back(child.name);
  return names;
}

int64_t TableParameters(const TensorStore& store) {
  int64_t total = 0;
  for (const std::string& name : store.Names()) total += store.Find(name)->num_elements();
  return total;
}

TEST(ModuleSummaryTest, Stories260KIsATiedLlama) {
  auto config = LoadModelConfig(Stories260KDir());
  ASSERT_TRUE(config.ok()) << config.status();
  auto store = TensorStore::Open(Stories260KDir());
  ASSERT_TRUE(store.ok()) << store.status();
  auto summary = SummarizeModules(*config, **store);
  ASSERT_TRUE(summary.ok()) << summary.status();

  std::ifstream golden_file(TestDataDir() + "/golden/stories260K_hidden_states.json");
  ASSERT_TRUE(golden_file.good());
  const int64_t reference_count = nlohmann::json::parse(golden_file)["parameter_count"];
  EXPECT_EQ(reference_count, 260032);  // models/stories260K/README.md
  EXPECT_EQ(summary->parameters, reference_count);
  EXPECT_EQ(summary->parameters, TableParameters(**store));

  EXPECT_EQ(summary->type, "LlamaForCausalLM");
  EXPECT_THAT(ChildNames(*summary), ElementsAre("model", "lm_head"));
  const ModuleSummary& model = Child(*summary, "model");
  EXPECT_EQ(model.type, "LlamaModel");
  EXPECT_THAT(ChildNames(model), ElementsAre("embed_tokens", "layers", "norm", "rotary_emb"));
  const ModuleSummary& embed = Child(model, "embed_tokens");
  EXPECT_EQ(embed.type, "Embedding");
  EXPECT_EQ(embed.extra, "512, 64");
  EXPECT_EQ(embed.parameters, 512 * 64);
  EXPECT_EQ(Child(model, "norm").type, "LlamaRMSNorm");
  EXPECT_EQ(Child(model, "norm").extra, "(64,), eps=1e-05");

  const ModuleSummary& layers = Child(model, "layers");
  EXPECT_EQ(layers.type, "ModuleList");
  ASSERT_THAT(ChildNames(layers), ElementsAre("0-4"));
  const ModuleSummary& layer = layers.children[0];
  EXPECT_EQ(layer.type, "LlamaDecoderLayer");
  EXPECT_EQ(layer.repeat, 5);
  EXPECT_THAT(ChildNames(layer),
              ElementsAre("self_attn", "mlp", "input_layernorm", "post_attention_layernorm"));
  const ModuleSummary& attention = Child(layer, "self_attn");
  EXPECT_EQ(attention.type, "LlamaAttention");
  EXPECT_THAT(ChildNames(attention), ElementsAre("q_proj", "k_proj", "v_proj", "o_proj"));
  EXPECT_EQ(Child(attention, "q_proj").extra, "in_features=64, out_features=64, bias=False");
  EXPECT_EQ(Child(attention, "k_proj").extra, "in_features=64, out_features=32, bias=False");
  EXPECT_THAT(Child(attention, "k_proj").weight_shape, ElementsAre(32, 64));
  const ModuleSummary& mlp = Child(layer, "mlp");
  EXPECT_EQ(mlp.type, "LlamaMLP");
  EXPECT_THAT(ChildNames(mlp), ElementsAre("gate_proj", "up_proj", "down_proj", "act_fn"));
  EXPECT_EQ(Child(mlp, "down_proj").extra, "in_features=172, out_features=64, bias=False");
  EXPECT_EQ(Child(mlp, "act_fn").type, "SiLU");
  // Per layer: 2 norms of 64, q and o 64x64, k and v 32x64, three 172x64.
  const int64_t per_layer = 2 * 64 + 2 * 64 * 64 + 2 * 32 * 64 + 3 * 172 * 64;
  EXPECT_EQ(layer.parameters, 5 * per_layer);
  EXPECT_EQ(model.parameters, 512 * 64 + 5 * per_layer + 64);

  const ModuleSummary& head = Child(*summary, "lm_head");
  EXPECT_EQ(head.type, "Linear");
  EXPECT_EQ(head.extra, "in_features=64, out_features=512, bias=False");
  EXPECT_EQ(head.tied_to, "model.embed_tokens");
  EXPECT_EQ(head.parameters, 0);
}

TEST(ModuleSummaryTest, Phi3HasFusedProjectionsAndItsOwnLmHead) {
  TempDir dir;
  RandomCheckpointOptions options = Phi3Tiny();  // hidden 256, 4 heads, FFN 512, 2 layers
  options.num_layers = 3;
  ASSERT_TRUE(WriteRandomCheckpoint(dir.path(), options).ok());
  auto config = LoadModelConfig(dir.path());
  ASSERT_TRUE(config.ok()) << config.status();
  auto store = TensorStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  auto summary = SummarizeModules(*config, **store);
  ASSERT_TRUE(summary.ok()) << summary.status();

  EXPECT_EQ(summary->type, "Phi3ForCausalLM");
  EXPECT_EQ(summary->parameters, TableParameters(**store));
  const ModuleSummary& layers = Child(Child(*summary, "model"), "layers");
  ASSERT_THAT(ChildNames(layers), ElementsAre("0-2"));
  const ModuleSummary& layer = layers.children[0];
  EXPECT_EQ(layer.type, "Phi3DecoderLayer");
  EXPECT_EQ(layer.repeat, 3);
  const ModuleSummary& attention = Child(layer, "self_attn");
  EXPECT_THAT(ChildNames(attention), ElementsAre("qkv_proj", "o_proj"));
  EXPECT_EQ(Child(attention, "qkv_proj").extra, "in_features=256, out_features=768, bias=False");
  const ModuleSummary& mlp = Child(layer, "mlp");
  EXPECT_EQ(mlp.type, "Phi3MLP");
  EXPECT_THAT(ChildNames(mlp), ElementsAre("gate_up_proj", "down_proj", "activation_fn"));
  EXPECT_EQ(Child(mlp, "gate_up_proj").extra, "in_features=256, out_features=1024, bias=False");
  EXPECT_EQ(Child(layer, "input_layernorm").type, "Phi3RMSNorm");
  const ModuleSummary& head = Child(*summary, "lm_head");
  EXPECT_TRUE(head.tied_to.empty());
  EXPECT_EQ(head.parameters, 32064 * 256);
  EXPECT_EQ(head.extra, "in_features=256, out_features=32064, bias=False");
}

// Layers that differ are not folded together: layer 1 here has a bias on
// its o_proj, so the list reads 0, 1, 2-3 (and 12 layers sort numerically).
TEST(ModuleSummaryTest, OnlyIdenticalConsecutiveLayersFold) {
  TempDir dir;
  std::vector<NamedTensor> tensors;
  auto add = [&tensors](const std::string& name, std::vector<int64_t> shape) {
    NamedTensor t;
    t.spec = TensorSpec{name, DType::kF32, shape};
    t.values.assign(t.spec.num_elements(), 0.5f);
    tensors.push_back(std::move(t));
  };
  add("model.embed_tokens.weight", {16, 4});
  add("model.norm.weight", {4});
  for (int l = 0; l < 12; ++l) {
    add("model.layers." + std::to_string(l) + ".self_attn.o_proj.weight", {4, 4});
  }
  add("model.layers.1.self_attn.o_proj.bias", {4});
  ASSERT_TRUE(WriteSafetensors(dir.path() + "/model.safetensors", tensors).ok());
  auto store = TensorStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  ModelConfig config;
  config.architecture = "MistralForCausalLM";
  config.hidden_size = 4;
  config.vocab_size = 16;
  auto summary = SummarizeModules(config, **store);
  ASSERT_TRUE(summary.ok()) << summary.status();
  const ModuleSummary& layers = Child(Child(*summary, "model"), "layers");
  EXPECT_THAT(ChildNames(layers), ElementsAre("0", "1", "2-11"));
  EXPECT_EQ(layers.children[2].repeat, 10);
  EXPECT_EQ(layers.children[2].parameters, 10 * 16);
  EXPECT_EQ(Child(Child(layers.children[1], "self_attn"), "o_proj").extra,
            "in_features=4, out_features=4, bias=True");
  EXPECT_EQ(layers.children[0].type, "MistralDecoderLayer");
  EXPECT_EQ(summary->parameters, TableParameters(**store));
}

TEST(ModuleSummaryTest, NameWithoutModuleIsRejected) {
  TempDir dir;
  NamedTensor t;
  t.spec = TensorSpec{"scale", DType::kF32, {1}};
  t.values = {1.0f};
  ASSERT_TRUE(WriteSafetensors(dir.path() + "/model.safetensors", {t}).ok());
  auto store = TensorStore::Open(dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  auto summary = SummarizeModules(ModelConfig(), **store);
  EXPECT_EQ(summary.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(summary.status().message(), HasSubstr("'scale'"));
}

}  // namespace
}  // namespace pdserve
