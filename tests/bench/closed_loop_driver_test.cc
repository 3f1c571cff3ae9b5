#include "bench/load_generator/closed_loop_driver.h"

#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <set>

#include "bench/load_generator/request_source.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/bench/fake_generate_service.h"

namespace pdserve::bench {
namespace {

class ClosedLoopDriverTest : public ::testing::Test {
 protected:
  ClosedLoopDriverTest() : stub_(server_.NewStub()) {}

  LoadTarget Target(const RequestSource& source, ProgressCounters* progress) {
    LoadTarget target;
    target.stubs = {stub_.get()};
    target.make_request = [&source](int64_t index) { return source.Make(index); };
    target.progress = progress;
    return target;
  }

  testing::FakeServer server_;
  std::unique_ptr<v1::GenerateService::Stub> stub_;
};

std::set<int64_t> Indices(const LoadRun& run) {
  std::set<int64_t> indices;
  for (const RequestResult& r : run.results) indices.insert(r.index);
  return indices;
}

TEST_F(ClosedLoopDriverTest, EveryRequestOnceNeverMoreThanConcurrencyOpen) {
  const RequestSource source({"a b c", "d e"}, RequestOptions{.max_new_tokens = 6});
  ProgressCounters progress;
  const LoadRun run = RunClosedLoop(Target(source, &progress),
                                    ClosedLoopOptions{.concurrency = 4, .num_requests = 40});
  ASSERT_EQ(run.results.size(), 40u);
  EXPECT_EQ(Indices(run).size(), 40u);
  EXPECT_EQ(*Indices(run).rbegin(), 39);
  for (const RequestResult& r : run.results) {
    EXPECT_EQ(r.code, absl::StatusCode::kOk) << r.error_message;
    EXPECT_EQ(r.output_tokens, 6);
  }
  EXPECT_LE(server_.service().max_open_streams(), 4);
  EXPECT_GE(server_.service().max_open_streams(), 1);
  EXPECT_EQ(server_.service().open_streams(), 0);
  const ProgressCounters::Snapshot s = progress.Read();
  EXPECT_EQ(s.started, 40);
  EXPECT_EQ(s.finished, 40);
  EXPECT_EQ(s.failed, 0);
  EXPECT_EQ(s.tokens, 240);
  std::vector<std::string> ids = server_.service().seen_request_ids();
  std::sort(ids.begin(), ids.end());
  EXPECT_EQ(ids.size(), 40u);
  EXPECT_TRUE(std::binary_search(ids.begin(), ids.end(), "bench-0"));
  EXPECT_TRUE(std::binary_search(ids.begin(), ids.end(), "bench-39"));
}

TEST_F(ClosedLoopDriverTest, MoreCallersThanRequests) {
  const RequestSource source({"x"}, RequestOptions{.max_new_tokens = 2});
  const LoadRun run = RunClosedLoop(Target(source, nullptr),
                                    ClosedLoopOptions{.concurrency = 10, .num_requests = 3});
  EXPECT_EQ(run.results.size(), 3u);
  EXPECT_EQ(server_.service().seen_prompts().size(), 3u);
}

TEST_F(ClosedLoopDriverTest, FailuresAreResultsAndTheLoopGoesOn) {
  const RequestSource source({"fail:8", "ok prompt"}, RequestOptions{.max_new_tokens = 3});
  ProgressCounters progress;
  const LoadRun run = RunClosedLoop(Target(source, &progress),
                                    ClosedLoopOptions{.concurrency = 3, .num_requests = 10});
  ASSERT_EQ(run.results.size(), 10u);
  for (const RequestResult& r : run.results) {
    // Even indices got the failing prompt.
    EXPECT_EQ(r.code,
              r.index % 2 == 0 ? absl::StatusCode::kResourceExhausted : absl::StatusCode::kOk)
        << r.index;
  }
  EXPECT_EQ(progress.Read().failed, 5);
  EXPECT_EQ(progress.Read().in_flight(), 0);
  EXPECT_EQ(server_.service().open_streams(), 0);
}

TEST_F(ClosedLoopDriverTest, DurationCapWithoutRequestCapStops) {
  const RequestSource source({"x y"}, RequestOptions{.max_new_tokens = 2});
  const LoadRun run = RunClosedLoop(
      Target(source, nullptr),
      ClosedLoopOptions{.concurrency = 2, .num_requests = 0, .duration = absl::Milliseconds(200)});
  EXPECT_GE(run.results.size(), 1u);
  EXPECT_EQ(Indices(run).size(), run.results.size());
  EXPECT_EQ(*Indices(run).rbegin(), static_cast<int64_t>(run.results.size()) - 1);
  EXPECT_EQ(server_.service().open_streams(), 0);
}

}  // namespace
}  // namespace pdserve::bench
