// Parsing the prefill stream's responses with KvChunk bytes read straight
// out of gRPC's receive buffers.
#ifndef PDSERVE_PROTO_KV_WIRE_PREFILL_RESPONSE_DECODER_H_
#define PDSERVE_PROTO_KV_WIRE_PREFILL_RESPONSE_DECODER_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "pdserve/v1/prefill.pb.h"

namespace pdserve {

// One KvChunk's fields; k and v point into the decoder's buffers and stay
// valid until its next Decode. Each is [num_tokens, num_kv_heads, head_dim]
// in the stream's kv_dtype (sizes are checked by the consumer, which knows
// the layout from the header).
struct KvChunkView {
  int layer = 0;
  int first_token = 0;
  int num_tokens = 0;
  std::span<const char> k;
  std::span<const char> v;
};

// Reads PrefillResponse messages received as raw gRPC byte buffers. A
// message that is only a KvChunk (what the prefill service sends, and what
// protobuf's serialiser writes for one) is walked field by field and its K
// and V are copied once, from gRPC's slices into two buffers this decoder
// keeps and reuses, instead of protobuf allocating two strings per message
// and the consumer copying again (docs/benchmarks.md, KV transfer). Any
// other message (header, hidden states, final hidden state, or a KvChunk
// with fields in an unexpected shape) goes through protobuf's parser.
// Not thread-safe; one per stream.
class PrefillResponseDecoder {
 public:
  enum class Kind { kKvChunk, kOther };

  PrefillResponseDecoder() = default;
  PrefillResponseDecoder(const PrefillResponseDecoder&) = delete;
  PrefillResponseDecoder& operator=(const PrefillResponseDecoder&) = delete;

  // Decodes `buffer` (left intact for a KvChunk, cleared otherwise).
  // kKvChunk: read kv(); kOther: read other(). INTERNAL when the bytes are
  // not a PrefillResponse.
  absl::StatusOr<Kind> Decode(grpc::ByteBuffer* buffer);

  const KvChunkView& kv() const { return kv_; }
  const v1::PrefillResponse& other() const { return other_; }

 private:
  // A growable byte array that is never zero-filled (reused every message).
  struct Scratch {
    std::unique_ptr<char[]> bytes;
    size_t capacity = 0;
    char* Reserve(size_t size);
  };
  // The fast path; false when the message needs protobuf's parser.
  bool DecodeKvChunk(grpc::ByteBuffer* buffer);

  Scratch k_scratch_;
  Scratch v_scratch_;
  KvChunkView kv_;
  v1::PrefillResponse other_;
};

}  // namespace pdserve

#endif  // PDSERVE_PROTO_KV_WIRE_PREFILL_RESPONSE_DECODER_H_
