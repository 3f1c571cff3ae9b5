// What the load generator measured for one Generate call.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_REQUEST_RESULT_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_REQUEST_RESULT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace pdserve::bench {

// Timings the decode service reports on its last message (Timings in
// generate.proto), milliseconds, measured on the server.
struct ServerTimings {
  double queue_ms = 0;
  double prefill_ms = 0;
  double ttft_ms = 0;
  double decode_ms = 0;
  double total_ms = 0;
};

// Client-side measurements of one call, all in milliseconds from the
// client's monotonic clock. "Call start" is just before the RPC is started.
struct RequestResult {
  int64_t index = -1;  // request number within its run
  // gRPC status code of the finished call (gRPC and absl share the numbers).
  absl::StatusCode code = absl::StatusCode::kOk;
  std::string error_message;  // empty when code is kOk
  // Call start to the first token message; empty when no token arrived.
  std::optional<double> ttft_ms;
  // Gaps between consecutive token messages: output_tokens - 1 entries.
  std::vector<double> itl_ms;
  double latency_ms = 0;      // call start to the end of the stream (status received)
  int64_t output_tokens = 0;  // token messages received
  // Name of the last message's finish reason without the prefix ("LENGTH",
  // "EOS", ...); empty when no message carried one.
  std::string finish_reason;
  int32_t prompt_tokens = -1;  // from the last message's usage; -1 when absent
  std::optional<ServerTimings> server_timings;
  // Only when the caller asked for them (the KV-cache comparison does).
  std::vector<int32_t> token_ids;
  std::string text;  // concatenated text deltas
};

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_REQUEST_RESULT_H_
