#include "bench/load_generator/closed_loop_driver.h"

#include <atomic>
#include <memory>
#include <utility>

#include "bench/load_generator/result_collector.h"

namespace pdserve::bench {
namespace {

// Shared by every call's completion callback, which keeps it alive.
class ClosedLoop : public std::enable_shared_from_this<ClosedLoop> {
 public:
  ClosedLoop(const LoadTarget& target, const ClosedLoopOptions& options, absl::Time start)
      : target_(target),
        options_(options),
        end_(options.duration > absl::ZeroDuration() ? start + options.duration
                                                     : absl::InfiniteFuture()) {}

  // Claims the next request number unless the count or time cap is reached.
  bool Claim(int64_t* index) {
    if (absl::Now() >= end_) return false;
    const int64_t next = next_index_.fetch_add(1, std::memory_order_relaxed);
    if (options_.num_requests > 0 && next >= options_.num_requests) return false;
    *index = next;
    return true;
  }

  void Issue(int64_t index) {
    collector_.CallStarted();
    StartGenerateCall(target_.StubFor(index), target_.make_request(index), index, target_.call,
                      target_.progress, [self = shared_from_this()](RequestResult result) {
                        // The successor starts before this call counts as
                        // finished, so in-flight never drops to 0 early.
                        int64_t next;
                        if (self->Claim(&next)) self->Issue(next);
                        self->collector_.CallFinished(std::move(result));
                      });
  }

  ResultCollector& collector() { return collector_; }

 private:
  const LoadTarget& target_;
  const ClosedLoopOptions options_;
  const absl::Time end_;
  std::atomic<int64_t> next_index_{0};
  ResultCollector collector_;
};

}  // namespace

LoadRun RunClosedLoop(const LoadTarget& target, const ClosedLoopOptions& options) {
  const absl::Time start = absl::Now();
  auto loop = std::make_shared<ClosedLoop>(target, options, start);
  for (int caller = 0; caller < options.concurrency; ++caller) {
    int64_t index;
    if (!loop->Claim(&index)) break;
    loop->Issue(index);
  }
  loop->collector().WaitUntilIdle();
  LoadRun run;
  run.duration_s = absl::ToDoubleSeconds(absl::Now() - start);
  run.results = loop->collector().TakeResults();
  return run;
}

}  // namespace pdserve::bench
