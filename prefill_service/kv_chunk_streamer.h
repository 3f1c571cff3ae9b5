// A prefill's K and V on their way out as KvChunk messages, with each
// chunk's device-to-host copy overlapping the forward pass that follows.
#ifndef PDSERVE_PREFILL_SERVICE_KV_CHUNK_STREAMER_H_
#define PDSERVE_PREFILL_SERVICE_KV_CHUNK_STREAMER_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstdint>
#include <deque>
#include <memory>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "proto/kv_wire/kv_chunk_encoder.h"
#include "shared/backend.h"

namespace pdserve {

// Cuts one prompt's per-layer K/V ranges into KvChunks of at most
// `tokens_per_chunk` tokens and hands each, encoded (EncodeKvChunkResponse),
// to `send` once its bytes are on the host.
//
// Add() only starts the copies: Backend::CopyToHostAsync into the backend's
// own host blocks (page-locked on CUDA), which gRPC then sends without
// another copy. The worker goes on queuing the next layer while the DMA
// engine copies this one, so the KV stream starts after the first layer
// and the device never waits for the network (issue 5: "prefill overlaps
// each layer's KV device-to-host copy with the next layer's compute").
// Chunks go to `send` in the order they were added: each Add first sends
// the chunks of earlier Adds, waiting for their copies (on a GPU those ran
// during the layer just computed, so the wait is short and bounds the
// copies in flight to about two layers), then those of its own whose copies
// have already ended. The CPU backend's copies end before CopyToHostAsync
// returns, so there every chunk is sent within its own Add.
//
// Used by one thread (the prefill worker's sinks and `done`).
class KvChunkStreamer {
 public:
  // Takes an encoded PrefillResponse{kv} and its K+V payload bytes; a
  // non-OK status (the call was cancelled or broke) ends the stream.
  using Send = absl::AnyInvocable<absl::Status(grpc::ByteBuffer message, int64_t payload_bytes)>;

  // kv_width: num_kv_heads * head_dim elements per token row of K (and V),
  // in backend.kv_dtype(). tokens_per_chunk >= 1 (PlanChunks).
  KvChunkStreamer(Backend& backend, int kv_width, int tokens_per_chunk, Send send);
  // Waits for the copies still in flight (their destinations must not be
  // freed under the DMA engine) and drops their chunks.
  ~KvChunkStreamer();
  KvChunkStreamer(const KvChunkStreamer&) = delete;
  KvChunkStreamer& operator=(const KvChunkStreamer&) = delete;

  // Starts the copies of rows [first_token, first_token + num_tokens) of
  // `layer`'s K and V ([rows, kv_width] buffers in kv_dtype, as a
  // KvRangeSink gets them) and sends what is ready as described above. The
  // buffers may be overwritten by ops queued after this returns. Errors:
  // the backend's (AllocateHostBlock, CopyToHostAsync, a copy's Wait), or
  // the first non-OK of `send`; every chunk in flight is then dropped (its
  // copy waited for) and later calls keep failing with that error.
  absl::Status Add(int layer, const DeviceBuffer& k, const DeviceBuffer& v, int first_token,
                   int num_tokens);
  // Waits for every copy in flight and sends its chunk; call it after the
  // last layer's Add, before anything that must follow the KV (FinalHidden).
  // Errors as Add.
  absl::Status Flush();

  // Chunks whose copies were started and that have not gone to `send`.
  int chunks_in_flight() const { return static_cast<int>(in_flight_.size()); }

 private:
  struct Chunk {
    int layer = 0;
    int first_token = 0;
    int num_tokens = 0;
    uint64_t add = 0;  // the Add that started it
    KvChunkBuffers buffers;
    // Declared after `buffers` so that they are destroyed (wait) first.
    std::unique_ptr<HostCopy> k_copy;
    std::unique_ptr<HostCopy> v_copy;
  };

  // Starts one chunk's copies.
  absl::Status Start(int layer, const DeviceBuffer& k, const DeviceBuffer& v, int first_token,
                     int num_tokens);
  // Sends chunks from the front: those of Adds before `add` after waiting,
  // others while their copies have ended. wait_all: wait for every one.
  absl::Status SendReady(uint64_t add, bool wait_all);
  // Drops every chunk in flight and keeps `status` for later calls.
  absl::Status Fail(absl::Status status);

  Backend& backend_;
  const int kv_width_;
  const int tokens_per_chunk_;
  Send send_;
  std::deque<Chunk> in_flight_;
  uint64_t adds_ = 0;
  absl::Status failed_;
};

}  // namespace pdserve

#endif  // PDSERVE_PREFILL_SERVICE_KV_CHUNK_STREAMER_H_
