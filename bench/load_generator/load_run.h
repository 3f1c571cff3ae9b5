// What the closed- and open-loop drivers share: where calls go and what a
// run returns.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_LOAD_RUN_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_LOAD_RUN_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "bench/load_generator/generate_call.h"
#include "bench/load_generator/progress.h"
#include "bench/load_generator/request_result.h"
#include "pdserve/v1/generate.grpc.pb.h"

namespace pdserve::bench {

struct LoadTarget {
  // Request i goes to stubs[i % stubs.size()]; non-empty, outliving the run.
  std::vector<v1::GenerateService::Stub*> stubs;
  std::function<v1::GenerateRequest(int64_t index)> make_request;
  CallOptions call;
  ProgressCounters* progress = nullptr;  // may be null

  v1::GenerateService::Stub* StubFor(int64_t index) const {
    return stubs[static_cast<size_t>(index) % stubs.size()];
  }
};

struct LoadRun {
  std::vector<RequestResult> results;  // completion order
  double duration_s = 0;               // first call start to last call end, wall clock
  // Open loop only: arrivals that found max_in_flight calls outstanding and
  // waited for one to end, and the largest delay of a call's start past its
  // scheduled arrival (sleep overshoot included).
  int64_t delayed_arrivals = 0;
  double max_dispatch_lag_ms = 0;
};

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_LOAD_RUN_H_
