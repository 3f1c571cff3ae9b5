// The Generate API's controls (sampling, stopping, logprobs, n samples, chat)
// through the in-process decode service over loopback gRPC, with the
// in-process PrefillService on the real Transformer. Expectations come from
// the float64 reference forward pass of stories260K
// (tests/data/golden/stories260K_forward.json), from solo runs of the same
// request, or from hand computation; every failure path checks that the KV
// pool returns to its starting level.
#include <algorithm>
#include <cmath>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/client_context.h>
#include <gtest/gtest.h>

#include "decode_service/engine.h"
#include "tests/decode_service/fake_prefill_service.h"
#include "tests/decode_service/in_process_decode.h"
#include "tests/decode_service/test_models.h"
#include "tests/testing/golden_forward.h"
#include "tests/testing/random_checkpoint.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

constexpr char kPrompt[] = "Once upon a time";

// Greedy by default, `max_new_tokens` tokens, EOS ignored (stories260K never
// emits its EOS id anyway), so a stream's length is under the test's control.
v1::GenerateRequest Request(const std::string& prompt, int max_new_tokens) {
  v1::GenerateRequest request;
  request.set_prompt(prompt);
  request.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  request.mutable_stopping()->set_ignore_eos(true);
  return request;
}

v1::GenerateRequest Sampled(const std::string& prompt, int max_new_tokens, uint64_t seed) {
  v1::GenerateRequest request = Request(prompt, max_new_tokens);
  request.mutable_sampling()->set_temperature(1.0f);
  request.mutable_sampling()->set_seed(seed);
  return request;
}

// A stream's messages split by sample_index, in arrival order.
std::map<int, std::vector<v1::GenerateResponse>> BySample(const GenerateOutcome& outcome) {
  std::map<int, std::vector<v1::GenerateResponse>> samples;
  for (const v1::GenerateResponse& response : outcome.responses) {
    samples[response.sample_index()].push_back(response);
  }
  return samples;
}

std::vector<int32_t> Ids(const std::vector<v1::GenerateResponse>& responses) {
  std::vector<int32_t> ids;
  for (const v1::GenerateResponse& response : responses) ids.push_back(response.token_id());
  return ids;
}

std::string Text(const std::vector<v1::GenerateResponse>& responses) {
  std::string text;
  for (const v1::GenerateResponse& response : responses) text += response.text();
  return text;
}

class GenerationControlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<GoldenForwardCase> golden = LoadGoldenForwardCase("once_upon");
    ASSERT_TRUE(golden.ok()) << golden.status();
    golden_ = std::move(golden).value();
  }

  void StartDecode(InProcessDecodeOptions options = InProcessDecodeOptions(),
                   const std::string& model_dir = Stories260KDir()) {
    absl::StatusOr<std::unique_ptr<FakePrefillServer>> fake = FakePrefillServer::Start(model_dir);
    ASSERT_TRUE(fake.ok()) << fake.status();
    fake_ = std::move(fake).value();
    options.model_dir = model_dir;
    options.prefill_target = fake_->address();
    absl::StatusOr<std::unique_ptr<InProcessDecode>> decode = InProcessDecode::Start(options);
    ASSERT_TRUE(decode.ok()) << decode.status();
    decode_ = std::move(decode).value();
  }

  bool AllBlocksFree() {
    return Eventually(
        [&] { return decode_->cache().num_free_blocks() == decode_->cache().num_blocks(); });
  }

  GenerateOutcome Run(const v1::GenerateRequest& request, int cancel_after = -1) {
    return RunGenerate(decode_->stub(), request, cancel_after);
  }

  const Tokenizer& tokenizer() { return decode_->model().tokenizer(); }

  // The text that `generated` adds after the golden prompt, as one Decode
  // renders it.
  std::string TextAfterPrompt(const std::vector<int32_t>& generated) {
    std::vector<int32_t> all = golden_.prompt;
    all.insert(all.end(), generated.begin(), generated.end());
    return tokenizer().Decode(all).substr(tokenizer().Decode(golden_.prompt).size());
  }

  // How many golden greedy tokens it takes until their text contains
  // `needle`; -1 when it never does.
  int GoldenTokensUntil(const std::string& needle) {
    for (size_t k = 1; k <= golden_.greedy_tokens.size(); ++k) {
      const std::vector<int32_t> head(golden_.greedy_tokens.begin(),
                                      golden_.greedy_tokens.begin() + k);
      if (TextAfterPrompt(head).find(needle) != std::string::npos) return static_cast<int>(k);
    }
    return -1;
  }

  GoldenForwardCase golden_;
  std::unique_ptr<FakePrefillServer> fake_;
  std::unique_ptr<InProcessDecode> decode_;
};

TEST_F(GenerationControlsTest, PromptIsTheGoldenCase) {
  StartDecode();
  ASSERT_EQ(tokenizer().Encode(kPrompt, /*add_bos=*/true), golden_.prompt);
}

TEST_F(GenerationControlsTest, TopKOneAndMinPOneAreGreedyAtAnyTemperature) {
  StartDecode();
  GenerateOutcome greedy = Run(Request(kPrompt, 64));
  ASSERT_TRUE(greedy.status.ok()) << greedy.status.error_message();
  EXPECT_EQ(greedy.token_ids(), golden_.greedy_tokens);

  v1::GenerateRequest top_k = Sampled(kPrompt, 64, 3);
  top_k.mutable_sampling()->set_temperature(1.7f);
  top_k.mutable_sampling()->set_top_k(1);
  GenerateOutcome top_k_outcome = Run(top_k);
  ASSERT_TRUE(top_k_outcome.status.ok()) << top_k_outcome.status.error_message();
  EXPECT_EQ(top_k_outcome.token_ids(), golden_.greedy_tokens);

  // min_p 1 keeps only tokens as likely as the most likely one.
  v1::GenerateRequest min_p = Sampled(kPrompt, 64, 4);
  min_p.mutable_sampling()->set_min_p(1.0f);
  GenerateOutcome min_p_outcome = Run(min_p);
  ASSERT_TRUE(min_p_outcome.status.ok()) << min_p_outcome.status.error_message();
  EXPECT_EQ(min_p_outcome.token_ids(), golden_.greedy_tokens);

  EXPECT_TRUE(AllBlocksFree());
}

TEST_F(GenerationControlsTest, ASeedReproducesWhateverElseIsInTheBatchAndSeedsDiffer) {
  StartDecode();
  v1::GenerateRequest request = Sampled(kPrompt, 40, 42);
  request.mutable_sampling()->set_top_p(0.95f);
  const GenerateOutcome alone = Run(request);
  ASSERT_TRUE(alone.status.ok()) << alone.status.error_message();

  // The same request among seven others of different prompts and seeds.
  GenerateOutcome together;
  std::vector<std::thread> clients;
  for (size_t i = 1; i < StoryPrompts().size(); ++i) {
    clients.emplace_back([&, i] { Run(Sampled(StoryPrompts()[i], 40, 100 + i)); });
  }
  together = Run(request);
  for (std::thread& client : clients) client.join();
  ASSERT_TRUE(together.status.ok()) << together.status.error_message();
  EXPECT_EQ(together.token_ids(), alone.token_ids());
  EXPECT_EQ(together.text(), alone.text());

  v1::GenerateRequest other_seed = request;
  other_seed.mutable_sampling()->set_seed(43);
  EXPECT_NE(Run(other_seed).token_ids(), alone.token_ids());
  EXPECT_TRUE(AllBlocksFree());
}

TEST_F(GenerationControlsTest, PresenceAndFrequencyPenaltiesMatchHandAdjustedReferenceLogits) {
  StartDecode();
  const float presence = 1.5f, frequency = 0.5f;
  v1::GenerateRequest request = Request(kPrompt, 64);
  request.mutable_sampling()->set_presence_penalty(presence);
  request.mutable_sampling()->set_frequency_penalty(frequency);
  const GenerateOutcome outcome = Run(request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  const std::vector<int32_t> tokens = outcome.token_ids();
  ASSERT_EQ(tokens.size(), 64u);

  // While the tokens so far follow the reference's greedy path, the
  // reference logits of that step apply: subtract the penalties by hand
  // (counting only generated tokens) and take the argmax. Up to and
  // including the first step where the penalties change the choice.
  bool diverged = false;
  for (int step = 0; step < 64 && !diverged; ++step) {
    std::vector<double> adjusted(golden_.StepRow(step).begin(), golden_.StepRow(step).end());
    std::map<int32_t, int> counts;
    for (int i = 0; i < step; ++i) ++counts[tokens[i]];
    for (const auto& [id, count] : counts) adjusted[id] -= presence + frequency * count;
    std::vector<int> order(adjusted.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = static_cast<int>(i);
    std::partial_sort(order.begin(), order.begin() + 2, order.end(),
                      [&](int a, int b) { return adjusted[a] > adjusted[b]; });
    ASSERT_GT(adjusted[order[0]] - adjusted[order[1]], 1e-3) << "near tie at step " << step;
    EXPECT_EQ(tokens[step], order[0]) << "step " << step;
    diverged = tokens[step] != golden_.greedy_tokens[step];
  }
  EXPECT_TRUE(diverged) << "the penalties never changed the greedy path";
}

TEST_F(GenerationControlsTest, StopStringSpanningTwoTokensIsFoundAndCutWithFinishStop) {
  StartDecode();
  const std::string stop = "little girl";
  const int completing = GoldenTokensUntil(stop);
  ASSERT_GT(completing, 0);
  // It really spans tokens: it starts before the token that completes it
  // (" little", " gir", "l" in stories260K's vocabulary).
  const std::vector<int32_t> before(golden_.greedy_tokens.begin(),
                                    golden_.greedy_tokens.begin() + completing - 1);
  ASSERT_LT(golden_.greedy_text.find(stop), TextAfterPrompt(before).size());

  v1::GenerateRequest request = Request(kPrompt, 64);
  request.mutable_stopping()->add_stop("dragon");  // never generated
  request.mutable_stopping()->add_stop(stop);
  const GenerateOutcome outcome = Run(request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_EQ(static_cast<int>(outcome.responses.size()), completing);
  const v1::GenerateResponse& last = outcome.responses.back();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(last.usage().generated_tokens(), completing);
  EXPECT_EQ(outcome.token_ids(),
            std::vector<int32_t>(golden_.greedy_tokens.begin(),
                                 golden_.greedy_tokens.begin() + completing));
  const std::string& full = golden_.greedy_text;
  EXPECT_EQ(outcome.text(), full.substr(0, full.find(stop)));

  // Inside one token (" Lily"): the text keeps the space before it.
  v1::GenerateRequest lily = Request(kPrompt, 64);
  lily.mutable_stopping()->add_stop("Lily");
  const GenerateOutcome lily_outcome = Run(lily);
  ASSERT_TRUE(lily_outcome.status.ok());
  EXPECT_EQ(lily_outcome.text(), full.substr(0, full.find("Lily")));
  EXPECT_EQ(static_cast<int>(lily_outcome.responses.size()), GoldenTokensUntil("Lily"));
  EXPECT_EQ(lily_outcome.responses.back().finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_TRUE(AllBlocksFree());
}

TEST_F(GenerationControlsTest, StopTokenIdEndsWithStopAndRendersNoText) {
  StartDecode();
  const std::vector<int32_t> lily = tokenizer().Encode("Lily", /*add_bos=*/false);
  ASSERT_EQ(lily.size(), 1u);
  const auto at = std::find(golden_.greedy_tokens.begin(), golden_.greedy_tokens.end(), lily[0]);
  ASSERT_NE(at, golden_.greedy_tokens.end());
  const std::vector<int32_t> expected(golden_.greedy_tokens.begin(), at + 1);

  v1::GenerateRequest request = Request(kPrompt, 64);  // ignore_eos: no effect on stop ids
  request.mutable_stopping()->add_stop_token_ids(lily[0]);
  const GenerateOutcome outcome = Run(request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.token_ids(), expected);
  EXPECT_EQ(outcome.responses.back().finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(outcome.responses.back().text(), "");
  EXPECT_EQ(outcome.text(),
            TextAfterPrompt(std::vector<int32_t>(expected.begin(), expected.end() - 1)));
  EXPECT_TRUE(AllBlocksFree());
}

TEST_F(GenerationControlsTest, LogprobsAreLogSoftmaxOfTheReferenceLogits) {
  StartDecode();
  v1::GenerateRequest request = Request(kPrompt, 64);
  request.mutable_output()->set_top_logprobs(20);
  const GenerateOutcome outcome = Run(request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_EQ(outcome.token_ids(), golden_.greedy_tokens);  // so every reference row applies

  for (int step = 0; step < 64; ++step) {
    SCOPED_TRACE(step);
    const v1::GenerateResponse& response = outcome.responses[step];
    const std::vector<double> reference = ReferenceLogSoftmax(golden_.StepRow(step));
    const int32_t chosen = response.token_id();
    ASSERT_TRUE(response.has_logprob());
    EXPECT_NEAR(response.logprob(), reference[chosen], 2e-4);
    // The chosen token's probability and the rest of the distribution make 1.
    double rest = 0.0;
    for (size_t id = 0; id < reference.size(); ++id) {
      if (static_cast<int32_t>(id) != chosen) rest += std::exp(reference[id]);
    }
    EXPECT_NEAR(std::exp(static_cast<double>(response.logprob())) + rest, 1.0, 1e-4);

    ASSERT_EQ(response.top_logprobs_size(), 20);
    // Greedy picks the most likely token: the top entry is the chosen one.
    EXPECT_EQ(response.top_logprobs(0).token_id(), chosen);
    EXPECT_EQ(response.top_logprobs(0).logprob(), response.logprob());
    std::vector<double> sorted = reference;
    std::sort(sorted.rbegin(), sorted.rend());
    for (int i = 0; i < 20; ++i) {
      const v1::TokenLogprob& top = response.top_logprobs(i);
      EXPECT_NEAR(top.logprob(), reference[top.token_id()], 2e-4) << "entry " << i;
      // The same ranks as the reference, up to float32 rounding.
      EXPECT_NEAR(top.logprob(), sorted[i], 2e-4) << "entry " << i;
      EXPECT_EQ(top.piece(), tokenizer().IdToPiece(top.token_id()));
      if (i > 0) EXPECT_LE(top.logprob(), response.top_logprobs(i - 1).logprob());
    }
  }
  // The first step's top 5 against the reference's last prompt position.
  const std::vector<double> first = ReferenceLogSoftmax(golden_.StepRow(0));
  std::vector<int32_t> reference_top5(first.size());
  for (size_t i = 0; i < first.size(); ++i) reference_top5[i] = static_cast<int32_t>(i);
  std::partial_sort(reference_top5.begin(), reference_top5.begin() + 5, reference_top5.end(),
                    [&](int32_t a, int32_t b) { return first[a] > first[b]; });
  reference_top5.resize(5);
  std::vector<int32_t> top5;
  for (int i = 0; i < 5; ++i) top5.push_back(outcome.responses[0].top_logprobs(i).token_id());
  EXPECT_EQ(top5, reference_top5);

  // Nothing is computed unless asked; logprobs alone gives no alternatives.
  const GenerateOutcome plain = Run(Request(kPrompt, 4));
  for (const v1::GenerateResponse& response : plain.responses) {
    EXPECT_FALSE(response.has_logprob());
    EXPECT_EQ(response.top_logprobs_size(), 0);
  }
  v1::GenerateRequest chosen_only = Request(kPrompt, 4);
  chosen_only.mutable_output()->set_logprobs(true);
  const GenerateOutcome with_logprob = Run(chosen_only);
  ASSERT_EQ(with_logprob.responses.size(), 4u);
  for (int step = 0; step < 4; ++step) {
    const v1::GenerateResponse& response = with_logprob.responses[step];
    EXPECT_EQ(response.logprob(), outcome.responses[step].logprob());
    EXPECT_EQ(response.top_logprobs_size(), 0);
  }
}

// Runs `request` with output.n = 4 and checks the stream's shape: four
// samples, each indexed from 0, each with exactly one final message (its
// last), usage per sample and the total on the stream's last message.
std::map<int, std::vector<v1::GenerateResponse>> ExpectFourSamples(const GenerateOutcome& outcome,
                                                                   int max_new_tokens,
                                                                   int prompt_tokens) {
  EXPECT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  std::map<int, std::vector<v1::GenerateResponse>> samples = BySample(outcome);
  EXPECT_EQ(samples.size(), 4u);
  int total = 0;
  for (const auto& [index, responses] : samples) {
    SCOPED_TRACE(index);
    EXPECT_GE(index, 0);
    EXPECT_LT(index, 4);
    EXPECT_EQ(static_cast<int>(responses.size()), max_new_tokens);
    for (size_t i = 0; i < responses.size(); ++i) {
      EXPECT_EQ(responses[i].index(), static_cast<int>(i));
      EXPECT_EQ(responses[i].has_usage(), i + 1 == responses.size());
    }
    const v1::GenerateResponse& last = responses.back();
    EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(last.usage().prompt_tokens(), prompt_tokens);
    EXPECT_EQ(last.usage().generated_tokens(), static_cast<int>(responses.size()));
    total += static_cast<int>(responses.size());
  }
  EXPECT_EQ(outcome.responses.back().usage().total_generated_tokens(), total);
  for (size_t i = 0; i + 1 < outcome.responses.size(); ++i) {
    EXPECT_EQ(outcome.responses[i].usage().total_generated_tokens(), 0) << i;
  }
  return samples;
}

TEST_F(GenerationControlsTest, FourSamplesShareOnePrefillAndEachMatchesItsSoloRun) {
  InProcessDecodeOptions options;
  options.block_size = 4;  // prompts end inside a block or on its edge
  StartDecode(options);
  // One prompt whose last block is partly filled (copied on the samples'
  // first write) and one that ends on a block boundary (fresh blocks).
  std::vector<std::string> prompts;
  bool partial = false, boundary = false;
  for (const std::string& prompt : StoryPrompts()) {
    const size_t length = tokenizer().Encode(prompt, true).size();
    if (length % 4 != 0 && !partial) {
      partial = true;
      prompts.push_back(prompt);
    } else if (length % 4 == 0 && !boundary) {
      boundary = true;
      prompts.push_back(prompt);
    }
  }
  ASSERT_TRUE(partial && boundary);

  for (const std::string& prompt : prompts) {
    SCOPED_TRACE(prompt);
    const int prompt_tokens = static_cast<int>(tokenizer().Encode(prompt, true).size());
    v1::GenerateRequest request = Sampled(prompt, 24, 1234);
    request.mutable_output()->set_n(4);
    const int calls_before = fake_->service().calls();
    const GenerateOutcome outcome = Run(request);
    EXPECT_EQ(fake_->service().calls(), calls_before + 1) << "one prefill for all samples";
    std::map<int, std::vector<v1::GenerateResponse>> samples =
        ExpectFourSamples(outcome, 24, prompt_tokens);
    EXPECT_TRUE(AllBlocksFree());

    // Sample i is what n = 1 draws with sample i's seed: the forks read the
    // prompt's KV and their own tokens' KV, nobody else's.
    std::set<std::vector<int32_t>> distinct;
    for (auto& [index, responses] : samples) {
      v1::GenerateRequest solo = Sampled(prompt, 24, SampleSeed(1234, index));
      const GenerateOutcome alone = Run(solo);
      ASSERT_TRUE(alone.status.ok()) << alone.status.error_message();
      EXPECT_EQ(Ids(responses), alone.token_ids()) << "sample " << index;
      EXPECT_EQ(Text(responses), alone.text()) << "sample " << index;
      distinct.insert(Ids(responses));
    }
    EXPECT_GT(distinct.size(), 1u) << "four samples at temperature 1 all alike";
  }
  EXPECT_EQ(SampleSeed(1234, 0), 1234u);  // sample 0 is the n = 1 stream
  EXPECT_TRUE(AllBlocksFree());
}

TEST_F(GenerationControlsTest, CancellingFourSamplesFreesEveryBlock) {
  InProcessDecodeOptions options;
  options.block_size = 4;
  StartDecode(options);
  v1::GenerateRequest request = Sampled(kPrompt, 400, 9);
  request.mutable_output()->set_n(4);
  const GenerateOutcome outcome = Run(request, /*cancel_after=*/6);
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(AllBlocksFree());
  EXPECT_TRUE(Eventually([&] { return decode_->engine().stats().running == 0; }));
  const GenerateOutcome after = Run(Request(kPrompt, 64));
  ASSERT_TRUE(after.status.ok());
  EXPECT_EQ(after.token_ids(), golden_.greedy_tokens);
  EXPECT_TRUE(AllBlocksFree());
}

struct BadField {
  const char* name;
  std::function<void(v1::GenerateRequest&)> mutate;
  const char* field;  // the message names it
};

TEST_F(GenerationControlsTest, EveryBadNewFieldIsInvalidArgumentAndLeavesNoTrace) {
  InProcessDecodeOptions options;
  options.limits.max_samples = 8;
  StartDecode(options);
  const BadField cases[] = {
      {"min_p above 1", [](auto& r) { r.mutable_sampling()->set_min_p(1.5f); }, "sampling.min_p"},
      {"min_p negative", [](auto& r) { r.mutable_sampling()->set_min_p(-0.1f); },
       "sampling.min_p"},
      {"presence above 2", [](auto& r) { r.mutable_sampling()->set_presence_penalty(2.5f); },
       "sampling.presence_penalty"},
      {"frequency below -2", [](auto& r) { r.mutable_sampling()->set_frequency_penalty(-3.0f); },
       "sampling.frequency_penalty"},
      {"stop id negative", [](auto& r) { r.mutable_stopping()->add_stop_token_ids(-1); },
       "stopping.stop_token_ids[0]"},
      {"stop id beyond the vocabulary",
       [](auto& r) {
         r.mutable_stopping()->add_stop_token_ids(3);
         r.mutable_stopping()->add_stop_token_ids(512);
       },
       "stopping.stop_token_ids[1]"},
      {"too many stop ids",
       [](auto& r) {
         for (int i = 0; i < 65; ++i) r.mutable_stopping()->add_stop_token_ids(i);
       },
       "stopping.stop_token_ids"},
      {"empty stop string", [](auto& r) { r.mutable_stopping()->add_stop(""); },
       "stopping.stop[0]"},
      {"stop string too long",
       [](auto& r) { r.mutable_stopping()->add_stop(std::string(257, 'a')); },
       "stopping.stop[0]"},
      {"too many stop strings",
       [](auto& r) {
         for (int i = 0; i < 17; ++i) r.mutable_stopping()->add_stop("s" + std::to_string(i));
       },
       "stopping.stop"},
      {"top_logprobs above 20", [](auto& r) { r.mutable_output()->set_top_logprobs(21); },
       "output.top_logprobs"},
      {"top_logprobs negative", [](auto& r) { r.mutable_output()->set_top_logprobs(-1); },
       "output.top_logprobs"},
      {"prompt_logprobs above 20",
       [](auto& r) { r.mutable_output()->set_prompt_logprobs(21); }, "output.prompt_logprobs"},
      {"prompt_logprobs negative",
       [](auto& r) { r.mutable_output()->set_prompt_logprobs(-1); }, "output.prompt_logprobs"},
      {"n above --max_samples", [](auto& r) { r.mutable_output()->set_n(9); }, "output.n"},
      {"n negative", [](auto& r) { r.mutable_output()->set_n(-1); }, "output.n"},
      {"empty messages", [](auto& r) { r.mutable_messages(); }, "messages"},
      {"add_bos with messages",
       [](auto& r) {
         v1::ChatMessage* message = r.mutable_messages()->add_messages();
         message->set_role("user");
         message->set_content("Hi");
         r.set_add_bos(true);
       },
       "add_bos"},
  };
  for (const BadField& c : cases) {
    SCOPED_TRACE(c.name);
    v1::GenerateRequest request = Request(kPrompt, 8);
    c.mutate(request);
    const GenerateOutcome outcome = Run(request);
    EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(outcome.status.error_message(), HasSubstr(c.field));
    EXPECT_TRUE(outcome.responses.empty());
  }
  EXPECT_EQ(fake_->service().calls(), 0) << "validation must come before any prefill";
  EXPECT_EQ(decode_->cache().num_free_blocks(), decode_->cache().num_blocks());
  EXPECT_EQ(decode_->engine().stats().running, 0);
  const GenerateOutcome after = Run(Request(kPrompt, 64));
  ASSERT_TRUE(after.status.ok());
  EXPECT_EQ(after.token_ids(), golden_.greedy_tokens);
}

TEST_F(GenerationControlsTest, MessagesWithoutAKnownChatFormatNameTheModel) {
  StartDecode();  // stories260K has no chat_template
  v1::GenerateRequest request;
  v1::ChatMessage* message = request.mutable_messages()->add_messages();
  message->set_role("user");
  message->set_content("Tell me a story");
  const GenerateOutcome outcome = Run(request);
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(outcome.status.error_message(), HasSubstr(Stories260KDir()));
  EXPECT_THAT(outcome.status.error_message(), HasSubstr("chat"));
  EXPECT_EQ(fake_->service().calls(), 0);
  EXPECT_TRUE(AllBlocksFree());
  // Plain prompts are unaffected.
  const GenerateOutcome plain = Run(Request(kPrompt, 64));
  ASSERT_TRUE(plain.status.ok());
  EXPECT_EQ(plain.token_ids(), golden_.greedy_tokens);
}

TEST_F(GenerationControlsTest, ChatMessagesReachThePrefillAsPhi3ChatIds) {
  TempDir dir;
  ASSERT_TRUE(WritePhi3ChatCheckpoint(dir.path()).ok());
  StartDecode(InProcessDecodeOptions(), dir.path());

  absl::StatusOr<GoldenChat> golden = LoadPhi3ThreeTurnChat();
  ASSERT_TRUE(golden.ok()) << golden.status();
  v1::GenerateRequest request = ChatRequest(*golden);
  request.mutable_stopping()->set_max_new_tokens(3);
  const GenerateOutcome outcome = Run(request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  const std::vector<int32_t>& expected = golden->ids;
  EXPECT_EQ(fake_->service().last_token_ids(), expected);
  EXPECT_EQ(outcome.responses.back().usage().prompt_tokens(), static_cast<int>(expected.size()));
  // Greedy stops at the first end-of-turn id, or runs to max_new_tokens.
  const std::vector<int32_t> ids = outcome.token_ids();
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    EXPECT_NE(ids[i], 32007);
    EXPECT_NE(ids[i], 32000);
  }

  // A role the format does not know is INVALID_ARGUMENT naming the message.
  v1::GenerateRequest bad = request;
  bad.mutable_messages()->mutable_messages(1)->set_role("tool");
  const GenerateOutcome rejected = Run(bad);
  EXPECT_EQ(rejected.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(rejected.status.error_message(), HasSubstr("messages[1].role"));
  EXPECT_TRUE(AllBlocksFree());
}

}  // namespace
}  // namespace pdserve
