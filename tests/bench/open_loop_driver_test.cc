#include "bench/load_generator/open_loop_driver.h"

#include <grpcpp/grpcpp.h>

#include <set>

#include "bench/load_generator/request_source.h"
#include "gtest/gtest.h"
#include "tests/bench/fake_generate_service.h"

namespace pdserve::bench {
namespace {

class OpenLoopDriverTest : public ::testing::Test {
 protected:
  OpenLoopDriverTest()
      : stub_(server_.NewStub()), source_({"p q r"}, RequestOptions{.max_new_tokens = 4}) {
    target_.stubs = {stub_.get()};
    target_.make_request = [this](int64_t index) { return source_.Make(index); };
    target_.progress = &progress_;
  }

  testing::FakeServer server_;
  std::unique_ptr<v1::GenerateService::Stub> stub_;
  RequestSource source_;
  ProgressCounters progress_;
  LoadTarget target_;
};

TEST_F(OpenLoopDriverTest, AllArrivalsServedWithinTheInFlightCap) {
  // A rate far above what the fake serves, so arrivals pile up at the cap.
  auto run = RunOpenLoop(
      target_,
      OpenLoopOptions{.request_rate = 1e5, .seed = 3, .max_in_flight = 3, .num_requests = 60});
  ASSERT_TRUE(run.ok()) << run.status();
  ASSERT_EQ(run->results.size(), 60u);
  std::set<int64_t> indices;
  for (const RequestResult& r : run->results) {
    EXPECT_EQ(r.code, absl::StatusCode::kOk) << r.error_message;
    EXPECT_EQ(r.output_tokens, 4);
    indices.insert(r.index);
  }
  EXPECT_EQ(indices.size(), 60u);
  EXPECT_LE(server_.service().max_open_streams(), 3);
  EXPECT_EQ(server_.service().open_streams(), 0);
  EXPECT_EQ(progress_.Read().tokens, 240);
  EXPECT_EQ(progress_.Read().in_flight(), 0);
}

TEST_F(OpenLoopDriverTest, DurationCapWithoutRequestCapStops) {
  auto run = RunOpenLoop(target_, OpenLoopOptions{.request_rate = 200,
                                                  .seed = 1,
                                                  .max_in_flight = 16,
                                                  .num_requests = 0,
                                                  .duration = absl::Milliseconds(250)});
  ASSERT_TRUE(run.ok()) << run.status();
  std::set<int64_t> indices;
  for (const RequestResult& r : run->results) indices.insert(r.index);
  EXPECT_EQ(indices.size(), run->results.size());
  if (!indices.empty()) EXPECT_EQ(*indices.rbegin(), static_cast<int64_t>(indices.size()) - 1);
  EXPECT_EQ(server_.service().open_streams(), 0);
}

TEST_F(OpenLoopDriverTest, InvalidRateStartsNothing) {
  auto run = RunOpenLoop(target_, OpenLoopOptions{.request_rate = 0, .num_requests = 5});
  EXPECT_EQ(run.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(progress_.Read().started, 0);
  EXPECT_TRUE(server_.service().seen_prompts().empty());
}

}  // namespace
}  // namespace pdserve::bench
