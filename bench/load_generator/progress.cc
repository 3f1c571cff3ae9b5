#include "bench/load_generator/progress.h"

#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pdserve::bench {

ProgressCounters::Snapshot ProgressCounters::Read() const {
  Snapshot snapshot;
  // `finished` first: a call counts as finished only after it started, so
  // reading it before `started` keeps in_flight() >= 0.
  snapshot.finished = finished_.load(std::memory_order_relaxed);
  snapshot.failed = failed_.load(std::memory_order_relaxed);
  snapshot.tokens = tokens_.load(std::memory_order_relaxed);
  snapshot.started = started_.load(std::memory_order_relaxed);
  return snapshot;
}

std::string FormatProgressLine(const ProgressCounters::Snapshot& snapshot, int64_t total,
                               absl::Duration elapsed) {
  const double seconds = absl::ToDoubleSeconds(elapsed);
  const double tokens_per_s = seconds > 0 ? static_cast<double>(snapshot.tokens) / seconds : 0.0;
  const std::string done =
      total > 0 ? absl::StrCat(snapshot.finished, "/", total) : absl::StrCat(snapshot.finished);
  return absl::StrFormat("%s done, %d in flight, %d errors, %.1f tok/s, %.1f s", done,
                         snapshot.in_flight(), snapshot.failed, tokens_per_s, seconds);
}

ProgressPrinter::ProgressPrinter(const ProgressCounters* counters, int64_t total, std::FILE* out,
                                 absl::Duration period)
    : counters_(counters),
      total_(total),
      out_(out),
      in_place_(isatty(fileno(out)) == 1),
      start_(absl::Now()) {
  thread_ = std::thread([this, period] {
    while (!stop_.WaitForNotificationWithTimeout(period)) Print();
  });
}

ProgressPrinter::~ProgressPrinter() {
  stop_.Notify();
  thread_.join();
  Print();
  if (in_place_) std::fputc('\n', out_);
  std::fflush(out_);
}

void ProgressPrinter::Print() {
  const std::string line = FormatProgressLine(counters_->Read(), total_, absl::Now() - start_);
  if (in_place_) {
    std::fprintf(out_, "\r[pdserve-bench] %s\033[K", line.c_str());
  } else {
    std::fprintf(out_, "[pdserve-bench] %s\n", line.c_str());
  }
  std::fflush(out_);
}

}  // namespace pdserve::bench
