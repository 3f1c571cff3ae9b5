// pdserve.v1.PrefillService on gRPC's callback API.
#ifndef PDSERVE_PREFILL_SERVICE_PREFILL_SERVER_H_
#define PDSERVE_PREFILL_SERVICE_PREFILL_SERVER_H_

#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/server_callback.h>

#include <atomic>
#include <cstdint>

#include "absl/status/statusor.h"
#include "pdserve/v1/prefill.grpc.pb.h"
#include "prefill_service/prefill_engine.h"
#include "prefill_service/prefill_metrics.h"

namespace pdserve {

struct PrefillServerOptions {
  // Default and upper bound of one KvChunk's K+V bytes; a request may ask
  // for less (PrefillRequest.max_chunk_bytes). Keep it well under the
  // server's max send message size.
  // 1 MiB: on loopback, 1 MiB chunks moved KV faster than 4 MiB ones (a
  // message then stays in a 2 MiB L2 between its copies; docs/benchmarks.md).
  int64_t max_chunk_bytes = int64_t{1} << 20;
  // Bytes of one stream's responses queued behind a slow reader before the
  // forward pass waits for it (back-pressure instead of unbounded memory).
  int64_t max_queued_bytes = int64_t{256} << 20;
  // Counts requests, forward passes, KV bytes, cancellations and errors when
  // set; must outlive the server.
  PrefillMetrics* metrics = nullptr;
};

// How a prompt's K and V of one layer are cut into KvChunk token ranges.
struct ChunkPlan {
  int tokens_per_chunk = 0;     // the last chunk of a layer may hold fewer
  int64_t bytes_per_token = 0;  // K+V of one token in one layer
  int64_t max_bytes = 0;        // the limit in force (also for HiddenStates)
};

// tokens_per_chunk = floor(max_chunk_bytes / (2 * kv_width * sizeof(kv_dtype))).
// INVALID_ARGUMENT naming max_chunk_bytes when it is negative or smaller
// than one token's K+V; 0 selects `server_max_chunk_bytes`, and a larger
// request is capped to it.
absl::StatusOr<ChunkPlan> PlanChunks(int64_t requested_max_chunk_bytes,
                                     int64_t server_max_chunk_bytes, int kv_width, DType kv_dtype);

// Serves Prefill and GetModelInfo from `engine`, which must outlive the
// server's Shutdown(). Prefill streams:
//   1. PrefillHeader, once the engine has queued the request (fingerprint,
//      shapes, kv_dtype); a full queue is RESOURCE_EXHAUSTED with no header;
//   2. for each layer as soon as the forward pass has computed it (for a
//      prompt run in chunks: each (chunk, layer)), its K and V in token
//      ranges of at most ChunkPlan::tokens_per_chunk tokens, copied to host
//      in the backend's kv_dtype straight into the message (none with
//      omit_kv), and the HiddenStates asked for, interleaved the same way;
//   3. FinalHidden (last position, after the final RMSNorm).
// The forward pass runs on the engine's worker thread, batched with the
// other requests queued at the time. A client cancel, a deadline or a
// failed write removes a queued request at once, or stops a running one at
// its next chunk without disturbing the rest of its batch; the call ends
// with CANCELLED and the reactor frees itself in OnDone. A slow reader's
// back-pressure (max_queued_bytes) holds up the worker, and so its batch.
//
// Prefill is registered as a raw method (the generated
// WithRawCallbackMethod_Prefill): requests arrive as bytes and are parsed
// here (unparseable: INVALID_ARGUMENT), and responses leave as pre-encoded
// byte buffers, so KvChunk bytes go from the backend's copy to the socket
// without protobuf's serialisation copy (proto/kv_wire/kv_chunk_encoder.h).
// The wire format is unchanged: any PrefillService client reads it.
class PrefillServer final : public v1::PrefillService::WithRawCallbackMethod_Prefill<
                                v1::PrefillService::CallbackService> {
 public:
  PrefillServer(PrefillEngine* engine, PrefillServerOptions options);

  grpc::ServerWriteReactor<grpc::ByteBuffer>* Prefill(grpc::CallbackServerContext* context,
                                                      const grpc::ByteBuffer* request) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;

  // Prefill streams not yet done (OnDone not yet run): back to its starting
  // level once every call has ended, cancelled ones included.
  int active_streams() const { return active_streams_.load(); }

 private:
  friend class PrefillReactor;
  PrefillEngine* engine_;
  PrefillServerOptions options_;
  std::atomic<int> active_streams_{0};
};

// Fills `info` from the engine's model (GetModelInfo's answer).
void FillModelInfo(const PrefillEngine& engine, v1::ModelInfo* info);

}  // namespace pdserve

#endif  // PDSERVE_PREFILL_SERVICE_PREFILL_SERVER_H_
