#include "bench/load_generator/open_loop_driver.h"

#include <algorithm>
#include <memory>
#include <utility>

#include "absl/time/clock.h"
#include "bench/load_generator/poisson_arrivals.h"
#include "bench/load_generator/result_collector.h"

namespace pdserve::bench {

absl::StatusOr<LoadRun> RunOpenLoop(const LoadTarget& target, const OpenLoopOptions& options) {
  absl::StatusOr<PoissonArrivals> arrivals =
      PoissonArrivals::Create(options.request_rate, options.seed);
  if (!arrivals.ok()) return arrivals.status();
  // Shared with the completion callbacks, which may run after the last
  // dispatch until WaitUntilIdle returns.
  auto collector = std::make_shared<ResultCollector>();
  LoadRun run;
  const absl::Time start = absl::Now();
  const absl::Time end =
      options.duration > absl::ZeroDuration() ? start + options.duration : absl::InfiniteFuture();
  absl::Time scheduled = start;
  for (int64_t index = 0; options.num_requests == 0 || index < options.num_requests; ++index) {
    scheduled += absl::Seconds(arrivals->NextGapSeconds());
    if (scheduled >= end) break;
    const absl::Duration until_arrival = scheduled - absl::Now();
    if (until_arrival > absl::ZeroDuration()) absl::SleepFor(until_arrival);
    if (collector->WaitForSlot(options.max_in_flight)) ++run.delayed_arrivals;
    run.max_dispatch_lag_ms =
        std::max(run.max_dispatch_lag_ms, absl::ToDoubleMilliseconds(absl::Now() - scheduled));
    collector->CallStarted();
    StartGenerateCall(
        target.StubFor(index), target.make_request(index), index, target.call, target.progress,
        [collector](RequestResult result) { collector->CallFinished(std::move(result)); });
  }
  collector->WaitUntilIdle();
  run.duration_s = absl::ToDoubleSeconds(absl::Now() - start);
  run.results = collector->TakeResults();
  return run;
}

}  // namespace pdserve::bench
