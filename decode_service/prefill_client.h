// The decode side of the KV hand-off: calls pdserve.v1.PrefillService over
// one round-robin channel to every prefill instance, checks what comes back
// against our own model, and writes the KV into the request's lease.
#ifndef PDSERVE_DECODE_SERVICE_PREFILL_CLIENT_H_
#define PDSERVE_DECODE_SERVICE_PREFILL_CLIENT_H_

#include <grpcpp/channel.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "decode_service/prefill_runner.h"
#include "decode_service/prefill_stream_checks.h"
#include "pdserve/v1/prefill.grpc.pb.h"
#include "shared/model_config.h"
#include "shared/model_fingerprint.h"

namespace pdserve {

class DecodeMetrics;

struct PrefillClientOptions {
  // A channel target from PrefillChannelTarget (prefill_target.h).
  std::string channel_target;
  // Largest message the channel accepts or sends, bytes (KV chunks must fit).
  int max_message_bytes = 64 << 20;
  // Sent as PrefillRequest.max_chunk_bytes; 0: the prefill's default.
  int64_t max_chunk_bytes = 0;
  // Streams one job may take (>= 1): a stream that fails with UNAVAILABLE is
  // retried on the next ready instance until this many have been tried.
  int max_attempts = 3;
  // Pause before a retry, so the channel can see the instance is gone.
  absl::Duration retry_backoff = absl::Milliseconds(20);
  // KV bytes received and retries are counted here when set; must outlive
  // the client.
  DecodeMetrics* metrics = nullptr;
};

// Runs each prefill as one callback-API stream (no thread per request). A
// stream is accepted only if
//   * its header's fingerprint equals ours (else FAILED_PRECONDITION, naming
//     the first differing field) and its layout (layers, KV heads, head_dim,
//     hidden_size) matches (FAILED_PRECONDITION); num_tokens is the prompt
//     length and kv_dtype a float type (INTERNAL otherwise);
//   * every KvChunk lies inside the prompt, has k and v of exactly
//     num_tokens * num_kv_heads * head_dim elements of kv_dtype, and every
//     (layer, token) arrives exactly once (INTERNAL otherwise);
//   * one FinalHidden of hidden_size values follows (INTERNAL otherwise).
// Chunks are converted from kv_dtype to the cache's dtype as they are written
// (the receiver converts). A stream that breaks (the instance died, or was
// unreachable) is UNAVAILABLE: the job is then retried on the next ready
// instance (round_robin), up to options.max_attempts streams in all, while it
// is neither cancelled nor past its deadline; each retry rewrites the whole
// lease, so a failed attempt's partial KV is overwritten, never freed or
// leaked. After the last attempt: UNAVAILABLE. The deadline gives
// DEADLINE_EXCEEDED. The engine frees the request's blocks on every error.
class PrefillClient final : public PrefillRunner {
 public:
  PrefillClient(const PrefillClientOptions& options, const PrefillExpectation& expectation);
  std::shared_ptr<PrefillCall> Start(PrefillJob job, PrefillDone done) override;

 private:
  const PrefillClientOptions options_;
  const PrefillExpectation expectation_;
  std::shared_ptr<grpc::Channel> channel_;
  // Prefill is called through a generic stub that hands responses over as
  // raw byte buffers, so KvChunk bytes are read straight from gRPC's slices
  // (proto/kv_wire/prefill_response_decoder.h); requests are ordinary
  // protobuf messages.
  std::unique_ptr<grpc::TemplatedGenericStub<v1::PrefillRequest, grpc::ByteBuffer>> stub_;
};

// Start-up check: GetModelInfo on every address (waiting for each to come up
// until `wait` has passed in total). UNAVAILABLE naming the address when one
// does not answer in time; FAILED_PRECONDITION naming the address and the
// first differing fingerprint field when one serves another model.
absl::Status CheckPrefillTargets(const std::vector<std::string>& addresses,
                                 const ModelFingerprint& ours, absl::Duration wait,
                                 int max_message_bytes);

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_PREFILL_CLIENT_H_
