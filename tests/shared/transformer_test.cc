// The Transformer on the CPU backend against the independent float64
// reference (tests/reference/reference_forward.py, golden files in
// tests/data/golden/stories260K_*), and against itself: prefill + paged
// decode must equal recomputing the whole sequence, and a batch must equal
// its sequences run alone.
#include "shared/transformer.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "shared/kv_cache.h"
#include "shared/model_config.h"
#include "shared/model_weights.h"
#include "shared/tokenizer.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

// One case of tests/data/golden/stories260K_forward.json.
struct GoldenCase {
  std::string name;
  std::vector<int32_t> prompt;
  std::vector<int32_t> greedy_tokens;  // 64
  std::string greedy_text;
  std::vector<float> final_hidden_last;  // [hidden]
  std::vector<float> logits;             // [prompt + 64, vocab], row-major
  int vocab = 0;

  // Row `position` of the logits: the distribution of the token after it.
  std::span<const float> Row(int position) const {
    return std::span<const float>(logits).subspan(static_cast<size_t>(position) * vocab, vocab);
  }
};

std::vector<GoldenCase> LoadGolden() {
  const std::string dir = TestDataDir() + "/golden/";
  std::ifstream json_file(dir + "stories260K_forward.json");
  EXPECT_TRUE(json_file.good()) << "missing " << dir << "stories260K_forward.json";
  const nlohmann::json golden = nlohmann::json::parse(json_file);
  std::vector<GoldenCase> cases;
  for (const nlohmann::json& entry : golden["cases"]) {
    GoldenCase c;
    c.name = entry["name"];
    c.prompt = entry["prompt"].get<std::vector<int32_t>>();
    c.greedy_tokens = entry["greedy_tokens"].get<std::vector<int32_t>>();
    c.greedy_text = entry["greedy_text"];
    c.final_hidden_last = entry["final_hidden_last"].get<std::vector<float>>();
    const std::vector<int> shape = entry["logits_shape"].get<std::vector<int>>();
    c.vocab = shape[1];
    c.logits.resize(static_cast<size_t>(shape[0]) * shape[1]);
    std::ifstream raw(dir + entry["logits_file"].get<std::string>(), std::ios::binary);
    raw.read(reinterpret_cast<char*>(c.logits.data()),
             static_cast<std::streamsize>(c.logits.size() * sizeof(float)));
    EXPECT_TRUE(raw.good()) << "short logits file for " << c.name;
    EXPECT_EQ(static_cast<size_t>(shape[0]), c.prompt.size() + c.greedy_tokens.size());
    cases.push_back(std::move(c));
  }
  return cases;
}

float MaxAbsDifference(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  float worst = 0.0f;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    const float d = std::fabs(a[i] - b[i]);
    worst = std::isnan(d) ? INFINITY : std::max(worst, d);
  }
  return worst;
}

int32_t ArgMax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

class TransformerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { golden_ = new std::vector<GoldenCase>(LoadGolden()); }
  static void TearDownTestSuite() {
    delete golden_;
    golden_ = nullptr;
  }

  void SetUp() override {
    auto config = LoadModelConfig(Stories260KDir());
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    auto weights = LoadModelWeights(Stories260KDir(), config_);
    ASSERT_TRUE(weights.ok()) << weights.status();
    weights_ = std::move(*weights);
    auto model = Transformer::Create(config_, weights_, backend_.get());
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    ASSERT_EQ(golden_->size(), 2u);
  }

  std::unique_ptr<KvCache> MakeCache(int num_blocks, int block_size) {
    KvCacheOptions options;
    options.num_blocks = num_blocks;
    options.block_size = block_size;
    options.num_layers = config_.num_layers;
    options.num_kv_heads = config_.num_kv_heads;
    options.head_dim = config_.head_dim;
    auto cache = KvCache::Create(backend_.get(), options);
    EXPECT_TRUE(cache.ok()) << cache.status();
    return std::move(*cache);
  }

  // Logits of the last position of `tokens`, recomputed from scratch.
  std::vector<float> WholeSequenceLogits(std::span<const int32_t> tokens) {
    auto hidden = model_->Prefill(tokens, nullptr);
    EXPECT_TRUE(hidden.ok()) << hidden.status();
    auto logits = model_->ComputeLogits(*hidden, 1);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return *logits;
  }

  // Prefills `prompt` into a new lease of `cache` the way the decode service
  // does: each layer's K and V leave through the sink to host memory and go
  // back in with KvCache::WriteTokens. Returns the first token's logits.
  std::vector<float> PrefillInto(KvCache& cache, std::span<const int32_t> prompt,
                                 std::unique_ptr<KvCache::Sequence>& sequence) {
    auto lease = cache.Allocate(static_cast<int>(prompt.size()));
    EXPECT_TRUE(lease.ok()) << lease.status();
    sequence = std::move(*lease);
    const int kv_width = config_.num_kv_heads * config_.head_dim;
    auto sink = [&](int layer, const DeviceBuffer& k, const DeviceBuffer& v,
                    int num_tokens) -> absl::Status {
      std::vector<float> k_host(static_cast<size_t>(num_tokens) * kv_width);
      std::vector<float> v_host(k_host.size());
      absl::Status status = backend_->CopyToHost(k, 0, k_host.size(), k_host.data(), DType::kF32);
      if (status.ok())
        status = backend_->CopyToHost(v, 0, v_host.size(), v_host.data(), DType::kF32);
      if (!status.ok()) return status;
      return cache.WriteTokens(*sequence, layer, 0, num_tokens, k_host.data(), v_host.data(),
                               DType::kF32);
    };
    auto hidden = model_->Prefill(prompt, sink);
    EXPECT_TRUE(hidden.ok()) << hidden.status();
    auto logits = model_->ComputeLogits(*hidden, 1);
    EXPECT_TRUE(logits.ok()) << logits.status();
    return *logits;
  }

  static std::vector<GoldenCase>* golden_;
  std::unique_ptr<Backend> backend_ = CreateCpuBackend();
  ModelConfig config_;
  ModelWeights weights_;
  std::unique_ptr<Transformer> model_;
};

std::vector<GoldenCase>* TransformerTest::golden_ = nullptr;

// (a) Every prompt position: the last-position logits of each prefix.
TEST_F(TransformerTest, LogitsOfEveryPromptPositionMatchTheReference) {
  for (const GoldenCase& c : *golden_) {
    for (size_t length = 1; length <= c.prompt.size(); ++length) {
      SCOPED_TRACE(testing::Message() << c.name << " prefix " << length);
      const std::vector<float> logits =
          WholeSequenceLogits(std::span<const int32_t>(c.prompt).first(length));
      EXPECT_LT(MaxAbsDifference(logits, c.Row(static_cast<int>(length) - 1)), 1e-4f);
    }
  }
}

// (b) Prefill's result is the final RMSNorm output of the last position.
TEST_F(TransformerTest, FinalHiddenStateMatchesTheReference) {
  for (const GoldenCase& c : *golden_) {
    SCOPED_TRACE(c.name);
    auto hidden = model_->Prefill(c.prompt, nullptr);
    ASSERT_TRUE(hidden.ok()) << hidden.status();
    ASSERT_EQ(hidden->size(), static_cast<size_t>(config_.hidden_size));
    EXPECT_LT(MaxAbsDifference(*hidden, c.final_hidden_last), 1e-4f);
  }
}

// (c) The model's documented behaviour: BOS + "Once upon a time" continues
// with "there was a little girl named Lily".
TEST_F(TransformerTest, GreedyOnceUponATimeIsTheReferenceStory) {
  const GoldenCase& c = golden_->at(0);
  ASSERT_EQ(c.name, "once_upon");
  ASSERT_EQ(c.prompt, (std::vector<int32_t>{1, 403, 407, 261, 378}));
  std::vector<int32_t> tokens = c.prompt;
  for (int step = 0; step < 16; ++step) tokens.push_back(ArgMax(WholeSequenceLogits(tokens)));
  const std::vector<int32_t> generated(tokens.begin() + 5, tokens.end());
  EXPECT_EQ(generated, std::vector<int32_t>(c.greedy_tokens.begin(), c.greedy_tokens.begin() + 16));
  auto tokenizer = Tokenizer::Load(Stories260KDir());
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  const std::string text = (*tokenizer)->Decode(generated);
  EXPECT_NE(text.find("there was a little girl named Lily"), std::string::npos) << text;
  // The reference decoded the same ids with its own reading of tokenizer.model.
  EXPECT_EQ(c.greedy_text.rfind(text, 0), 0u) << c.greedy_text;
}

// (d) Prefill through the sink into a paged cache, then 63 decode steps,
// gives the reference's 64 greedy tokens and logits, and the same tokens as
// recomputing the whole sequence every step.
TEST_F(TransformerTest, PrefillThenDecodeEqualsWholeSequence) {
  for (int block_size : {1, 16}) {
    for (const GoldenCase& c : *golden_) {
      SCOPED_TRACE(testing::Message() << c.name << " block_size " << block_size);
      auto cache = MakeCache(256, block_size);
      const int free_before = cache->num_free_blocks();
      std::unique_ptr<KvCache::Sequence> sequence;
      std::vector<float> logits = PrefillInto(*cache, c.prompt, sequence);
      const int n = static_cast<int>(c.prompt.size());
      std::vector<int32_t> generated;
      for (int step = 0; step < 64; ++step) {
        EXPECT_LT(MaxAbsDifference(logits, c.Row(n - 1 + step)), 1e-4f) << "step " << step;
        generated.push_back(ArgMax(logits));
        if (step == 63) break;
        const int position = n + step;
        ASSERT_TRUE(sequence->Reserve(position + 1).ok());
        DecodeBatch batch;
        batch.Add(generated.back(), position, *sequence);
        auto next = model_->DecodeStep(batch, *cache);
        ASSERT_TRUE(next.ok()) << next.status();
        logits = std::move(*next);
      }
      EXPECT_EQ(generated, c.greedy_tokens);

      std::vector<int32_t> recomputed = c.prompt;
      for (int step = 0; step < 64; ++step) {
        recomputed.push_back(ArgMax(WholeSequenceLogits(recomputed)));
      }
      EXPECT_EQ(std::vector<int32_t>(recomputed.begin() + n, recomputed.end()), generated);
      sequence.reset();
      EXPECT_EQ(cache->num_free_blocks(), free_before);
    }
  }
}

// (e) A decode batch of sequences at different lengths gives each the
// logits it gets alone.
TEST_F(TransformerTest, BatchedDecodeEqualsEachSequenceAlone) {
  const GoldenCase& once = golden_->at(0);
  const GoldenCase& random = golden_->at(1);
  const std::vector<std::vector<int32_t>> prompts = {
      once.prompt,
      random.prompt,
      std::vector<int32_t>(random.prompt.begin(), random.prompt.begin() + 17),
      {1}};
  const int batch_size = static_cast<int>(prompts.size());
  auto batched_cache = MakeCache(64, 4);
  auto alone_cache = MakeCache(64, 4);
  std::vector<std::unique_ptr<KvCache::Sequence>> batched(batch_size), alone(batch_size);
  std::vector<int32_t> next(batch_size);
  for (int i = 0; i < batch_size; ++i) {
    const std::vector<float> first = PrefillInto(*batched_cache, prompts[i], batched[i]);
    EXPECT_EQ(MaxAbsDifference(PrefillInto(*alone_cache, prompts[i], alone[i]), first), 0.0f);
    next[i] = ArgMax(first);
  }
  for (int step = 0; step < 8; ++step) {
    DecodeBatch batch;
    for (int i = 0; i < batch_size; ++i) {
      const int position = static_cast<int>(prompts[i].size()) + step;
      ASSERT_TRUE(batched[i]->Reserve(position + 1).ok());
      ASSERT_TRUE(alone[i]->Reserve(position + 1).ok());
      batch.Add(next[i], position, *batched[i]);
    }
    auto logits = model_->DecodeStep(batch, *batched_cache);
    ASSERT_TRUE(logits.ok()) << logits.status();
    ASSERT_EQ(logits->size(), static_cast<size_t>(batch_size) * config_.vocab_size);
    for (int i = 0; i < batch_size; ++i) {
      SCOPED_TRACE(testing::Message() << "step " << step << " sequence " << i);
      DecodeBatch single;
      single.Add(next[i], static_cast<int>(prompts[i].size()) + step, *alone[i]);
      auto own = model_->DecodeStep(single, *alone_cache);
      ASSERT_TRUE(own.ok()) << own.status();
      const std::span<const float> row = std::span<const float>(*logits).subspan(
          static_cast<size_t>(i) * config_.vocab_size, config_.vocab_size);
      EXPECT_LT(MaxAbsDifference(row, *own), 1e-5f);
      next[i] = ArgMax(row);
    }
  }
}

// (f) Bad input is INVALID_ARGUMENT naming the field, and leaves the cache
// as it was.
TEST_F(TransformerTest, InvalidInputsAreRejected) {
  const auto invalid = absl::StatusCode::kInvalidArgument;
  auto empty = model_->Prefill({}, nullptr);
  EXPECT_EQ(empty.status().code(), invalid);
  EXPECT_NE(std::string(empty.status().message()).find("prompt"), std::string::npos);

  const std::vector<int32_t> too_long(config_.max_position_embeddings + 1, 5);
  auto long_status = model_->Prefill(too_long, nullptr).status();
  EXPECT_EQ(long_status.code(), invalid);
  EXPECT_NE(std::string(long_status.message()).find("max_position_embeddings"), std::string::npos);
  const std::vector<int32_t> longest(config_.max_position_embeddings, 5);
  EXPECT_TRUE(model_->Prefill(longest, nullptr).ok());

  for (int32_t bad : {config_.vocab_size, -1, 1 << 30}) {
    auto status = model_->Prefill(std::vector<int32_t>{1, 2, bad}, nullptr).status();
    EXPECT_EQ(status.code(), invalid) << bad;
    EXPECT_NE(std::string(status.message()).find("prompt[2]"), std::string::npos) << status;
  }
  EXPECT_EQ(model_->ComputeLogits(std::vector<float>(3), 1).status().code(), invalid);

  auto cache = MakeCache(8, 4);
  auto sequence = cache->Allocate(4);
  ASSERT_TRUE(sequence.ok());
  const int free_before = cache->num_free_blocks();
  DecodeBatch bad_token;
  bad_token.Add(config_.vocab_size, 3, **sequence);
  EXPECT_EQ(model_->DecodeStep(bad_token, *cache).status().code(), invalid);
  DecodeBatch mismatched;
  mismatched.Add(5, 3, **sequence);
  mismatched.positions.push_back(0);
  EXPECT_EQ(model_->DecodeStep(mismatched, *cache).status().code(), invalid);
  EXPECT_EQ(model_->DecodeStep(DecodeBatch{}, *cache).status().code(), invalid);
  EXPECT_EQ(cache->num_free_blocks(), free_before);
}

TEST_F(TransformerTest, SinkErrorAbortsPrefill) {
  int calls = 0;
  auto sink = [&calls](int layer, const DeviceBuffer&, const DeviceBuffer&, int) {
    ++calls;
    return layer == 2 ? absl::CancelledError("client went away") : absl::OkStatus();
  };
  auto result = model_->Prefill(golden_->at(0).prompt, sink);
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(calls, 3);
}

}  // namespace
}  // namespace pdserve
