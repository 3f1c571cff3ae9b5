// Zero-copy encoding of the prefill stream's KvChunk messages.
#ifndef PDSERVE_PROTO_KV_WIRE_KV_CHUNK_ENCODER_H_
#define PDSERVE_PROTO_KV_WIRE_KV_CHUNK_ENCODER_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <memory>

#include "pdserve/v1/prefill.pb.h"
#include "shared/host_block.h"

namespace pdserve {

// Host bytes of one KvChunk's K and V, filled by the producer (a backend's
// CopyToHost or CopyToHostAsync) and then handed to gRPC as they are. Each
// of k() and v() holds bytes_each() bytes: [num_tokens, num_kv_heads,
// head_dim] in the stream's kv_dtype, row-major, little-endian
// (pdserve/v1/prefill.proto KvChunk). Uninitialised on construction.
class KvChunkBuffers {
 public:
  // Two heap blocks of `bytes_each` bytes.
  explicit KvChunkBuffers(size_t bytes_each);
  // The producer's own blocks, e.g. Backend::AllocateHostBlock's pinned
  // memory that a device copies into; gRPC destroys each block (returning
  // it to its pool) once it has written it. Both must be non-null and of
  // the same size (checked: a programmer error otherwise).
  KvChunkBuffers(HostBlockPtr k, HostBlockPtr v);
  KvChunkBuffers(KvChunkBuffers&&) = default;
  KvChunkBuffers& operator=(KvChunkBuffers&&) = default;

  char* k() { return k_->data(); }
  char* v() { return v_->data(); }
  size_t bytes_each() const { return k_->size(); }

 private:
  friend grpc::ByteBuffer EncodeKvChunkResponse(int layer, int first_token, int num_tokens,
                                                KvChunkBuffers buffers);
  HostBlockPtr k_;
  HostBlockPtr v_;
};

// PrefillResponse{kv: KvChunk{layer, first_token, num_tokens, k, v}} in
// protobuf's wire format, byte for byte what PrefillResponse::Serialize
// writes (fields in number order, zero scalars left out), so any protobuf
// client parses it. Why not protobuf's own serialisation: that copies K and
// V into gRPC's buffer; here they travel as slices that own `buffers` and
// release them once gRPC has written them to the socket, which leaves the
// kernel's copy as the only one after the producer's (docs/benchmarks.md,
// KV transfer). Four slices: field headers, K, V's header, V.
grpc::ByteBuffer EncodeKvChunkResponse(int layer, int first_token, int num_tokens,
                                       KvChunkBuffers buffers);

}  // namespace pdserve

#endif  // PDSERVE_PROTO_KV_WIRE_KV_CHUNK_ENCODER_H_
