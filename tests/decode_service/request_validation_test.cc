// GenerateRequest validation against stories260K's tokenizer and config
// (context limit 512, add_bos_token true).
#include "decode_service/request_validation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "shared/chat_template.h"
#include "shared/model_config.h"
#include "shared/tokenizer.h"
#include "tests/decode_service/test_models.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

class RequestValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<ModelConfig> config = LoadModelConfig(Stories260KDir());
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(Stories260KDir());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(tokenizer).value();
    limits_.max_new_tokens_cap = 1000;
    limits_.default_max_new_tokens = 100;
  }

  absl::StatusOr<GenerationRequest> Validate(const v1::GenerateRequest& request) {
    return ValidateGenerateRequest(request, *tokenizer_, config_, limits_, /*fallback_seed=*/77);
  }

  // A prompt of exactly `n` tokens with BOS (the tokenizer maps "a a a ..."
  // to one id per word).
  std::string PromptOfTokens(int n) {
    std::string prompt;
    for (int i = 0; i < 4 * n && static_cast<int>(tokenizer_->Encode(prompt, true).size()) < n;
         ++i) {
      prompt += prompt.empty() ? "a" : " a";
    }
    return prompt;
  }

  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  RequestLimits limits_;
};

TEST_F(RequestValidationTest, FillsDefaults) {
  v1::GenerateRequest request;
  request.set_prompt("Once upon a time");
  request.set_request_id("r-1");
  absl::StatusOr<GenerationRequest> out = Validate(request);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->prompt, tokenizer_->Encode("Once upon a time", true));
  EXPECT_EQ(out->prompt.front(), tokenizer_->bos_id());
  EXPECT_EQ(out->max_new_tokens, 100);
  EXPECT_EQ(out->sampling.seed, 77u);
  EXPECT_EQ(out->sampling.temperature, 0.0f);
  EXPECT_EQ(out->sampling.top_p, 1.0f);
  EXPECT_EQ(out->sampling.repetition_penalty, 1.0f);
  EXPECT_EQ(out->request_id, "r-1");
  EXPECT_FALSE(out->ignore_eos);
}

TEST_F(RequestValidationTest, TakesTheCallersChoices) {
  v1::GenerateRequest request;
  request.set_prompt("Once upon a time");
  request.set_add_bos(false);
  request.mutable_sampling()->set_seed(5);
  request.mutable_sampling()->set_top_p(0.5f);
  request.mutable_sampling()->set_repetition_penalty(1.3f);
  request.mutable_stopping()->set_max_new_tokens(300);
  request.mutable_stopping()->set_ignore_eos(true);
  absl::StatusOr<GenerationRequest> out = Validate(request);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->prompt, tokenizer_->Encode("Once upon a time", false));
  EXPECT_EQ(out->sampling.seed, 5u);
  EXPECT_EQ(out->sampling.top_p, 0.5f);
  EXPECT_EQ(out->sampling.repetition_penalty, 1.3f);
  EXPECT_EQ(out->max_new_tokens, 300);
  EXPECT_TRUE(out->ignore_eos);
}

TEST_F(RequestValidationTest, TheDefaultShrinksToTheRoomLeftButAnExplicitValueDoesNot) {
  const std::string prompt = PromptOfTokens(450);
  ASSERT_EQ(tokenizer_->Encode(prompt, true).size(), 450u);
  v1::GenerateRequest request;
  request.set_prompt(prompt);
  absl::StatusOr<GenerationRequest> out = Validate(request);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->max_new_tokens, 512 - 450);

  request.mutable_stopping()->set_max_new_tokens(62);
  EXPECT_TRUE(Validate(request).ok());
  request.mutable_stopping()->set_max_new_tokens(63);
  absl::StatusOr<GenerationRequest> over = Validate(request);
  EXPECT_EQ(over.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(over.status().message(), HasSubstr("stopping.max_new_tokens"));
  EXPECT_THAT(over.status().message(), HasSubstr("512"));
}

TEST_F(RequestValidationTest, APromptThatFillsTheContextIsRejected) {
  v1::GenerateRequest request;
  request.set_prompt(PromptOfTokens(512));
  absl::StatusOr<GenerationRequest> out = Validate(request);
  EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("prompt: 512 tokens"));
}

// Text beyond the byte cap is refused before tokenizing; the default cap is
// 64 bytes per context token (stories260K: 512 tokens, 32768 bytes).
TEST_F(RequestValidationTest, PromptTextOverTheByteCapIsRefused) {
  ASSERT_EQ(config_.max_position_embeddings, 512);
  EXPECT_EQ(MaxPromptBytes(limits_, config_), 64 * 512);
  v1::GenerateRequest request;
  request.set_prompt(std::string(64 * 512 + 1, 'a'));
  absl::StatusOr<GenerationRequest> out = Validate(request);
  ASSERT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(),
              HasSubstr("prompt: 32769 bytes of text exceed the limit of 32768 bytes"));
  // At the cap it goes on to tokenizing (and then to the token limit).
  request.set_prompt(std::string(64 * 512, 'a'));
  out = Validate(request);
  ASSERT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("max_position_embeddings"));
  EXPECT_THAT(out.status().message(), Not(HasSubstr("bytes of text")));
  // A set limit replaces the default.
  limits_.max_prompt_bytes = 10;
  request.set_prompt("Once upon a time");
  out = Validate(request);
  ASSERT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(out.status().message(), HasSubstr("16 bytes of text exceed the limit of 10"));
}

TEST_F(RequestValidationTest, MaxNewTokensBounds) {
  v1::GenerateRequest request;
  request.set_prompt("Once upon a time");
  request.mutable_stopping()->set_max_new_tokens(-2);
  EXPECT_THAT(Validate(request).status().message(), HasSubstr("stopping.max_new_tokens: -2"));
  limits_.max_new_tokens_cap = 100;
  request.mutable_stopping()->set_max_new_tokens(101);
  EXPECT_THAT(Validate(request).status().message(), HasSubstr("cap of 100 (--max_new_tokens_cap)"));
  // Beyond both the cap and the context: the context is named.
  request.mutable_stopping()->set_max_new_tokens(600);
  EXPECT_THAT(Validate(request).status().message(), HasSubstr("max_position_embeddings"));
  request.mutable_stopping()->set_max_new_tokens(1);
  EXPECT_EQ(Validate(request)->max_new_tokens, 1);
}

TEST_F(RequestValidationTest, TakesTheNewControls) {
  v1::GenerateRequest request;
  request.set_prompt("Once upon a time");
  request.mutable_sampling()->set_min_p(0.05f);
  request.mutable_sampling()->set_presence_penalty(-1.5f);
  request.mutable_sampling()->set_frequency_penalty(2.0f);
  request.mutable_stopping()->add_stop_token_ids(7);
  request.mutable_stopping()->add_stop_token_ids(511);
  request.mutable_stopping()->add_stop("The end");
  request.mutable_output()->set_top_logprobs(20);
  request.mutable_output()->set_n(4);
  absl::StatusOr<GenerationRequest> out = Validate(request);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->sampling.min_p, 0.05f);
  EXPECT_EQ(out->sampling.presence_penalty, -1.5f);
  EXPECT_EQ(out->sampling.frequency_penalty, 2.0f);
  EXPECT_EQ(out->stop_token_ids, (std::vector<int32_t>{7, 511}));
  EXPECT_EQ(out->stop, std::vector<std::string>{"The end"});
  EXPECT_EQ(out->top_logprobs, 20);
  EXPECT_TRUE(out->logprobs) << "top_logprobs implies the chosen token's logprob";
  EXPECT_EQ(out->num_samples, 4);
  EXPECT_TRUE(out->extra_eos_token_ids.empty()) << "prompt requests add no EOS ids";

  // Defaults: off, n 0 means 1.
  v1::GenerateRequest plain;
  plain.set_prompt("Once upon a time");
  plain.mutable_output()->set_n(0);
  absl::StatusOr<GenerationRequest> defaults = Validate(plain);
  ASSERT_TRUE(defaults.ok());
  EXPECT_EQ(defaults->num_samples, 1);
  EXPECT_FALSE(defaults->logprobs);
  EXPECT_EQ(defaults->top_logprobs, 0);
  EXPECT_EQ(defaults->sampling.min_p, 0.0f);
  EXPECT_TRUE(defaults->stop.empty());
}

TEST_F(RequestValidationTest, NewFieldLimitsAreNamed) {
  limits_.max_samples = 3;
  limits_.max_stop_strings = 2;
  limits_.max_stop_bytes = 8;
  limits_.max_stop_token_ids = 2;
  struct Case {
    const char* name;
    void (*mutate)(v1::GenerateRequest&);
    const char* message;
  };
  const Case cases[] = {
      {"n", [](v1::GenerateRequest& r) { r.mutable_output()->set_n(4); },
       "output.n: 4 outside [0, 3]"},
      {"stop bytes", [](v1::GenerateRequest& r) { r.mutable_stopping()->add_stop("123456789"); },
       "stopping.stop[0] is 9 bytes long; the limit is 8"},
      {"stop count",
       [](v1::GenerateRequest& r) {
         for (const char* stop : {"a", "b", "c"}) r.mutable_stopping()->add_stop(stop);
       },
       "stopping.stop has 3 strings; at most 2"},
      {"stop ids count",
       [](v1::GenerateRequest& r) {
         for (int id : {1, 2, 3}) r.mutable_stopping()->add_stop_token_ids(id);
       },
       "stopping.stop_token_ids: 3 ids; at most 2"},
      {"stop id", [](v1::GenerateRequest& r) { r.mutable_stopping()->add_stop_token_ids(512); },
       "stopping.stop_token_ids[0]: 512 outside [0, 512)"},
      {"top_logprobs", [](v1::GenerateRequest& r) { r.mutable_output()->set_top_logprobs(21); },
       "output.top_logprobs: 21 outside [0, 20]"},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest request;
    request.set_prompt("Once upon a time");
    c.mutate(request);
    absl::StatusOr<GenerationRequest> out = Validate(request);
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << c.name;
    EXPECT_THAT(out.status().message(), HasSubstr(c.message)) << c.name;
  }
}

TEST_F(RequestValidationTest, MessagesNeedAChatFormat) {
  v1::GenerateRequest request;
  v1::ChatMessage* message = request.mutable_messages()->add_messages();
  message->set_role("user");
  message->set_content("Hello");
  const absl::StatusOr<ChatFormat> unknown = DetectChatFormat(Stories260KDir());
  ASSERT_FALSE(unknown.ok());
  absl::StatusOr<GenerationRequest> out =
      ValidateGenerateRequest(request, *tokenizer_, config_, unknown, limits_, 1);
  EXPECT_EQ(out.status(), unknown.status()) << "the start-up error, naming the model directory";
  // The form without a chat format refuses messages too.
  EXPECT_EQ(Validate(request).status().code(), absl::StatusCode::kFailedPrecondition);
}

class ChatValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(WritePhi3ChatCheckpoint(dir_.path()).ok());
    absl::StatusOr<ModelConfig> config = LoadModelConfig(dir_.path());
    ASSERT_TRUE(config.ok()) << config.status();
    config_ = *config;
    absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(dir_.path());
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    tokenizer_ = std::move(tokenizer).value();
    format_ = DetectChatFormat(dir_.path());
    ASSERT_TRUE(format_.ok()) << format_.status();
    ASSERT_EQ(*format_, ChatFormat::kPhi3);
  }

  absl::StatusOr<GenerationRequest> Validate(const v1::GenerateRequest& request) {
    return ValidateGenerateRequest(request, *tokenizer_, config_, format_, RequestLimits(), 9);
  }

  TempDir dir_;
  ModelConfig config_;
  std::unique_ptr<Tokenizer> tokenizer_;
  absl::StatusOr<ChatFormat> format_;
};

TEST_F(ChatValidationTest, ThreeTurnsBecomeThePhi3IdsAndEndOfTurnIsEosEvenWhenNotConfigured) {
  absl::StatusOr<GoldenChat> golden = LoadPhi3ThreeTurnChat();
  ASSERT_TRUE(golden.ok()) << golden.status();
  v1::GenerateRequest request = ChatRequest(*golden);
  absl::StatusOr<GenerationRequest> out = Validate(request);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->prompt, golden->ids);
  // generation_config.json lists only <|endoftext|>; <|end|> (32007) comes
  // from the tokenizer's added tokens.
  ASSERT_EQ(config_.eos_token_ids, std::vector<int32_t>{32000});
  EXPECT_THAT(out->extra_eos_token_ids, ::testing::UnorderedElementsAre(32007, 32000));

  // Roles the format does not know, an empty list, and add_bos.
  v1::GenerateRequest bad_role = request;
  bad_role.mutable_messages()->mutable_messages(2)->set_role("tool");
  EXPECT_EQ(Validate(bad_role).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(Validate(bad_role).status().message(), HasSubstr("messages[2].role"));
  v1::GenerateRequest empty;
  empty.mutable_messages();
  EXPECT_THAT(Validate(empty).status().message(), HasSubstr("messages: the list is empty"));
  v1::GenerateRequest with_bos = request;
  with_bos.set_add_bos(false);
  EXPECT_THAT(Validate(with_bos).status().message(), HasSubstr("add_bos"));
}

TEST_F(ChatValidationTest, EndOfTurnIdsComeFromTheTokenizer) {
  EXPECT_THAT(ChatEndOfTurnIds(ChatFormat::kPhi3, *tokenizer_),
              ::testing::ElementsAre(32007, 32000));
  // Llama-2 and Mistral end a turn with </s>, the tokenizer's EOS.
  EXPECT_THAT(ChatEndOfTurnIds(ChatFormat::kLlama2Chat, *tokenizer_),
              ::testing::ElementsAre(tokenizer_->eos_id()));
  EXPECT_THAT(ChatEndOfTurnIds(ChatFormat::kMistralInstruct, *tokenizer_),
              ::testing::ElementsAre(tokenizer_->eos_id()));
}

}  // namespace
}  // namespace pdserve
