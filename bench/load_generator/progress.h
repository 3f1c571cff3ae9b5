// Live progress of a load run: counters the calls update and a thread that
// prints them as one refreshed line on stderr.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_PROGRESS_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_PROGRESS_H_

#include <atomic>
#include <cstdint>
#include <cstdio>
#include <string>
#include <thread>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"

namespace pdserve::bench {

// Lock-free counters, updated from gRPC callback threads.
class ProgressCounters {
 public:
  struct Snapshot {
    int64_t started = 0;
    int64_t finished = 0;
    int64_t failed = 0;  // finished with a non-OK status
    int64_t tokens = 0;  // token messages received so far, all calls
    int64_t in_flight() const { return started - finished; }
  };

  void CallStarted() { started_.fetch_add(1, std::memory_order_relaxed); }
  void CallFinished(bool ok) {
    if (!ok) failed_.fetch_add(1, std::memory_order_relaxed);
    finished_.fetch_add(1, std::memory_order_relaxed);
  }
  void TokenReceived() { tokens_.fetch_add(1, std::memory_order_relaxed); }
  Snapshot Read() const;

 private:
  std::atomic<int64_t> started_{0};
  std::atomic<int64_t> finished_{0};
  std::atomic<int64_t> failed_{0};
  std::atomic<int64_t> tokens_{0};
};

// "37/100 done, 4 in flight, 0 errors, 812.4 tok/s, 3.2 s"; `total` <= 0
// (no request cap) prints "37 done". Tokens per second over `elapsed`.
std::string FormatProgressLine(const ProgressCounters::Snapshot& snapshot, int64_t total,
                               absl::Duration elapsed);

// Prints FormatProgressLine every `period` from its own thread until
// destroyed, then once more with the final counts. On a terminal the line
// is rewritten in place ('\r' and erase-to-end); elsewhere (a log file) each
// refresh is its own line.
class ProgressPrinter {
 public:
  ProgressPrinter(const ProgressCounters* counters, int64_t total, std::FILE* out,
                  absl::Duration period = absl::Seconds(1));
  ~ProgressPrinter();
  ProgressPrinter(const ProgressPrinter&) = delete;
  ProgressPrinter& operator=(const ProgressPrinter&) = delete;

 private:
  void Print();

  const ProgressCounters* counters_;
  const int64_t total_;
  std::FILE* out_;
  const bool in_place_;
  const absl::Time start_;
  absl::Notification stop_;
  std::thread thread_;
};

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_PROGRESS_H_
