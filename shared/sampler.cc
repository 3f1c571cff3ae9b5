#include "shared/sampler.h"

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"

namespace pdserve {

absl::Status ValidateSamplingParams(const SamplingParams& params) {
  if (!std::isfinite(params.temperature) || params.temperature < 0.0f) {
    return absl::InvalidArgumentError(absl::StrCat("sampling.temperature: ", params.temperature,
                                                   " must be finite and >= 0 (0 means greedy)"));
  }
  if (params.top_k < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_k: ", params.top_k, " must be >= 0 (0 means off)"));
  }
  if (!(params.top_p > 0.0f && params.top_p <= 1.0f)) {  // also rejects NaN
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_p: ", params.top_p, " must be in (0, 1] (1 means off)"));
  }
  if (!std::isfinite(params.repetition_penalty) || params.repetition_penalty <= 0.0f) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.repetition_penalty: ", params.repetition_penalty,
                     " must be finite and > 0 (1 means off)"));
  }
  if (!(params.min_p >= 0.0f && params.min_p <= 1.0f)) {  // also rejects NaN
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.min_p: ", params.min_p, " must be in [0, 1] (0 means off)"));
  }
  const std::pair<const char*, float> penalties[] = {
      {"presence_penalty", params.presence_penalty},
      {"frequency_penalty", params.frequency_penalty}};
  for (const auto& [name, value] : penalties) {
    if (!(std::abs(value) <= kMaxAbsPresenceFrequencyPenalty)) {  // also rejects NaN
      return absl::InvalidArgumentError(absl::StrCat(
          "sampling.", name, ": ", value, " must be in [-", kMaxAbsPresenceFrequencyPenalty, ", ",
          kMaxAbsPresenceFrequencyPenalty, "] (0 means off)"));
    }
  }
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params) : params_(params), rng_(params.seed) {}

namespace {

// CTRL's penalty (Keskar et al. 2019) as Hugging Face's
// RepetitionPenaltyLogitsProcessor applies it: every distinct id seen so far
// has its logit divided by the penalty when positive and multiplied when
// negative, so the penalty always lowers the token's probability.
void ApplyRepetitionPenalty(std::vector<float>& scores, std::span<const int32_t> prompt,
                            std::span<const int32_t> generated, float penalty) {
  std::vector<bool> seen(scores.size(), false);
  for (std::span<const int32_t> ids : {prompt, generated}) {
    for (int32_t id : ids) {
      if (id < 0 || static_cast<size_t>(id) >= scores.size() || seen[id]) continue;
      seen[id] = true;
      float& score = scores[id];
      score = score < 0.0f ? score * penalty : score / penalty;
    }
  }
}

// OpenAI's presence and frequency penalties (OpenAI API reference,
// "parameter details"): logit[t] -= presence * [count[t] > 0] + frequency * count[t],
// counting t among the generated ids. Counted by sorting a copy rather than
// with a vocabulary-sized table: the generated ids are far fewer.
void ApplyPresenceFrequencyPenalties(std::vector<float>& scores, std::span<const int32_t> generated,
                                     float presence, float frequency) {
  std::vector<int32_t> ids(generated.begin(), generated.end());
  std::sort(ids.begin(), ids.end());
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j < ids.size() && ids[j] == ids[i]) ++j;
    const int32_t id = ids[i];
    if (id >= 0 && static_cast<size_t>(id) < scores.size()) {
      scores[id] -= presence + frequency * static_cast<float>(j - i);
    }
    i = j;
  }
}

// The rule of Backend::ArgmaxRows, which decides greedy rows on the device
// instead: first wins ties, NaN never wins, only NaN gives 0.
int32_t ArgMax(const std::vector<float>& scores) {
  int32_t best = -1;
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!std::isnan(scores[i]) && (best < 0 || scores[i] > scores[best])) {
      best = static_cast<int32_t>(i);
    }
  }
  return best < 0 ? 0 : best;
}

struct Candidate {
  float score;  // logit after the repetition penalty
  int32_t id;
  float weight;  // exp((score - max) / temperature), an unnormalised probability
};

// The total order every step uses: descending score, ties by ascending id.
bool Higher(const Candidate& a, const Candidate& b) {
  return a.score > b.score || (a.score == b.score && a.id < b.id);
}

// Nucleus sampling (Holtzman et al. 2019) as Hugging Face's TopPLogitsWarper
// does it: keep every token whose more likely tokens hold less than `target`
// (top_p times the total weight), i.e. the shortest prefix in Higher order
// whose mass reaches it; at least one. Rearranges candidates[0, kept) so
// those tokens come first (in no particular order) and returns their count.
// A quickselect on mass, expected O(kept): sorting a 32k vocabulary for
// every token would cost more than the rest of sampling together.
size_t SelectNucleus(std::vector<Candidate>& candidates, size_t kept, double target) {
  size_t lo = 0, hi = kept;  // the boundary token is in [lo, hi)
  double before = 0.0;       // mass of candidates[0, lo), all Higher than [lo, hi)
  while (lo < hi) {
    // Partition [lo, hi) around the middle element, placed at `mid`.
    std::swap(candidates[lo + (hi - lo) / 2], candidates[hi - 1]);
    const Candidate pivot = candidates[hi - 1];
    const auto mid_it = std::partition(candidates.begin() + lo, candidates.begin() + hi - 1,
                                       [&pivot](const Candidate& c) { return Higher(c, pivot); });
    std::swap(*mid_it, candidates[hi - 1]);
    const size_t mid = mid_it - candidates.begin();
    double higher_mass = 0.0;
    for (size_t i = lo; i < mid; ++i) higher_mass += candidates[i].weight;
    if (before + higher_mass >= target) {
      hi = mid;  // the boundary is among the higher ones
    } else if (before + higher_mass + pivot.weight >= target) {
      return mid + 1;
    } else {
      before += higher_mass + pivot.weight;
      lo = mid + 1;
    }
  }
  return std::max<size_t>(lo, 1);  // rounding left the mass just short: keep all
}

// Orders the top-k set canonically (ascending id) before anything sums or
// partitions it: the draw then depends only on which tokens were kept and
// their scores, not on how they were found, so sampling from the full
// logits and from a backend's top candidates (Sampler::SampleTopCandidates)
// give the same token for the same random value.
bool ById(const Candidate& a, const Candidate& b) { return a.id < b.id; }

// Temperature, top-p, min-p and the draw over candidates[0, kept) (the
// top-k set, in ascending id order). -1 when no candidate has a usable
// weight (all -inf or NaN): the caller falls back to the argmax.
int32_t Draw(const SamplingParams& params, std::mt19937_64& rng, std::vector<Candidate>& candidates,
             size_t kept) {
  // Unnormalised softmax of scores / temperature.
  float max_score = -INFINITY;
  for (size_t i = 0; i < kept; ++i) max_score = std::max(max_score, candidates[i].score);
  const float inv_temperature = 1.0f / params.temperature;
  double total = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    Candidate& c = candidates[i];
    c.weight = std::exp((c.score - max_score) * inv_temperature);
    total += c.weight;
  }
  if (!(total > 0.0) || !std::isfinite(total)) return -1;  // all -inf or NaN

  if (params.top_p < 1.0f) {
    kept = SelectNucleus(candidates, kept, params.top_p * total);
    total = 0.0;
    for (size_t i = 0; i < kept; ++i) total += candidates[i].weight;
  }

  if (params.min_p > 0.0f) {
    // p / p_max = weight / max weight, and the most likely token (weight
    // exp(0) = 1) survives top-k and top-p, so the cut is weight >= min_p.
    // Renormalising after top-k/top-p scales every p alike: the ratio, and so
    // the kept set, is the same as on the full distribution.
    const auto end =
        std::partition(candidates.begin(), candidates.begin() + kept,
                       [&params](const Candidate& c) { return c.weight >= params.min_p; });
    kept = static_cast<size_t>(end - candidates.begin());
    total = 0.0;
    for (size_t i = 0; i < kept; ++i) total += candidates[i].weight;
  }

  // Inverse-CDF draw. u is built from the raw 64-bit stream (53 bits) rather
  // than std::uniform_real_distribution, whose algorithm the standard leaves
  // open, so a seed gives the same tokens with any standard library.
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * total;
  double cumulative = 0.0;
  for (size_t i = 0; i < kept; ++i) {
    cumulative += candidates[i].weight;
    if (u < cumulative) return candidates[i].id;
  }
  return candidates[kept - 1].id;
}

}  // namespace

int32_t Sampler::Sample(std::span<const float> logits, std::span<const int32_t> prompt,
                        std::span<const int32_t> generated) {
  std::vector<float> scores(logits.begin(), logits.end());
  if (scores.empty()) return 0;
  if (params_.repetition_penalty != 1.0f) {
    ApplyRepetitionPenalty(scores, prompt, generated, params_.repetition_penalty);
  }
  if (params_.presence_penalty != 0.0f || params_.frequency_penalty != 0.0f) {
    ApplyPresenceFrequencyPenalties(scores, generated, params_.presence_penalty,
                                    params_.frequency_penalty);
  }
  if (params_.temperature == 0.0f) return ArgMax(scores);

  std::vector<Candidate> candidates(scores.size());
  for (size_t i = 0; i < scores.size(); ++i) {
    candidates[i] = {scores[i], static_cast<int32_t>(i), 0.0f};
  }
  // Top-k keeps exactly k tokens (ties broken by id), so top_k = 1 is greedy.
  size_t kept = candidates.size();
  if (params_.top_k > 0 && static_cast<size_t>(params_.top_k) < kept) {
    kept = params_.top_k;
    std::nth_element(candidates.begin(), candidates.begin() + kept - 1, candidates.end(), Higher);
    std::sort(candidates.begin(), candidates.begin() + kept, ById);
  }
  const int32_t token = Draw(params_, rng_, candidates, kept);
  return token >= 0 ? token : ArgMax(scores);
}

bool Sampler::CanSampleTopCandidates(int num_candidates) const {
  return params_.temperature > 0.0f && params_.top_k >= 1 && params_.top_k <= num_candidates &&
         params_.repetition_penalty == 1.0f && params_.presence_penalty == 0.0f &&
         params_.frequency_penalty == 0.0f;
}

int32_t Sampler::SampleTopCandidates(std::span<const float> values, std::span<const int32_t> ids) {
  std::vector<Candidate> candidates;
  const size_t k = std::min<size_t>(static_cast<size_t>(params_.top_k), values.size());
  for (size_t i = 0; i < k && i < ids.size(); ++i) {
    if (ids[i] < 0) break;  // the row had fewer entries (TopKRows' padding)
    candidates.push_back({values[i], ids[i], 0.0f});
  }
  if (candidates.empty()) return 0;
  // The first candidate is the row's argmax (TopKRows orders as ArgMax).
  const int32_t argmax = candidates.front().id;
  std::sort(candidates.begin(), candidates.end(), ById);
  const int32_t token = Draw(params_, rng_, candidates, candidates.size());
  return token >= 0 ? token : argmax;
}

}  // namespace pdserve
