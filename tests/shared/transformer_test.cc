// The Transformer on the CPU backend against the independent float64
// reference (tests/reference/reference_forward.py, golden files in
// tests/data/golden/stories260K_*), and against itself: prefill + paged
// decode must equal recomputing the whole sequence, and a batch must equal
// its sequences run alone.
#include "shared/transformer.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "kernels/cpu/cpu_backend.h"
#include "shared/kv_cache.h"
#include "shared/model_config.h"
#include "shared/model_weights.h"
#include "shared/tokenizer.h"
#include "tests/testing/golden_forward.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

float MaxAbsDifference(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  float worst = 0.0f;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    const float d = std::fabs(a[i] - b[i]);
    worst = std::isnan(d) ? INFINITY : std::max(worst, d);
  }
  return worst;
}

// max_i |a_i - b_i| / max(1, |b_i|): float32 rounding grows with the
// magnitude (K reaches ~30 in stories260K, where one ulp is 2e-6).
float MaxScaledDifference(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  float worst = 0.0f;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    const float d = std::fabs(a[i] - b[i]) / std::max(1.0f, std::fabs(b[i]));
    worst = std::isnan(d) ? INFINITY : std::max(worst, d);
  }
  return worst;
}

int32_t ArgMax(std::span<const float> logits) {
  return static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

class TransformerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<std::vector<GoldenForwardCase>> golden = LoadGoldenForwardCases();
    EXPECT_TRUE(golden.ok()) << golden.status();
    golden_ = new std::vector<GoldenForwardCase>(golden.ok() ? *std::move(golden)
                                                             : std::vector<GoldenForwardCase>());
  }
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

  static std::vector<GoldenForwardCase>* golden_;
  std::unique_ptr<Backend> backend_ = CreateCpuBackend();
  ModelConfig config_;
  ModelWeights weights_;
  std::unique_ptr<Transformer> model_;
};

std::vector<GoldenForwardCase>* TransformerTest::golden_ = nullptr;

// (a) Every prompt position: the last-position logits of each prefix.
TEST_F(TransformerTest, LogitsOfEveryPromptPositionMatchTheReference) {
  for (const GoldenForwardCase& c : *golden_) {
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
  for (const GoldenForwardCase& c : *golden_) {
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
  const GoldenForwardCase& c = golden_->at(0);
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
    for (const GoldenForwardCase& c : *golden_) {
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
  const GoldenForwardCase& once = golden_->at(0);
  const GoldenForwardCase& random = golden_->at(1);
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
    // The same step again (it rewrites the same K/V) asking for some rows'
    // logits only: those rows come back packed, and every row's argmax is
    // the greedy pick of its full logits.
    DecodeStepOptions options;
    options.want_logits.resize(batch_size);
    for (int i = 0; i < batch_size; ++i) options.want_logits[i] = (i + step) % 3 == 0;
    options.top_candidates = step % 2 == 0 ? 0 : 1 + step * 9;  // 0, 10, 0, 28, ...
    auto partial = model_->DecodeStep(batch, *batched_cache, options);
    ASSERT_TRUE(partial.ok()) << partial.status();
    ASSERT_EQ(partial->argmax.size(), static_cast<size_t>(batch_size));
    const size_t k = static_cast<size_t>(options.top_candidates);
    ASSERT_EQ(partial->candidate_values.size(), batch_size * k);
    ASSERT_EQ(partial->candidate_ids.size(), batch_size * k);
    size_t packed = 0;
    for (int i = 0; i < batch_size; ++i) {
      const std::span<const float> row = std::span<const float>(*logits).subspan(
          static_cast<size_t>(i) * config_.vocab_size, config_.vocab_size);
      EXPECT_EQ(partial->argmax[i], ArgMax(row)) << "step " << step << " sequence " << i;
      // The k largest logits of the full row, by a full sort here.
      std::vector<int32_t> order(row.size());
      for (size_t j = 0; j < order.size(); ++j) order[j] = static_cast<int32_t>(j);
      std::stable_sort(order.begin(), order.end(),
                       [&row](int32_t a, int32_t b) { return row[a] > row[b]; });
      for (size_t j = 0; j < k; ++j) {
        EXPECT_EQ(partial->candidate_ids[i * k + j], order[j]) << "sequence " << i << " rank " << j;
        EXPECT_EQ(partial->candidate_values[i * k + j], row[order[j]]);
      }
      if (!options.want_logits[i]) continue;
      ASSERT_LE((packed + 1) * config_.vocab_size, partial->logits.size());
      EXPECT_EQ(MaxAbsDifference(std::span<const float>(partial->logits)
                                     .subspan(packed * config_.vocab_size, config_.vocab_size),
                                 row),
                0.0f);
      ++packed;
    }
    EXPECT_EQ(partial->logits.size(), packed * config_.vocab_size);
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
  DecodeBatch one;
  one.Add(5, 3, **sequence);
  DecodeStepOptions two_rows;
  two_rows.want_logits = {true, false};
  const absl::Status wrong_size = model_->DecodeStep(one, *cache, two_rows).status();
  EXPECT_EQ(wrong_size.code(), invalid);
  EXPECT_NE(std::string(wrong_size.message()).find("want_logits"), std::string::npos);
  for (int k : {-1, Backend::kMaxTopKRows + 1}) {
    DecodeStepOptions bad_k;
    bad_k.want_logits = {false};
    bad_k.top_candidates = k;
    const absl::Status status = model_->DecodeStep(one, *cache, bad_k).status();
    EXPECT_EQ(status.code(), invalid) << k;
    EXPECT_NE(std::string(status.message()).find("top_candidates"), std::string::npos) << status;
  }
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

// ---- batched and chunked prefill ----------------------------------------------

// What PrefillBatch hands one prompt, collected on the host.
struct Collected {
  int num_tokens = 0;
  std::vector<std::vector<float>> k, v;       // [layer] -> [n, kv_width]
  std::vector<int> kv_seen;                   // [layer * n + token]: times delivered
  std::vector<std::pair<int, int>> kv_calls;  // (first_token, num_tokens) of layer 0's calls
  std::map<int, std::vector<float>> hidden;   // layer -> [n, hidden]
  std::map<int, std::vector<int>> hidden_seen;
  absl::StatusOr<std::vector<float>> final_hidden = absl::UnknownError("not done");
  int done_calls = 0;
};

class BatchedPrefillTest : public TransformerTest {
 protected:
  // A PrefillSequence whose sinks fill `out`.
  PrefillSequence Collect(std::span<const int32_t> prompt, Collected& out,
                          PrefillCapture capture = {}) {
    const int n = static_cast<int>(prompt.size());
    const int kv_width = config_.num_kv_heads * config_.head_dim;
    const int hidden = config_.hidden_size;
    out.num_tokens = n;
    out.k.assign(config_.num_layers, std::vector<float>(static_cast<size_t>(n) * kv_width, NAN));
    out.v = out.k;
    out.kv_seen.assign(static_cast<size_t>(config_.num_layers) * n, 0);
    PrefillSequence sequence;
    sequence.tokens = prompt;
    sequence.capture = std::move(capture);
    sequence.kv_sink = [this, &out, n, kv_width](int layer, const DeviceBuffer& k,
                                                 const DeviceBuffer& v, int first,
                                                 int count) -> absl::Status {
      const size_t offset = static_cast<size_t>(first) * kv_width;
      const size_t elements = static_cast<size_t>(count) * kv_width;
      absl::Status status =
          backend_->CopyToHost(k, offset, elements, out.k[layer].data() + offset, DType::kF32);
      if (status.ok()) {
        status =
            backend_->CopyToHost(v, offset, elements, out.v[layer].data() + offset, DType::kF32);
      }
      for (int t = first; t < first + count; ++t) ++out.kv_seen[static_cast<size_t>(layer) * n + t];
      if (layer == 0) out.kv_calls.emplace_back(first, count);
      return status;
    };
    sequence.hidden_sink = [&out, n, hidden](int layer, int first, int count,
                                             std::span<const float> values) -> absl::Status {
      std::vector<float>& rows = out.hidden[layer];
      std::vector<int>& seen = out.hidden_seen[layer];
      rows.resize(static_cast<size_t>(n) * hidden, NAN);
      seen.resize(n, 0);
      EXPECT_EQ(values.size(), static_cast<size_t>(count) * hidden);
      std::copy(values.begin(), values.end(), rows.begin() + static_cast<size_t>(first) * hidden);
      for (int t = first; t < first + count; ++t) ++seen[t];
      return absl::OkStatus();
    };
    sequence.done = [&out](const absl::StatusOr<std::vector<float>>& result) {
      ++out.done_calls;
      out.final_hidden = result;
    };
    return sequence;
  }

  // Runs `prompts` as one batch; returns the forward steps it took.
  int RunBatch(const std::vector<std::vector<int32_t>>& prompts, std::vector<Collected>& out,
               int chunk_tokens, const std::vector<PrefillCapture>& captures = {}) {
    out.assign(prompts.size(), Collected());
    std::vector<PrefillSequence> sequences;
    for (size_t i = 0; i < prompts.size(); ++i) {
      sequences.push_back(
          Collect(prompts[i], out[i], i < captures.size() ? captures[i] : PrefillCapture()));
    }
    PrefillBatchOptions options;
    options.chunk_tokens = chunk_tokens;
    PrefillBatchResult result = model_->PrefillBatch(sequences, options);
    EXPECT_EQ(result.final_hidden.size(), prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      EXPECT_EQ(out[i].done_calls, 1) << "prompt " << i;
      EXPECT_EQ(result.final_hidden[i].ok(), out[i].final_hidden.ok());
    }
    return result.forward_steps;
  }

  // Every (layer, token) came exactly once, and equals `alone` within 1e-5.
  void ExpectSameKvAndHidden(const Collected& got, const Collected& alone) {
    ASSERT_TRUE(got.final_hidden.ok()) << got.final_hidden.status();
    ASSERT_TRUE(alone.final_hidden.ok()) << alone.final_hidden.status();
    EXPECT_LT(MaxAbsDifference(*got.final_hidden, *alone.final_hidden), 1e-5f);
    EXPECT_EQ(std::count(got.kv_seen.begin(), got.kv_seen.end(), 1),
              static_cast<std::ptrdiff_t>(got.kv_seen.size()));
    for (int layer = 0; layer < config_.num_layers; ++layer) {
      SCOPED_TRACE(testing::Message() << "layer " << layer);
      EXPECT_LT(MaxScaledDifference(got.k[layer], alone.k[layer]), 1e-5f);
      EXPECT_LT(MaxScaledDifference(got.v[layer], alone.v[layer]), 1e-5f);
    }
  }

  std::vector<std::vector<int32_t>> ThreePrompts() const {
    const std::vector<int32_t>& random = golden_->at(1).prompt;
    return {golden_->at(0).prompt, random,
            std::vector<int32_t>(random.begin(), random.begin() + 17)};
  }
};

// Three prompts of 5, 40 and 17 tokens in one forward step, and again in
// 16-token steps (pieces of several prompts share a step and prompts span
// steps): each gets the KV and final hidden state it gets alone.
TEST_F(BatchedPrefillTest, EachPromptOfABatchGetsWhatItGetsAlone) {
  const std::vector<std::vector<int32_t>> prompts = ThreePrompts();
  std::vector<Collected> alone(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::vector<Collected> one;
    EXPECT_EQ(RunBatch({prompts[i]}, one, 0), 1);
    alone[i] = std::move(one[0]);
    ASSERT_TRUE(alone[i].final_hidden.ok());
    EXPECT_EQ(alone[i].kv_calls, (std::vector<std::pair<int, int>>{{0, alone[i].num_tokens}}));
  }
  // Alone is the old single-prompt path: the reference's final hidden state.
  EXPECT_LT(MaxAbsDifference(*alone[0].final_hidden, golden_->at(0).final_hidden_last), 1e-4f);
  EXPECT_LT(MaxAbsDifference(*alone[1].final_hidden, golden_->at(1).final_hidden_last), 1e-4f);

  for (int chunk_tokens : {0, 16}) {
    SCOPED_TRACE(testing::Message() << "chunk_tokens " << chunk_tokens);
    std::vector<Collected> batched;
    const int steps = RunBatch(prompts, batched, chunk_tokens);
    EXPECT_EQ(steps, chunk_tokens == 0 ? 1 : (5 + 40 + 17 + 15) / 16);
    for (size_t i = 0; i < prompts.size(); ++i) {
      SCOPED_TRACE(testing::Message() << "prompt " << i);
      ExpectSameKvAndHidden(batched[i], alone[i]);
    }
  }
}

// One prompt in chunks of 1, 3 and 16 tokens equals it in one step; each
// chunk's KV comes as its own range.
TEST_F(BatchedPrefillTest, ChunkedPrefillEqualsUnchunked) {
  const std::vector<int32_t>& prompt = golden_->at(1).prompt;  // 40 tokens
  std::vector<Collected> whole;
  ASSERT_EQ(RunBatch({prompt}, whole, 0), 1);
  for (int chunk_tokens : {1, 3, 16}) {
    SCOPED_TRACE(testing::Message() << "chunk_tokens " << chunk_tokens);
    std::vector<Collected> chunked;
    EXPECT_EQ(RunBatch({prompt}, chunked, chunk_tokens), (40 + chunk_tokens - 1) / chunk_tokens);
    ExpectSameKvAndHidden(chunked[0], whole[0]);
    std::vector<std::pair<int, int>> expected_calls;
    for (int first = 0; first < 40; first += chunk_tokens) {
      expected_calls.emplace_back(first, std::min(chunk_tokens, 40 - first));
    }
    EXPECT_EQ(chunked[0].kv_calls, expected_calls);
    EXPECT_LT(MaxAbsDifference(*chunked[0].final_hidden, golden_->at(1).final_hidden_last), 1e-4f);
  }
}

// Hidden states after every layer and the final norm of every position, as
// the float64 reference computed them (tests/data/golden/
// stories260K_hidden_states.json), alone, chunked and batched alike.
TEST_F(BatchedPrefillTest, CapturedHiddenStatesMatchTheReference) {
  std::ifstream file(TestDataDir() + "/golden/stories260K_hidden_states.json");
  ASSERT_TRUE(file.good());
  const nlohmann::json golden = nlohmann::json::parse(file);
  const std::vector<int32_t> prompt = golden["prompt"].get<std::vector<int32_t>>();
  ASSERT_EQ(prompt, golden_->at(0).prompt);
  auto flatten = [](const nlohmann::json& rows) {
    std::vector<float> out;
    for (const nlohmann::json& row : rows) {
      for (double value : row.get<std::vector<double>>()) out.push_back(static_cast<float>(value));
    }
    return out;
  };
  PrefillCapture capture;
  capture.all_positions = true;
  capture.hidden_state_layers = {4, -1, 0, 1, 2, 3};
  for (int chunk_tokens : {0, 2}) {
    for (bool with_other : {false, true}) {
      SCOPED_TRACE(testing::Message()
                   << "chunk_tokens " << chunk_tokens << " batched " << with_other);
      std::vector<std::vector<int32_t>> prompts = {prompt};
      if (with_other) prompts.insert(prompts.begin(), golden_->at(1).prompt);
      std::vector<Collected> out;
      std::vector<PrefillCapture> captures(prompts.size());
      captures.back() = capture;
      RunBatch(prompts, out, chunk_tokens, captures);
      const Collected& got = out.back();
      ASSERT_TRUE(got.final_hidden.ok()) << got.final_hidden.status();
      ASSERT_EQ(got.hidden.size(), 7u);  // -1..4 and the final norm (5)
      for (int layer = -1; layer < config_.num_layers; ++layer) {
        SCOPED_TRACE(testing::Message() << "layer " << layer);
        ASSERT_EQ(got.hidden.count(layer), 1u);
        EXPECT_EQ(got.hidden_seen.at(layer), std::vector<int>(prompt.size(), 1));
        EXPECT_LT(MaxAbsDifference(got.hidden.at(layer),
                                   flatten(golden["layers"][std::to_string(layer)])),
                  1e-4f);
      }
      const int final_layer = Transformer::FinalNormLayer(config_);
      const std::vector<float>& final_norm = got.hidden.at(final_layer);
      EXPECT_LT(MaxAbsDifference(final_norm, flatten(golden["final_norm"])), 1e-4f);
      // The last row of the all-positions output is the final hidden state.
      EXPECT_EQ(MaxAbsDifference(std::span<const float>(final_norm).last(config_.hidden_size),
                                 *got.final_hidden),
                0.0f);
      if (with_other) EXPECT_TRUE(out[0].hidden.empty());  // nobody asked
    }
  }
}

// A prompt whose sink fails, one that is invalid and one with a bad
// capture end alone; the others get what they get alone, and the failed
// prompt takes no part in later steps.
TEST_F(BatchedPrefillTest, OnePromptFailingLeavesTheOthersAlone) {
  const std::vector<std::vector<int32_t>> prompts = ThreePrompts();
  std::vector<Collected> alone(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) {
    std::vector<Collected> one;
    RunBatch({prompts[i]}, one, 0);
    alone[i] = std::move(one[0]);
  }
  std::vector<Collected> out(prompts.size() + 2);
  std::vector<PrefillSequence> sequences;
  for (size_t i = 0; i < prompts.size(); ++i) sequences.push_back(Collect(prompts[i], out[i]));
  // The 40-token prompt fails at layer 2 of its first chunk.
  int failing_calls = 0;
  KvRangeSink collect = sequences[1].kv_sink;
  sequences[1].kv_sink = [&](int layer, const DeviceBuffer& k, const DeviceBuffer& v, int first,
                             int count) {
    ++failing_calls;
    if (layer == 2) return absl::CancelledError("client went away");
    return collect(layer, k, v, first, count);
  };
  const std::vector<int32_t> bad_ids = {1, 2, 512};
  sequences.push_back(Collect(bad_ids, out[3]));
  PrefillCapture bad_capture;
  bad_capture.hidden_state_layers = {0, 5};
  sequences.push_back(Collect(prompts[0], out[4], bad_capture));

  PrefillBatchOptions options;
  options.chunk_tokens = 16;
  PrefillBatchResult result = model_->PrefillBatch(sequences, options);
  EXPECT_EQ(result.final_hidden[1].status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(failing_calls, 3);  // layers 0, 1, 2 of its first chunk, then nothing
  EXPECT_EQ(result.final_hidden[3].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(result.final_hidden[3].status().message()),
              testing::HasSubstr("prompts[3][2]"));
  EXPECT_EQ(result.final_hidden[4].status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(result.final_hidden[4].status().message()),
              testing::HasSubstr("hidden_state_layers[1]: layer 5"));
  for (size_t i : {0u, 2u}) {
    SCOPED_TRACE(testing::Message() << "prompt " << i);
    EXPECT_EQ(out[i].done_calls, 1);
    ExpectSameKvAndHidden(out[i], alone[i]);
  }
  // Step 1: 5 tokens of prompt 0 and 11 of prompt 1 (which fails there);
  // then prompt 2's 17 tokens in 2 steps: 3 steps, not the 4 of 62 tokens.
  EXPECT_EQ(result.forward_steps, 3);
}

}  // namespace
}  // namespace pdserve
