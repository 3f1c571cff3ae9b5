// One Generate stream driven by gRPC's callback API, measured from the
// client: many of these run at once on gRPC's few callback threads.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_GENERATE_CALL_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_GENERATE_CALL_H_

#include <cstdint>
#include <functional>

#include "absl/time/time.h"
#include "bench/load_generator/progress.h"
#include "bench/load_generator/request_result.h"
#include "pdserve/v1/generate.grpc.pb.h"

namespace pdserve::bench {

struct CallOptions {
  absl::Duration timeout = absl::ZeroDuration();  // deadline from call start; 0: none
  bool record_tokens = false;                     // keep token ids and text in the result
};

using CallDone = std::function<void(RequestResult result)>;

// Starts `request` on `stub` and returns at once. Each token message is
// timed as it arrives. `progress` (may be null) counts the call as started
// here, each token as it arrives, and the call as finished just before
// `on_done`, so a successor that `on_done` starts never shows as extra
// in-flight work. `on_done` runs exactly once, on a gRPC callback thread,
// after the stream has ended and the call's own resources are freed, so it
// may start the next call. `stub` and `progress` must outlive the call;
// `index` goes into the result.
void StartGenerateCall(v1::GenerateService::Stub* stub, const v1::GenerateRequest& request,
                       int64_t index, const CallOptions& options, ProgressCounters* progress,
                       CallDone on_done);

// StartGenerateCall and wait for its result.
RequestResult RunGenerateCall(v1::GenerateService::Stub* stub, const v1::GenerateRequest& request,
                              const CallOptions& options);

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_GENERATE_CALL_H_
