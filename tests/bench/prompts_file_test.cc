#include "bench/load_generator/prompts_file.h"

#include <cstdio>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pdserve::bench {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ParsePromptsTest, PlainLinesVerbatimSkippingBlankOnes) {
  auto prompts = ParsePrompts("Once upon a time\r\n\n   \n  leading spaces kept\nlast", "p.txt");
  ASSERT_TRUE(prompts.ok()) << prompts.status();
  EXPECT_THAT(*prompts, ElementsAre("Once upon a time", "  leading spaces kept", "last"));
}

TEST(ParsePromptsTest, JsonLinesTakeThePromptMemberAndMayHoldNewlines) {
  auto prompts = ParsePrompts(
      "{\"prompt\": \"line one\\nline two\", \"id\": 3}\n"
      "plain text\n"
      "  {\"prompt\": \"caf\\u00e9\"}\n",
      "p.jsonl");
  ASSERT_TRUE(prompts.ok()) << prompts.status();
  EXPECT_THAT(*prompts, ElementsAre("line one\nline two", "plain text", "caf\xc3\xa9"));
}

TEST(ParsePromptsTest, BadJsonLinesNameFileAndLine) {
  auto broken = ParsePrompts("ok\n{\"prompt\": \n", "p.jsonl");
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(broken.status().message(), HasSubstr("p.jsonl:2"));

  auto missing = ParsePrompts("{\"text\": \"x\"}", "p.jsonl");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(missing.status().message(), HasSubstr("p.jsonl:1"));
  EXPECT_THAT(missing.status().message(), HasSubstr("\"prompt\""));

  auto not_string = ParsePrompts("{\"prompt\": 5}", "p.jsonl");
  EXPECT_EQ(not_string.status().code(), absl::StatusCode::kInvalidArgument);

  auto empty_prompt = ParsePrompts("a\nb\n{\"prompt\": \"\"}", "p.jsonl");
  EXPECT_THAT(empty_prompt.status().message(), HasSubstr("p.jsonl:3"));
}

TEST(ParsePromptsTest, NoPromptIsAnError) {
  auto prompts = ParsePrompts("\n \n\r\n", "empty.txt");
  EXPECT_EQ(prompts.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(prompts.status().message(), HasSubstr("empty.txt"));
}

TEST(LoadPromptsFileTest, ReadsAFileAndReportsAMissingOne) {
  const std::string path = ::testing::TempDir() + "/prompts_file_test_prompts.jsonl";
  {
    std::ofstream out(path);
    out << "{\"prompt\": \"The capital of France is\"}\nOnce upon a time\n";
  }
  auto prompts = LoadPromptsFile(path);
  std::remove(path.c_str());
  ASSERT_TRUE(prompts.ok()) << prompts.status();
  EXPECT_THAT(*prompts, ElementsAre("The capital of France is", "Once upon a time"));

  auto missing = LoadPromptsFile(path);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr(path));
}

}  // namespace
}  // namespace pdserve::bench
