#include "shared/model_fingerprint.h"

#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "shared/model_config.h"
#include "shared/safetensors.h"
#include "tests/testing/random_checkpoint.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

ModelFingerprint FingerprintOf(const std::string& dir) {
  absl::StatusOr<ModelConfig> config = LoadModelConfig(dir);
  EXPECT_TRUE(config.ok()) << config.status();
  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(dir);
  EXPECT_TRUE(store.ok()) << store.status();
  if (!config.ok() || !store.ok()) return ModelFingerprint();
  return MakeFingerprint(*config, **store);
}

TEST(ModelFingerprintTest, Stories260KFields) {
  const ModelFingerprint fingerprint = FingerprintOf(Stories260KDir());
  EXPECT_EQ(fingerprint.architecture, "LlamaForCausalLM");
  EXPECT_EQ(fingerprint.num_layers, 5);
  EXPECT_EQ(fingerprint.hidden_size, 64);
  EXPECT_EQ(fingerprint.num_heads, 8);
  EXPECT_EQ(fingerprint.num_kv_heads, 4);
  EXPECT_EQ(fingerprint.head_dim, 8);
  EXPECT_EQ(fingerprint.vocab_size, 512);
  EXPECT_EQ(fingerprint.dtype, DType::kF32);
  absl::StatusOr<std::unique_ptr<TensorStore>> store = TensorStore::Open(Stories260KDir());
  ASSERT_TRUE(store.ok());
  EXPECT_EQ(fingerprint.weights_hash, (*store)->TableHash());
  EXPECT_TRUE(CheckSameModel(fingerprint, FingerprintOf(Stories260KDir())).ok());
}

TEST(ModelFingerprintTest, EachFieldMismatchIsNamedWithBothValues) {
  const ModelFingerprint ours = FingerprintOf(Stories260KDir());
  struct Case {
    std::function<void(ModelFingerprint&)> change;
    const char* expected;
  };
  const Case cases[] = {
      {[](ModelFingerprint& f) { f.architecture = "Phi3ForCausalLM"; },
       "architecture: ours LlamaForCausalLM, prefill's Phi3ForCausalLM"},
      {[](ModelFingerprint& f) { f.num_layers = 2; }, "num_layers: ours 5, prefill's 2"},
      {[](ModelFingerprint& f) { f.hidden_size = 128; }, "hidden_size: ours 64, prefill's 128"},
      {[](ModelFingerprint& f) { f.num_heads = 4; }, "num_heads: ours 8, prefill's 4"},
      {[](ModelFingerprint& f) { f.num_kv_heads = 8; }, "num_kv_heads: ours 4, prefill's 8"},
      {[](ModelFingerprint& f) { f.head_dim = 16; }, "head_dim: ours 8, prefill's 16"},
      {[](ModelFingerprint& f) { f.vocab_size = 32000; }, "vocab_size: ours 512, prefill's 32000"},
      {[](ModelFingerprint& f) { f.dtype = DType::kBF16; }, "dtype: ours F32, prefill's BF16"},
      {[](ModelFingerprint& f) { f.weights_hash ^= 1; }, "weights_hash: ours "},
  };
  for (const Case& c : cases) {
    ModelFingerprint theirs = ours;
    c.change(theirs);
    const absl::Status status = CheckSameModel(ours, theirs);
    EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition) << c.expected;
    EXPECT_THAT(status.message(), HasSubstr(c.expected));
  }
}

TEST(ModelFingerprintTest, SameLayoutDifferentValuesMatch) {
  TempDir a, b, tied;
  RandomCheckpointOptions options = Phi3Tiny();
  options.seed = 1;
  ASSERT_TRUE(WriteRandomCheckpoint(a.path(), options).ok());
  options.seed = 2;
  options.num_shards = 2;  // layout on disk does not matter, the table does
  ASSERT_TRUE(WriteRandomCheckpoint(b.path(), options).ok());
  options.num_shards = 1;
  options.tie_word_embeddings = true;
  ASSERT_TRUE(WriteRandomCheckpoint(tied.path(), options).ok());

  EXPECT_TRUE(CheckSameModel(FingerprintOf(a.path()), FingerprintOf(b.path())).ok());
  const absl::Status status = CheckSameModel(FingerprintOf(a.path()), FingerprintOf(tied.path()));
  EXPECT_EQ(status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(status.message(), HasSubstr("weights_hash"));
}

}  // namespace
}  // namespace pdserve
