#include "bench/load_generator/bench_runner.h"

#include <algorithm>
#include <cstdio>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/bench/fake_generate_service.h"

namespace pdserve::bench {
namespace {

using ::testing::Each;
using ::testing::Eq;

class BenchRunnerTest : public ::testing::Test {
 protected:
  BenchConfig Config() {
    BenchConfig config;
    config.target = server_.address();
    config.num_requests = 6;
    config.prompt_tokens = 10;
    config.max_new_tokens = 3;
    config.progress = false;
    config.connect_timeout_s = 10;
    return config;
  }

  testing::FakeServer server_;
};

TEST_F(BenchRunnerTest, ClosedLoopReportHasTheDocumentedFieldsAndIsWritten) {
  BenchConfig config = Config();
  config.concurrency = 2;
  config.warmup_requests = 2;
  config.channels = 2;
  config.json_out = ::testing::TempDir() + "/bench_runner_test_report.json";
  ASSERT_TRUE(ValidateAndComplete(config).ok());
  auto report = RunBench(config);
  ASSERT_TRUE(report.ok()) << report.status();

  std::ifstream in(config.json_out);
  const nlohmann::json written = nlohmann::json::parse(in);
  std::remove(config.json_out.c_str());
  EXPECT_EQ(written, *report);

  EXPECT_EQ(written["requests"], 6);
  EXPECT_EQ(written["error_count"], 0);
  EXPECT_TRUE(written["errors"].empty());
  EXPECT_EQ(written["output_tokens"], 18);
  EXPECT_GT(written["output_tokens_per_s"].get<double>(), 0);
  EXPECT_GT(written["requests_per_s"].get<double>(), 0);
  EXPECT_GT(written["duration_s"].get<double>(), 0);
  for (const char* figure : {"ttft_ms", "itl_ms", "latency_ms"}) {
    for (const char* stat : {"mean", "p50", "p90", "p99", "max"}) {
      EXPECT_TRUE(written[figure][stat].is_number()) << figure << "." << stat;
    }
  }
  EXPECT_EQ(written["itl_ms"]["count"], 12);
  EXPECT_EQ(written["warmup"]["requests"], 2);
  EXPECT_EQ(written["config"]["mode"], "closed_loop");
  EXPECT_EQ(written["config"]["concurrency"], 2);
  // The fake counts one token per word plus BOS: 9 words reach 10 exactly.
  EXPECT_EQ(written["prompts"]["source"], "synthetic");
  EXPECT_THAT(written["prompts"]["tokens"].get<std::vector<int>>(), Each(Eq(10)));
  EXPECT_EQ(written["prompt_tokens_mean"], 10.0);

  std::vector<std::string> ids = server_.service().seen_request_ids();
  EXPECT_EQ(std::count_if(ids.begin(), ids.end(),
                          [](const std::string& id) { return id.starts_with("warmup-"); }),
            2);
  EXPECT_EQ(std::count_if(ids.begin(), ids.end(),
                          [](const std::string& id) { return id.starts_with("bench-"); }),
            6);
}

TEST_F(BenchRunnerTest, OpenLoopWithPromptsFileCountsErrorsByCode) {
  const std::string prompts = ::testing::TempDir() + "/bench_runner_test_prompts.jsonl";
  {
    std::ofstream out(prompts);
    out << "{\"prompt\": \"fail:8\"}\nhello there\n";
  }
  BenchConfig config = Config();
  config.request_rate = 1000;
  config.prompts_file = prompts;
  ASSERT_TRUE(ValidateAndComplete(config).ok());
  auto report = RunBench(config);
  std::remove(prompts.c_str());
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ((*report)["requests"], 6);
  EXPECT_EQ((*report)["error_count"], 3);
  EXPECT_EQ((*report)["errors"]["RESOURCE_EXHAUSTED"], 3);
  EXPECT_EQ((*report)["output_tokens"], 9);
  EXPECT_EQ((*report)["config"]["mode"], "open_loop");
  EXPECT_TRUE((*report)["open_loop"].contains("delayed_arrivals"));
  EXPECT_EQ((*report)["prompts"]["source"], "file");
  EXPECT_EQ(server_.service().open_streams(), 0);
}

TEST_F(BenchRunnerTest, CompareModeReportsBothTimes) {
  BenchConfig config = Config();
  config.compare_kv_cache = true;
  config.compare_new_tokens = 4;
  ASSERT_TRUE(ValidateAndComplete(config).ok());
  auto report = RunBench(config);
  ASSERT_TRUE(report.ok()) << report.status();
  const nlohmann::json& comparison = (*report)["compare_kv_cache"];
  EXPECT_EQ(comparison["recompute_calls"], 4);
  EXPECT_EQ(comparison["token_ids_match"], true);
  EXPECT_TRUE(comparison["with_cache_s"].is_number());
  EXPECT_TRUE(comparison["recompute_s"].is_number());
  EXPECT_TRUE(comparison["ratio"].is_number());
  EXPECT_EQ((*report)["config"]["mode"], "compare_kv_cache");
  EXPECT_FALSE(report->contains("requests"));
}

TEST_F(BenchRunnerTest, UnreachableTargetIsUnavailable) {
  BenchConfig config = Config();
  config.target = "127.0.0.1:1";
  config.connect_timeout_s = 0.3;
  ASSERT_TRUE(ValidateAndComplete(config).ok());
  auto report = RunBench(config);
  EXPECT_EQ(report.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(report.status().message(), ::testing::HasSubstr("127.0.0.1:1"));
}

}  // namespace
}  // namespace pdserve::bench
