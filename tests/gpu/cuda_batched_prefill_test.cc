// Transformer::PrefillBatch on the CUDA backend against each prompt run
// alone on the CPU backend: three prompts of different lengths in one
// batch, unchunked and in 16-token steps (pieces of several prompts in a
// step, prompts spanning steps), on a Phi-3-shaped random checkpoint with
// grouped-query attention. K/V of every layer, the final hidden state and the
// captured hidden states must agree within the bf16 bound (relative L2 <
// 1e-2); the batch layout moves rows between GEMM shapes and buffers, which
// a wrong offset would show far beyond it. Skips without a device.
#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "kernels/backend_factory.h"
#include "kernels/cuda/cuda_backend.h"
#include "shared/model_config.h"
#include "shared/model_weights.h"
#include "shared/transformer.h"
#include "tests/gpu/gpu_test_util.h"
#include "tests/testing/random_checkpoint.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

constexpr double kBf16Tolerance = 1e-2;

// What one prompt got, on the host in float32.
struct Collected {
  std::vector<std::vector<float>> k, v;      // [layer] -> [n, kv_width]
  std::map<int, std::vector<float>> hidden;  // captured layer -> [n, hidden]
  std::vector<float> final_hidden;
};

class CudaBatchedPrefillTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << kNoCudaDevice;
    RandomCheckpointOptions options = Phi3Tiny();
    options.num_kv_heads = 2;  // GQA: 4 query heads over 2 KV heads
    ASSERT_TRUE(WriteRandomCheckpoint(dir_.path(), options).ok());
    auto config = LoadModelConfig(dir_.path());
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    auto weights = LoadModelWeights(dir_.path(), config_);
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = std::move(*weights);
    prompts_ = {{1, 450, 7483, 310, 3444}, {}, {}};
    for (int t = 0; t < 40; ++t) prompts_[1].push_back(100 + (t * 977) % 31000);
    prompts_[2].assign(prompts_[1].begin(), prompts_[1].begin() + 17);
  }

  // Runs `prompts` as one batch on `device` and collects what each got.
  std::vector<Collected> Run(std::string_view device,
                             const std::vector<std::vector<int32_t>>& prompts, int chunk_tokens) {
    auto backend = CreateBackend(device);
    EXPECT_TRUE(backend.ok()) << backend.status();
    auto model = Transformer::Create(config_, weights_, backend->get());
    EXPECT_TRUE(model.ok()) << device << ": " << model.status();
    const size_t kv_width = static_cast<size_t>(config_.num_kv_heads) * config_.head_dim;
    const size_t hidden = static_cast<size_t>(config_.hidden_size);
    std::vector<Collected> out(prompts.size());
    std::vector<PrefillSequence> sequences(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      const size_t n = prompts[i].size();
      Collected& c = out[i];
      c.k.assign(config_.num_layers, std::vector<float>(n * kv_width));
      c.v = c.k;
      PrefillSequence& s = sequences[i];
      s.tokens = prompts[i];
      s.capture.all_positions = true;
      s.capture.hidden_state_layers = {-1, 1};
      Backend* b = backend->get();
      s.kv_sink = [b, &c, kv_width](int layer, const DeviceBuffer& k, const DeviceBuffer& v,
                                    int first, int count) -> absl::Status {
        const size_t offset = first * kv_width;
        absl::Status status =
            b->CopyToHost(k, offset, count * kv_width, c.k[layer].data() + offset, DType::kF32);
        if (!status.ok()) return status;
        return b->CopyToHost(v, offset, count * kv_width, c.v[layer].data() + offset, DType::kF32);
      };
      s.hidden_sink = [&c, n, hidden](int layer, int first, int count,
                                      std::span<const float> values) {
        std::vector<float>& rows = c.hidden[layer];
        rows.resize(n * hidden);
        std::copy(values.begin(), values.end(), rows.begin() + first * hidden);
        return absl::OkStatus();
      };
    }
    PrefillBatchOptions options;
    options.chunk_tokens = chunk_tokens;
    PrefillBatchResult result = (*model)->PrefillBatch(sequences, options);
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_TRUE(result.final_hidden[i].ok()) << device << ": " << result.final_hidden[i].status();
      if (result.final_hidden[i].ok()) out[i].final_hidden = *result.final_hidden[i];
    }
    return out;
  }

  void ExpectClose(const Collected& got, const Collected& want) {
    for (int layer = 0; layer < config_.num_layers; ++layer) {
      EXPECT_LT(RelativeL2(got.k[layer], want.k[layer]), kBf16Tolerance) << "K of layer " << layer;
      EXPECT_LT(RelativeL2(got.v[layer], want.v[layer]), kBf16Tolerance) << "V of layer " << layer;
    }
    EXPECT_LT(RelativeL2(got.final_hidden, want.final_hidden), kBf16Tolerance);
    ASSERT_EQ(got.hidden.size(), want.hidden.size());
    for (const auto& [layer, rows] : want.hidden) {
      EXPECT_LT(RelativeL2(got.hidden.at(layer), rows), kBf16Tolerance) << "hidden " << layer;
    }
  }

  TempDir dir_;
  ModelConfig config_;
  ModelWeights weights_;
  std::vector<std::vector<int32_t>> prompts_;
};

TEST_F(CudaBatchedPrefillTest, BatchedAndChunkedMatchEachPromptAloneOnCpu) {
  std::vector<Collected> alone;
  for (const std::vector<int32_t>& prompt : prompts_) alone.push_back(Run("cpu", {prompt}, 0)[0]);
  for (int chunk_tokens : {0, 16}) {
    SCOPED_TRACE(testing::Message() << "chunk_tokens " << chunk_tokens);
    const std::vector<Collected> batched = Run("cuda", prompts_, chunk_tokens);
    for (size_t i = 0; i < prompts_.size(); ++i) {
      SCOPED_TRACE(testing::Message() << "prompt " << i);
      ExpectClose(batched[i], alone[i]);
    }
  }
}

}  // namespace
}  // namespace pdserve
