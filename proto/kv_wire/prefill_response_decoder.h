// Parsing the prefill stream's responses with KvChunk bytes read straight
// out of gRPC's receive buffers.
#ifndef PDSERVE_PROTO_KV_WIRE_PREFILL_RESPONSE_DECODER_H_
#define PDSERVE_PROTO_KV_WIRE_PREFILL_RESPONSE_DECODER_H_

#include <grpcpp/support/byte_buffer.h>

#include <cstddef>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "pdserve/v1/prefill.pb.h"

namespace pdserve {

// One KvChunk's fields; k and v point into the decoder's buffers and stay
// valid until its next Decode. Each is [num_tokens, num_kv_heads, head_dim]
// in the stream's kv_dtype (sizes are checked by the consumer, which knows
// the layout from the header). When `placed`, K and V were copied straight
// into the ranges a KvPlacer gave (k and v are then empty; k_bytes and
// v_bytes say how many bytes each field had).
struct KvChunkView {
  int layer = 0;
  int first_token = 0;
  int num_tokens = 0;
  std::span<const char> k;
  std::span<const char> v;
  bool placed = false;
  size_t k_bytes = 0;
  size_t v_bytes = 0;
};

// Asked once per KvChunk, when its K field is reached, with the chunk's
// layer, first_token, num_tokens and the K field's length in bytes: fills
// `k` and `v` with writable byte ranges that, in order, take K and V as they
// are on the wire, and returns true; false leaves the chunk to the decoder's
// own buffers. The ranges must add up to the field lengths (otherwise the
// decoder uses its buffers). Called on the decoding thread.
using KvPlacer =
    std::function<bool(int layer, int first_token, int num_tokens, size_t bytes,
                       std::vector<std::span<char>>* k, std::vector<std::span<char>>* v)>;

// Reads PrefillResponse messages received as raw gRPC byte buffers. A
// message that is only a KvChunk (what the prefill service sends, and what
// protobuf's serialiser writes for one) is walked field by field and its K
// and V are copied once, from gRPC's slices into two buffers this decoder
// keeps and reuses, instead of protobuf allocating two strings per message
// and the consumer copying again (docs/benchmarks.md, KV transfer). With a
// KvPlacer the payload goes straight to where the placer says (the KV cache
// on the CPU backend), with no buffer between. Any other message (header,
// hidden states, final hidden state, or a KvChunk with unknown fields) goes
// through protobuf's parser.
// Not thread-safe; one per stream.
class PrefillResponseDecoder {
 public:
  enum class Kind { kKvChunk, kOther };

  PrefillResponseDecoder() = default;
  PrefillResponseDecoder(const PrefillResponseDecoder&) = delete;
  PrefillResponseDecoder& operator=(const PrefillResponseDecoder&) = delete;

  // Decodes `buffer` (left intact for a KvChunk, cleared otherwise).
  // kKvChunk: read kv(); kOther: read other(). INTERNAL when the bytes are
  // not a PrefillResponse, or when a placed chunk's layer or token fields
  // follow its payload (every serialiser writes them first; the placement
  // made from the earlier values would be wrong).
  absl::StatusOr<Kind> Decode(grpc::ByteBuffer* buffer, const KvPlacer* placer = nullptr);

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
  absl::StatusOr<bool> DecodeKvChunk(grpc::ByteBuffer* buffer, const KvPlacer* placer);

  Scratch k_scratch_;
  Scratch v_scratch_;
  KvChunkView kv_;
  v1::PrefillResponse other_;
  std::vector<std::span<char>> k_ranges_;  // from the placer, reused
  std::vector<std::span<char>> v_ranges_;
};

}  // namespace pdserve

#endif  // PDSERVE_PROTO_KV_WIRE_PREFILL_RESPONSE_DECODER_H_
