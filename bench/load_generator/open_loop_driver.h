// Open-loop load: requests arrive as a Poisson process and never wait for
// earlier ones, up to a cap on outstanding calls.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_OPEN_LOOP_DRIVER_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_OPEN_LOOP_DRIVER_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "bench/load_generator/load_run.h"

namespace pdserve::bench {

struct OpenLoopOptions {
  double request_rate = 1;   // mean arrivals per second, > 0
  uint64_t seed = 0;         // arrival times are a function of the seed
  int max_in_flight = 256;   // an arrival beyond this waits for a call to end
  int64_t num_requests = 0;  // 0: no cap (needs duration)
  // No arrival is scheduled at or after this time; running calls finish. 0: none.
  absl::Duration duration = absl::ZeroDuration();
};

// Dispatches from the calling thread: sleeps to each scheduled arrival,
// starts the call and goes on; blocks until every started call has ended.
// The schedule is fixed in advance (arrival k at the sum of k gaps), so an
// arrival delayed by max_in_flight lets later overdue ones start at once.
// Errors: INVALID_ARGUMENT for a request_rate that is not > 0.
absl::StatusOr<LoadRun> RunOpenLoop(const LoadTarget& target, const OpenLoopOptions& options);

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_OPEN_LOOP_DRIVER_H_
