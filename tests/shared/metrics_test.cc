// shared/metrics: what the registry renders, read back with the independent
// parser of tests/testing/metrics_text.h, and the /metrics HTTP endpoint.
#include "shared/metrics.h"

#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/testing/metrics_text.h"

namespace pdserve {
namespace {

using ::testing::HasSubstr;

// Threads of this process, from /proc/self/status.
int ThreadCount() {
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  }
  return -1;
}

TEST(MetricsRegistryTest, RendersCountersGaugesAndLabels) {
  MetricsRegistry registry;
  Counter ok = registry.AddCounter("t_requests_total", "Requests.", {{"code", "OK"}});
  Counter bad = registry.AddCounter("t_requests_total", "Requests.", {{"code", "INVALID_ARGUMENT"}});
  Gauge queue = registry.AddGauge("t_queue", "Waiting requests.");
  ok.Increment();
  ok.Increment(2);
  ok.Increment(-5);  // ignored: counters never go down
  bad.Increment();
  // The same (name, labels) is the same counter.
  registry.AddCounter("t_requests_total", "Requests.", {{"code", "OK"}}).Increment();
  queue.Set(7);
  queue.Decrement(2);
  Counter quoted = registry.AddCounter("t_odd_total", "Odd labels.", {{"what", "a\"b\\c\nd"}});
  quoted.Increment();

  absl::StatusOr<MetricsText> parsed = ParseMetricsText(registry.RenderText());
  ASSERT_TRUE(parsed.ok()) << parsed.status() << "\n" << registry.RenderText();
  EXPECT_EQ(parsed->types.at("t_requests_total"), "counter");
  EXPECT_EQ(parsed->types.at("t_queue"), "gauge");
  EXPECT_EQ(parsed->helps.at("t_requests_total"), "Requests.");
  EXPECT_EQ(*parsed->Value("t_requests_total", {{"code", "OK"}}), 4);
  EXPECT_EQ(*parsed->Value("t_requests_total", {{"code", "INVALID_ARGUMENT"}}), 1);
  EXPECT_EQ(*parsed->Value("t_queue"), 5);
  EXPECT_EQ(*parsed->Value("t_odd_total", {{"what", "a\"b\\c\nd"}}), 1);
  EXPECT_EQ(ok.value(), 4);
  EXPECT_EQ(queue.value(), 5);
}

TEST(MetricsRegistryTest, HistogramBucketsAreCumulative) {
  MetricsRegistry registry;
  Histogram latency = registry.AddHistogram("t_latency_ms", "Latency.", {1, 10, 100});
  for (double v : {0.5, 1.0, 3.0, 50.0, 1000.0}) latency.Observe(v);
  absl::StatusOr<MetricsText> parsed = ParseMetricsText(registry.RenderText());
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->types.at("t_latency_ms"), "histogram");
  // le is "less than or equal": 1.0 falls into the first bucket.
  EXPECT_EQ(*parsed->Value("t_latency_ms_bucket", {{"le", "1"}}), 2);
  EXPECT_EQ(*parsed->Value("t_latency_ms_bucket", {{"le", "10"}}), 3);
  EXPECT_EQ(*parsed->Value("t_latency_ms_bucket", {{"le", "100"}}), 4);
  EXPECT_EQ(*parsed->Value("t_latency_ms_bucket", {{"le", "+Inf"}}), 5);
  EXPECT_EQ(*parsed->Value("t_latency_ms_count"), 5);
  EXPECT_DOUBLE_EQ(*parsed->Value("t_latency_ms_sum"), 1054.5);
}

TEST(MetricsRegistryTest, BucketHelpersIncrease) {
  for (const std::vector<double>& bounds : {LatencyBucketsMs(), TokenGapBucketsMs()}) {
    ASSERT_FALSE(bounds.empty());
    for (size_t i = 1; i < bounds.size(); ++i) EXPECT_LT(bounds[i - 1], bounds[i]);
  }
}

TEST(MetricsRegistryTest, CollectHooksRunBeforeEveryCollection) {
  MetricsRegistry registry;
  Gauge sampled = registry.AddGauge("t_sampled", "Sampled at collection.");
  int calls = 0;
  registry.AddCollectHook([&] { sampled.Set(++calls * 10); });
  EXPECT_EQ(*ParseMetricsText(registry.RenderText())->Value("t_sampled"), 10);
  EXPECT_EQ(*ParseMetricsText(registry.RenderText())->Value("t_sampled"), 20);
  EXPECT_EQ(calls, 2);
}

TEST(MetricsRegistryTest, ConcurrentIncrementsAllCount) {
  MetricsRegistry registry;
  Counter counter = registry.AddCounter("t_concurrent_total", "Concurrent increments.");
  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&registry] {
      for (int i = 0; i < 1000; ++i) {
        registry.AddCounter("t_concurrent_total", "Concurrent increments.").Increment();
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(counter.value(), 8000);
}

TEST(MetricsRegistryDeathTest, BadNameAbortsNamingIt) {
  MetricsRegistry registry;
  EXPECT_DEATH(registry.AddCounter("1bad name", "x"), "1bad name");
  registry.AddCounter("t_typed", "x");
  EXPECT_DEATH(registry.AddGauge("t_typed", "x"), "t_typed");
}

TEST(MetricsHttpServerTest, ServesMetricsOverHttp) {
  MetricsRegistry registry;
  registry.AddCounter("t_served_total", "Served.", {{"code", "OK"}}).Increment(3);
  const int threads_before = ThreadCount();
  {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
        MetricsHttpServer::Start("127.0.0.1:0", &registry);
    ASSERT_TRUE(server.ok()) << server.status();
    ASSERT_GT((*server)->port(), 0);

    absl::StatusOr<HttpResponse> response = HttpGet((*server)->port(), "/metrics");
    ASSERT_TRUE(response.ok()) << response.status();
    EXPECT_EQ(response->status_code, 200);
    EXPECT_THAT(response->headers["content-type"], HasSubstr("text/plain"));
    absl::StatusOr<MetricsText> parsed = ParseMetricsText(response->body);
    ASSERT_TRUE(parsed.ok()) << parsed.status() << "\n" << response->body;
    EXPECT_EQ(*parsed->Value("t_served_total", {{"code", "OK"}}), 3);

    // The value is read at scrape time.
    registry.AddCounter("t_served_total", "Served.", {{"code", "OK"}}).Increment();
    absl::StatusOr<MetricsText> again = ScrapeMetrics((*server)->port());
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_EQ(*again->Value("t_served_total", {{"code", "OK"}}), 4);

    absl::StatusOr<HttpResponse> other = HttpGet((*server)->port(), "/other");
    ASSERT_TRUE(other.ok()) << other.status();
    EXPECT_EQ(other->status_code, 404);

    // A second server on the same port cannot bind.
    const std::string taken = "127.0.0.1:" + std::to_string((*server)->port());
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> clash =
        MetricsHttpServer::Start(taken, &registry, "--metrics_listen");
    EXPECT_EQ(clash.status().code(), absl::StatusCode::kUnavailable);
    EXPECT_THAT(clash.status().message(), HasSubstr("--metrics_listen"));
    EXPECT_THAT(clash.status().message(), HasSubstr(taken));
  }
  // The server's threads are gone with it.
  EXPECT_EQ(ThreadCount(), threads_before);
}

TEST(MetricsHttpServerTest, RejectsAddressWithoutPort) {
  MetricsRegistry registry;
  for (const char* listen : {"127.0.0.1", "127.0.0.1:", "127.0.0.1:http", "localhost:0",
                             "127.0.0.1:70000"}) {
    absl::StatusOr<std::unique_ptr<MetricsHttpServer>> server =
        MetricsHttpServer::Start(listen, &registry, "--metrics_listen");
    EXPECT_EQ(server.status().code(), absl::StatusCode::kInvalidArgument) << listen;
    EXPECT_THAT(server.status().message(), HasSubstr("--metrics_listen")) << listen;
  }
}

}  // namespace
}  // namespace pdserve
