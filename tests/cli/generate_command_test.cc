// pdserve-cli generate's request building, repeated --stop and output
// formatting, against hand-written expectations.
#include "cli/generate_command.h"

#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace pdserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(BuildGenerateRequestTest, CarriesEveryOption) {
  GenerateOptions options;
  options.prompt = "Once upon a time";
  options.max_new_tokens = 12;
  options.temperature = 0.7f;
  options.top_k = 40;
  options.top_p = 0.9f;
  options.min_p = 0.05f;
  options.repetition_penalty = 1.1f;
  options.presence_penalty = 0.5f;
  options.frequency_penalty = -0.25f;
  options.seed = 7;
  options.ignore_eos = true;
  options.stop = {"The end", ", "};
  options.logprobs = 5;
  options.n = 3;
  absl::StatusOr<v1::GenerateRequest> request = BuildGenerateRequest(options);
  ASSERT_TRUE(request.ok()) << request.status();
  EXPECT_EQ(request->prompt(), "Once upon a time");
  const v1::SamplingParams& sampling = request->sampling();
  EXPECT_EQ(sampling.temperature(), 0.7f);
  EXPECT_EQ(sampling.top_k(), 40);
  EXPECT_EQ(sampling.top_p(), 0.9f);
  EXPECT_EQ(sampling.min_p(), 0.05f);
  EXPECT_EQ(sampling.repetition_penalty(), 1.1f);
  EXPECT_EQ(sampling.presence_penalty(), 0.5f);
  EXPECT_EQ(sampling.frequency_penalty(), -0.25f);
  ASSERT_TRUE(sampling.has_seed());
  EXPECT_EQ(sampling.seed(), 7u);
  EXPECT_EQ(request->stopping().max_new_tokens(), 12);
  EXPECT_TRUE(request->stopping().ignore_eos());
  EXPECT_THAT(request->stopping().stop(), ElementsAre("The end", ", "));
  EXPECT_TRUE(request->output().logprobs());
  EXPECT_EQ(request->output().top_logprobs(), 5);
  EXPECT_EQ(request->output().n(), 3);
}

TEST(BuildGenerateRequestTest, DefaultsLeaveSeedUnsetAndLogprobsOff) {
  GenerateOptions options;
  options.prompt = "Hi";
  absl::StatusOr<v1::GenerateRequest> request = BuildGenerateRequest(options);
  ASSERT_TRUE(request.ok());
  EXPECT_FALSE(request->sampling().has_seed());
  EXPECT_FALSE(request->output().logprobs());
  EXPECT_EQ(request->output().top_logprobs(), 0);
  options.logprobs = 0;  // the chosen token's alone
  request = BuildGenerateRequest(options);
  EXPECT_TRUE(request->output().logprobs());
  EXPECT_EQ(request->output().top_logprobs(), 0);
}

TEST(BuildGenerateRequestTest, PromptLogprobsOnlyWhenAsked) {
  GenerateOptions options;
  options.prompt = "Hi";
  absl::StatusOr<v1::GenerateRequest> request = BuildGenerateRequest(options);
  ASSERT_TRUE(request.ok());
  EXPECT_FALSE(request->output().has_prompt_logprobs());
  for (int n : {0, 3, 20}) {
    options.prompt_logprobs = n;
    request = BuildGenerateRequest(options);
    ASSERT_TRUE(request.ok());
    ASSERT_TRUE(request->output().has_prompt_logprobs()) << n;
    EXPECT_EQ(request->output().prompt_logprobs(), n);
    // Independent of the generated tokens' logprobs.
    EXPECT_FALSE(request->output().logprobs());
  }
}

TEST(BuildGenerateRequestTest, ChatJsonBecomesMessages) {
  GenerateOptions options;
  options.chat = true;
  options.prompt =
      R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Héllo\n"}])";
  absl::StatusOr<v1::GenerateRequest> request = BuildGenerateRequest(options);
  ASSERT_TRUE(request.ok()) << request.status();
  ASSERT_TRUE(request->has_messages());
  ASSERT_EQ(request->messages().messages_size(), 2);
  EXPECT_EQ(request->messages().messages(0).role(), "system");
  EXPECT_EQ(request->messages().messages(0).content(), "Be brief.");
  EXPECT_EQ(request->messages().messages(1).role(), "user");
  EXPECT_EQ(request->messages().messages(1).content(), "Héllo\n");

  for (const char* bad : {"", "not json", "[]", R"({"role": "user"})", R"([{"role": "user"}])",
                          R"([{"role": 1, "content": "x"}])", R"(["text"])"}) {
    options.prompt = bad;
    absl::StatusOr<v1::GenerateRequest> rejected = BuildGenerateRequest(options);
    EXPECT_EQ(rejected.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(rejected.status().message(), HasSubstr("--chat")) << bad;
  }
  options.prompt = R"([{"role": "user", "content": "a"}, {"role": "user"}])";
  EXPECT_THAT(BuildGenerateRequest(options).status().message(), HasSubstr("message 1"));
}

TEST(TakeRepeatedFlagTest, CollectsEveryOccurrenceInOrderAndKeepsTheRest) {
  std::vector<std::string> storage = {"pdserve-cli", "--stop", "a b", "--prompt", "x",
                                      "--stop=c,d",  "--stopper", "1",  "--stop",   "--n"};
  std::vector<char*> args;
  for (std::string& arg : storage) args.push_back(arg.data());
  absl::StatusOr<std::vector<std::string>> stops = TakeRepeatedFlag(args, "stop");
  ASSERT_TRUE(stops.ok()) << stops.status();
  // "--stop --n": the value may look like a flag; "--stopper" is another flag.
  EXPECT_THAT(*stops, ElementsAre("a b", "c,d", "--n"));
  std::vector<std::string> rest(args.begin(), args.end());
  EXPECT_THAT(rest, ElementsAre("pdserve-cli", "--prompt", "x", "--stopper", "1"));

  std::vector<std::string> dangling_storage = {"pdserve-cli", "--stop"};
  std::vector<char*> dangling;
  for (std::string& arg : dangling_storage) dangling.push_back(arg.data());
  EXPECT_EQ(TakeRepeatedFlag(dangling, "stop").status().code(),
            absl::StatusCode::kInvalidArgument);
}

v1::GenerateResponse Token(int sample, int index, const std::string& text) {
  v1::GenerateResponse response;
  response.set_sample_index(sample);
  response.set_index(index);
  response.set_text(text);
  return response;
}

TEST(FormatTest, LogprobLineShowsTheTokenItsLogprobAndAlternatives) {
  v1::GenerateResponse response = Token(0, 3, " a\n");
  response.set_logprob(-0.0123f);
  v1::TokenLogprob* top = response.add_top_logprobs();
  top->set_piece("▁a");
  top->set_logprob(-0.0123f);
  top = response.add_top_logprobs();
  top->set_piece("▁the");
  top->set_logprob(-4.5f);
  EXPECT_EQ(FormatLogprobLine(response),
            "   3  \" a\\n\"" + std::string(10 + 2 + 2, ' ') +
                "-0.0123  | ▁a=-0.0123 ▁the=-4.5000\n");
  // The quoted token padded to 16 columns; nothing else without logprobs.
  EXPECT_EQ(FormatLogprobLine(Token(0, 12, "\x01")),
            "  12  \"\\x01\"" + std::string(10, ' ') + "\n");
}

v1::TokenLogprob Alternative(int id, const std::string& piece, float logprob) {
  v1::TokenLogprob top;
  top.set_token_id(id);
  top.set_piece(piece);
  top.set_logprob(logprob);
  return top;
}

// BOS "▁Once" "▁upon": two prompt positions with logprobs, the second with
// its token not among its single alternative.
v1::GenerateResponse PromptLogprobsResponse() {
  v1::GenerateResponse first = Token(0, 0, ",");
  v1::PromptTokenLogprob* entry = first.add_prompt_logprobs();
  entry->set_position(1);
  entry->set_token_id(403);
  entry->set_logprob(-1.5f);
  *entry->add_top_logprobs() = Alternative(403, "▁Once", -1.5f);
  *entry->add_top_logprobs() = Alternative(9, "▁The", -2.25f);
  entry = first.add_prompt_logprobs();
  entry->set_position(2);
  entry->set_token_id(407);
  entry->set_logprob(-0.5f);
  *entry->add_top_logprobs() = Alternative(11, "▁a", -0.25f);
  return first;
}

TEST(FormatTest, PromptLogprobsWithTokenizePiecesSumAndPerplexity) {
  v1::TokenizeResponse tokens;
  for (int id : {1, 403, 407}) tokens.add_token_ids(id);
  for (const char* piece : {"<s>", "▁Once", "▁upon"}) tokens.add_pieces(piece);
  // Pieces padded to 16 columns ("▁" is one); sum -2, perplexity e^1.
  EXPECT_EQ(FormatPromptLogprobs(PromptLogprobsResponse(), tokens),
            "prompt logprobs (3 tokens):\n"
            "     0       1  <s>\n"
            "     1     403  ▁Once               -1.5000  | ▁Once=-1.5000 ▁The=-2.2500\n"
            "     2     407  ▁upon               -0.5000  | ▁a=-0.2500\n"
            "  sum -2.0000 over 2 tokens, perplexity 2.7183\n");
}

TEST(FormatTest, PromptLogprobsWithoutMatchingTokensTakePiecesFromAlternatives) {
  const std::string expected =
      "prompt logprobs (3 tokens):\n"
      "     1     403  ▁Once               -1.5000  | ▁Once=-1.5000 ▁The=-2.2500\n"
      "     2     407  ?                   -0.5000  | ▁a=-0.2500\n"
      "  sum -2.0000 over 2 tokens, perplexity 2.7183\n";
  // No Tokenize answer (a chat), and one for another prompt.
  EXPECT_EQ(FormatPromptLogprobs(PromptLogprobsResponse(), v1::TokenizeResponse()), expected);
  v1::TokenizeResponse other;
  for (int id : {1, 403, 408}) other.add_token_ids(id);
  for (const char* piece : {"<s>", "▁Once", "▁Upon"}) other.add_pieces(piece);
  EXPECT_EQ(FormatPromptLogprobs(PromptLogprobsResponse(), other), expected);
  // Nothing without prompt logprobs.
  EXPECT_EQ(FormatPromptLogprobs(Token(0, 0, "x"), other), "");
}

TEST(FormatTest, SamplesPrintAsBlocksWithTheirFinish) {
  std::vector<v1::GenerateResponse> stream = {Token(1, 0, "Hel"), Token(0, 0, "One"),
                                              Token(1, 1, "lo"), Token(0, 1, " two")};
  stream[2].set_finish_reason(v1::FINISH_REASON_STOP);
  stream[3].set_finish_reason(v1::FINISH_REASON_LENGTH);
  const std::map<int, SampleOutput> samples = GroupBySample(stream);
  ASSERT_EQ(samples.size(), 2u);
  EXPECT_EQ(samples.at(1).text(), "Hello");
  EXPECT_EQ(FormatSamples(samples, -1),
            "--- sample 0 (finish: length, 2 tokens) ---\nOne two\n"
            "--- sample 1 (finish: stop, 2 tokens) ---\nHello\n");
  EXPECT_THAT(FormatSamples(samples, 0), HasSubstr("   1  \"lo\""));
  EXPECT_EQ(GroupBySample({Token(0, 0, "x")}).at(0).finish(), "-");
  EXPECT_EQ(FinishName(v1::FINISH_REASON_EOS), "eos");
}

}  // namespace
}  // namespace pdserve
