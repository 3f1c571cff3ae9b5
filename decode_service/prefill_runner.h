// The engine's view of "get this prompt's KV cache from somewhere": an
// interface so the engine can be tested without gRPC. PrefillClient
// (prefill_client.h) is the production implementation.
#ifndef PDSERVE_DECODE_SERVICE_PREFILL_RUNNER_H_
#define PDSERVE_DECODE_SERVICE_PREFILL_RUNNER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "shared/dtype.h"

namespace pdserve {

// Stores tokens [first_token, first_token + num_tokens) of `layer`: k and v
// are host arrays [num_tokens, num_kv_heads * head_dim] of `dtype`. The
// engine supplies it; it writes into the request's KV lease under the engine's
// backend lock (KvCache::WriteTokens). INVALID_ARGUMENT for a range outside
// the lease or a bad layer.
using KvWriter = std::function<absl::Status(int layer, int first_token, int num_tokens,
                                            const void* k, const void* v, DType dtype)>;

// Optional fast path next to KvWriter: fills `k` and `v` with host byte
// ranges that, in token order, hold K and V of tokens [first_token,
// first_token + num_tokens) of `layer` in `dtype` exactly as a KvChunk
// carries them, so a receiver can copy the chunk straight into them; returns
// true. False when the destination cannot take those bytes as they are
// (another dtype, device memory, a block shared with another lease, a range
// outside the lease): the receiver then calls the KvWriter. Ranges handed
// out for a lease stay valid while the job runs; the same thread rules as
// the KvWriter apply to writing them.
using KvRangeFinder =
    std::function<bool(int layer, int first_token, int num_tokens, DType dtype,
                       std::vector<std::span<char>>* k, std::vector<std::span<char>>* v)>;

struct PrefillJob {
  std::string request_id;          // for the prefill instance's logs
  std::vector<int32_t> token_ids;  // the whole prompt
  absl::Time deadline = absl::InfiniteFuture();
  KvWriter write_kv;        // where the KV goes
  KvRangeFinder kv_ranges;  // optional: where it can go without a copy
  // Also bring back every prompt position's final hidden state
  // (PrefillResult::all_hidden), for prompt logprobs.
  bool return_all_positions = false;
};

struct PrefillResult {
  // The last prompt position's hidden state after the final RMSNorm:
  // [hidden_size] float32.
  std::vector<float> final_hidden;
  // With PrefillJob::return_all_positions: every prompt position's hidden
  // state after the final RMSNorm, [num_tokens, hidden_size] float32.
  std::vector<float> all_hidden;
  absl::Time kv_complete;        // when the last KV chunk was written (local clock)
  double remote_prefill_ms = 0;  // forward-pass time the prefill instance reported
};

// Called exactly once per job, on any thread (possibly inline from Start or
// PrefillCall::Cancel, so neither may be called with a lock `done` takes):
// the result, or CANCELLED (PrefillCall::Cancel), DEADLINE_EXCEEDED,
// UNAVAILABLE (no prefill reachable or one dropped mid-stream),
// FAILED_PRECONDITION (another model), INTERNAL (a malformed stream), or a
// status the prefill instance returned. After it returns, `write_kv` is never
// called again.
using PrefillDone = std::function<void(absl::StatusOr<PrefillResult> result)>;

// A prefill in flight.
class PrefillCall {
 public:
  virtual ~PrefillCall() = default;
  // Asks the prefill to stop; `done` still runs (with CANCELLED unless it was
  // already finishing). Thread-safe, non-blocking, idempotent.
  virtual void Cancel() = 0;
};

class PrefillRunner {
 public:
  virtual ~PrefillRunner() = default;
  // Starts a prefill; the handle may be dropped at any time without
  // cancelling it. Every token of every layer reaches `job.write_kv` exactly
  // once before `done` reports success.
  virtual std::shared_ptr<PrefillCall> Start(PrefillJob job, PrefillDone done) = 0;
};

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_PREFILL_RUNNER_H_
