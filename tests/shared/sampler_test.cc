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

TEST(ValidateSamplingParamsTest, MinPAndPresenceFrequencyRanges) {
  SamplingParams ok;
  ok.min_p = 1.0f;
  ok.presence_penalty = -2.0f;
  ok.frequency_penalty = 2.0f;
  EXPECT_TRUE(ValidateSamplingParams(ok).ok());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  struct Case {
    float min_p, presence, frequency;
    std::string field;
  };
  for (const Case& c :
       {Case{-0.01f, 0, 0, "sampling.min_p"}, Case{1.01f, 0, 0, "sampling.min_p"},
        Case{nan, 0, 0, "sampling.min_p"}, Case{0, 2.5f, 0, "sampling.presence_penalty"},
        Case{0, -2.01f, 0, "sampling.presence_penalty"},
        Case{0, nan, 0, "sampling.presence_penalty"},
        Case{0, 0, -3.0f, "sampling.frequency_penalty"},
        Case{0, 0, nan, "sampling.frequency_penalty"}}) {
    SamplingParams params;
    params.min_p = c.min_p;
    params.presence_penalty = c.presence;
    params.frequency_penalty = c.frequency;
    const absl::Status status = ValidateSamplingParams(params);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_NE(std::string(status.message()).find(c.field), std::string::npos) << status;
  }
}

SamplingParams Sampled(float temperature, uint64_t seed) {
  SamplingParams params;
  params.temperature = temperature;
  params.seed = seed;
  return params;
}

TEST(SamplerTest, MinPOneKeepsOnlyTheMostLikelyToken) {
  std::mt19937 rng(12);
  SamplingParams params = Sampled(1.0f, 13);
  params.min_p = 1.0f;  // p >= p_max: the argmax alone (continuous logits: no ties)
  Sampler sampler(params);
  for (int trial = 0; trial < 200; ++trial) {
    const std::vector<float> logits = RandomLogits(rng, 512, 0.5f);
    EXPECT_EQ(sampler.Sample(logits, {}), ArgMax(logits));
  }
}

TEST(SamplerTest, MinPZeroIsOffAndMidValuesCutRelativeToTheTop) {
  // Probabilities 0.5, 0.3, 0.15, 0.05 at ids 2, 0, 3, 1.
  const std::vector<double> p = {0.3, 0.05, 0.5, 0.15};
  std::vector<float> logits(p.size());
  for (size_t i = 0; i < p.size(); ++i) logits[i] = static_cast<float>(std::log(p[i]));
  const int draws = 40000;
  {
    SamplingParams params = Sampled(1.0f, 14);
    params.min_p = 0.0f;
    Sampler sampler(params);
    ExpectMatches(Frequencies(sampler, logits, draws), p, draws);
  }
  {
    // Threshold 0.25 * 0.5 = 0.125: id 1 (0.05) goes, the rest renormalise.
    SamplingParams params = Sampled(1.0f, 15);
    params.min_p = 0.25f;
    Sampler sampler(params);
    const std::vector<double> frequency = Frequencies(sampler, logits, draws);
    EXPECT_EQ(frequency[1], 0.0);
    ExpectMatches(frequency, {0.3 / 0.95, 0.0, 0.5 / 0.95, 0.15 / 0.95}, draws);
  }
  {
    // After temperature 2, p' is proportional to sqrt(p): ratios to the top
    // are sqrt(0.6) = 0.77, sqrt(0.1) = 0.32, sqrt(0.3) = 0.55. min_p 0.5
    // keeps ids 2, 0, 3 (it would drop id 3 without the temperature).
    SamplingParams params = Sampled(2.0f, 16);
    params.min_p = 0.5f;
    Sampler sampler(params);
    const double z = std::sqrt(0.3) + std::sqrt(0.5) + std::sqrt(0.15);
    const std::vector<double> frequency = Frequencies(sampler, logits, draws);
    EXPECT_EQ(frequency[1], 0.0);
    ExpectMatches(frequency, {std::sqrt(0.3) / z, 0.0, std::sqrt(0.5) / z, std::sqrt(0.15) / z},
                  draws);
  }
}

TEST(SamplerTest, PresenceAndFrequencyPenaltiesSubtractFromGeneratedTokensOnly) {
  const std::vector<float> logits = {0.2f, 1.0f, 0.9f, -0.3f, 0.4f, 0.7f};
  const std::vector<int32_t> prompt = {1, 4};           // never penalised by these two
  const std::vector<int32_t> generated = {2, 5, 2, 2};  // id 2 three times, id 5 once
  const float presence = 0.5f, frequency = 0.25f;
  // By hand: logit[2] = 0.9 - 0.5 - 3 * 0.25 = -0.35; logit[5] = 0.7 - 0.5 - 0.25 = -0.05.
  const std::vector<float> adjusted = {0.2f, 1.0f, -0.35f, -0.3f, 0.4f, -0.05f};
  SamplingParams params = Sampled(1.0f, 17);
  params.presence_penalty = presence;
  params.frequency_penalty = frequency;
  Sampler sampler(params);
  const int draws = 40000;
  std::vector<int> counts(logits.size(), 0);
  for (int i = 0; i < draws; ++i) ++counts[sampler.Sample(logits, prompt, generated)];
  std::vector<double> observed(counts.size());
  for (size_t i = 0; i < counts.size(); ++i) observed[i] = static_cast<double>(counts[i]) / draws;
  ExpectMatches(observed, Softmax(adjusted, 1.0), draws);

  // Greedy sees the same adjustment: id 1 wins until it is generated, then
  // id 2 (0.9) beats 1 - 0.5 - 0.25 = 0.25, then id 5 (0.7) beats
  // 0.9 - 0.75 = 0.15; ids only in the prompt are not penalised.
  SamplingParams greedy_params;
  greedy_params.presence_penalty = presence;
  greedy_params.frequency_penalty = frequency;
  Sampler greedy(greedy_params);
  EXPECT_EQ(greedy.Sample(logits, prompt, {}), 1);
  EXPECT_EQ(greedy.Sample(logits, prompt, std::vector<int32_t>{1}), 2);
  EXPECT_EQ(greedy.Sample(logits, prompt, std::vector<int32_t>{1, 2}), 5);
  EXPECT_EQ(greedy.Sample(logits, std::vector<int32_t>{1, 1, 1}, {}), 1);

  // Negative values favour repeats: presence -1 lifts id 3 from -0.3 to 0.7,
  // still below id 1; adding frequency -2 with two occurrences lifts it to 4.7.
  SamplingParams favour;
  favour.presence_penalty = -1.0f;
  Sampler favour_presence(favour);
  EXPECT_EQ(favour_presence.Sample(logits, {}, std::vector<int32_t>{3}), 1);
  favour.frequency_penalty = -2.0f;
  Sampler favour_frequency(favour);
  EXPECT_EQ(favour_frequency.Sample(logits, {}, std::vector<int32_t>{3, 3}), 3);
}

TEST(SamplerTest, TwoArgumentFormMatchesPromptOnlyHistory) {
  // The pre-existing form: the whole history feeds the repetition penalty,
  // exactly like passing it as the prompt.
  std::mt19937 rng(18);
  SamplingParams params = Sampled(0.8f, 19);
  params.repetition_penalty = 1.3f;
  params.presence_penalty = 1.0f;
  Sampler a(params), b(params);
  const std::vector<int32_t> history = {3, 9, 9, 27};
  for (int i = 0; i < 100; ++i) {
    const std::vector<float> logits = RandomLogits(rng, 64);
    EXPECT_EQ(a.Sample(logits, history), b.Sample(logits, history, {}));
  }
}

// A row's k largest logits as Backend::TopKRows gives them, computed here
// with a full sort: descending, ties to the smaller id, (-inf, -1) padding.
void TopCandidates(const std::vector<float>& logits, int k, std::vector<float>* values,
                   std::vector<int32_t>* ids) {
  std::vector<int32_t> order(logits.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int32_t>(i);
  std::sort(order.begin(), order.end(), [&logits](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  values->assign(k, -std::numeric_limits<float>::infinity());
  ids->assign(k, -1);
  for (int i = 0; i < k && i < static_cast<int>(order.size()); ++i) {
    (*values)[i] = logits[order[i]];
    (*ids)[i] = order[i];
  }
}

// Sampling from a backend's top candidates picks, draw for draw, the token
// the full row gives: same seed, same tokens, over top-k with top-p and
// min-p, ties in the logits, and candidate lists longer than top_k.
TEST(SamplerTest, TopCandidatesGiveTheFullRowsTokensDrawForDraw) {
  std::mt19937 rng(4242);
  for (const SamplingParams& base : {SamplingParams{0.7f, 1, 1.0f}, SamplingParams{1.0f, 5, 1.0f},
                                     SamplingParams{1.3f, 40, 0.9f}, SamplingParams{0.8f, 64, 0.5f},
                                     SamplingParams{1.0f, 20, 1.0f, 1.0f, 0, 0.2f}}) {
    for (int num_candidates : {base.top_k, 64}) {
      SamplingParams params = base;
      params.seed = 99;
      Sampler full(params);
      Sampler from_top(params);
      ASSERT_TRUE(from_top.CanSampleTopCandidates(num_candidates));
      for (int draw = 0; draw < 200; ++draw) {
        std::vector<float> logits = RandomLogits(rng, 1000);
        // Ties at the top-k boundary and among the kept tokens.
        for (int i = 0; i < 30; ++i) logits[(draw * 31 + i * 7) % 1000] = 2.5f;
        std::vector<float> values;
        std::vector<int32_t> ids;
        TopCandidates(logits, num_candidates, &values, &ids);
        ASSERT_EQ(from_top.SampleTopCandidates(values, ids), full.Sample(logits, {}))
            << "top_k " << params.top_k << " top_p " << params.top_p << " min_p " << params.min_p
            << " candidates " << num_candidates << " draw " << draw;
      }
    }
  }
}

TEST(SamplerTest, CanSampleTopCandidatesOnlyForPenaltyFreeTopK) {
  EXPECT_TRUE(Sampler(SamplingParams{1.0f, 40, 0.9f}).CanSampleTopCandidates(64));
  EXPECT_TRUE(Sampler(SamplingParams{1.0f, 64, 1.0f}).CanSampleTopCandidates(64));
  EXPECT_FALSE(Sampler(SamplingParams{1.0f, 65, 1.0f}).CanSampleTopCandidates(64));
  EXPECT_FALSE(Sampler(SamplingParams{1.0f, 0, 0.9f}).CanSampleTopCandidates(64));   // all tokens
  EXPECT_FALSE(Sampler(SamplingParams{0.0f, 40, 1.0f}).CanSampleTopCandidates(64));  // greedy
  EXPECT_FALSE(Sampler(SamplingParams{1.0f, 40, 1.0f, 1.2f}).CanSampleTopCandidates(64));
  SamplingParams presence{1.0f, 40, 1.0f};
  presence.presence_penalty = 0.5f;
  EXPECT_FALSE(Sampler(presence).CanSampleTopCandidates(64));
  SamplingParams frequency{1.0f, 40, 1.0f};
  frequency.frequency_penalty = -0.5f;
  EXPECT_FALSE(Sampler(frequency).CanSampleTopCandidates(64));
}

}  // namespace
}  // namespace pdserve
