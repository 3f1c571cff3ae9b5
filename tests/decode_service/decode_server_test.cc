// The decode service over loopback gRPC, in-process (so its KV pool and
// engine can be inspected), with an in-process PrefillService that runs the
// real Transformer::Prefill. Every failure path checks that the KV blocks
// come back and that the service keeps serving.
#include "decode_service/decode_server.h"

#include <gmock/gmock.h>
#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/security/credentials.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "proto/convert/convert.h"
#include "tests/decode_service/fake_prefill_service.h"
#include "tests/decode_service/in_process_decode.h"
#include "tests/decode_service/test_models.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

v1::GenerateRequest Greedy(const std::string& prompt, int max_new_tokens) {
  v1::GenerateRequest request;
  request.set_prompt(prompt);
  request.mutable_stopping()->set_max_new_tokens(max_new_tokens);
  return request;
}

class DecodeServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<FakePrefillServer>> fake =
        FakePrefillServer::Start(Stories260KDir());
    ASSERT_TRUE(fake.ok()) << fake.status();
    fake_ = std::move(fake).value();
  }

  void StartDecode(InProcessDecodeOptions options = InProcessDecodeOptions()) {
    options.model_dir = Stories260KDir();
    if (options.prefill_target.empty()) options.prefill_target = fake_->address();
    absl::StatusOr<std::unique_ptr<InProcessDecode>> decode = InProcessDecode::Start(options);
    ASSERT_TRUE(decode.ok()) << decode.status();
    decode_ = std::move(decode).value();
  }

  bool AllBlocksFree() {
    return Eventually(
        [&] { return decode_->cache().num_free_blocks() == decode_->cache().num_blocks(); });
  }

  void ExpectLily() {
    GenerateOutcome outcome = RunGenerate(decode_->stub(), Greedy("Once upon a time", 64));
    ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
    EXPECT_THAT(outcome.text(), HasSubstr("there was a little girl named Lily"));
  }

  std::unique_ptr<FakePrefillServer> fake_;
  std::unique_ptr<InProcessDecode> decode_;
};

TEST_F(DecodeServerTest, GreedyStreamContinuesOnceUponATimeWithLily) {
  StartDecode();
  GenerateOutcome outcome = RunGenerate(decode_->stub(), Greedy("Once upon a time", 64));
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_THAT(outcome.text(), HasSubstr("there was a little girl named Lily"));

  const Tokenizer& tokenizer = decode_->model().tokenizer();
  const std::vector<int32_t> prompt = tokenizer.Encode("Once upon a time", true);
  std::vector<int32_t> all = prompt;
  for (const v1::GenerateResponse& response : outcome.responses) {
    all.push_back(response.token_id());
  }
  // The deltas add up to the generated text, as one Decode of the whole
  // sequence renders it after the prompt.
  const std::string whole = tokenizer.Decode(all);
  const std::string head = tokenizer.Decode(prompt);
  ASSERT_EQ(whole.substr(0, head.size()), head);
  EXPECT_EQ(outcome.text(), whole.substr(head.size()));

  for (size_t i = 0; i < outcome.responses.size(); ++i) {
    const v1::GenerateResponse& response = outcome.responses[i];
    EXPECT_EQ(response.index(), static_cast<int>(i));
    const bool last = i + 1 == outcome.responses.size();
    EXPECT_EQ(response.finish_reason() != v1::FINISH_REASON_UNSPECIFIED, last) << i;
    EXPECT_EQ(response.has_usage(), last) << i;
  }
  const v1::GenerateResponse& last = outcome.responses.back();
  EXPECT_EQ(last.usage().prompt_tokens(), static_cast<int>(prompt.size()));
  EXPECT_EQ(last.usage().generated_tokens(), static_cast<int>(outcome.responses.size()));
  EXPECT_GE(last.timings().total_ms(), last.timings().ttft_ms());
  EXPECT_GE(last.timings().ttft_ms(), 0.0);
  EXPECT_TRUE(AllBlocksFree());
}

TEST_F(DecodeServerTest, EosTokensEndTheStreamAndAreNotRendered) {
  // stories260K never emits its EOS id (its stories end with BOS), so the
  // test declares the token of " Lily", which the greedy continuation is
  // known to contain, an EOS id.
  const std::vector<int32_t> lily =
      Tokenizer::Load(Stories260KDir()).value()->Encode("Lily", /*add_bos=*/false);
  ASSERT_EQ(lily.size(), 1u);
  InProcessDecodeOptions options;
  options.eos_token_ids = std::vector<int32_t>{lily[0]};
  StartDecode(options);

  GenerateOutcome stopped = RunGenerate(decode_->stub(), Greedy("Once upon a time", 64));
  ASSERT_TRUE(stopped.status.ok()) << stopped.status.error_message();
  EXPECT_EQ(stopped.responses.back().token_id(), lily[0]);
  EXPECT_EQ(stopped.responses.back().finish_reason(), v1::FINISH_REASON_EOS);
  EXPECT_EQ(stopped.responses.back().text(), "");
  EXPECT_EQ(stopped.responses.back().usage().generated_tokens(),
            static_cast<int>(stopped.responses.size()));
  EXPECT_THAT(stopped.text(), ::testing::EndsWith("there was a little girl named"));

  v1::GenerateRequest request = Greedy("Once upon a time", 64);
  request.mutable_stopping()->set_ignore_eos(true);
  GenerateOutcome through = RunGenerate(decode_->stub(), request);
  ASSERT_TRUE(through.status.ok()) << through.status.error_message();
  EXPECT_EQ(through.responses.size(), 64u);
  EXPECT_EQ(through.responses.back().finish_reason(), v1::FINISH_REASON_LENGTH);
  int eos_seen = 0;
  for (const v1::GenerateResponse& response : through.responses) {
    if (response.token_id() != lily[0]) continue;
    ++eos_seen;
    EXPECT_EQ(response.text(), "") << "EOS rendered at index " << response.index();
  }
  EXPECT_GT(eos_seen, 0);
  // The text is that of the other tokens alone.
  const Tokenizer& tokenizer = decode_->model().tokenizer();
  std::vector<int32_t> prompt = tokenizer.Encode("Once upon a time", true);
  std::vector<int32_t> rendered = prompt;
  for (const v1::GenerateResponse& response : through.responses) {
    if (response.token_id() != lily[0]) rendered.push_back(response.token_id());
  }
  EXPECT_EQ(through.text(), tokenizer.Decode(rendered).substr(tokenizer.Decode(prompt).size()));
}

TEST_F(DecodeServerTest, ConcurrentStreamsGetTheirSoloTokens) {
  StartDecode();
  std::vector<GenerateOutcome> alone;
  for (const std::string& prompt : StoryPrompts())
    alone.push_back(RunGenerate(decode_->stub(), Greedy(prompt, 40)));
  std::vector<GenerateOutcome> together(StoryPrompts().size());
  std::vector<std::thread> clients;
  for (size_t i = 0; i < StoryPrompts().size(); ++i) {
    clients.emplace_back(
        [&, i] { together[i] = RunGenerate(decode_->stub(), Greedy(StoryPrompts()[i], 40)); });
  }
  for (std::thread& client : clients) client.join();
  for (size_t i = 0; i < StoryPrompts().size(); ++i) {
    ASSERT_TRUE(alone[i].status.ok()) << alone[i].status.error_message();
    ASSERT_TRUE(together[i].status.ok()) << together[i].status.error_message();
    EXPECT_EQ(together[i].token_ids(), alone[i].token_ids()) << StoryPrompts()[i];
    EXPECT_EQ(together[i].text(), alone[i].text()) << StoryPrompts()[i];
  }
  EXPECT_TRUE(AllBlocksFree());
}

TEST_F(DecodeServerTest, SeededSamplingIsReproducible) {
  StartDecode();
  v1::GenerateRequest request = Greedy("Once upon a time", 48);
  request.mutable_sampling()->set_temperature(1.0f);
  request.mutable_sampling()->set_top_k(40);
  request.mutable_sampling()->set_top_p(0.9f);
  request.mutable_sampling()->set_seed(42);
  request.mutable_stopping()->set_ignore_eos(true);
  GenerateOutcome first = RunGenerate(decode_->stub(), request);
  GenerateOutcome second = RunGenerate(decode_->stub(), request);
  ASSERT_TRUE(first.status.ok()) << first.status.error_message();
  ASSERT_TRUE(second.status.ok());
  EXPECT_EQ(first.token_ids(), second.token_ids());
  EXPECT_EQ(first.text(), second.text());
}

TEST_F(DecodeServerTest, CancelMidStreamFreesBlocksAndServingGoesOn) {
  StartDecode();
  v1::GenerateRequest request = Greedy("Once upon a time", 400);
  request.mutable_stopping()->set_ignore_eos(true);
  GenerateOutcome outcome = RunGenerate(decode_->stub(), request, /*cancel_after=*/3);
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_LT(outcome.responses.size(), 400u);
  EXPECT_TRUE(AllBlocksFree());
  EXPECT_TRUE(Eventually([&] { return decode_->engine().stats().running == 0; }));
  ExpectLily();
}

TEST_F(DecodeServerTest, FullQueueIsResourceExhaustedAndBlocksComeBack) {
  InProcessDecodeOptions options;
  options.kv_cache_blocks = 1;  // one request at a time
  options.max_queue = 1;
  StartDecode(options);
  FakePrefillOptions hold;
  hold.fault = PrefillFault::kHoldAfterFirstChunk;
  fake_->service().set_options(hold);

  GenerateOutcome first, second;
  std::thread a([&] { first = RunGenerate(decode_->stub(), Greedy("Once upon a time", 4)); });
  ASSERT_TRUE(fake_->service().WaitForHeld(absl::Seconds(30)));
  std::thread b([&] { second = RunGenerate(decode_->stub(), Greedy("The little dog", 4)); });
  ASSERT_TRUE(Eventually([&] { return decode_->engine().stats().waiting == 1; }));

  GenerateOutcome third = RunGenerate(decode_->stub(), Greedy("Mom said", 4));
  EXPECT_EQ(third.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(third.status.error_message(), HasSubstr("--max_queue"));
  EXPECT_TRUE(third.responses.empty());

  fake_->service().Release();
  a.join();
  b.join();
  EXPECT_TRUE(first.status.ok()) << first.status.error_message();
  EXPECT_TRUE(second.status.ok()) << second.status.error_message();
  EXPECT_TRUE(AllBlocksFree());
}

struct BadRequest {
  const char* name;
  std::function<void(v1::GenerateRequest&)> mutate;
  const char* field;
};

TEST_F(DecodeServerTest, BadRequestsAreInvalidArgumentNamingTheField) {
  InProcessDecodeOptions options;
  options.limits.max_new_tokens_cap = 300;
  StartDecode(options);
  std::string long_prompt;
  for (int i = 0; i < 200; ++i) long_prompt += "Once upon a time ";
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const BadRequest cases[] = {
      {"empty prompt", [](auto& r) { r.set_prompt(""); }, "prompt"},
      {"negative temperature", [](auto& r) { r.mutable_sampling()->set_temperature(-0.5f); },
       "sampling.temperature"},
      {"NaN temperature", [&](auto& r) { r.mutable_sampling()->set_temperature(nan); },
       "sampling.temperature"},
      {"top_p 0", [](auto& r) { r.mutable_sampling()->set_top_p(0.0f); }, "sampling.top_p"},
      {"top_p above 1", [](auto& r) { r.mutable_sampling()->set_top_p(1.5f); }, "sampling.top_p"},
      {"negative top_k", [](auto& r) { r.mutable_sampling()->set_top_k(-1); }, "sampling.top_k"},
      {"zero repetition penalty",
       [](auto& r) { r.mutable_sampling()->set_repetition_penalty(0.0f); },
       "sampling.repetition_penalty"},
      {"negative max_new_tokens", [](auto& r) { r.mutable_stopping()->set_max_new_tokens(-1); },
       "stopping.max_new_tokens"},
      {"max_new_tokens above the cap",
       [](auto& r) { r.mutable_stopping()->set_max_new_tokens(301); }, "--max_new_tokens_cap"},
      {"prompt beyond the context", [&](auto& r) { r.set_prompt(long_prompt); },
       "max_position_embeddings"},
  };
  for (const BadRequest& c : cases) {
    SCOPED_TRACE(c.name);
    v1::GenerateRequest request = Greedy("Once upon a time", 8);
    c.mutate(request);
    GenerateOutcome outcome = RunGenerate(decode_->stub(), request);
    EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_THAT(outcome.status.error_message(), HasSubstr(c.field));
    EXPECT_TRUE(outcome.responses.empty());
  }
  EXPECT_EQ(fake_->service().calls(), 0) << "validation must come before any prefill";
  EXPECT_EQ(decode_->cache().num_free_blocks(), decode_->cache().num_blocks());
  ExpectLily();
}

TEST_F(DecodeServerTest, ContextOverflowNamesMaxNewTokensAndTheLimit) {
  StartDecode();
  // 512 positions: a prompt of ~10 tokens leaves ~500; 600 cannot fit but is
  // under the default cap of 2048.
  GenerateOutcome outcome =
      RunGenerate(decode_->stub(), Greedy("Once upon a time there was a girl", 600));
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(outcome.status.error_message(), HasSubstr("stopping.max_new_tokens"));
  EXPECT_THAT(outcome.status.error_message(), HasSubstr("max_position_embeddings"));
}

TEST_F(DecodeServerTest, TokenizeAndGetModelInfoAnswerFromTheModel) {
  StartDecode();
  const Tokenizer& tokenizer = decode_->model().tokenizer();
  for (bool add_bos : {true, false}) {
    grpc::ClientContext context;
    v1::TokenizeRequest request;
    request.set_text("Once upon a time");
    request.set_add_bos(add_bos);
    v1::TokenizeResponse response;
    ASSERT_TRUE(decode_->stub().Tokenize(&context, request, &response).ok());
    const std::vector<int32_t> expected = tokenizer.Encode("Once upon a time", add_bos);
    ASSERT_EQ(std::vector<int32_t>(response.token_ids().begin(), response.token_ids().end()),
              expected);
    ASSERT_EQ(response.pieces_size(), static_cast<int>(expected.size()));
    for (size_t i = 0; i < expected.size(); ++i) {
      EXPECT_EQ(response.pieces(i), tokenizer.IdToPiece(expected[i]));
    }
  }
  grpc::ClientContext context;
  v1::ModelInfo info;
  ASSERT_TRUE(decode_->stub().GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  absl::StatusOr<ModelFingerprint> fingerprint = FromProto(info.fingerprint());
  ASSERT_TRUE(fingerprint.ok());
  EXPECT_TRUE(CheckSameModel(decode_->model().fingerprint(), *fingerprint).ok());
  EXPECT_EQ(info.max_position_embeddings(), 512);
  EXPECT_EQ(std::vector<int32_t>(info.eos_token_ids().begin(), info.eos_token_ids().end()),
            decode_->model().config().eos_token_ids);
  EXPECT_EQ(info.device(), "cpu");
}

// Sends `bytes` as the request of `method` through a generic stub and
// returns the call's status and how many response messages came back.
struct RawOutcome {
  grpc::Status status;
  int messages = 0;
};
RawOutcome CallRaw(int port, const std::string& method, const std::string& bytes) {
  std::shared_ptr<grpc::Channel> channel =
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port), grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + absl::Seconds(30)));
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1);
  auto call = stub.PrepareCall(&context, method, &cq);
  void* tag = nullptr;
  bool ok = false;
  RawOutcome outcome;
  call->StartCall(reinterpret_cast<void*>(1));
  EXPECT_TRUE(cq.Next(&tag, &ok));
  call->WriteLast(request, grpc::WriteOptions(), reinterpret_cast<void*>(2));
  EXPECT_TRUE(cq.Next(&tag, &ok));
  while (true) {
    grpc::ByteBuffer response;
    call->Read(&response, reinterpret_cast<void*>(3));
    EXPECT_TRUE(cq.Next(&tag, &ok));
    if (!ok) break;
    ++outcome.messages;
  }
  call->Finish(&outcome.status, reinterpret_cast<void*>(4));
  EXPECT_TRUE(cq.Next(&tag, &ok));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return outcome;
}

// Generate and Tokenize parse their requests themselves: bytes that are not
// a request, or a string field that is not UTF-8 (which a C++ client can
// send), are INVALID_ARGUMENT naming the message, not gRPC's bare
// UNIMPLEMENTED; an empty message is a valid request with an empty prompt.
// Nothing is left allocated, and the server still serves.
TEST_F(DecodeServerTest, UnparseableRequestsAreInvalidArgument) {
  StartDecode();
  v1::GenerateRequest generate;
  generate.set_prompt("Once upon a time");
  std::string bad_utf8 = generate.SerializeAsString();
  bad_utf8.replace(bad_utf8.find("Once"), 4, "\xff\xfe\x80" "A");
  const std::string garbage("\x0a\x64\x01\x02", 4);  // prompt claims 100 bytes, has 2
  for (const std::string& bytes : {bad_utf8, garbage}) {
    const RawOutcome outcome =
        CallRaw(decode_->port(), "/pdserve.v1.GenerateService/Generate", bytes);
    EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
        << outcome.status.error_message();
    EXPECT_THAT(outcome.status.error_message(), ::testing::HasSubstr("GenerateRequest"));
    EXPECT_EQ(outcome.messages, 0);
  }
  const RawOutcome empty = CallRaw(decode_->port(), "/pdserve.v1.GenerateService/Generate", "");
  EXPECT_EQ(empty.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(empty.status.error_message(), ::testing::HasSubstr("prompt"));

  v1::TokenizeRequest tokenize;
  tokenize.set_text("Once upon a time");
  std::string bad_text = tokenize.SerializeAsString();
  bad_text.replace(bad_text.find("Once"), 4, "\xc3(ab");
  const RawOutcome refused =
      CallRaw(decode_->port(), "/pdserve.v1.GenerateService/Tokenize", bad_text);
  EXPECT_EQ(refused.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(refused.status.error_message(), ::testing::HasSubstr("TokenizeRequest"));
  const RawOutcome tokenized = CallRaw(decode_->port(), "/pdserve.v1.GenerateService/Tokenize",
                                       tokenize.SerializeAsString());
  EXPECT_TRUE(tokenized.status.ok()) << tokenized.status.error_message();
  EXPECT_EQ(tokenized.messages, 1);

  EXPECT_TRUE(AllBlocksFree());
  ExpectLily();
}

TEST_F(DecodeServerTest, ClientDeadlineIsDeadlineExceededAndFreesBlocks) {
  StartDecode();
  FakePrefillOptions hold;
  hold.fault = PrefillFault::kHoldAfterFirstChunk;
  fake_->service().set_options(hold);
  GenerateOutcome outcome =
      RunGenerate(decode_->stub(), Greedy("Once upon a time", 8), -1, absl::Milliseconds(300));
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_TRUE(AllBlocksFree());
  fake_->service().set_options(FakePrefillOptions());
  fake_->service().Release();
  ExpectLily();
}

TEST_F(DecodeServerTest, PrefillDyingMidStreamIsUnavailableWithoutLeaks) {
  StartDecode();
  FakePrefillOptions hold;
  hold.fault = PrefillFault::kHoldAfterFirstChunk;
  fake_->service().set_options(hold);
  GenerateOutcome outcome;
  std::thread client(
      [&] { outcome = RunGenerate(decode_->stub(), Greedy("Once upon a time", 8)); });
  ASSERT_TRUE(fake_->service().WaitForHeld(absl::Seconds(30)));
  fake_->Kill();
  client.join();
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << outcome.status.error_message();
  EXPECT_TRUE(AllBlocksFree());

  // No prefill left: new requests fail fast with UNAVAILABLE, still leak-free.
  GenerateOutcome after = RunGenerate(decode_->stub(), Greedy("Once upon a time", 8));
  EXPECT_EQ(after.status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(AllBlocksFree());
}

TEST_F(DecodeServerTest, PrefillOfAnotherModelFailsTheStreamWithFailedPrecondition) {
  TempDir dir;
  ASSERT_TRUE(WriteRandomCheckpoint(dir.path(), SmallLlamaCheckpoint()).ok());
  absl::StatusOr<std::unique_ptr<FakePrefillServer>> wrong = FakePrefillServer::Start(dir.path());
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  InProcessDecodeOptions options;
  options.prefill_target = (*wrong)->address();
  StartDecode(options);
  GenerateOutcome outcome = RunGenerate(decode_->stub(), Greedy("Once upon a time", 8));
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::FAILED_PRECONDITION)
      << outcome.status.error_message();
  EXPECT_TRUE(outcome.responses.empty());
  EXPECT_TRUE(AllBlocksFree());
}

TEST_F(DecodeServerTest, ThreadCountReturnsAfterABurstOfCancelledStreams) {
  StartDecode();
  ExpectLily();  // warm: channels connected, pools started
  const int threads_at_start = ProcessThreadCount();
  ASSERT_GT(threads_at_start, 0);
  constexpr int kBurst = 32;
  std::vector<std::thread> clients;
  for (int i = 0; i < kBurst; ++i) {
    clients.emplace_back([&, i] {
      v1::GenerateRequest request = Greedy(StoryPrompts()[i % StoryPrompts().size()], 300);
      request.mutable_stopping()->set_ignore_eos(true);
      GenerateOutcome outcome = RunGenerate(decode_->stub(), request, /*cancel_after=*/2);
      EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::CANCELLED);
    });
  }
  for (std::thread& client : clients) client.join();
  EXPECT_TRUE(AllBlocksFree());
  // gRPC's own pools may keep a few more threads than before the burst;
  // anything per request would show up as dozens.
  EXPECT_TRUE(Eventually([&] { return ProcessThreadCount() <= threads_at_start + 6; }))
      << "threads: " << threads_at_start << " before, " << ProcessThreadCount() << " after";
  ExpectLily();
}

}  // namespace
}  // namespace pdserve
