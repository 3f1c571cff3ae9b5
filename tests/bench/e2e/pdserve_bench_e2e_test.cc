// pdserve-bench as a user runs it: the binary against a real prefill and
// decode instance serving stories260K, checked through its JSON report.
#include <sys/wait.h>

#include <cstdlib>
#include <fstream>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/service_process.h"

namespace pdserve {
namespace {

using e2e::ServiceProcess;
using e2e::ServiceProcessOptions;

constexpr int kRequests = 16;
constexpr int kConcurrency = 4;
constexpr int kPromptTokens = 24;
constexpr int kNewTokens = 12;

std::string ModelDir() { return std::string(PDSERVE_SOURCE_DIR) + "/models/stories260K"; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

class PdserveBenchE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    ServiceProcessOptions prefill_options;
    prefill_options.binary = PDSERVE_PREFILL_BIN;
    prefill_options.args = {"--model_dir", ModelDir(), "--device", "cpu"};
    auto prefill = ServiceProcess::Start(prefill_options);
    ASSERT_TRUE(prefill.ok()) << prefill.status();
    prefill_ = prefill->release();

    ServiceProcessOptions decode_options;
    decode_options.binary = PDSERVE_DECODE_BIN;
    decode_options.args = {"--model_dir", ModelDir(),         "--device",
                           "cpu",         "--prefill_target", prefill_->address()};
    auto decode = ServiceProcess::Start(decode_options);
    ASSERT_TRUE(decode.ok()) << decode.status();
    decode_ = decode->release();
  }

  static void TearDownTestSuite() {
    if (decode_ != nullptr) EXPECT_TRUE(decode_->Stop().ok()) << decode_->StderrTail();
    if (prefill_ != nullptr) EXPECT_TRUE(prefill_->Stop().ok()) << prefill_->StderrTail();
    delete decode_;
    delete prefill_;
    decode_ = nullptr;
    prefill_ = nullptr;
  }

  void SetUp() override { ASSERT_NE(decode_, nullptr) << "services did not start"; }

  // Runs pdserve-bench with `flags` plus --target and --json_out; returns
  // its exit code and fills `report` from the JSON file.
  int RunBench(const std::vector<std::string>& flags, nlohmann::json* report) {
    const std::string dir = ::testing::TempDir();
    const std::string name = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    const std::string json_path = absl::StrCat(dir, "/", name, ".json");
    const std::string log_path = absl::StrCat(dir, "/", name, ".log");
    std::remove(json_path.c_str());
    const std::string command =
        absl::StrCat("'", PDSERVE_BENCH_BIN, "' --target ", decode_->address(), " --json_out '",
                     json_path, "' ", absl::StrJoin(flags, " "), " > '", log_path, "' 2>&1");
    const int status = std::system(command.c_str());
    log_ = ReadFile(log_path);
    std::remove(log_path.c_str());
    const std::string json_text = ReadFile(json_path);
    std::remove(json_path.c_str());
    *report = nlohmann::json::parse(json_text, nullptr, /*allow_exceptions=*/false);
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  static ServiceProcess* prefill_;
  static ServiceProcess* decode_;
  std::string log_;  // the last run's stdout and stderr
};

ServiceProcess* PdserveBenchE2eTest::prefill_ = nullptr;
ServiceProcess* PdserveBenchE2eTest::decode_ = nullptr;

void ExpectOrderedFigure(const nlohmann::json& figure, size_t count, const char* name) {
  ASSERT_TRUE(figure.is_object()) << name;
  EXPECT_EQ(figure["count"].get<size_t>(), count) << name;
  for (const char* stat : {"mean", "p50", "p90", "p99", "max"}) {
    ASSERT_TRUE(figure[stat].is_number()) << name << "." << stat;
  }
  EXPECT_GE(figure["p50"].get<double>(), 0) << name;
  EXPECT_LE(figure["p50"].get<double>(), figure["p90"].get<double>()) << name;
  EXPECT_LE(figure["p90"].get<double>(), figure["p99"].get<double>()) << name;
  EXPECT_LE(figure["p99"].get<double>(), figure["max"].get<double>()) << name;
  EXPECT_LE(figure["mean"].get<double>(), figure["max"].get<double>()) << name;
}

TEST_F(PdserveBenchE2eTest, ClosedLoopSixteenRequestsAtConcurrencyFour) {
  nlohmann::json report;
  const int exit_code = RunBench(
      {"--concurrency", std::to_string(kConcurrency), "--num_requests", std::to_string(kRequests),
       "--prompt_tokens", std::to_string(kPromptTokens), "--max_new_tokens",
       std::to_string(kNewTokens), "--ignore_eos", "--warmup_requests", "2", "--seed", "7"},
      &report);
  ASSERT_EQ(exit_code, 0) << log_ << "\n" << decode_->StderrTail();
  ASSERT_TRUE(report.is_object()) << log_;

  EXPECT_EQ(report["requests"], kRequests);
  EXPECT_EQ(report["ok_requests"], kRequests);
  EXPECT_EQ(report["error_count"], 0);
  EXPECT_TRUE(report["errors"].is_object() && report["errors"].empty()) << report["errors"];
  // --ignore_eos: every request runs to max_new_tokens.
  EXPECT_EQ(report["output_tokens"], kRequests * kNewTokens);
  EXPECT_EQ(report["finish_reasons"]["LENGTH"], kRequests);
  EXPECT_GT(report["duration_s"].get<double>(), 0);
  EXPECT_NEAR(report["output_tokens_per_s"].get<double>(),
              kRequests * kNewTokens / report["duration_s"].get<double>(), 1e-6);
  EXPECT_NEAR(report["requests_per_s"].get<double>(),
              kRequests / report["duration_s"].get<double>(), 1e-6);
  ExpectOrderedFigure(report["ttft_ms"], kRequests, "ttft_ms");
  ExpectOrderedFigure(report["itl_ms"], kRequests * (kNewTokens - 1), "itl_ms");
  ExpectOrderedFigure(report["latency_ms"], kRequests, "latency_ms");
  // A request's first token cannot come after its stream ends.
  EXPECT_LE(report["ttft_ms"]["max"].get<double>(), report["latency_ms"]["max"].get<double>());
  EXPECT_EQ(report["warmup"]["requests"], 2);
  EXPECT_EQ(report["warmup"]["errors"], 0);

  // Synthetic prompts were calibrated with Tokenize; the decode service's
  // own prompt count (usage) must agree with it. 16 requests use the 8
  // prompts twice each, so the means are equal.
  const std::vector<int> tokens = report["prompts"]["tokens"].get<std::vector<int>>();
  ASSERT_EQ(tokens.size(), 8u);
  for (int t : tokens) {
    EXPECT_GE(t, kPromptTokens);
    EXPECT_LE(t, kPromptTokens + 8) << "one word is never this many tokens";
  }
  const double calibrated_mean = std::accumulate(tokens.begin(), tokens.end(), 0.0) / tokens.size();
  EXPECT_DOUBLE_EQ(report["prompt_tokens_mean"].get<double>(), calibrated_mean);

  const nlohmann::json& config = report["config"];
  EXPECT_EQ(config["mode"], "closed_loop");
  EXPECT_EQ(config["concurrency"], kConcurrency);
  EXPECT_EQ(config["num_requests"], kRequests);
  EXPECT_EQ(config["max_new_tokens"], kNewTokens);
  EXPECT_EQ(config["ignore_eos"], true);
  EXPECT_EQ(config["target"], decode_->address());
}

TEST_F(PdserveBenchE2eTest, OpenLoopPoissonArrivals) {
  nlohmann::json report;
  const int exit_code = RunBench(
      {"--request_rate", "50", "--max_in_flight", "8", "--num_requests", "12", "--prompt_tokens",
       "16", "--max_new_tokens", "6", "--ignore_eos", "--progress=false"},
      &report);
  ASSERT_EQ(exit_code, 0) << log_ << "\n" << decode_->StderrTail();
  EXPECT_EQ(report["requests"], 12);
  EXPECT_EQ(report["error_count"], 0);
  EXPECT_EQ(report["output_tokens"], 12 * 6);
  EXPECT_EQ(report["config"]["mode"], "open_loop");
  EXPECT_TRUE(report["open_loop"]["delayed_arrivals"].is_number());
}

TEST_F(PdserveBenchE2eTest, CompareKvCacheAgreesWithRecomputation) {
  nlohmann::json report;
  const int exit_code = RunBench(
      {"--compare_kv_cache", "--compare_new_tokens", "20", "--prompt_tokens", "12", "--ignore_eos"},
      &report);
  ASSERT_EQ(exit_code, 0) << log_ << "\n" << decode_->StderrTail();
  const nlohmann::json& comparison = report["compare_kv_cache"];
  ASSERT_TRUE(comparison.is_object()) << log_;
  EXPECT_EQ(comparison["with_cache_tokens"], 20);
  EXPECT_EQ(comparison["recompute_calls"], 20);
  EXPECT_GT(comparison["with_cache_s"].get<double>(), 0);
  EXPECT_GT(comparison["recompute_s"].get<double>(), 0);
  EXPECT_GT(comparison["ratio"].get<double>(), 0);
  // Greedy decoding with the KV cache must pick the tokens a full
  // recomputation picks; a difference is acceptable only where turning the
  // tokens into text and back changed them.
  if (!comparison["token_ids_match"].get<bool>()) {
    EXPECT_EQ(comparison["retokenization_matches"], false) << comparison.dump(2);
  }
  EXPECT_EQ(report["config"]["mode"], "compare_kv_cache");
}

}  // namespace
}  // namespace pdserve
