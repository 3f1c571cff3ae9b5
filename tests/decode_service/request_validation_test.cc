// GenerateRequest validation against stories260K's tokenizer and config
// (context limit 512, add_bos_token true).
#include "decode_service/request_validation.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "shared/model_config.h"
#include "shared/tokenizer.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

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

}  // namespace
}  // namespace pdserve
