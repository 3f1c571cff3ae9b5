// Collects the results of a load run's calls as they finish, on any thread,
// and lets the dispatcher wait for a free slot or for every call to end.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_RESULT_COLLECTOR_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_RESULT_COLLECTOR_H_

#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "bench/load_generator/request_result.h"

namespace pdserve::bench {

class ResultCollector {
 public:
  ResultCollector() = default;

  // Call before starting an RPC.
  void CallStarted();
  // Call once per started RPC with its result.
  void CallFinished(RequestResult result);

  // Blocks while `max_in_flight` or more calls are outstanding. Returns
  // true when it had to wait.
  bool WaitForSlot(int64_t max_in_flight);
  // Blocks until no call is outstanding.
  void WaitUntilIdle();

  int64_t in_flight() const;
  // The finished calls' results in completion order; leaves none behind.
  std::vector<RequestResult> TakeResults();

 private:
  mutable absl::Mutex mu_;
  int64_t in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<RequestResult> results_ ABSL_GUARDED_BY(mu_);
};

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_RESULT_COLLECTOR_H_
