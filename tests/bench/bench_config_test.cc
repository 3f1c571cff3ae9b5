#include "bench/load_generator/bench_config.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pdserve::bench {
namespace {

using ::testing::HasSubstr;

BenchConfig Valid() {
  BenchConfig config;
  config.target = "127.0.0.1:1";
  return config;
}

TEST(BenchConfigTest, DefaultsToAClosedLoopOfOne) {
  BenchConfig config = Valid();
  ASSERT_TRUE(ValidateAndComplete(config).ok());
  EXPECT_EQ(config.concurrency, 1);
  EXPECT_FALSE(config.open_loop());
  EXPECT_EQ(ConfigToJson(config)["mode"], "closed_loop");
}

TEST(BenchConfigTest, RequestRateMakesAnOpenLoop) {
  BenchConfig config = Valid();
  config.request_rate = 12.5;
  ASSERT_TRUE(ValidateAndComplete(config).ok());
  EXPECT_EQ(config.concurrency, 0);
  EXPECT_TRUE(config.open_loop());
  const nlohmann::json json = ConfigToJson(config);
  EXPECT_EQ(json["mode"], "open_loop");
  EXPECT_DOUBLE_EQ(json["request_rate"].get<double>(), 12.5);
}

// Each bad value is rejected with a message naming its flag.
TEST(BenchConfigTest, RejectsOutOfRangeFlagsNamingThem) {
  struct Case {
    const char* flag;
    void (*apply)(BenchConfig&);
  };
  const Case cases[] = {
      {"--target", [](BenchConfig& c) { c.target = ""; }},
      {"--concurrency", [](BenchConfig& c) { c.concurrency = -1; }},
      {"--request_rate", [](BenchConfig& c) { c.request_rate = -2; }},
      {"--request_rate", [](BenchConfig& c) { c.concurrency = 4, c.request_rate = 2; }},
      {"--max_in_flight", [](BenchConfig& c) { c.max_in_flight = 0; }},
      {"--num_requests", [](BenchConfig& c) { c.num_requests = -1; }},
      {"--duration_s", [](BenchConfig& c) { c.duration_s = -1; }},
      {"--duration_s", [](BenchConfig& c) { c.num_requests = 0; }},
      {"--prompt_tokens", [](BenchConfig& c) { c.prompt_tokens = 0; }},
      {"--max_new_tokens", [](BenchConfig& c) { c.max_new_tokens = -1; }},
      {"--temperature", [](BenchConfig& c) { c.temperature = -0.5f; }},
      {"--warmup_requests", [](BenchConfig& c) { c.warmup_requests = -1; }},
      {"--request_timeout_s", [](BenchConfig& c) { c.request_timeout_s = -1; }},
      {"--connect_timeout_s", [](BenchConfig& c) { c.connect_timeout_s = 0; }},
      {"--channels", [](BenchConfig& c) { c.channels = 0; }},
      {"--compare_new_tokens", [](BenchConfig& c) { c.compare_new_tokens = 0; }},
  };
  for (const Case& c : cases) {
    BenchConfig config = Valid();
    c.apply(config);
    const absl::Status status = ValidateAndComplete(config);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.flag;
    EXPECT_THAT(status.message(), HasSubstr(c.flag));
  }
}

TEST(BenchConfigTest, PromptsFileMakesPromptTokensIrrelevantAndDurationAloneSuffices) {
  BenchConfig config = Valid();
  config.prompts_file = "prompts.jsonl";
  config.prompt_tokens = 0;
  config.num_requests = 0;
  config.duration_s = 10;
  EXPECT_TRUE(ValidateAndComplete(config).ok());
}

}  // namespace
}  // namespace pdserve::bench
