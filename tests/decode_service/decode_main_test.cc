// pdserve-decode as a process next to a real pdserve-prefill (the harness of
// tests/e2e): start-up checks, serving, shutdown, and a prefill process that
// is killed while a request depends on it.
#include <signal.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <grpcpp/client_context.h>
#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"
#include "pdserve/v1/generate.grpc.pb.h"
#include "tests/decode_service/in_process_decode.h"
#include "tests/e2e/service_process.h"
#include "tests/decode_service/test_models.h"
#include "tests/testing/test_paths.h"

namespace pdserve {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

absl::StatusOr<std::unique_ptr<e2e::ServiceProcess>> StartPrefill(const std::string& model_dir) {
  e2e::ServiceProcessOptions options;
  options.binary = PDSERVE_PREFILL_BIN;
  options.args = {"--model_dir", model_dir, "--device", "cpu"};
  return e2e::ServiceProcess::Start(options);
}

absl::StatusOr<std::unique_ptr<e2e::ServiceProcess>> StartDecode(
    const std::string& model_dir, const std::string& prefill_target,
    std::vector<std::string> extra = {}) {
  e2e::ServiceProcessOptions options;
  options.binary = PDSERVE_DECODE_BIN;
  options.args = {"--model_dir", model_dir, "--prefill_target", prefill_target, "--device", "cpu",
                  "--kv_cache_blocks", "256"};
  options.args.insert(options.args.end(), extra.begin(), extra.end());
  options.startup_timeout = absl::Seconds(60);
  return e2e::ServiceProcess::Start(options);
}

TEST(DecodeMainTest, ServesGenerateThroughARealPrefillAndStopsCleanly) {
  auto prefill = StartPrefill(Stories260KDir());
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  auto decode = StartDecode(Stories260KDir(), (*prefill)->address());
  ASSERT_TRUE(decode.ok()) << decode.status();
  EXPECT_THAT((*decode)->StdoutTail(),
              HasSubstr(absl::StrCat("pdserve-decode listening on 127.0.0.1:", (*decode)->port())));

  auto stub = v1::GenerateService::NewStub((*decode)->NewChannel());
  v1::GenerateRequest request;
  request.set_prompt("Once upon a time");
  request.mutable_stopping()->set_max_new_tokens(64);
  GenerateOutcome outcome = RunGenerate(*stub, request);
  ASSERT_TRUE(outcome.status.ok()) << outcome.status.error_message();
  EXPECT_THAT(outcome.text(), HasSubstr("there was a little girl named Lily"));

  absl::StatusOr<std::vector<std::string>> services =
      e2e::ListServicesByReflection((*decode)->NewChannel(), absl::Seconds(10));
  ASSERT_TRUE(services.ok()) << services.status();
  EXPECT_THAT(*services, Contains("pdserve.v1.GenerateService"));
  EXPECT_THAT(*services, Contains("grpc.health.v1.Health"));

  EXPECT_TRUE((*decode)->Stop().ok()) << (*decode)->StderrTail();
}

TEST(DecodeMainTest, RefusesToStartWhenAPrefillServesAnotherModel) {
  TempDir dir;
  ASSERT_TRUE(WriteRandomCheckpoint(dir.path(), SmallLlamaCheckpoint()).ok());
  auto right = StartPrefill(Stories260KDir());
  auto wrong = StartPrefill(dir.path());
  ASSERT_TRUE(right.ok()) << right.status();
  ASSERT_TRUE(wrong.ok()) << wrong.status();
  auto decode = StartDecode(Stories260KDir(),
                            (*right)->address() + "," + (*wrong)->address());
  ASSERT_FALSE(decode.ok());
  EXPECT_THAT(decode.status().message(), HasSubstr("serves another model"));
  EXPECT_THAT(decode.status().message(), HasSubstr((*wrong)->address()));
}

TEST(DecodeMainTest, RefusesToStartWhenAPrefillIsUnreachable) {
  auto prefill = StartPrefill(Stories260KDir());
  ASSERT_TRUE(prefill.ok()) << prefill.status();
  const std::string dead = (*prefill)->address();
  ASSERT_TRUE((*prefill)->Stop().ok());
  auto decode = StartDecode(Stories260KDir(), dead, {"--prefill_connect_timeout_ms", "500"});
  ASSERT_FALSE(decode.ok());
  EXPECT_THAT(decode.status().message(), HasSubstr("unreachable"));
  EXPECT_THAT(decode.status().message(), HasSubstr(dead));
}

TEST(DecodeMainTest, BadFlagsExitWithAMessage) {
  auto decode = StartDecode(Stories260KDir(), "127.0.0.1:1", {"--block_size", "0"});
  ASSERT_FALSE(decode.ok());
  EXPECT_THAT(decode.status().message(), HasSubstr("--block_size"));
}

TEST(DecodeMainTest, KilledPrefillProcessEndsTheRequestWithUnavailableAndNoLeaks) {
  // A model heavy enough that its prefill is still running when it is killed.
  TempDir dir;
  RandomCheckpointOptions heavy = SmallLlamaCheckpoint();
  heavy.num_layers = 8;
  heavy.hidden_size = 512;
  heavy.num_kv_heads = 8;
  heavy.intermediate_size = 1376;
  heavy.tie_word_embeddings = true;
  heavy.max_position_embeddings = 2048;
  heavy.dtype = DType::kBF16;
  ASSERT_TRUE(WriteRandomCheckpoint(dir.path(), heavy).ok());
  auto prefill = StartPrefill(dir.path());
  ASSERT_TRUE(prefill.ok()) << prefill.status();

  InProcessDecodeOptions options;
  options.model_dir = dir.path();
  options.prefill_target = (*prefill)->address();
  auto decode = InProcessDecode::Start(options);
  ASSERT_TRUE(decode.ok()) << decode.status();

  std::string prompt;
  for (int i = 0; i < 60; ++i) prompt += "The quick brown fox jumps over the lazy dog. ";
  v1::GenerateRequest request;
  request.set_prompt(prompt);
  request.mutable_stopping()->set_max_new_tokens(4);
  GenerateOutcome outcome;
  std::atomic<bool> ended{false};
  std::thread client([&] {
    outcome = RunGenerate((*decode)->stub(), request);
    ended = true;
  });
  const absl::Time give_up = absl::Now() + absl::Seconds(60);
  while ((*decode)->engine().stats().prefilling == 0 && !ended && absl::Now() < give_up) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  // Mid-stream by now: its layers take longer than this. (Killed before the
  // first message, the outcome would be the same.)
  absl::SleepFor(absl::Milliseconds(100));
  (*prefill)->Signal(SIGKILL);
  client.join();
  EXPECT_EQ(outcome.status.error_code(), grpc::StatusCode::UNAVAILABLE)
      << outcome.status.error_message();
  EXPECT_EQ((*decode)->cache().num_free_blocks(), (*decode)->cache().num_blocks());
}

}  // namespace
}  // namespace pdserve
