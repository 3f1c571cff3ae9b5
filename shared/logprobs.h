// Log-probabilities of the next token, for the Generate API's per-step
// logprobs and top-N alternatives.
//
// Which distribution: the model's raw next-token distribution,
// log_softmax(logits) of the unmodified lm_head output, taken BEFORE any
// sampling transform (repetition/presence/frequency penalties, temperature,
// top-k, top-p, min-p). This is vLLM's default (logprobs_mode
// "raw_logprobs") and the OpenAI API's meaning: the numbers describe the
// model, not the sampler, and do not change with sampling settings. A token
// the sampler could not have picked (cut by top-k) still has its model
// log-probability.
#ifndef PDSERVE_SHARED_LOGPROBS_H_
#define PDSERVE_SHARED_LOGPROBS_H_

#include <cstdint>
#include <span>
#include <vector>

namespace pdserve {

// The API's limit on top-N alternatives per step (OpenAI's top_logprobs <= 20).
// TopLogprobs accepts any n; callers validate requests against this.
inline constexpr int kMaxTopLogprobs = 20;

// out[i] = logits[i] - log(sum_j exp(logits[j])), natural log.
// `logits` and `out`: [vocab] float32, the same length (a mismatch is a
// programming error and aborts). `out` may alias `logits`.
// Numerically stable: subtracts the maximum before exponentiating and
// accumulates the sum in float64, so logits of any magnitude work and
// sum_i exp(out[i]) = 1 to float precision.
// A -inf logit (a masked token) gives -inf. If no logit is finite and
// greater than -inf (all -inf, or any NaN/+inf), every output is NaN.
void LogSoftmax(std::span<const float> logits, std::span<float> out);

struct TokenLogprob {
  int32_t id = 0;        // token id (index into the vocabulary)
  float logprob = 0.0f;  // natural log of its probability, <= 0

  bool operator==(const TokenLogprob&) const = default;
};

// The `n` most likely tokens of `logprobs` [vocab] (as from LogSoftmax):
// sorted by logprob descending, ties by lower id first. Returns
// min(n, number of non-NaN entries) entries; NaN entries are never returned;
// none for n <= 0. One pass over the vocabulary, O(vocab * n) worst case,
// O(vocab) typical, no allocation beyond the result.
std::vector<TokenLogprob> TopLogprobs(std::span<const float> logprobs, int n);

}  // namespace pdserve

#endif  // PDSERVE_SHARED_LOGPROBS_H_
