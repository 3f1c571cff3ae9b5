#include "shared/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <random>
#include <string>
#include <vector>

namespace pdserve {
namespace {

std::vector<float> RandomLogits(std::mt19937& rng, int vocab, float scale = 3.0f) {
  std::normal_distribution<float> normal(0.0f, scale);
  std::vector<float> logits(vocab);
  for (float& x : logits) x = normal(rng);
  return logits;
}

int ArgMax(const std::vector<float>& logits) {
  return static_cast<int>(std::max_element(logits.begin(), logits.end()) - logits.begin());
}

// Empirical frequency of each token over `draws` samples.
std::vector<double> Frequencies(Sampler& sampler, const std::vector<float>& logits, int draws) {
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts[sampler.Sample(logits, {})];
  std::vector<double> frequency(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) frequency[i] = static_cast<double>(counts[i]) / draws;
  return frequency;
}

// softmax(logits / temperature), in double.
std::vector<double> Softmax(const std::vector<float>& logits, double temperature) {
  std::vector<double> p(logits.size());
  const double max_logit = *std::max_element(logits.begin(), logits.end());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i)
    sum += p[i] = std::exp((logits[i] - max_logit) / temperature);
  for (double& x : p) x /= sum;
  return p;
}

// Each frequency within 5 standard deviations of a binomial proportion.
void ExpectMatches(const std::vector<double>& frequency, const std::vector<double>& expected,
                   int draws) {
  ASSERT_EQ(frequency.size(), expected.size());
  for (size_t i = 0; i < expected.size(); ++i) {
    const double sigma = std::sqrt(expected[i] * (1 - expected[i]) / draws);
    EXPECT_NEAR(frequency[i], expected[i], 5 * sigma + 1e-12) << "token " << i;
  }
}

TEST(ValidateSamplingParamsTest, AcceptsDefaultsAndNamesEachBadField) {
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{}).ok());
  EXPECT_TRUE(ValidateSamplingParams(SamplingParams{0.7f, 50, 0.9f, 1.1f, 7}).ok());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  struct Case {
    SamplingParams params;
    std::string field;
  };
  const std::vector<Case> cases = {
      {{-0.1f, 0, 1.0f, 1.0f, 0}, "temperature"},
      {{nan, 0, 1.0f, 1.0f, 0}, "temperature"},
      {{inf, 0, 1.0f, 1.0f, 0}, "temperature"},
      {{1.0f, -1, 1.0f, 1.0f, 0}, "top_k"},
      {{1.0f, 0, 0.0f, 1.0f, 0}, "top_p"},
      {{1.0f, 0, 1.01f, 1.0f, 0}, "top_p"},
      {{1.0f, 0, nan, 1.0f, 0}, "top_p"},
      {{1.0f, 0, -0.5f, 1.0f, 0}, "top_p"},
      {{1.0f, 0, 1.0f, 0.0f, 0}, "repetition_penalty"},
      {{1.0f, 0, 1.0f, -1.0f, 0}, "repetition_penalty"},
      {{1.0f, 0, 1.0f, nan, 0}, "repetition_penalty"},
      {{1.0f, 0, 1.0f, inf, 0}, "repetition_penalty"},
  };
  for (const Case& c : cases) {
    const absl::Status status = ValidateSamplingParams(c.params);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(std::string(status.message()).find(c.field), std::string::npos) << status;
  }
}

TEST(SamplerTest, GreedyIsArgmaxWithLowestIdOnTies) {
  std::mt19937 rng(1);
  Sampler greedy(SamplingParams{});
  for (int trial = 0; trial < 100; ++trial) {
    const std::vector<float> logits = RandomLogits(rng, 1 + trial * 7);
    EXPECT_EQ(greedy.Sample(logits, {}), ArgMax(logits));
  }
  EXPECT_EQ(greedy.Sample(std::vector<float>{0.5f, 2.0f, -1.0f, 2.0f}, {}), 1);
}

TEST(SamplerTest, TopKOneIsGreedyAtAnyTemperature) {
  std::mt19937 rng(2);
  Sampler top1(SamplingParams{1.5f, 1, 1.0f, 1.0f, 99});
  for (int trial = 0; trial < 200; ++trial) {
    const std::vector<float> logits = RandomLogits(rng, 512, 0.5f);
    EXPECT_EQ(top1.Sample(logits, {}), ArgMax(logits));
  }
}

TEST(SamplerTest, SameSeedSameTokensDifferentSeedDifferentTokens) {
  std::mt19937 rng(3);
  const SamplingParams params{1.0f, 0, 0.95f, 1.0f, 1234};
  SamplingParams other = params;
  other.seed = 1235;
  Sampler a(params), b(params), c(other);
  int same_as_other = 0;
  const int draws = 400;
  for (int i = 0; i < draws; ++i) {
    // Near-flat logits over 512 tokens: two independent streams agree with
    // probability about 1/400 per draw.
    const std::vector<float> logits = RandomLogits(rng, 512, 0.3f);
    const int32_t token = a.Sample(logits, {});
    EXPECT_EQ(b.Sample(logits, {}), token) << "draw " << i;
    same_as_other += c.Sample(logits, {}) == token;
  }
  EXPECT_LT(same_as_other, draws / 20);
}

TEST(SamplerTest, TemperatureScalesTheDistribution) {
  const std::vector<float> logits = {1.0f, 0.0f, -0.5f, 2.0f, 0.5f};
  const int draws = 40000;
  for (float temperature : {1.0f, 0.5f, 2.0f}) {
    SCOPED_TRACE(temperature);
    Sampler sampler(SamplingParams{temperature, 0, 1.0f, 1.0f, 5});
    ExpectMatches(Frequencies(sampler, logits, draws), Softmax(logits, temperature), draws);
  }
}

TEST(SamplerTest, TopKRestrictsAndRenormalises) {
  const std::vector<float> logits = {1.0f, 0.0f, -0.5f, 2.0f, 0.5f, 1.5f};
  const int draws = 40000;
  Sampler sampler(SamplingParams{1.0f, 3, 1.0f, 1.0f, 6});
  // The three largest: ids 3 (2.0), 5 (1.5), 0 (1.0).
  std::vector<double> expected(logits.size(), 0.0);
  const double z = std::exp(2.0) + std::exp(1.5) + std::exp(1.0);
  expected[3] = std::exp(2.0) / z;
  expected[5] = std::exp(1.5) / z;
  expected[0] = std::exp(1.0) / z;
  const std::vector<double> frequency = Frequencies(sampler, logits, draws);
  EXPECT_EQ(frequency[1] + frequency[2] + frequency[4], 0.0);
  ExpectMatches(frequency, expected, draws);
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleusAndRenormalises) {
  // Probabilities 0.40, 0.25, 0.15, 0.10, 0.06, 0.04 placed at shuffled ids.
  const std::vector<double> probabilities = {0.40, 0.25, 0.15, 0.10, 0.06, 0.04};
  const std::vector<int> ids = {4, 0, 5, 2, 1, 3};
  std::vector<float> logits(6);
  for (int i = 0; i < 6; ++i) logits[ids[i]] = static_cast<float>(std::log(probabilities[i]));
  const int draws = 40000;
  struct Case {
    float top_p;
    int nucleus;  // the smallest prefix whose mass reaches top_p
  };
  for (const Case& c : {Case{0.7f, 3}, Case{0.3f, 1}, Case{0.65f, 2}, Case{0.66f, 3},
                        Case{0.95f, 5}, Case{1.0f, 6}}) {
    SCOPED_TRACE(c.top_p);
    Sampler sampler(SamplingParams{1.0f, 0, c.top_p, 1.0f, 8});
    double mass = 0;
    for (int i = 0; i < c.nucleus; ++i) mass += probabilities[i];
    std::vector<double> expected(6, 0.0);
    for (int i = 0; i < c.nucleus; ++i) expected[ids[i]] = probabilities[i] / mass;
    const std::vector<double> frequency = Frequencies(sampler, logits, draws);
    for (int i = c.nucleus; i < 6; ++i) EXPECT_EQ(frequency[ids[i]], 0.0) << "id " << ids[i];
    ExpectMatches(frequency, expected, draws);
  }
}

TEST(SamplerTest, TopPOverALargeVocabularyMatchesTheNucleus) {
  // A vocabulary of 32000 with a nucleus of hundreds of tokens: the
  // selection has to recurse on both sides of several pivots.
  std::mt19937 rng(9);
  const std::vector<float> logits = RandomLogits(rng, 32000, 2.0f);
  const std::vector<double> p = Softmax(logits, 1.0);
  std::vector<int> order(p.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
  std::sort(order.begin(), order.end(), [&](int a, int b) { return p[a] > p[b]; });
  std::vector<bool> in_nucleus(p.size(), false);
  double mass = 0;
  size_t size = 0;
  while (mass < 0.5) {
    in_nucleus[order[size]] = true;
    mass += p[order[size++]];
  }
  ASSERT_GT(size, 64u);
  Sampler sampler(SamplingParams{1.0f, 0, 0.5f, 1.0f, 10});
  double in_top_half = 0;  // the nucleus' more likely half by mass
  std::vector<bool> top_half(p.size(), false);
  for (double half = 0, i = 0; half < mass / 2; ++i) {
    top_half[order[static_cast<size_t>(i)]] = true;
    half += p[order[static_cast<size_t>(i)]];
  }
  const int draws = 2000;
  for (int i = 0; i < draws; ++i) {
    const int32_t token = sampler.Sample(logits, {});
    ASSERT_TRUE(in_nucleus[token]) << "token " << token << " outside the nucleus of " << size;
    in_top_half += top_half[token];
  }
  EXPECT_NEAR(in_top_half / draws, 0.5, 0.05);
}

TEST(SamplerTest, RepetitionPenaltyDividesPositiveAndMultipliesNegativeOnce) {
  Sampler penalise(SamplingParams{0.0f, 0, 1.0f, 2.0f, 0});
  // Positive: 2.0 / 2 = 1.0 < 1.5.
  EXPECT_EQ(penalise.Sample(std::vector<float>{2.0f, 1.5f}, std::vector<int32_t>{0}), 1);
  // Negative: -1.0 * 2 = -2.0 < -1.5 (dividing would have raised it).
  EXPECT_EQ(penalise.Sample(std::vector<float>{-1.0f, -1.5f}, std::vector<int32_t>{0}), 1);
  // Without history nothing changes.
  EXPECT_EQ(penalise.Sample(std::vector<float>{2.0f, 1.5f}, {}), 0);
  // Ids outside the vocabulary are ignored.
  EXPECT_EQ(penalise.Sample(std::vector<float>{2.0f, 1.5f}, std::vector<int32_t>{-1, 7}), 0);

  // Repeated ids are penalised once: 2.0 / 1.2 = 1.67 > 1.5 (thrice: 1.16).
  Sampler mild(SamplingParams{0.0f, 0, 1.0f, 1.2f, 0});
  EXPECT_EQ(mild.Sample(std::vector<float>{2.0f, 1.5f}, std::vector<int32_t>{0, 0, 0}), 0);

  // A penalty below 1 favours seen tokens: 1.5 / 0.5 = 3.0 > 2.0.
  Sampler favour(SamplingParams{0.0f, 0, 1.0f, 0.5f, 0});
  EXPECT_EQ(favour.Sample(std::vector<float>{1.5f, 2.0f}, std::vector<int32_t>{0}), 0);
}

TEST(SamplerTest, RepetitionPenaltyAppliesBeforeSampling) {
  // Token 0 seen: its logit ln 4 becomes ln 4 / ln 4 = 1 with penalty ln 4,
  // so the distribution over {0, 1} with logits {1, 0} is (e/(e+1), 1/(e+1)).
  const float penalty = static_cast<float>(std::log(4.0));
  Sampler sampler(SamplingParams{1.0f, 0, 1.0f, penalty, 11});
  const std::vector<float> logits = {static_cast<float>(std::log(4.0)), 0.0f};
  const int draws = 40000;
  int zeros = 0;
  for (int i = 0; i < draws; ++i) zeros += sampler.Sample(logits, std::vector<int32_t>{0}) == 0;
  const double e = std::exp(1.0);
  ExpectMatches({static_cast<double>(zeros) / draws, static_cast<double>(draws - zeros) / draws},
                {e / (e + 1), 1 / (e + 1)}, draws);
}

}  // namespace
}  // namespace pdserve
