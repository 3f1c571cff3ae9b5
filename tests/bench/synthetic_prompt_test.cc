#include "bench/load_generator/synthetic_prompt.h"

#include <string>

#include "absl/strings/str_split.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pdserve::bench {
namespace {

int Words(const std::string& text) {
  return static_cast<int>(std::vector<absl::string_view>(absl::StrSplit(text, ' ')).size());
}

// The text less its last word.
std::string DropLastWord(const std::string& text) { return text.substr(0, text.rfind(' ')); }

TEST(SyntheticPromptTest, OneTokenPerWordPlusBosHitsTheTargetExactly) {
  int calls = 0;
  const TokenCounter counter = [&calls](const std::string& text) -> absl::StatusOr<int> {
    ++calls;
    return Words(text) + 1;
  };
  for (int target : {1, 2, 3, 17, 128, 1000}) {
    calls = 0;
    auto prompt = BuildSyntheticPrompt(target, /*seed=*/5, counter);
    ASSERT_TRUE(prompt.ok()) << prompt.status();
    EXPECT_EQ(prompt->tokens, std::max(target, 2)) << target;  // 1 word + BOS at least
    EXPECT_EQ(prompt->words, Words(prompt->text));
    EXPECT_LE(calls, 2 * 11 + 2) << "doubling plus bisection for target " << target;
  }
}

TEST(SyntheticPromptTest, ShortestPrefixReachingTheTargetWithUnevenCounts) {
  // About one token per 3 characters, as a byte-level tokenizer might count.
  const TokenCounter counter = [](const std::string& text) -> absl::StatusOr<int> {
    return static_cast<int>(text.size() + 2) / 3 + 1;
  };
  for (int target : {5, 64, 300}) {
    auto prompt = BuildSyntheticPrompt(target, /*seed=*/9, counter);
    ASSERT_TRUE(prompt.ok()) << prompt.status();
    EXPECT_GE(*counter(prompt->text), target);
    EXPECT_EQ(prompt->tokens, *counter(prompt->text));
    if (prompt->words > 1) EXPECT_LT(*counter(DropLastWord(prompt->text)), target);
  }
}

TEST(SyntheticPromptTest, SeedChoosesTheWords) {
  const TokenCounter counter = [](const std::string& text) -> absl::StatusOr<int> {
    return Words(text);
  };
  auto a = BuildSyntheticPrompt(50, 1, counter);
  auto b = BuildSyntheticPrompt(50, 1, counter);
  auto c = BuildSyntheticPrompt(50, 2, counter);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(a->text, b->text);
  EXPECT_NE(a->text, c->text);
}

TEST(SyntheticPromptTest, ErrorsArePassedOnOrNamed) {
  const TokenCounter failing = [](const std::string&) -> absl::StatusOr<int> {
    return absl::UnavailableError("Tokenize: connection refused");
  };
  auto failed = BuildSyntheticPrompt(10, 0, failing);
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kUnavailable);

  const TokenCounter constant = [](const std::string&) -> absl::StatusOr<int> { return 3; };
  auto stuck = BuildSyntheticPrompt(10, 0, constant);
  EXPECT_EQ(stuck.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(stuck.status().message(), ::testing::HasSubstr("prompt_tokens 10"));

  EXPECT_EQ(BuildSyntheticPrompt(0, 0, constant).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace pdserve::bench
