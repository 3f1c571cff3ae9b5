// The Generate API's controls with pdserve-prefill and pdserve-decode as
// separate processes: streamed text chunk by chunk (byte-fallback characters
// whole), n samples on one prefill call (the prefill's own request counter),
// pdserve-cli's generate flags, and chat messages through both services with a
// Phi-3 checkpoint. Expectations: SentencePiece's decode of the whole
// sequence, the prefill's /metrics, the published greedy text of stories260K,
// and Hugging Face's Phi-3 chat ids (tests/data/golden/phi3_chat_ids.json).
#include <stdio.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <regex>
#include <string>
#include <vector>

#include <grpcpp/client_context.h>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pdserve/v1/generate.grpc.pb.h"
#include "shared/tokenizer.h"
#include "tests/decode_service/test_models.h"
#include "tests/e2e/service_process.h"
#include "tests/testing/golden_forward.h"
#include "tests/testing/metrics_text.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;

const std::string kStoriesDir = std::string(PDSERVE_SOURCE_DIR) + "/models/stories260K";
constexpr char kPrompt[] = "Once upon a time";
// models/stories260K/README.md's greedy continuation.
constexpr char kGreedyHead[] = ", there was a little girl named Lily";

struct Service {
  std::unique_ptr<e2e::ServiceProcess> process;
  int metrics_port = 0;
};

// Starts `binary` with /metrics on a free port, read back from its
// "... metrics on HOST:PORT" stdout line.
absl::StatusOr<Service> StartService(const char* binary, std::vector<std::string> args) {
  e2e::ServiceProcessOptions options;
  options.binary = binary;
  options.args = std::move(args);
  options.args.insert(options.args.end(), {"--device", "cpu", "--metrics_listen", "127.0.0.1:0"});
  absl::StatusOr<std::unique_ptr<e2e::ServiceProcess>> process =
      e2e::ServiceProcess::Start(options);
  if (!process.ok()) return process.status();
  const std::string out = (*process)->StdoutTail();
  std::smatch match;
  if (!std::regex_search(out, match, std::regex(R"( metrics on [^ ]+:([0-9]+))"))) {
    return absl::NotFoundError(absl::StrCat("no metrics line on stdout: ", out));
  }
  return Service{std::move(*process), std::stoi(match[1].str())};
}

struct Deployment {
  Service prefill;
  Service decode;
};

absl::StatusOr<Deployment> StartDeployment(const std::string& model_dir) {
  absl::StatusOr<Service> prefill =
      StartService(PDSERVE_PREFILL_BIN, {"--model_dir", model_dir});
  if (!prefill.ok()) return prefill.status();
  absl::StatusOr<Service> decode =
      StartService(PDSERVE_DECODE_BIN, {"--model_dir", model_dir, "--prefill_target",
                                        prefill->process->address(), "--block_size", "4"});
  if (!decode.ok()) return decode.status();
  return Deployment{std::move(*prefill), std::move(*decode)};
}

struct Outcome {
  grpc::Status status;
  std::vector<v1::GenerateResponse> responses;
};

Outcome Call(v1::GenerateService::Stub& stub, const v1::GenerateRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(120)));
  auto reader = stub.Generate(&context, request);
  Outcome outcome;
  v1::GenerateResponse response;
  while (reader->Read(&response)) outcome.responses.push_back(response);
  outcome.status = reader->Finish();
  return outcome;
}

// Strict UTF-8 (RFC 3629): no overlong forms, surrogates or code points
// above U+10FFFF, and no character cut at the end.
bool IsStrictUtf8(const std::string& text) {
  size_t i = 0;
  while (i < text.size()) {
    const unsigned char b = text[i];
    int more = 0;
    uint32_t code = 0;
    if (b < 0x80) {
      code = b;
    } else if (b >= 0xC2 && b <= 0xDF) {
      more = 1, code = b & 0x1F;
    } else if (b >= 0xE0 && b <= 0xEF) {
      more = 2, code = b & 0x0F;
    } else if (b >= 0xF0 && b <= 0xF4) {
      more = 3, code = b & 0x07;
    } else {
      return false;
    }
    if (more > 0 && i + more >= text.size()) return false;
    for (int k = 1; k <= more; ++k) {
      const unsigned char c = text[i + k];
      if ((c & 0xC0) != 0x80) return false;
      code = (code << 6) | (c & 0x3F);
    }
    if ((more == 2 && code < 0x800) || (more == 3 && code < 0x10000) || code > 0x10FFFF ||
        (code >= 0xD800 && code <= 0xDFFF)) {
      return false;
    }
    i += 1 + more;
  }
  return true;
}

// Characters of two or more bytes that `ids` spell with SentencePiece
// byte-fallback pieces ("<0xC3>", "<0xA9>"): a lead byte piece followed by
// the continuation byte pieces it needs.
int ByteBuiltCharacters(const Tokenizer& tokenizer, const std::vector<int32_t>& ids) {
  std::vector<int> bytes;  // -1 for a piece that is not a byte
  for (int32_t id : ids) {
    const std::string piece = tokenizer.IdToPiece(id);
    std::smatch match;
    bytes.push_back(std::regex_match(piece, match, std::regex("<0x([0-9A-F]{2})>"))
                        ? std::stoi(match[1].str(), nullptr, 16)
                        : -1);
  }
  int found = 0;
  for (size_t i = 0; i < bytes.size(); ++i) {
    const int b = bytes[i];
    const int more = b >= 0xC2 && b <= 0xDF ? 1 : b >= 0xE0 && b <= 0xEF ? 2
                                                 : b >= 0xF0 && b <= 0xF4 ? 3
                                                                          : 0;
    if (more == 0 || i + more >= bytes.size()) continue;
    bool whole = true;
    for (int k = 1; k <= more; ++k) whole &= bytes[i + k] >= 0x80 && bytes[i + k] <= 0xBF;
    found += whole;
  }
  return found;
}

class GenerationControlsE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    absl::StatusOr<Deployment> deployment = StartDeployment(kStoriesDir);
    ASSERT_TRUE(deployment.ok()) << deployment.status();
    deployment_ = new Deployment(std::move(*deployment));
  }
  static void TearDownTestSuite() {
    if (deployment_ == nullptr) return;
    EXPECT_TRUE(deployment_->decode.process->Stop().ok());
    EXPECT_TRUE(deployment_->prefill.process->Stop().ok());
    delete deployment_;
    deployment_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(deployment_, nullptr);
    stub_ = v1::GenerateService::NewStub(deployment_->decode.process->NewChannel());
  }

  std::string Cli(const std::string& flags, int* code) {
    std::string output;
    *code = e2e::RunCommand(absl::StrCat(PDSERVE_CLI_BIN, " generate --target ",
                                    deployment_->decode.process->address(),
                                    " --timeout 120s ", flags),
                       &output);
    return output;
  }

  static Deployment* deployment_;
  std::unique_ptr<v1::GenerateService::Stub> stub_;
};

Deployment* GenerationControlsE2eTest::deployment_ = nullptr;

TEST_F(GenerationControlsE2eTest, EveryChunkIsWholeUtf8AndTheChunksAreTheDecodedText) {
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(kStoriesDir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  // A very high temperature flattens the distribution over stories260K's
  // 512 pieces, half of them byte-fallback pieces, so characters spelled
  // byte by byte come up; four samples give enough of them.
  v1::GenerateRequest request;
  request.set_prompt(kPrompt);
  request.mutable_sampling()->set_temperature(50.0f);
  request.mutable_sampling()->set_seed(2024);
  request.mutable_stopping()->set_max_new_tokens(300);
  request.mutable_stopping()->set_ignore_eos(true);
  request.mutable_output()->set_n(4);
  const Outcome outcome = Call(*stub_, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();

  const std::vector<int32_t> prompt = (*tokenizer)->Encode(kPrompt, true);
  const std::string prompt_text = (*tokenizer)->Decode(prompt);
  std::map<int, std::vector<int32_t>> ids;
  std::map<int, std::string> texts;
  for (const v1::GenerateResponse& response : outcome.responses) {
    EXPECT_TRUE(IsStrictUtf8(response.text()))
        << "sample " << response.sample_index() << " token " << response.index();
    ids[response.sample_index()].push_back(response.token_id());
    texts[response.sample_index()] += response.text();
  }
  ASSERT_EQ(ids.size(), 4u);
  int byte_built = 0;
  for (const auto& [sample, generated] : ids) {
    std::vector<int32_t> all = prompt;
    all.insert(all.end(), generated.begin(), generated.end());
    const std::string whole = (*tokenizer)->Decode(all);
    ASSERT_EQ(whole.substr(0, prompt_text.size()), prompt_text);
    EXPECT_EQ(texts[sample], whole.substr(prompt_text.size())) << "sample " << sample;
    byte_built += ByteBuiltCharacters(**tokenizer, generated);
  }
  // Without such characters the test would not show them arriving whole.
  EXPECT_GT(byte_built, 0);
}

TEST_F(GenerationControlsE2eTest, FourSamplesAreOnePrefillCallAndGiveBackEveryBlock) {
  auto prefill_requests = [&] {
    absl::StatusOr<MetricsText> metrics = ScrapeMetrics(deployment_->prefill.metrics_port);
    EXPECT_TRUE(metrics.ok()) << metrics.status();
    return metrics.ok() ? metrics->ValueOrZero("pdserve_prefill_requests_total") : -1.0;
  };
  const double before = prefill_requests();
  v1::GenerateRequest request;
  request.set_prompt(kPrompt);
  request.mutable_sampling()->set_temperature(1.0f);
  request.mutable_sampling()->set_seed(8);
  request.mutable_stopping()->set_max_new_tokens(20);
  request.mutable_stopping()->set_ignore_eos(true);
  request.mutable_output()->set_n(4);
  const Outcome outcome = Call(*stub_, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.responses.size(), 80u);
  EXPECT_EQ(outcome.responses.back().usage().total_generated_tokens(), 80);
  EXPECT_EQ(prefill_requests(), before + 1);

  // The decode's pool, once the engine has let go (it frees blocks before
  // the last message goes out; the gauge is read at scrape time).
  absl::StatusOr<MetricsText> decode = ScrapeMetrics(deployment_->decode.metrics_port);
  ASSERT_TRUE(decode.ok()) << decode.status();
  EXPECT_EQ(decode->ValueOrZero("pdserve_decode_kv_blocks_used"), 0);
}

TEST_F(GenerationControlsE2eTest, CliStopsLogprobsSamplesAndSamplingFlags) {
  int code = 0;
  // Two --stop flags; the second one cuts the greedy text across tokens.
  std::string output = Cli(absl::StrCat("--prompt '", kPrompt,
                                        "' --temperature 0 --max_new_tokens 64 --stop dragon "
                                        "--stop 'little girl' --logprobs 3"),
                           &code);
  EXPECT_EQ(code, 0) << output;
  EXPECT_THAT(output, HasSubstr(absl::StrCat(kPrompt, ", there was a \n")));
  EXPECT_THAT(output, Not(HasSubstr("little girl")));
  // README's ids: ",", " there", " was", " a", " little", " g", "ir", "l".
  EXPECT_THAT(output, ContainsRegex(R"(\| 8 tokens \| .* \| finish: stop\])"));
  // One logprob line per token: index, text, logprob, three alternatives.
  EXPECT_THAT(output,
              ContainsRegex(R"(   0  "," +-[0-9.]+  \| ,=-[0-9.]+ [^ ]+=-[0-9.]+ [^ ]+=-[0-9.]+)"));
  EXPECT_THAT(output, ContainsRegex(R"(   7  "[^"]*" +-[0-9.]+  \|)"));
  EXPECT_THAT(output, Not(ContainsRegex(R"(   8  )")));

  // --min_p 1 is greedy at any temperature; --presence/frequency/repetition
  // penalties of 0/0/1 are off.
  output = Cli(absl::StrCat("--prompt '", kPrompt,
                            "' --temperature 1.5 --min_p 1 --seed 3 --max_new_tokens 16 "
                            "--presence_penalty 0 --frequency_penalty 0 --repetition_penalty 1"),
               &code);
  EXPECT_EQ(code, 0) << output;
  EXPECT_THAT(output, HasSubstr(absl::StrCat(kPrompt, kGreedyHead)));

  // Three samples, printed as blocks, with --ignore_eos and --top_k/--top_p.
  output = Cli(absl::StrCat("--prompt '", kPrompt,
                            "' --temperature 1 --top_k 40 --top_p 0.95 --seed 5 --n 3 "
                            "--max_new_tokens 8 --ignore_eos"),
               &code);
  EXPECT_EQ(code, 0) << output;
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(output, HasSubstr(absl::StrCat("--- sample ", i, " (finish: length, 8 tokens)")));
  }
  EXPECT_THAT(output, HasSubstr("| 24 tokens |"));
  EXPECT_THAT(output, HasSubstr("finish: length,length,length]"));

  // Each new flag reaches the server: out of range, it names the field.
  for (const auto& [flag, field] : std::vector<std::pair<std::string, std::string>>{
           {"--min_p 2", "sampling.min_p"},
           {"--presence_penalty 3", "sampling.presence_penalty"},
           {"--frequency_penalty -3", "sampling.frequency_penalty"},
           {"--repetition_penalty 0", "sampling.repetition_penalty"},
           {"--logprobs 21", "output.top_logprobs"},
           {"--n 100", "output.n"},
           {"--stop ''", "stopping.stop[0]"}}) {
    output = Cli(absl::StrCat("--prompt '", kPrompt, "' ", flag), &code);
    EXPECT_EQ(code, 1) << flag << ": " << output;
    EXPECT_THAT(output, HasSubstr("INVALID_ARGUMENT")) << flag;
    EXPECT_THAT(output, HasSubstr(field)) << flag;
  }
  // stories260K has no chat template: --chat names the model directory.
  output = Cli(R"(--chat --prompt '[{"role": "user", "content": "Hi"}]')", &code);
  EXPECT_EQ(code, 1) << output;
  EXPECT_THAT(output, HasSubstr("FAILED_PRECONDITION"));
  EXPECT_THAT(output, HasSubstr("stories260K"));
}

TEST_F(GenerationControlsE2eTest, PromptLogprobsAreLogSoftmaxOfTheReferencePromptRows) {
  absl::StatusOr<GoldenForwardCase> golden = LoadGoldenForwardCase("once_upon");
  ASSERT_TRUE(golden.ok()) << golden.status();
  v1::GenerateRequest request;
  request.set_prompt(kPrompt);
  request.mutable_stopping()->set_max_new_tokens(3);
  request.mutable_output()->set_prompt_logprobs(5);
  request.mutable_output()->set_n(2);
  const Outcome outcome = Call(*stub_, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  ASSERT_FALSE(outcome.responses.empty());
  const v1::GenerateResponse& first = outcome.responses.front();
  // Positions 1..4 of BOS "Once upon a time"; row p - 1 of the reference's
  // logits is the distribution position p was drawn from.
  ASSERT_EQ(first.prompt_logprobs_size(), static_cast<int>(golden->prompt.size()) - 1);
  for (int i = 0; i < first.prompt_logprobs_size(); ++i) {
    const v1::PromptTokenLogprob& entry = first.prompt_logprobs(i);
    SCOPED_TRACE(entry.position());
    EXPECT_EQ(entry.position(), i + 1);
    EXPECT_EQ(entry.token_id(), golden->prompt[i + 1]);
    const std::vector<double> reference = ReferenceLogSoftmax(golden->Row(i));
    EXPECT_NEAR(entry.logprob(), reference[entry.token_id()], 2e-4);
    std::vector<double> sorted = reference;
    std::sort(sorted.rbegin(), sorted.rend());
    ASSERT_EQ(entry.top_logprobs_size(), 5);
    for (int k = 0; k < 5; ++k) {
      EXPECT_NEAR(entry.top_logprobs(k).logprob(), reference[entry.top_logprobs(k).token_id()],
                  2e-4);
      EXPECT_NEAR(entry.top_logprobs(k).logprob(), sorted[k], 2e-4);
    }
  }
  // Once per stream, whatever n.
  for (size_t i = 1; i < outcome.responses.size(); ++i) {
    EXPECT_EQ(outcome.responses[i].prompt_logprobs_size(), 0) << i;
  }
}

// pdserve-cli --prompt_logprobs prints what the reference says: each
// position's id (the reference prompt's), piece (the tokenizer's), logprob
// and alternatives (log_softmax of the reference row before it), their sum
// and the perplexity.
TEST_F(GenerationControlsE2eTest, CliPromptLogprobsAreLogSoftmaxOfTheReferencePromptRows) {
  absl::StatusOr<GoldenForwardCase> golden = LoadGoldenForwardCase("once_upon");
  ASSERT_TRUE(golden.ok()) << golden.status();
  absl::StatusOr<std::unique_ptr<Tokenizer>> tokenizer = Tokenizer::Load(kStoriesDir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  int code = 0;
  const std::string output =
      Cli(absl::StrCat("--prompt '", kPrompt,
                       "' --temperature 0 --max_new_tokens 2 --prompt_logprobs 3"),
          &code);
  ASSERT_EQ(code, 0) << output;
  const int prompt_tokens = static_cast<int>(golden->prompt.size());
  EXPECT_THAT(output, HasSubstr(absl::StrCat("prompt logprobs (", prompt_tokens, " tokens):\n")));
  EXPECT_THAT(output, ContainsRegex(absl::StrCat("\n +0 +", golden->prompt[0], "  ",
                                                 (*tokenizer)->IdToPiece(golden->prompt[0]),
                                                 "\n")));
  const std::regex line_pattern(R"(\n +([0-9]+) +([0-9]+)  (\S+) +(-[0-9.]+)  \|([^\n]*))");
  const std::regex alternative_pattern(R"( (\S+)=(-[0-9.]+))");
  double reference_sum = 0.0;
  int lines = 0;
  for (auto it = std::sregex_iterator(output.begin(), output.end(), line_pattern);
       it != std::sregex_iterator(); ++it, ++lines) {
    const int position = std::stoi((*it)[1].str());
    SCOPED_TRACE(position);
    ASSERT_EQ(position, lines + 1);
    ASSERT_LT(position, prompt_tokens);
    const int32_t id = golden->prompt[position];
    EXPECT_EQ(std::stoi((*it)[2].str()), id);
    EXPECT_EQ((*it)[3].str(), (*tokenizer)->IdToPiece(id));
    // Row position - 1 is the distribution position was drawn from; printed
    // with 4 decimals.
    const std::vector<double> reference = ReferenceLogSoftmax(golden->Row(position - 1));
    EXPECT_NEAR(std::stod((*it)[4].str()), reference[id], 3e-4);
    reference_sum += reference[id];
    std::vector<double> sorted = reference;
    std::sort(sorted.rbegin(), sorted.rend());
    const std::string alternatives = (*it)[5].str();
    int k = 0;
    for (auto alt = std::sregex_iterator(alternatives.begin(), alternatives.end(),
                                         alternative_pattern);
         alt != std::sregex_iterator(); ++alt, ++k) {
      ASSERT_LT(k, 3) << alternatives;
      EXPECT_NEAR(std::stod((*alt)[2].str()), sorted[k], 3e-4) << alternatives;
    }
    EXPECT_EQ(k, 3) << alternatives;
  }
  EXPECT_EQ(lines, prompt_tokens - 1) << output;
  std::smatch sum_line;
  ASSERT_TRUE(std::regex_search(
      output, sum_line, std::regex(R"(  sum (-[0-9.]+) over ([0-9]+) tokens, perplexity ([0-9.]+))")))
      << output;
  EXPECT_NEAR(std::stod(sum_line[1].str()), reference_sum, 1e-3);
  EXPECT_EQ(std::stoi(sum_line[2].str()), prompt_tokens - 1);
  EXPECT_NEAR(std::stod(sum_line[3].str()), std::exp(-reference_sum / (prompt_tokens - 1)),
              1e-3 * std::exp(-reference_sum / (prompt_tokens - 1)));
  // Still the greedy continuation after the block's stream.
  EXPECT_THAT(output, HasSubstr(absl::StrCat(kPrompt, ", there")));

  // Out of range, the server names the field.
  const std::string rejected = Cli(absl::StrCat("--prompt '", kPrompt, "' --prompt_logprobs 21"),
                                   &code);
  EXPECT_EQ(code, 1) << rejected;
  EXPECT_THAT(rejected, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(rejected, HasSubstr("output.prompt_logprobs"));
}

// A Phi-3 checkpoint with its real chat template, served by both processes.
TEST(Phi3ChatE2eTest, MessagesThroughBothServicesAndTheCli) {
  TempDir dir;
  ASSERT_TRUE(WritePhi3ChatCheckpoint(dir.path()).ok());
  absl::StatusOr<Deployment> deployment = StartDeployment(dir.path());
  ASSERT_TRUE(deployment.ok()) << deployment.status();
  absl::StatusOr<GoldenChat> golden = LoadPhi3ThreeTurnChat();
  ASSERT_TRUE(golden.ok()) << golden.status();

  auto stub = v1::GenerateService::NewStub(deployment->decode.process->NewChannel());
  v1::GenerateRequest request = ChatRequest(*golden);
  request.mutable_stopping()->set_max_new_tokens(2);
  const Outcome outcome = Call(*stub, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_EQ(outcome.responses.back().usage().prompt_tokens(),
            static_cast<int>(golden->ids.size()));

  // The same conversation as JSON on pdserve-cli's stdin.
  std::string json = "[";
  for (const auto& [role, content] : golden->messages) {
    absl::StrAppend(&json, json.size() > 1 ? "," : "", R"({"role":")", role,
                    R"(","content":")", content, R"("})");
  }
  json += "]";
  const std::string json_path = dir.File("chat.json");
  FILE* file = fopen(json_path.c_str(), "w");
  ASSERT_NE(file, nullptr);
  fputs(json.c_str(), file);
  fclose(file);
  std::string output;
  const int code = e2e::RunCommand(absl::StrCat(PDSERVE_CLI_BIN, " generate --target ",
                                           deployment->decode.process->address(),
                                           " --chat --max_new_tokens 2 --timeout 120s < ",
                                           json_path),
                              &output);
  EXPECT_EQ(code, 0) << output;
  EXPECT_THAT(output, ContainsRegex(R"(\[ttft [0-9.]+ ms \| [12] tokens \|)"));
  EXPECT_TRUE(deployment->decode.process->Stop().ok());
  EXPECT_TRUE(deployment->prefill.process->Stop().ok());
}

}  // namespace
}  // namespace pdserve
