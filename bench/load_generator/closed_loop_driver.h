// Closed-loop load: N callers, each sending its next request as soon as its
// previous one ends.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_CLOSED_LOOP_DRIVER_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_CLOSED_LOOP_DRIVER_H_

#include <cstdint>

#include "absl/time/time.h"
#include "bench/load_generator/load_run.h"

namespace pdserve::bench {

struct ClosedLoopOptions {
  int concurrency = 1;       // >= 1 callers
  int64_t num_requests = 0;  // requests in all; 0: no cap (needs duration)
  // No request starts after this much time; those running finish. 0: none.
  absl::Duration duration = absl::ZeroDuration();
};

// Runs the load and blocks until every started call has ended. Calls are
// chained from gRPC's callback threads, so no thread per caller is needed.
LoadRun RunClosedLoop(const LoadTarget& target, const ClosedLoopOptions& options);

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_CLOSED_LOOP_DRIVER_H_
