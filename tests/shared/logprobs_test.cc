#include "shared/logprobs.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace pdserve {
namespace {

constexpr int kPhi3Vocab = 32064;

std::vector<float> RandomLogits(int vocab, uint64_t seed, float scale) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> logits(vocab);
  for (float& x : logits) x = normal(rng);
  return logits;
}

std::vector<float> LogSoftmaxOf(const std::vector<float>& logits) {
  std::vector<float> out(logits.size());
  LogSoftmax(logits, out);
  return out;
}

// Reference: the textbook definition in long double, no max shift (the
// logits used with it are small enough that exp cannot overflow).
std::vector<long double> NaiveLogSoftmax(const std::vector<float>& logits) {
  long double sum = 0;
  for (float x : logits) sum += std::exp(static_cast<long double>(x));
  std::vector<long double> out;
  for (float x : logits) out.push_back(std::log(std::exp(static_cast<long double>(x)) / sum));
  return out;
}

double ExpSum(const std::vector<float>& logprobs) {
  double sum = 0;
  for (float y : logprobs) sum += std::exp(static_cast<double>(y));
  return sum;
}

TEST(LogSoftmaxTest, MatchesNaiveReferenceOnPhi3SizedVocab) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    const std::vector<float> logits = RandomLogits(kPhi3Vocab, seed, 3.0f);
    const std::vector<float> got = LogSoftmaxOf(logits);
    const std::vector<long double> want = NaiveLogSoftmax(logits);
    for (int i = 0; i < kPhi3Vocab; ++i) {
      // float32 output of a value around -10: ~1e-6 relative rounding.
      ASSERT_NEAR(got[i], static_cast<double>(want[i]), 1e-5) << "seed " << seed << " id " << i;
    }
  }
}

TEST(LogSoftmaxTest, ExpSumsToOne) {
  for (float scale : {0.1f, 1.0f, 5.0f, 30.0f}) {
    const std::vector<float> logprobs = LogSoftmaxOf(RandomLogits(kPhi3Vocab, 7, scale));
    EXPECT_NEAR(ExpSum(logprobs), 1.0, 1e-6) << "scale " << scale;
    for (float y : logprobs) ASSERT_LE(y, 0.0f);
  }
}

TEST(LogSoftmaxTest, StableForHugeLogitsAndShiftInvariant) {
  const std::vector<float> logits = RandomLogits(1000, 11, 2.0f);
  std::vector<float> shifted = logits;
  for (float& x : shifted) x += 5.0e4f;  // exp(5e4) overflows even double
  const std::vector<float> base = LogSoftmaxOf(logits);
  const std::vector<float> moved = LogSoftmaxOf(shifted);
  // Adding 5e4 in float32 rounds each logit by up to ulp(5e4)/2 = 2e-3.
  for (size_t i = 0; i < logits.size(); ++i) {
    ASSERT_TRUE(std::isfinite(moved[i])) << i;
    ASSERT_NEAR(moved[i], base[i], 5e-3) << i;
  }
  EXPECT_NEAR(ExpSum(moved), 1.0, 1e-5);
}

TEST(LogSoftmaxTest, ChosenPlusRestSumsToOne) {
  const std::vector<float> logprobs = LogSoftmaxOf(RandomLogits(kPhi3Vocab, 5, 4.0f));
  for (int chosen : {0, 17, 31999, kPhi3Vocab - 1}) {
    double rest = 0;
    for (int i = 0; i < kPhi3Vocab; ++i) {
      if (i != chosen) rest += std::exp(static_cast<double>(logprobs[i]));
    }
    // The chosen token's probability plus everything else: 1.
    EXPECT_NEAR(std::exp(static_cast<double>(logprobs[chosen])) + rest, 1.0, 1e-4) << chosen;
    // And the top-20 mass can never exceed it.
    double top_mass = 0;
    for (const TokenLogprob& t : TopLogprobs(logprobs, kMaxTopLogprobs)) {
      top_mass += std::exp(static_cast<double>(t.logprob));
    }
    EXPECT_LE(top_mass, 1.0 + 1e-6);
  }
}

TEST(LogSoftmaxTest, KnownSmallValues) {
  // Two equal logits: log(1/2) each; [0, ln 3]: log(1/4), log(3/4).
  EXPECT_NEAR(LogSoftmaxOf({2.5f, 2.5f})[0], std::log(0.5), 1e-7);
  const std::vector<float> y = LogSoftmaxOf({0.0f, static_cast<float>(std::log(3.0))});
  EXPECT_NEAR(y[0], std::log(0.25), 1e-6);
  EXPECT_NEAR(y[1], std::log(0.75), 1e-6);
  EXPECT_EQ(LogSoftmaxOf({42.0f})[0], 0.0f);
}

TEST(LogSoftmaxTest, MaskedTokensGetMinusInfinity) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> y = LogSoftmaxOf({1.0f, -inf, 1.0f, -inf});
  EXPECT_EQ(y[1], -inf);
  EXPECT_EQ(y[3], -inf);
  EXPECT_NEAR(y[0], std::log(0.5), 1e-7);
  EXPECT_NEAR(y[2], std::log(0.5), 1e-7);
}

TEST(LogSoftmaxTest, NoFiniteMaximumGivesNaN) {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (const std::vector<float>& logits :
       {std::vector<float>{-inf, -inf}, std::vector<float>{1.0f, inf},
        std::vector<float>{1.0f, nan}}) {
    for (float y : LogSoftmaxOf(logits)) EXPECT_TRUE(std::isnan(y));
  }
}

TEST(LogSoftmaxTest, InPlace) {
  std::vector<float> logits = RandomLogits(500, 9, 1.0f);
  const std::vector<float> expected = LogSoftmaxOf(logits);
  LogSoftmax(logits, logits);
  EXPECT_EQ(logits, expected);
}

TEST(LogSoftmaxDeathTest, SizeMismatchAborts) {
  std::vector<float> logits(4, 0.0f), out(3);
  EXPECT_DEATH(LogSoftmax(logits, out), "logits has 4 entries but out has 3");
}

// Reference top-N: sort every index by (logprob desc, id asc).
std::vector<TokenLogprob> SortedTop(const std::vector<float>& logprobs, int n) {
  std::vector<int32_t> ids(logprobs.size());
  std::iota(ids.begin(), ids.end(), 0);
  std::stable_sort(ids.begin(), ids.end(),
                   [&](int32_t a, int32_t b) { return logprobs[a] > logprobs[b]; });
  std::vector<TokenLogprob> out;
  for (int i = 0; i < n && i < static_cast<int>(ids.size()); ++i) {
    out.push_back({ids[i], logprobs[ids[i]]});
  }
  return out;
}

TEST(TopLogprobsTest, MatchesFullSortOnRandomLogits) {
  for (uint64_t seed : {21u, 22u, 23u, 24u}) {
    const std::vector<float> logprobs = LogSoftmaxOf(RandomLogits(kPhi3Vocab, seed, 2.0f));
    for (int n : {1, 2, 5, 20}) {
      EXPECT_EQ(TopLogprobs(logprobs, n), SortedTop(logprobs, n)) << "seed " << seed << " n " << n;
    }
  }
}

TEST(TopLogprobsTest, SortedDescendingWithTiesByLowerId) {
  // Heavy ties: only four distinct values.
  std::vector<float> logprobs;
  for (int i = 0; i < 64; ++i) logprobs.push_back(-static_cast<float>((i * 7) % 4));
  const std::vector<TokenLogprob> top = TopLogprobs(logprobs, 20);
  ASSERT_EQ(top.size(), 20u);
  EXPECT_EQ(top, SortedTop(logprobs, 20));
  for (size_t i = 1; i < top.size(); ++i) {
    ASSERT_TRUE(top[i - 1].logprob > top[i].logprob ||
                (top[i - 1].logprob == top[i].logprob && top[i - 1].id < top[i].id))
        << i;
  }
  // Value 0 is at ids 0, 4, 8, ...: the first 16 entries, in id order.
  EXPECT_EQ(top[0].id, 0);
  EXPECT_EQ(top[1].id, 4);
  EXPECT_EQ(top[15].id, 60);
  EXPECT_EQ(top[16].logprob, -1.0f);
}

TEST(TopLogprobsTest, SmallVocabEdgeCasesAndNaN) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> logprobs = {-2.0f, nan, -0.5f, -inf};
  EXPECT_TRUE(TopLogprobs(logprobs, 0).empty());
  EXPECT_TRUE(TopLogprobs(logprobs, -3).empty());
  EXPECT_TRUE(TopLogprobs({}, 5).empty());
  const std::vector<TokenLogprob> all = TopLogprobs(logprobs, 20);
  const std::vector<TokenLogprob> want = {{2, -0.5f}, {0, -2.0f}, {3, -inf}};
  EXPECT_EQ(all, want);  // the NaN entry is left out
}

}  // namespace
}  // namespace pdserve
