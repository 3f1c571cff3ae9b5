#include "prefill_service/kv_chunk_streamer.h"

#include <algorithm>
#include <utility>

#include "shared/status_macros.h"

namespace pdserve {

KvChunkStreamer::KvChunkStreamer(Backend& backend, int kv_width, int tokens_per_chunk, Send send)
    : backend_(backend),
      kv_width_(kv_width),
      tokens_per_chunk_(std::max(tokens_per_chunk, 1)),
      send_(std::move(send)) {}

KvChunkStreamer::~KvChunkStreamer() {
  // Each HostCopy waits in its destructor, before its chunk's buffers go.
  in_flight_.clear();
}

absl::Status KvChunkStreamer::Add(int layer, const DeviceBuffer& k, const DeviceBuffer& v,
                                  int first_token, int num_tokens) {
  if (!failed_.ok()) return failed_;
  ++adds_;
  const int end = first_token + num_tokens;
  for (int first = first_token; first < end; first += tokens_per_chunk_) {
    absl::Status started = Start(layer, k, v, first, std::min(tokens_per_chunk_, end - first));
    if (!started.ok()) return Fail(std::move(started));
  }
  return SendReady(adds_, /*wait_all=*/false);
}

absl::Status KvChunkStreamer::Flush() {
  if (!failed_.ok()) return failed_;
  return SendReady(adds_, /*wait_all=*/true);
}

absl::Status KvChunkStreamer::Start(int layer, const DeviceBuffer& k, const DeviceBuffer& v,
                                    int first_token, int num_tokens) {
  const size_t elements = static_cast<size_t>(num_tokens) * static_cast<size_t>(kv_width_);
  const size_t offset = static_cast<size_t>(first_token) * static_cast<size_t>(kv_width_);
  const size_t bytes = elements * DTypeSize(k.dtype());
  PDSERVE_ASSIGN_OR_RETURN(HostBlockPtr k_block, backend_.AllocateHostBlock(bytes));
  PDSERVE_ASSIGN_OR_RETURN(HostBlockPtr v_block, backend_.AllocateHostBlock(bytes));
  Chunk chunk{layer,
              first_token,
              num_tokens,
              adds_,
              KvChunkBuffers(std::move(k_block), std::move(v_block)),
              nullptr,
              nullptr};
  // Pushed before its copies start, so that a failure below still finds
  // the first copy (and waits for it) when Fail drops the chunks.
  in_flight_.push_back(std::move(chunk));
  Chunk& queued = in_flight_.back();
  PDSERVE_ASSIGN_OR_RETURN(queued.k_copy,
                           backend_.CopyToHostAsync(k, offset, elements, queued.buffers.k()));
  PDSERVE_ASSIGN_OR_RETURN(queued.v_copy,
                           backend_.CopyToHostAsync(v, offset, elements, queued.buffers.v()));
  return absl::OkStatus();
}

absl::Status KvChunkStreamer::SendReady(uint64_t add, bool wait_all) {
  while (!in_flight_.empty()) {
    Chunk& chunk = in_flight_.front();
    const bool wait = wait_all || chunk.add < add;
    if (!wait && !(chunk.k_copy->Ready() && chunk.v_copy->Ready())) break;
    absl::Status copied = chunk.k_copy->Wait();
    if (copied.ok()) copied = chunk.v_copy->Wait();
    if (!copied.ok()) return Fail(std::move(copied));
    const int64_t payload = 2 * static_cast<int64_t>(chunk.buffers.bytes_each());
    grpc::ByteBuffer message = EncodeKvChunkResponse(chunk.layer, chunk.first_token,
                                                     chunk.num_tokens, std::move(chunk.buffers));
    in_flight_.pop_front();
    absl::Status sent = send_(std::move(message), payload);
    if (!sent.ok()) return Fail(std::move(sent));
  }
  return absl::OkStatus();
}

absl::Status KvChunkStreamer::Fail(absl::Status status) {
  in_flight_.clear();
  failed_ = status;
  return status;
}

}  // namespace pdserve
