#include "bench/load_generator/run_summary.h"

#include <vector>

#include "bench/load_generator/report.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pdserve::bench {
namespace {

using ::testing::ElementsAre;
using ::testing::Pair;

RequestResult Ok(double ttft, std::vector<double> itl, double latency, int prompt_tokens) {
  RequestResult r;
  r.ttft_ms = ttft;
  r.output_tokens = static_cast<int64_t>(itl.size()) + 1;
  r.itl_ms = std::move(itl);
  r.latency_ms = latency;
  r.finish_reason = "LENGTH";
  r.prompt_tokens = prompt_tokens;
  r.server_timings = ServerTimings{.queue_ms = 1, .prefill_ms = 2, .ttft_ms = 3};
  return r;
}

RequestResult Failed(absl::StatusCode code, std::string message, int64_t tokens_before) {
  RequestResult r;
  r.code = code;
  r.error_message = std::move(message);
  r.output_tokens = tokens_before;
  if (tokens_before > 0) r.ttft_ms = 1000;  // must not enter the TTFT figures
  r.latency_ms = 5000;
  return r;
}

TEST(SummarizeRunTest, CountsTokensErrorsAndRatesByHand) {
  const std::vector<RequestResult> results = {
      Ok(10, {1, 2, 3}, 20, 7),
      Ok(30, {5}, 40, 9),
      Failed(absl::StatusCode::kResourceExhausted, "KV pool full (64 blocks)", 0),
      Failed(absl::StatusCode::kResourceExhausted, "KV pool full (64 blocks)", 0),
      Failed(absl::StatusCode::kDeadlineExceeded, "deadline", 2),
  };
  const RunSummary s = SummarizeRun(results, /*duration_s=*/2.0);
  EXPECT_EQ(s.requests, 5);
  EXPECT_EQ(s.ok_requests, 2);
  EXPECT_EQ(s.error_count, 3);
  EXPECT_THAT(s.errors_by_code,
              ElementsAre(Pair("DEADLINE_EXCEEDED", 1), Pair("RESOURCE_EXHAUSTED", 2)));
  EXPECT_THAT(s.error_samples, ElementsAre("RESOURCE_EXHAUSTED: KV pool full (64 blocks)",
                                           "DEADLINE_EXCEEDED: deadline"));
  EXPECT_THAT(s.finish_reasons, ElementsAre(Pair("LENGTH", 2)));
  EXPECT_EQ(s.output_tokens, 4 + 2 + 2);  // tokens of failed calls count too
  EXPECT_DOUBLE_EQ(s.output_tokens_per_s, 8 / 2.0);
  EXPECT_DOUBLE_EQ(s.requests_per_s, 2 / 2.0);
  EXPECT_DOUBLE_EQ(s.prompt_tokens_mean, 8);
  EXPECT_EQ(s.ttft_ms.count, 2u);
  EXPECT_DOUBLE_EQ(s.ttft_ms.mean, 20);
  EXPECT_DOUBLE_EQ(s.ttft_ms.max, 30);
  EXPECT_EQ(s.itl_ms.count, 4u);  // pooled: 1, 2, 3, 5
  EXPECT_DOUBLE_EQ(s.itl_ms.mean, 11 / 4.0);
  EXPECT_DOUBLE_EQ(s.itl_ms.p50, 2.5);
  EXPECT_EQ(s.latency_ms.count, 2u);
  EXPECT_DOUBLE_EQ(s.latency_ms.max, 40);
  EXPECT_EQ(s.server_prefill_ms.count, 2u);
  EXPECT_DOUBLE_EQ(s.server_prefill_ms.mean, 2);
}

TEST(SummarizeRunTest, AllFailedGivesEmptyLatencyFiguresAndNullJson) {
  const std::vector<RequestResult> results = {
      Failed(absl::StatusCode::kUnavailable, "no prefill", 0)};
  const RunSummary s = SummarizeRun(results, 1.0);
  EXPECT_EQ(s.ttft_ms.count, 0u);
  const nlohmann::json json = RunSummaryToJson(s);
  EXPECT_EQ(json["errors"]["UNAVAILABLE"], 1);
  EXPECT_TRUE(json["ttft_ms"]["p50"].is_null());
  EXPECT_EQ(json["ttft_ms"]["count"], 0);
}

TEST(RunSummaryToJsonTest, HasEveryDocumentedField) {
  const std::vector<RequestResult> results = {Ok(10, {1, 2}, 20, 7)};
  const nlohmann::json json = RunSummaryToJson(SummarizeRun(results, 0.5));
  for (const char* field :
       {"requests", "ok_requests", "error_count", "errors", "error_samples", "finish_reasons",
        "duration_s", "output_tokens", "output_tokens_per_s", "requests_per_s",
        "prompt_tokens_mean", "ttft_ms", "itl_ms", "latency_ms", "server"}) {
    EXPECT_TRUE(json.contains(field)) << field;
  }
  for (const char* stat : {"count", "mean", "p50", "p90", "p99", "max"}) {
    EXPECT_TRUE(json["itl_ms"].contains(stat)) << stat;
  }
  EXPECT_TRUE(json["errors"].is_object());
  EXPECT_TRUE(json["errors"].empty());
  EXPECT_DOUBLE_EQ(json["output_tokens_per_s"].get<double>(), 3 / 0.5);
  EXPECT_DOUBLE_EQ(json["itl_ms"]["max"].get<double>(), 2);
}

TEST(StatusCodeNameTest, UsesTheCanonicalNames) {
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kOk), "OK");
  EXPECT_EQ(StatusCodeName(absl::StatusCode::kInvalidArgument), "INVALID_ARGUMENT");
  EXPECT_EQ(StatusCodeName(static_cast<absl::StatusCode>(14)), "UNAVAILABLE");
}

}  // namespace
}  // namespace pdserve::bench
