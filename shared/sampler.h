// Next-token selection from logits.
#ifndef PDSERVE_SHARED_SAMPLER_H_
#define PDSERVE_SHARED_SAMPLER_H_

#include <cstdint>
#include <random>
#include <span>

#include "absl/status/status.h"

namespace pdserve {

// Fields after `seed` were added later; they come last so that brace
// initialisation of the first five keeps its meaning.
struct SamplingParams {
  float temperature = 0.0f;         // 0: greedy (argmax); otherwise > 0
  int top_k = 0;                    // 0: off; otherwise keep the k most likely tokens
  float top_p = 1.0f;               // (0, 1]; nucleus sampling (Holtzman et al. 2019)
  float repetition_penalty = 1.0f;  // > 0; 1: off (Keskar et al. 2019, CTRL)
  uint64_t seed = 0;                // the random stream; same seed + same logits = same tokens
  // [0, 1]; 0: off. Min-p sampling (Nguyen et al. 2024, "Turning Up the
  // Heat: Min-p Sampling"): keep the tokens whose probability is at least
  // min_p times the most likely token's, after temperature.
  float min_p = 0.0f;
  // [-2, 2]; 0: off. OpenAI's penalties, over the GENERATED tokens only (not
  // the prompt): logit[t] -= presence_penalty * (count[t] > 0) +
  // frequency_penalty * count[t], count[t] = occurrences of t so far among
  // the generated tokens. Negative values favour repeating.
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
};

// The API's bound on |presence_penalty| and |frequency_penalty| (OpenAI's).
inline constexpr float kMaxAbsPresenceFrequencyPenalty = 2.0f;

// INVALID_ARGUMENT naming the field (as sampling.NAME) and its range:
// temperature < 0 or not finite, top_k < 0, top_p outside (0, 1],
// repetition_penalty <= 0 or not finite, min_p outside [0, 1],
// presence_penalty or frequency_penalty outside [-2, 2].
absl::Status ValidateSamplingParams(const SamplingParams& params);

// One per sequence: owns the sequence's random stream, so a request's output
// does not depend on what else runs in its batch.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Picks the next token from `logits` [vocab] (float32). `prompt` and
  // `generated` (the ids so far) feed the penalties: the repetition penalty
  // sees both, the presence and frequency penalties only `generated`. Order:
  // repetition penalty, presence/frequency penalties, then greedy (argmax,
  // lowest id on ties) when temperature is 0; otherwise temperature, top-k,
  // top-p, min-p, then one draw from the renormalised rest. A sampled step
  // takes exactly one value of the random stream (a greedy one none), so a
  // seed gives the same tokens for the same logits.
  int32_t Sample(std::span<const float> logits, std::span<const int32_t> prompt,
                 std::span<const int32_t> generated);

  // True when Sample is the plain argmax of the logits (temperature 0 and
  // no penalty), so the caller may take Backend::ArgmaxRows's pick instead
  // (same rule) and skip the logits. Such a step draws no random value.
  bool IsPlainGreedy() const {
    return params_.temperature == 0.0f && params_.repetition_penalty == 1.0f &&
           params_.presence_penalty == 0.0f && params_.frequency_penalty == 0.0f;
  }

  // True when a row's `num_candidates` largest logits (Backend::TopKRows)
  // hold everything Sample would look at: top-k sampling (temperature > 0,
  // 1 <= top_k <= num_candidates; top-p and min-p then act within those k)
  // with no penalty. Then SampleTopCandidates may stand in for Sample.
  bool CanSampleTopCandidates(int num_candidates) const;

  // Sample from the row's largest logits instead of all of them: values and
  // ids as Backend::TopKRows gives them (descending, ties to the smaller
  // id, id -1 for padding), at least top_k of them. Requires
  // CanSampleTopCandidates. Draws the same random value, and so picks the
  // same token, as Sample on the whole row: both order the top-k set by id
  // before the draw.
  int32_t SampleTopCandidates(std::span<const float> values, std::span<const int32_t> ids);

  // The same with every id of `history` treated as prompt: presence and
  // frequency penalties see nothing (the form that predates them).
  int32_t Sample(std::span<const float> logits, std::span<const int32_t> history) {
    return Sample(logits, history, {});
  }

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace pdserve

#endif  // PDSERVE_SHARED_SAMPLER_H_
