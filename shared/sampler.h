// Next-token selection from logits.
#ifndef PDSERVE_SHARED_SAMPLER_H_
#define PDSERVE_SHARED_SAMPLER_H_

#include <cstdint>
#include <random>
#include <span>

#include "absl/status/status.h"

namespace pdserve {

struct SamplingParams {
  float temperature = 0.0f;  // 0: greedy (argmax); otherwise > 0
  int top_k = 0;             // 0: off; otherwise keep the k most likely tokens
  float top_p = 1.0f;        // (0, 1]; nucleus sampling (Holtzman et al. 2019)
  float repetition_penalty = 1.0f;  // > 0; 1: off (Keskar et al. 2019, CTRL)
  uint64_t seed = 0;  // the random stream; same seed + same logits = same tokens
};

// INVALID_ARGUMENT naming the field and its range: temperature < 0 or not
// finite, top_k < 0, top_p outside (0, 1], repetition_penalty <= 0.
absl::Status ValidateSamplingParams(const SamplingParams& params);

// One per sequence: owns the sequence's random stream, so a request's output
// does not depend on what else runs in its batch.
class Sampler {
 public:
  explicit Sampler(const SamplingParams& params);

  // Picks the next token from `logits` [vocab] (float32). `history` (prompt +
  // generated ids) feeds the repetition penalty. Order: repetition penalty,
  // temperature, top-k, top-p, then a draw; greedy takes the argmax (lowest
  // id on ties).
  int32_t Sample(std::span<const float> logits, std::span<const int32_t> history);

 private:
  SamplingParams params_;
  std::mt19937_64 rng_;
};

}  // namespace pdserve

#endif  // PDSERVE_SHARED_SAMPLER_H_
