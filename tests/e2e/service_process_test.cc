// The harness's own failure paths, with ordinary system binaries standing in
// for a service: an early exit, a missing binary, a process that never
// becomes ready. The success path runs in every service test.
#include "tests/e2e/service_process.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pdserve::e2e {
namespace {

using ::testing::HasSubstr;

TEST(ServiceProcessTest, EarlyExitIsUnavailableWithStderrTail) {
  ServiceProcessOptions options;
  options.binary = "/bin/sh";
  options.args = {"-c", "echo 'model_dir: missing config.json' >&2; exit 3"};
  options.add_listen_flags = false;
  auto process = ServiceProcess::Start(options);
  ASSERT_FALSE(process.ok());
  EXPECT_EQ(process.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(process.status().message(), HasSubstr("exited with code 3"));
  EXPECT_THAT(process.status().message(), HasSubstr("model_dir: missing config.json"));
}

TEST(ServiceProcessTest, MissingBinaryFailsToStart) {
  ServiceProcessOptions options;
  options.binary = "/nonexistent/pdserve-none";
  options.add_listen_flags = false;
  auto process = ServiceProcess::Start(options);
  ASSERT_FALSE(process.ok());
  EXPECT_THAT(process.status().message(), HasSubstr("execve failed"));
  EXPECT_THAT(process.status().message(), HasSubstr("exited with code 127"));
}

TEST(ServiceProcessTest, NeverReadyTimesOutAndIsKilled) {
  ServiceProcessOptions options;
  options.binary = "/bin/sleep";
  options.args = {"600"};
  options.add_listen_flags = false;
  options.startup_timeout = absl::Milliseconds(300);
  auto process = ServiceProcess::Start(options);
  ASSERT_FALSE(process.ok());
  EXPECT_EQ(process.status().code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(process.status().message(), HasSubstr("no port in"));
}

}  // namespace
}  // namespace pdserve::e2e
