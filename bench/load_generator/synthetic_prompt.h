// Synthetic prompts of a requested length in tokens (--prompt_tokens).
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_SYNTHETIC_PROMPT_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_SYNTHETIC_PROMPT_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"

namespace pdserve::bench {

// Number of tokens the target's tokenizer makes of `text` (the load
// generator asks the service's Tokenize RPC, with the request's BOS setting).
using TokenCounter = std::function<absl::StatusOr<int>(const std::string& text)>;

struct SyntheticPrompt {
  std::string text;
  int tokens = 0;  // count_tokens(text)
  int words = 0;
};

// Text made of common English words in an order drawn from `seed`, with the
// fewest words whose token count reaches `target_tokens`: the word count is
// doubled until the count reaches the target, then bisected. The text for n
// words is a prefix of the text for n + 1, so the count grows with n except
// where the tokenizer merges across a word boundary; the result is then the
// shortest prefix found whose count is at least the target, and may exceed
// it by the tokens of one word. About 2 log2(words) calls of count_tokens.
// Errors: INVALID_ARGUMENT when target_tokens < 1; the counter's errors;
// FAILED_PRECONDITION when 64 * target_tokens words still count fewer tokens.
absl::StatusOr<SyntheticPrompt> BuildSyntheticPrompt(int target_tokens, uint64_t seed,
                                                     const TokenCounter& count_tokens);

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_SYNTHETIC_PROMPT_H_
