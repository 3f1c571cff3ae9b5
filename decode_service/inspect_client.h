// The decode side of Inspect's forward pass: one Prefill call asking only
// for hidden states (omit_kv, return_all_positions, hidden_state_layers),
// checked against our model and collected on the host. Separate from
// PrefillClient, which fills KV leases for generation.
#ifndef PDSERVE_DECODE_SERVICE_INSPECT_CLIENT_H_
#define PDSERVE_DECODE_SERVICE_INSPECT_CLIENT_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <grpcpp/channel.h>

#include "absl/functional/any_invocable.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "decode_service/prefill_client.h"
#include "pdserve/v1/prefill.grpc.pb.h"
#include "shared/dtype.h"

namespace pdserve {

struct InspectPrefillRequest {
  std::string request_id;          // for the prefill instance's logs
  std::vector<int32_t> token_ids;  // the whole prompt
  // The final RMSNorm output of every position (HiddenStates layer
  // num_layers); without it only the last position's comes back.
  bool all_positions = false;
  std::vector<int32_t> hidden_state_layers;  // each in [-1, num_layers), once
  absl::Time deadline = absl::InfiniteFuture();
};

struct InspectPrefillResult {
  int num_tokens = 0;
  DType kv_dtype = DType::kF32;     // the KV the prefill computed (none was sent)
  std::vector<float> final_hidden;  // [hidden_size], the last position after the final norm
  // layer -> [num_tokens, hidden_size] float32: -1..num_layers-1 as asked for,
  // num_layers for all_positions.
  std::map<int, std::vector<float>> hidden_states;
  double prefill_ms = 0;  // as the prefill instance reported it
};

// A prefill in flight for Inspect; Cancel() asks it to stop (the done
// callback still runs, with CANCELLED unless it was finishing). Thread-safe,
// idempotent, also after the call ended.
class InspectPrefillCall {
 public:
  virtual ~InspectPrefillCall() = default;
  virtual void Cancel() = 0;
};

// Called exactly once, on a gRPC thread (or inline from Start).
using InspectPrefillDone = absl::AnyInvocable<void(absl::StatusOr<InspectPrefillResult> result)>;

// Runs Inspect's prefills over its own channel to the prefill instances
// (round robin, like PrefillClient). A stream is accepted only if its header
// matches our model (FAILED_PRECONDITION otherwise, naming the field), it
// carries no KvChunk, every HiddenStates message is of a layer asked for,
// inside the prompt, of num_tokens * hidden_size values, every (layer, token)
// arrives exactly once, and one FinalHidden of hidden_size values ends it
// (INTERNAL otherwise). A broken stream is UNAVAILABLE, the deadline
// DEADLINE_EXCEEDED; a status the prefill returned (INVALID_ARGUMENT,
// RESOURCE_EXHAUSTED) passes through.
class InspectPrefillClient {
 public:
  InspectPrefillClient(const PrefillClientOptions& options, const PrefillExpectation& expectation);

  std::shared_ptr<InspectPrefillCall> Start(InspectPrefillRequest request, InspectPrefillDone done);

 private:
  const PrefillExpectation expectation_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::PrefillService::Stub> stub_;
};

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_INSPECT_CLIENT_H_
