// The stories260K reference forward pass (tests/reference/reference_forward.py
// -> tests/data/golden/stories260K_forward.json and the *_logits.f32 files),
// loaded for tests that compare service output with it.
#ifndef PDSERVE_TESTS_TESTING_GOLDEN_FORWARD_H_
#define PDSERVE_TESTS_TESTING_GOLDEN_FORWARD_H_

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve {

// One case of stories260K_forward.json.
struct GoldenForwardCase {
  std::string name;
  std::vector<int32_t> prompt;           // token ids, BOS first
  std::vector<int32_t> greedy_tokens;    // 64 argmax continuations (lowest id on ties)
  std::string greedy_text;               // greedy_tokens decoded after the prompt
  std::vector<float> final_hidden_last;  // [hidden]: last prompt position, after the final norm
  int vocab = 0;
  std::vector<float> logits;  // [prompt + 64, vocab] float32, row-major

  // The distribution of the token after position `position` (row `position`):
  // greedy_tokens[i] was chosen from Row(prompt.size() - 1 + i).
  std::span<const float> Row(int position) const {
    return std::span<const float>(logits).subspan(static_cast<size_t>(position) * vocab, vocab);
  }
  // The row greedy step `step` (0-based) was chosen from.
  std::span<const float> StepRow(int step) const {
    return Row(static_cast<int>(prompt.size()) - 1 + step);
  }
};

// The case named `name` ("once_upon", "random40"). NOT_FOUND for a missing
// file or case; INVALID_ARGUMENT for malformed JSON or a logits file of the
// wrong size.
absl::StatusOr<GoldenForwardCase> LoadGoldenForwardCase(const std::string& name);

// Every case, in the file's order. Errors as LoadGoldenForwardCase.
absl::StatusOr<std::vector<GoldenForwardCase>> LoadGoldenForwardCases();

// log_softmax of `logits` in float64: the reference for logprobs.
std::vector<double> ReferenceLogSoftmax(std::span<const float> logits);

}  // namespace pdserve

#endif  // PDSERVE_TESTS_TESTING_GOLDEN_FORWARD_H_
