// InspectService in this process on stories260K, with a real PrefillServer
// (the prefill service's library) behind it, against the float64 reference
// (tests/data/golden/stories260K_hidden_states.json): final hidden state,
// hidden states after layers 0 and 4, the top-5 next tokens, the parameter
// count; bad requests, and a deadline while the prefill is queued.
#include "decode_service/inspect_server.h"

#include <cmath>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server.h>
#include <grpcpp/server_builder.h>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "prefill_service/prefill_server.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Rows [n, hidden] of the reference JSON, as float32.
std::vector<float> Rows(const nlohmann::json& rows) {
  std::vector<float> out;
  for (const nlohmann::json& row : rows) {
    for (double value : row.get<std::vector<double>>()) out.push_back(static_cast<float>(value));
  }
  return out;
}

float MaxAbsDifference(std::span<const float> a, std::span<const float> b) {
  EXPECT_EQ(a.size(), b.size());
  float worst = a.size() == b.size() ? 0.0f : INFINITY;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    const float d = std::fabs(a[i] - b[i]);
    worst = std::isnan(d) ? INFINITY : std::max(worst, d);
  }
  return worst;
}

class InspectServerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::ifstream file(TestDataDir() + "/golden/stories260K_hidden_states.json");
    ASSERT_TRUE(file.good());
    golden_ = new nlohmann::json(nlohmann::json::parse(file));
  }
  static void TearDownTestSuite() {
    delete golden_;
    golden_ = nullptr;
  }

  void SetUp() override {
    auto engine = PrefillEngine::Load(Stories260KDir(), "cpu");
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    prefill_service_ = std::make_unique<PrefillServer>(engine_.get(), PrefillServerOptions());
    int prefill_port = 0;
    grpc::ServerBuilder prefill_builder;
    prefill_builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(),
                                     &prefill_port);
    prefill_builder.RegisterService(prefill_service_.get());
    prefill_server_ = prefill_builder.BuildAndStart();
    ASSERT_NE(prefill_server_, nullptr);

    auto model = ServingModel::Load(Stories260KDir(), "cpu");
    ASSERT_TRUE(model.ok()) << model.status();
    model_ = std::move(*model);
    PrefillClientOptions options;
    options.channel_target = absl::StrCat("127.0.0.1:", prefill_port);
    client_ = std::make_unique<InspectPrefillClient>(
        options, PrefillExpectation::For(model_->config(), model_->fingerprint()));
    auto inspect = InspectServer::Create(model_.get(), client_.get(), absl::Seconds(30));
    ASSERT_TRUE(inspect.ok()) << inspect.status();
    inspect_ = std::move(*inspect);
    int port = 0;
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(inspect_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    stub_ = v1::InspectService::NewStub(
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials()));
  }

  void TearDown() override {
    const auto deadline = absl::ToChronoTime(absl::Now() + absl::Seconds(5));
    if (server_ != nullptr) server_->Shutdown(deadline);
    if (prefill_server_ != nullptr) prefill_server_->Shutdown(deadline);
  }

  grpc::Status Inspect(const v1::InspectRequest& request, v1::InspectResponse* response,
                       absl::Duration timeout = absl::Seconds(30)) {
    grpc::ClientContext context;
    context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    return stub_->Inspect(&context, request, response);
  }

  // Prefill streams all ended (OnDone runs just after the client's status).
  bool PrefillStreamsEnded() {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (prefill_service_->active_streams() != 0) {
      if (absl::Now() > deadline) return false;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return true;
  }

  static nlohmann::json* golden_;
  std::unique_ptr<PrefillEngine> engine_;
  std::unique_ptr<PrefillServer> prefill_service_;
  std::unique_ptr<grpc::Server> prefill_server_;
  std::unique_ptr<ServingModel> model_;
  std::unique_ptr<InspectPrefillClient> client_;
  std::unique_ptr<InspectServer> inspect_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::InspectService::Stub> stub_;
};

nlohmann::json* InspectServerTest::golden_ = nullptr;

TEST_F(InspectServerTest, MatchesTheFloat64Reference) {
  v1::InspectRequest request;
  request.set_prompt("Once upon a time");
  request.add_hidden_state_layers(0);
  request.add_hidden_state_layers(4);
  for (int position : {0, 2, -1}) request.add_hidden_positions(position);
  request.set_include_values(true);
  v1::InspectResponse response;
  const grpc::Status status = Inspect(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();

  const std::vector<int32_t> prompt = (*golden_)["prompt"].get<std::vector<int32_t>>();
  EXPECT_EQ(std::vector<int32_t>(response.token_ids().begin(), response.token_ids().end()), prompt);
  EXPECT_THAT(response.pieces(), ElementsAre("<s>", "▁Once", "▁upon", "▁a", "▁time"));
  const int n = static_cast<int>(prompt.size());
  const int hidden = (*golden_)["hidden_size"];

  // The final hidden state [1, n, hidden], rows 0, 2 and 4.
  const v1::TensorView& final_hidden = response.final_hidden();
  EXPECT_THAT(final_hidden.shape(), ElementsAre(1, n, hidden));
  EXPECT_THAT(final_hidden.positions(), ElementsAre(0, 2, 4));
  const std::vector<float> final_rows = Rows((*golden_)["final_norm"]);
  ASSERT_EQ(final_hidden.values_size(), 3 * hidden);
  for (int i = 0; i < 3; ++i) {
    const int position = final_hidden.positions(i);
    EXPECT_LT(
        MaxAbsDifference(std::span<const float>(final_hidden.values().data() + i * hidden, hidden),
                         std::span<const float>(final_rows).subspan(position * hidden, hidden)),
        1e-4f)
        << "position " << position;
  }

  // Hidden states after layers 0 and 4, in the order asked for.
  ASSERT_EQ(response.hidden_states_size(), 2);
  for (int i = 0; i < 2; ++i) {
    const v1::LayerHiddenStates& states = response.hidden_states(i);
    EXPECT_EQ(states.layer(), i == 0 ? 0 : 4);
    EXPECT_THAT(states.hidden().shape(), ElementsAre(1, n, hidden));
    const std::vector<float> rows = Rows((*golden_)["layers"][std::to_string(states.layer())]);
    ASSERT_EQ(states.hidden().values_size(), 3 * hidden);
    for (int j = 0; j < 3; ++j) {
      const int position = states.hidden().positions(j);
      EXPECT_LT(MaxAbsDifference(
                    std::span<const float>(states.hidden().values().data() + j * hidden, hidden),
                    std::span<const float>(rows).subspan(position * hidden, hidden)),
                1e-4f)
          << "layer " << states.layer() << " position " << position;
    }
  }

  // Top 5 next tokens: the reference's ids, pieces and probabilities.
  ASSERT_EQ(response.next_tokens_size(), 5);
  for (int i = 0; i < 5; ++i) {
    const nlohmann::json& expected = (*golden_)["top_next_tokens"][i];
    EXPECT_EQ(response.next_tokens(i).id(), expected["id"].get<int>()) << "rank " << i;
    EXPECT_EQ(response.next_tokens(i).piece(), expected["piece"].get<std::string>());
    EXPECT_NEAR(response.next_tokens(i).probability(), expected["probability"].get<double>(), 1e-4);
    EXPECT_NEAR(response.next_tokens(i).logprob(), std::log(response.next_tokens(i).probability()),
                1e-5);
  }

  // The KV cache HF would hold: [1, kv_heads, n, head_dim] per layer.
  ASSERT_EQ(response.kv_cache_size(), 5);
  for (const v1::KvCacheLayer& layer : response.kv_cache()) {
    EXPECT_THAT(layer.key_shape(), ElementsAre(1, 4, n, 8));
    EXPECT_THAT(layer.value_shape(), ElementsAre(1, 4, n, 8));
  }
  EXPECT_EQ(response.kv_dtype(), v1::DTYPE_F32);

  // The module summary counts every tensor of the checkpoint once.
  EXPECT_EQ(response.parameter_count(), (*golden_)["parameter_count"].get<int64_t>());
  EXPECT_EQ(response.parameter_count(), 260032);
  EXPECT_EQ(response.model().type(), "LlamaForCausalLM");
  EXPECT_EQ(response.model().parameters(), response.parameter_count());
  EXPECT_TRUE(PrefillStreamsEnded());
}

// Without include_values: shapes only, and no hidden states leave the
// prefill; the top tokens still come from the last position.
TEST_F(InspectServerTest, ShapesWithoutValues) {
  v1::InspectRequest request;
  request.set_prompt("Once upon a time");
  request.add_hidden_state_layers(-1);
  request.set_top_k(2);
  v1::InspectResponse response;
  const grpc::Status status = Inspect(request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  EXPECT_THAT(response.final_hidden().shape(), ElementsAre(1, 5, 64));
  EXPECT_EQ(response.final_hidden().values_size(), 0);
  ASSERT_EQ(response.hidden_states_size(), 1);
  EXPECT_EQ(response.hidden_states(0).layer(), -1);
  EXPECT_THAT(response.hidden_states(0).hidden().shape(), ElementsAre(1, 5, 64));
  EXPECT_EQ(response.hidden_states(0).hidden().values_size(), 0);
  ASSERT_EQ(response.next_tokens_size(), 2);
  EXPECT_EQ(response.next_tokens(0).id(), (*golden_)["top_next_tokens"][0]["id"].get<int>());
}

TEST_F(InspectServerTest, BadRequestsAreInvalidArgumentAndTheServiceKeepsServing) {
  struct Case {
    std::string name;
    std::function<void(v1::InspectRequest&)> change;
    std::string field;
  };
  const std::vector<Case> cases = {
      {"empty prompt", [](v1::InspectRequest& r) { r.set_prompt(""); }, "prompt"},
      {"layer 5", [](v1::InspectRequest& r) { r.add_hidden_state_layers(5); },
       "hidden_state_layers[0]"},
      {"layer -2", [](v1::InspectRequest& r) { r.add_hidden_state_layers(-2); },
       "hidden_state_layers[0]"},
      {"layer twice",
       [](v1::InspectRequest& r) {
         r.add_hidden_state_layers(1);
         r.add_hidden_state_layers(1);
       },
       "hidden_state_layers[1]"},
      {"top_k 0", [](v1::InspectRequest& r) { r.set_top_k(0); }, "top_k"},
      {"top_k 101", [](v1::InspectRequest& r) { r.set_top_k(101); }, "top_k: 101 outside [1, 100]"},
      {"top_k beyond the vocabulary", [](v1::InspectRequest& r) { r.set_top_k(513); }, "top_k"},
      {"position 5", [](v1::InspectRequest& r) { r.add_hidden_positions(5); },
       "hidden_positions[0]"},
      {"position -6", [](v1::InspectRequest& r) { r.add_hidden_positions(-6); },
       "hidden_positions[0]"},
      {"position twice",
       [](v1::InspectRequest& r) {
         r.add_hidden_positions(4);
         r.add_hidden_positions(-1);
       },
       "hidden_positions[1]"},
      {"prompt beyond the context",
       [](v1::InspectRequest& r) {
         std::string text;
         for (int i = 0; i < 600; ++i) text += " a";
         r.set_prompt(text);
       },
       "max_position_embeddings"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    v1::InspectRequest request;
    request.set_prompt("Once upon a time");
    c.change(request);
    v1::InspectResponse response;
    const grpc::Status status = Inspect(request, &response);
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(status.error_message(), HasSubstr(c.field));
  }
  // None of them reached the prefill; a good request still works.
  EXPECT_EQ(engine_->stats().requests, 0);
  v1::InspectRequest good;
  good.set_prompt("Once upon a time");
  v1::InspectResponse response;
  const grpc::Status status = Inspect(good, &response);
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(response.next_tokens_size(), 5);
  EXPECT_EQ(engine_->stats().requests, 1);
  EXPECT_TRUE(PrefillStreamsEnded());
}

// A deadline that passes while the prefill is queued behind a busy worker:
// DEADLINE_EXCEEDED, the queued prefill is dropped, and the next call works.
TEST_F(InspectServerTest, DeadlineWhileQueuedDropsThePrefill) {
  absl::Notification release, blocker_done;
  PrefillWork blocker;
  blocker.tokens = {1, 403};
  blocker.kv_sink = [&release](int, const DeviceBuffer&, const DeviceBuffer&, int, int) {
    release.WaitForNotification();
    return absl::OkStatus();
  };
  blocker.done = [&blocker_done](absl::StatusOr<std::vector<float>>) { blocker_done.Notify(); };
  ASSERT_TRUE(engine_->Submit(std::move(blocker)).ok());
  const absl::Time wait_until = absl::Now() + absl::Seconds(30);
  while (engine_->stats().running != 1 && absl::Now() < wait_until) {
    absl::SleepFor(absl::Milliseconds(2));
  }
  ASSERT_EQ(engine_->stats().running, 1);

  v1::InspectRequest request;
  request.set_prompt("Once upon a time");
  v1::InspectResponse response;
  const grpc::Status status = Inspect(request, &response, absl::Milliseconds(300));
  EXPECT_EQ(status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(PrefillStreamsEnded());
  EXPECT_EQ(engine_->stats().cancelled_queued, 1);
  release.Notify();
  ASSERT_TRUE(blocker_done.WaitForNotificationWithTimeout(absl::Seconds(30)));

  v1::InspectResponse again;
  const grpc::Status ok = Inspect(request, &again);
  EXPECT_TRUE(ok.ok()) << ok.error_message();
  EXPECT_TRUE(PrefillStreamsEnded());
}

}  // namespace
}  // namespace pdserve
