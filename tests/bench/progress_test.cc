#include "bench/load_generator/progress.h"

#include <cstdio>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pdserve::bench {
namespace {

using ::testing::HasSubstr;

TEST(ProgressTest, CountersTrackStartsFinishesAndTokens) {
  ProgressCounters counters;
  for (int i = 0; i < 3; ++i) counters.CallStarted();
  counters.CallFinished(/*ok=*/true);
  counters.CallFinished(/*ok=*/false);
  for (int i = 0; i < 7; ++i) counters.TokenReceived();
  const ProgressCounters::Snapshot s = counters.Read();
  EXPECT_EQ(s.started, 3);
  EXPECT_EQ(s.finished, 2);
  EXPECT_EQ(s.failed, 1);
  EXPECT_EQ(s.tokens, 7);
  EXPECT_EQ(s.in_flight(), 1);
}

TEST(ProgressTest, LineShowsDoneOfTotalInFlightErrorsAndRate) {
  ProgressCounters::Snapshot s{.started = 41, .finished = 37, .failed = 2, .tokens = 900};
  EXPECT_EQ(FormatProgressLine(s, 100, absl::Seconds(2)),
            "37/100 done, 4 in flight, 2 errors, 450.0 tok/s, 2.0 s");
  EXPECT_THAT(FormatProgressLine(s, 0, absl::Seconds(2)), ::testing::StartsWith("37 done,"));
  EXPECT_THAT(FormatProgressLine(s, 100, absl::ZeroDuration()), HasSubstr("0.0 tok/s"));
}

TEST(ProgressTest, PrinterWritesAFinalLineOnDestruction) {
  ProgressCounters counters;
  counters.CallStarted();
  counters.CallFinished(true);
  std::FILE* out = std::tmpfile();
  ASSERT_NE(out, nullptr);
  { ProgressPrinter printer(&counters, 1, out, absl::Hours(1)); }
  std::rewind(out);
  char buffer[256] = {};
  const size_t n = std::fread(buffer, 1, sizeof(buffer) - 1, out);
  std::fclose(out);
  EXPECT_THAT(std::string(buffer, n), HasSubstr("[pdserve-bench] 1/1 done, 0 in flight, 0 errors"));
}

}  // namespace
}  // namespace pdserve::bench
