// What decode checks on every prefill stream, shared by the KV client
// (prefill_client.h) and the Inspect client (inspect_client.h): the channel
// they open, the header's agreement with our model, and how a failed stream's
// gRPC status reads to decode's callers.
#ifndef PDSERVE_DECODE_SERVICE_PREFILL_STREAM_CHECKS_H_
#define PDSERVE_DECODE_SERVICE_PREFILL_STREAM_CHECKS_H_

#include <grpcpp/channel.h>
#include <grpcpp/support/status.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "pdserve/v1/prefill.pb.h"
#include "shared/dtype.h"
#include "shared/model_config.h"
#include "shared/model_fingerprint.h"

namespace pdserve {

// What a prefill stream must agree with: our fingerprint and the KV layout
// our model implies.
struct PrefillExpectation {
  ModelFingerprint fingerprint;
  int num_layers = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int hidden_size = 0;

  static PrefillExpectation For(const ModelConfig& config, const ModelFingerprint& fingerprint);
};

// A channel to `target` (a PrefillChannelTarget: one address, a list, or a
// dns:/// name) balanced with round_robin, messages up to
// `max_message_bytes` both ways. Pins gRPC's callback completion queue first
// (proto/grpc_support/callback_cq_pin.h says why).
std::shared_ptr<grpc::Channel> MakePrefillChannel(const std::string& target, int max_message_bytes);

// Checks a PrefillHeader against `expected` for a prompt of `prompt_tokens`
// tokens and returns its kv_dtype. FAILED_PRECONDITION naming the first
// differing fingerprint field or layout field (num_layers, num_kv_heads,
// head_dim, hidden_size) with both values; INTERNAL for a num_tokens other
// than the prompt's or an unknown kv_dtype.
absl::StatusOr<DType> CheckPrefillHeader(const v1::PrefillHeader& header,
                                         const PrefillExpectation& expected, int prompt_tokens);

// What a prefill stream that ended with a non-OK `status` means for the
// request, its message prefixed with `what` ("prefill", "inspect prefill"):
// CANCELLED when we cancelled it; UNAVAILABLE when the instance could not be
// reached or went away (gRPC's UNAVAILABLE, UNKNOWN, or a CANCELLED we did
// not ask for), saying whether it was mid-stream (after the header);
// DEADLINE_EXCEEDED naming the deadline's sources; any other code as the
// prefill sent it. `peer` (may be empty) is named in the message.
absl::Status PrefillStreamStatus(const grpc::Status& status, bool cancelled_by_us,
                                 bool after_header, absl::string_view peer, absl::string_view what);

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_PREFILL_STREAM_CHECKS_H_
