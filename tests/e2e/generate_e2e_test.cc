// The whole system as a user runs it: pdserve-prefill and pdserve-decode as
// separate processes on loopback, driven through GenerateService and through
// pdserve-cli. Greedy output is checked against the continuation published
// with the bundled stories260K model (models/stories260K/README.md), which
// two independent implementations produced.
#include <grpcpp/client_context.h>
#include <stdio.h>
#include <sys/wait.h>

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pdserve/v1/generate.grpc.pb.h"
#include "pdserve/v1/prefill.grpc.pb.h"
#include "tests/e2e/service_process.h"
#ifdef PDSERVE_HAVE_RANDOM_CHECKPOINT
#include "tests/testing/random_checkpoint.h"
#include "tests/testing/test_paths.h"
#endif

namespace pdserve {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

const std::string kModelDir = std::string(PDSERVE_SOURCE_DIR) + "/models/stories260K";
constexpr char kPrompt[] = "Once upon a time";
constexpr char kExpected[] = "there was a little girl named Lily";
// The README's greedy continuation ids of BOS + "Once upon a time".
const std::vector<int32_t> kReferenceIds = {432, 383, 286, 261, 376, 298, 315, 421,
                                            395, 317, 426, 338, 401, 396, 267, 337};
// Decode's cap for max_new_tokens in these tests (below the 512-token context,
// so "above the cap" and "beyond the context" are distinct errors).
constexpr int kMaxNewTokensCap = 256;

// A prefill and a decode instance serving `model_dir` on the CPU.
struct Deployment {
  std::unique_ptr<e2e::ServiceProcess> prefill;
  std::unique_ptr<e2e::ServiceProcess> decode;
};

absl::StatusOr<Deployment> StartDeployment(const std::string& model_dir,
                                           const std::string& prefill_model_dir = "") {
  Deployment deployment;
  e2e::ServiceProcessOptions prefill_options;
  prefill_options.binary = PDSERVE_PREFILL_BIN;
  prefill_options.args = {"--model_dir", prefill_model_dir.empty() ? model_dir : prefill_model_dir,
                          "--device", "cpu"};
  auto prefill = e2e::ServiceProcess::Start(prefill_options);
  if (!prefill.ok()) return prefill.status();
  deployment.prefill = std::move(*prefill);
  e2e::ServiceProcessOptions decode_options;
  decode_options.binary = PDSERVE_DECODE_BIN;
  decode_options.args = {"--model_dir",
                         model_dir,
                         "--device",
                         "cpu",
                         "--prefill_target",
                         deployment.prefill->address(),
                         "--max_new_tokens_cap",
                         absl::StrCat(kMaxNewTokensCap)};
  auto decode = e2e::ServiceProcess::Start(decode_options);
  if (!decode.ok()) return decode.status();
  deployment.decode = std::move(*decode);
  return deployment;
}

v1::GenerateRequest GreedyRequest(const std::string& prompt, int max_new_tokens) {
  v1::GenerateRequest request;
  request.set_prompt(prompt);
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  return request;
}

struct GenerateResult {
  grpc::Status status;
  std::vector<v1::GenerateResponse> responses;
  std::string text;
  std::vector<int32_t> ids;
};

GenerateResult CallGenerate(v1::GenerateService::Stub& stub, const v1::GenerateRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
  auto reader = stub.Generate(&context, request);
  GenerateResult result;
  v1::GenerateResponse response;
  while (reader->Read(&response)) {
    result.text += response.text();
    result.ids.push_back(response.token_id());
    result.responses.push_back(std::move(response));
  }
  result.status = reader->Finish();
  return result;
}

// Runs a shell command; returns its exit status and stdout+stderr.
int RunCommand(const std::string& command, std::string* output) {
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  if (pipe == nullptr) return -1;
  char buffer[4096];
  size_t n;
  while ((n = fread(buffer, 1, sizeof(buffer), pipe)) > 0) output->append(buffer, n);
  const int status = pclose(pipe);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

class GenerateE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    auto deployment = StartDeployment(kModelDir);
    ASSERT_TRUE(deployment.ok()) << deployment.status();
    deployment_ = new Deployment(std::move(*deployment));
  }
  static void TearDownTestSuite() {
    if (deployment_ == nullptr) return;
    // Both exit 0 on SIGTERM after everything the tests did.
    EXPECT_TRUE(deployment_->decode->Stop().ok()) << deployment_->decode->Stop();
    EXPECT_TRUE(deployment_->prefill->Stop().ok()) << deployment_->prefill->Stop();
    delete deployment_;
    deployment_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(deployment_, nullptr);
    stub_ = v1::GenerateService::NewStub(deployment_->decode->NewChannel());
  }

  void ExpectStillServing() {
    GenerateResult result = CallGenerate(*stub_, GreedyRequest(kPrompt, 16));
    ASSERT_TRUE(result.status.ok()) << result.status.error_message();
    EXPECT_THAT(result.text, HasSubstr(kExpected));
  }

  static Deployment* deployment_;
  std::unique_ptr<v1::GenerateService::Stub> stub_;
};

Deployment* GenerateE2eTest::deployment_ = nullptr;

TEST_F(GenerateE2eTest, GreedyGenerateMatchesReferenceContinuation) {
  GenerateResult result = CallGenerate(*stub_, GreedyRequest(kPrompt, 16));
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_THAT(result.text, HasSubstr(kExpected));
  EXPECT_THAT(result.ids, ElementsAreArray(kReferenceIds));
  ASSERT_EQ(result.responses.size(), 16u);
  for (size_t i = 0; i < result.responses.size(); ++i) {
    EXPECT_EQ(result.responses[i].index(), static_cast<int>(i));
    if (i + 1 < result.responses.size()) {
      EXPECT_EQ(result.responses[i].finish_reason(), v1::FINISH_REASON_UNSPECIFIED) << i;
    }
  }
  const v1::GenerateResponse& last = result.responses.back();
  EXPECT_EQ(last.finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.usage().prompt_tokens(), 5);
  EXPECT_EQ(last.usage().generated_tokens(), 16);
  const v1::Timings& t = last.timings();
  EXPECT_GT(t.prefill_ms(), 0.0);
  EXPECT_GT(t.ttft_ms(), 0.0);
  EXPECT_GE(t.decode_ms(), 0.0);
  EXPECT_GE(t.queue_ms(), 0.0);
  EXPECT_GE(t.total_ms(), t.ttft_ms());
}

TEST_F(GenerateE2eTest, Tokenize) {
  v1::TokenizeRequest request;
  request.set_text(kPrompt);
  v1::TokenizeResponse response;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  const grpc::Status status = stub_->Tokenize(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(response.token_ids(), ElementsAre(1, 403, 407, 261, 378));
  ASSERT_EQ(response.pieces_size(), 5);
  EXPECT_EQ(response.pieces(0), "<s>");
  EXPECT_EQ(absl::StrJoin(response.pieces().begin() + 1, response.pieces().end(), ""),
            "\xe2\x96\x81Once\xe2\x96\x81upon\xe2\x96\x81"
            "a\xe2\x96\x81time");

  v1::TokenizeRequest no_bos;
  no_bos.set_text(kPrompt);
  no_bos.set_add_bos(false);
  grpc::ClientContext context2;
  ASSERT_TRUE(stub_->Tokenize(&context2, no_bos, &response).ok());
  EXPECT_THAT(response.token_ids(), ElementsAre(403, 407, 261, 378));
}

TEST_F(GenerateE2eTest, GetModelInfo) {
  v1::ModelInfo info;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  const grpc::Status status = stub_->GetModelInfo(&context, v1::GetModelInfoRequest(), &info);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(info.fingerprint().architecture(), "LlamaForCausalLM");
  EXPECT_EQ(info.fingerprint().num_layers(), 5);
  EXPECT_EQ(info.fingerprint().vocab_size(), 512);
  EXPECT_EQ(info.max_position_embeddings(), 512);
  EXPECT_EQ(info.bos_token_id(), 1);
  EXPECT_THAT(info.eos_token_ids(), ElementsAre(2));
  EXPECT_EQ(info.device(), "cpu");
}

TEST_F(GenerateE2eTest, HealthAndReflection) {
  auto channel = deployment_->decode->NewChannel();
  EXPECT_TRUE(e2e::WaitForServing(channel, absl::Seconds(5)).ok());
  auto services = e2e::ListServicesByReflection(channel, absl::Seconds(10));
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(*services,
              ::testing::IsSupersetOf({"grpc.health.v1.Health", "pdserve.v1.GenerateService"}));
}

TEST_F(GenerateE2eTest, CliGeneratePrintsTextAndTimingLine) {
  std::string output;
  const int code = RunCommand(
      absl::StrCat(PDSERVE_CLI_BIN, " generate --target ", deployment_->decode->address(),
                   " --prompt '", kPrompt, "' --max_new_tokens 16 --temperature 0 --timeout 120s"),
      &output);
  EXPECT_EQ(code, 0) << output;
  EXPECT_THAT(output, HasSubstr(absl::StrCat(kPrompt, ", ", kExpected)));
  EXPECT_THAT(output,
              ::testing::ContainsRegex(
                  R"(\[ttft [0-9.]+ ms \| 16 tokens \| [0-9.]+ tokens/s \| finish: length\])"));

  output.clear();
  EXPECT_EQ(RunCommand(absl::StrCat(PDSERVE_CLI_BIN, " tokenize --target ",
                                    deployment_->decode->address(), " --text '", kPrompt, "'"),
                       &output),
            0)
      << output;
  EXPECT_THAT(output, HasSubstr("[1, 403, 407, 261, 378]"));

  output.clear();
  EXPECT_EQ(
      RunCommand(absl::StrCat(PDSERVE_CLI_BIN, " info --target ", deployment_->decode->address()),
                 &output),
      0)
      << output;
  EXPECT_THAT(output, HasSubstr("LlamaForCausalLM"));
}

TEST_F(GenerateE2eTest, CliReportsStatusCodeAndFailsOnBadRequest) {
  std::string output;
  const int code = RunCommand(
      absl::StrCat(PDSERVE_CLI_BIN, " generate --target ", deployment_->decode->address(),
                   " --prompt '", kPrompt, "' --temperature -1 --timeout 60s"),
      &output);
  EXPECT_NE(code, 0) << output;
  EXPECT_THAT(output, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(output, HasSubstr("temperature"));
}

// A missing --prompt is the caller's usage error (exit 2, naming the flag),
// caught before any call.
TEST_F(GenerateE2eTest, CliWithoutPromptIsAUsageError) {
  std::string output;
  const int code = RunCommand(
      absl::StrCat(PDSERVE_CLI_BIN, " generate --target ", deployment_->decode->address()),
      &output);
  EXPECT_EQ(code, 2) << output;
  EXPECT_THAT(output, HasSubstr("--prompt is required"));
}

// An oversized prompt is refused before tokenizing, naming the flag.
TEST_F(GenerateE2eTest, PromptOverTheByteCapIsInvalidArgument) {
  v1::GenerateRequest request = GreedyRequest(std::string(1 << 20, 'a'), 4);
  GenerateResult result = CallGenerate(*stub_, request);
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(result.status.error_message(), HasSubstr("--max_prompt_bytes"));
  // The service still serves.
  result = CallGenerate(*stub_, GreedyRequest(kPrompt, 16));
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_THAT(result.text, HasSubstr(kExpected));
}

TEST_F(GenerateE2eTest, ConcurrentGreedyCallsAllGetTheReferenceText) {
  constexpr int kCalls = 8;
  std::vector<GenerateResult> results(kCalls);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] { results[i] = CallGenerate(*stub_, GreedyRequest(kPrompt, 16)); });
  }
  for (std::thread& thread : threads) thread.join();
  for (int i = 0; i < kCalls; ++i) {
    ASSERT_TRUE(results[i].status.ok())
        << "call " << i << ": " << results[i].status.error_message();
    EXPECT_THAT(results[i].text, HasSubstr(kExpected)) << "call " << i;
    EXPECT_THAT(results[i].ids, ElementsAreArray(kReferenceIds)) << "call " << i;
  }
}

TEST_F(GenerateE2eTest, BadRequestsAreInvalidArgumentNamingTheField) {
  struct Case {
    std::string name;
    v1::GenerateRequest request;
    std::vector<std::string> message_parts;
  };
  std::vector<Case> cases;
  auto add = [&](std::string name, std::vector<std::string> parts, auto&& mutate) {
    v1::GenerateRequest request = GreedyRequest(kPrompt, 16);
    mutate(request);
    cases.push_back({std::move(name), std::move(request), std::move(parts)});
  };
  add("empty prompt", {"prompt"}, [](v1::GenerateRequest& r) { r.set_prompt(""); });
  // 5 prompt tokens + 510 > the 512-token context.
  add("beyond the context", {"max_new_tokens", "512"},
      [](v1::GenerateRequest& r) { r.mutable_stopping()->set_max_new_tokens(510); });
  add("above the cap", {"max_new_tokens", absl::StrCat(kMaxNewTokensCap)},
      [](v1::GenerateRequest& r) {
        r.mutable_stopping()->set_max_new_tokens(kMaxNewTokensCap + 1);
      });
  add("negative max_new_tokens", {"max_new_tokens"},
      [](v1::GenerateRequest& r) { r.mutable_stopping()->set_max_new_tokens(-1); });
  add("negative temperature", {"temperature"},
      [](v1::GenerateRequest& r) { r.mutable_sampling()->set_temperature(-0.5f); });
  add("top_p 0", {"top_p"}, [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(0.0f); });
  add("top_p 1.5", {"top_p"},
      [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_p(1.5f); });
  add("negative top_k", {"top_k"},
      [](v1::GenerateRequest& r) { r.mutable_sampling()->set_top_k(-1); });
  add("repetition_penalty 0", {"repetition_penalty"},
      [](v1::GenerateRequest& r) { r.mutable_sampling()->set_repetition_penalty(0.0f); });
  for (const Case& c : cases) {
    GenerateResult result = CallGenerate(*stub_, c.request);
    EXPECT_EQ(result.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << c.name << ": " << result.status.error_message();
    for (const std::string& part : c.message_parts) {
      EXPECT_THAT(result.status.error_message(), HasSubstr(part)) << c.name;
    }
    EXPECT_TRUE(result.responses.empty()) << c.name;
  }
  ExpectStillServing();
}

TEST_F(GenerateE2eTest, ClientCancelMidStreamLeavesServiceServing) {
  v1::GenerateRequest request = GreedyRequest(kPrompt, 200);
  request.mutable_stopping()->set_ignore_eos(true);
  for (int attempt = 0; attempt < 3; ++attempt) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
    auto reader = stub_->Generate(&context, request);
    v1::GenerateResponse response;
    ASSERT_TRUE(reader->Read(&response));
    context.TryCancel();
    while (reader->Read(&response)) {
    }
    EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  }
  ExpectStillServing();
}

#ifdef PDSERVE_HAVE_RANDOM_CHECKPOINT
// A Phi-3-shaped checkpoint (fused qkv_proj / gate_up_proj, bf16, vocab
// 32064, added tokens) with random weights: the text is meaningless, but
// both services must load it and the stream must be complete and counted.
TEST(GenerateE2ePhi3Test, RandomPhi3CheckpointGeneratesThroughBothServices) {
  TempDir dir;
  const RandomCheckpointOptions options = Phi3Tiny();
  ASSERT_TRUE(WriteRandomCheckpoint(dir.path(), options).ok());
  auto deployment = StartDeployment(dir.path());
  ASSERT_TRUE(deployment.ok()) << deployment.status();
  auto stub = v1::GenerateService::NewStub(deployment->decode->NewChannel());

  v1::ModelInfo info;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  }
  EXPECT_EQ(info.fingerprint().architecture(), "Phi3ForCausalLM");
  EXPECT_EQ(info.fingerprint().vocab_size(), 32064);
  EXPECT_EQ(info.fingerprint().dtype(), v1::DTYPE_BF16);

  v1::TokenizeResponse tokens;
  {
    v1::TokenizeRequest request;
    request.set_text("The capital of France is");
    grpc::ClientContext context;
    ASSERT_TRUE(stub->Tokenize(&context, request, &tokens).ok());
  }
  // Phi-3 adds no BOS: the Llama 2 SentencePiece ids of the notebook case.
  EXPECT_THAT(tokens.token_ids(), ElementsAre(450, 7483, 310, 3444, 338));

  v1::GenerateRequest request = GreedyRequest("The capital of France is", 8);
  request.mutable_stopping()->set_ignore_eos(true);
  GenerateResult result = CallGenerate(*stub, request);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  ASSERT_EQ(result.responses.size(), 8u);
  for (int32_t id : result.ids) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, 32064);
  }
  EXPECT_EQ(result.responses.back().finish_reason(), v1::FINISH_REASON_LENGTH);
  EXPECT_EQ(result.responses.back().usage().prompt_tokens(), 5);
  EXPECT_EQ(result.responses.back().usage().generated_tokens(), 8);

  // Sampled, seeded: the same seed gives the same tokens.
  request.mutable_sampling()->set_temperature(1.0f);
  request.mutable_sampling()->set_seed(7);
  GenerateResult a = CallGenerate(*stub, request);
  GenerateResult b = CallGenerate(*stub, request);
  ASSERT_TRUE(a.status.ok()) << a.status.error_message();
  ASSERT_TRUE(b.status.ok()) << b.status.error_message();
  EXPECT_EQ(a.ids, b.ids);

  EXPECT_TRUE(deployment->decode->Stop().ok()) << deployment->decode->Stop();
  EXPECT_TRUE(deployment->prefill->Stop().ok()) << deployment->prefill->Stop();
}

// Decode refuses a prefill that serves another model (FAILED_PRECONDITION,
// DESIGN.md "KV transfer contract"): at start-up or, at the latest, per call.
TEST(GenerateE2eMismatchTest, PrefillOfAnotherModelIsRefused) {
  TempDir dir;
  ASSERT_TRUE(WriteRandomCheckpoint(dir.path(), Phi3Tiny()).ok());
  auto deployment = StartDeployment(kModelDir, /*prefill_model_dir=*/dir.path());
  // The refusal names the differing field with both values (CheckSameModel):
  // the architectures appear nowhere else in the message or the command line.
  if (!deployment.ok()) {
    EXPECT_THAT(deployment.status().message(), HasSubstr("Phi3ForCausalLM")) << deployment.status();
    EXPECT_THAT(deployment.status().message(), HasSubstr("LlamaForCausalLM"))
        << deployment.status();
    return;
  }
  auto stub = v1::GenerateService::NewStub(deployment->decode->NewChannel());
  GenerateResult result = CallGenerate(*stub, GreedyRequest(kPrompt, 4));
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << result.status.error_message();
  EXPECT_THAT(result.status.error_message(), HasSubstr("Phi3ForCausalLM"));
}
#endif  // PDSERVE_HAVE_RANDOM_CHECKPOINT

}  // namespace
}  // namespace pdserve
