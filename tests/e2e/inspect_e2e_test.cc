// Inspect as a user reaches it: pdserve-prefill and pdserve-decode as
// processes on loopback, InspectService on the decode address (next to
// GenerateService), and pdserve-cli inspect. Numbers are checked against the
// float64 reference (tests/data/golden/stories260K_hidden_states.json).
#include <cmath>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/client_context.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "pdserve/v1/inspect.grpc.pb.h"
#include "tests/e2e/service_process.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

const std::string kModelDir = std::string(PDSERVE_SOURCE_DIR) + "/models/stories260K";
const std::string kGoldenFile =
    std::string(PDSERVE_SOURCE_DIR) + "/tests/data/golden/stories260K_hidden_states.json";

class InspectE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    e2e::ServiceProcessOptions prefill_options;
    prefill_options.binary = PDSERVE_PREFILL_BIN;
    prefill_options.args = {"--model_dir", kModelDir, "--device", "cpu"};
    auto prefill = e2e::ServiceProcess::Start(prefill_options);
    ASSERT_TRUE(prefill.ok()) << prefill.status();
    prefill_ = prefill->release();
    e2e::ServiceProcessOptions decode_options;
    decode_options.binary = PDSERVE_DECODE_BIN;
    decode_options.args = {"--model_dir", kModelDir,          "--device",
                           "cpu",         "--prefill_target", prefill_->address()};
    auto decode = e2e::ServiceProcess::Start(decode_options);
    ASSERT_TRUE(decode.ok()) << decode.status();
    decode_ = decode->release();
    std::ifstream file(kGoldenFile);
    ASSERT_TRUE(file.good()) << kGoldenFile;
    golden_ = new nlohmann::json(nlohmann::json::parse(file));
  }
  static void TearDownTestSuite() {
    for (e2e::ServiceProcess** process : {&decode_, &prefill_}) {
      if (*process == nullptr) continue;
      EXPECT_TRUE((*process)->Stop().ok()) << (*process)->Stop();  // exit 0 on SIGTERM
      delete *process;
      *process = nullptr;
    }
    delete golden_;
    golden_ = nullptr;
  }
  void SetUp() override {
    ASSERT_NE(decode_, nullptr);
    stub_ = v1::InspectService::NewStub(decode_->NewChannel());
  }

  std::string Cli(const std::string& flags, int* exit_code) {
    std::string output;
    *exit_code = e2e::RunCommand(
        absl::StrCat(PDSERVE_CLI_BIN, " inspect --target ", decode_->address(), " ", flags),
        &output);
    return output;
  }

  static e2e::ServiceProcess* prefill_;
  static e2e::ServiceProcess* decode_;
  static nlohmann::json* golden_;
  std::unique_ptr<v1::InspectService::Stub> stub_;
};

e2e::ServiceProcess* InspectE2eTest::prefill_ = nullptr;
e2e::ServiceProcess* InspectE2eTest::decode_ = nullptr;
nlohmann::json* InspectE2eTest::golden_ = nullptr;

TEST_F(InspectE2eTest, ServedBesideGenerate) {
  auto services = e2e::ListServicesByReflection(decode_->NewChannel(), absl::Seconds(10));
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(*services,
              ::testing::IsSupersetOf({"pdserve.v1.GenerateService", "pdserve.v1.InspectService"}));
}

TEST_F(InspectE2eTest, TopTokensAndLastHiddenStateMatchTheReference) {
  v1::InspectRequest request;
  request.set_prompt("Once upon a time");
  request.add_hidden_state_layers(4);
  request.set_include_values(true);
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(60)));
  v1::InspectResponse response;
  const grpc::Status status = stub_->Inspect(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.next_tokens_size(), 5);
  for (int i = 0; i < 5; ++i) {
    const nlohmann::json& expected = (*golden_)["top_next_tokens"][i];
    EXPECT_EQ(response.next_tokens(i).id(), expected["id"].get<int>());
    EXPECT_NEAR(response.next_tokens(i).probability(), expected["probability"].get<double>(), 1e-4);
  }
  const std::vector<double> last = (*golden_)["final_norm"].back().get<std::vector<double>>();
  ASSERT_EQ(response.final_hidden().values_size(), static_cast<int>(last.size()));
  for (size_t j = 0; j < last.size(); ++j) {
    EXPECT_NEAR(response.final_hidden().values(j), last[j], 1e-4) << j;
  }
  const std::vector<double> layer4 = (*golden_)["layers"]["4"].back().get<std::vector<double>>();
  ASSERT_EQ(response.hidden_states_size(), 1);
  ASSERT_EQ(response.hidden_states(0).hidden().values_size(), static_cast<int>(layer4.size()));
  for (size_t j = 0; j < layer4.size(); ++j) {
    EXPECT_NEAR(response.hidden_states(0).hidden().values(j), layer4[j], 1e-4) << j;
  }
  EXPECT_EQ(response.parameter_count(), (*golden_)["parameter_count"].get<int64_t>());
}

TEST_F(InspectE2eTest, CliPrintsTokensTreeShapesAndTopTokens) {
  int exit_code = -1;
  const std::string out =
      Cli("--prompt 'Once upon a time' --layers=-1,0 --positions 0,-1", &exit_code);
  ASSERT_EQ(exit_code, 0) << out;
  // Token ids beside their pieces.
  EXPECT_THAT(out, HasSubstr("     1  <s>\n"));
  EXPECT_THAT(out, HasSubstr("   403  ▁Once\n"));
  EXPECT_THAT(out, HasSubstr("   378  ▁time\n"));
  // The module tree as Hugging Face prints LlamaForCausalLM.
  EXPECT_THAT(out, HasSubstr("LlamaForCausalLM(  # 260,032 parameters\n"));
  EXPECT_THAT(out, HasSubstr("    (embed_tokens): Embedding(512, 64)"));
  EXPECT_THAT(out, HasSubstr("      (0-4): 5 x LlamaDecoderLayer("));
  EXPECT_THAT(out,
              HasSubstr("          (k_proj): Linear(in_features=64, out_features=32, bias=False)"));
  EXPECT_THAT(out, HasSubstr("(lm_head): Linear(in_features=64, out_features=512, bias=False)"
                             "  # tied to model.embed_tokens"));
  EXPECT_THAT(out, HasSubstr("parameters: 260,032\n"));
  // Shapes, and rows at positions 0 and 4.
  EXPECT_THAT(out, HasSubstr("final hidden state (after the final norm): [1, 5, 64]\n"));
  EXPECT_THAT(out, HasSubstr("  position 0 (<s>): ["));
  EXPECT_THAT(out, HasSubstr("  position 4 (▁time): ["));
  EXPECT_THAT(out, HasSubstr("KV cache: 5 layers of key [1, 4, 5, 8] and value [1, 4, 5, 8], "
                             "float32\n"));
  EXPECT_THAT(out, HasSubstr("hidden states, embeddings output: [1, 5, 64]\n"));
  EXPECT_THAT(out, HasSubstr("hidden states after layer 0: [1, 5, 64]\n"));
  // The top-5 table: the reference's most likely token first.
  const nlohmann::json& top = (*golden_)["top_next_tokens"][0];
  EXPECT_THAT(out, HasSubstr(absl::StrCat("top 5 next tokens after position 4 (▁time):")));
  EXPECT_THAT(out, HasSubstr(absl::StrCat("     1  ", absl::StrFormat("%6d", top["id"].get<int>()),
                                          "  ", top["piece"].get<std::string>())));
}

TEST_F(InspectE2eTest, CliReportsABadLayerAndTheServiceKeepsServing) {
  int exit_code = -1;
  std::string out = Cli("--prompt 'Once upon a time' --layers 5", &exit_code);
  EXPECT_EQ(exit_code, 1) << out;
  EXPECT_THAT(out, HasSubstr("INVALID_ARGUMENT"));
  EXPECT_THAT(out, HasSubstr("hidden_state_layers[0]: 5 outside [-1, num_layers=5)"));
  out = Cli("--prompt 'Once upon a time' --top_k 101", &exit_code);
  EXPECT_EQ(exit_code, 1) << out;
  EXPECT_THAT(out, HasSubstr("top_k: 101"));
  out = Cli("--prompt 'Once upon a time' --layers x", &exit_code);
  EXPECT_EQ(exit_code, 2) << out;
  out = Cli("--prompt 'Once upon a time' --top_k 2", &exit_code);
  EXPECT_EQ(exit_code, 0) << out;
  EXPECT_THAT(out, HasSubstr("top 2 next tokens"));
}

}  // namespace
}  // namespace pdserve
