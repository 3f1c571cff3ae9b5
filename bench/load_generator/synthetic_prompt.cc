#include "bench/load_generator/synthetic_prompt.h"

#include <algorithm>
#include <array>
#include <random>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace pdserve::bench {
namespace {

// Short, frequent words, so that even a small vocabulary (stories260K has
// 512 pieces) spends few tokens on each.
constexpr std::array<const char*, 48> kWords = {
    "the",  "a",    "little", "girl", "boy",   "dog",   "cat",    "ran",   "saw",  "big",
    "tree", "sun",  "happy",  "day",  "park",  "ball",  "play",   "went",  "home", "mom",
    "said", "and",  "to",     "with", "her",   "his",   "friend", "red",   "blue", "box",
    "bird", "sky",  "water",  "fish", "jump",  "look",  "found",  "toy",   "time", "one",
    "was",  "very", "good",   "nice", "small", "house", "car",    "flower"};

class WordSequence {
 public:
  explicit WordSequence(uint64_t seed) : engine_(seed) {}

  // The first `n` words of this sequence joined by single spaces.
  std::string Prefix(int n) {
    while (static_cast<int>(words_.size()) < n) {
      words_.push_back(kWords[engine_() % kWords.size()]);
    }
    return absl::StrJoin(words_.begin(), words_.begin() + n, " ");
  }

 private:
  std::mt19937_64 engine_;
  std::vector<const char*> words_;
};

}  // namespace

absl::StatusOr<SyntheticPrompt> BuildSyntheticPrompt(int target_tokens, uint64_t seed,
                                                     const TokenCounter& count_tokens) {
  if (target_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt_tokens is ", target_tokens, "; must be >= 1"));
  }
  WordSequence sequence(seed);
  auto count_words = [&](int n) -> absl::StatusOr<int> { return count_tokens(sequence.Prefix(n)); };

  // Doubling: find `high` words reaching the target; `low` words stay below.
  const int max_words = 64 * target_tokens;
  int low = 0;
  int high = 1;
  absl::StatusOr<int> high_tokens = count_words(high);
  while (true) {
    if (!high_tokens.ok()) return high_tokens.status();
    if (*high_tokens >= target_tokens) break;
    if (high >= max_words) {
      return absl::FailedPreconditionError(
          absl::StrCat("synthetic prompt: ", high, " words count only ", *high_tokens,
                       " tokens, below prompt_tokens ", target_tokens,
                       "; the tokenizer does not grow with text"));
    }
    low = high;
    high = std::min(2 * high, max_words);
    high_tokens = count_words(high);
  }
  // Bisection keeps count(low) < target <= count(high).
  while (high - low > 1) {
    const int mid = low + (high - low) / 2;
    absl::StatusOr<int> mid_tokens = count_words(mid);
    if (!mid_tokens.ok()) return mid_tokens.status();
    if (*mid_tokens >= target_tokens) {
      high = mid;
      high_tokens = *mid_tokens;
    } else {
      low = mid;
    }
  }
  return SyntheticPrompt{.text = sequence.Prefix(high), .tokens = *high_tokens, .words = high};
}

}  // namespace pdserve::bench
