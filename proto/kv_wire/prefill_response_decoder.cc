#include "proto/kv_wire/prefill_response_decoder.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/proto_buffer_reader.h>

#include <climits>
#include <cstdint>

#include "absl/strings/str_cat.h"

namespace pdserve {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedInputStream;

constexpr uint32_t Tag(int field, WireFormatLite::WireType type) {
  return (static_cast<uint32_t>(field) << 3) | static_cast<uint32_t>(type);
}

// pdserve/v1/prefill.proto: PrefillResponse.kv = 2; KvChunk fields 1..5.
constexpr uint32_t kKvTag = Tag(2, WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
constexpr uint32_t kLayerTag = Tag(1, WireFormatLite::WIRETYPE_VARINT);
constexpr uint32_t kFirstTokenTag = Tag(2, WireFormatLite::WIRETYPE_VARINT);
constexpr uint32_t kNumTokensTag = Tag(3, WireFormatLite::WIRETYPE_VARINT);
constexpr uint32_t kKTag = Tag(4, WireFormatLite::WIRETYPE_LENGTH_DELIMITED);
constexpr uint32_t kVTag = Tag(5, WireFormatLite::WIRETYPE_LENGTH_DELIMITED);

size_t TotalBytes(const std::vector<std::span<char>>& ranges) {
  size_t total = 0;
  for (const std::span<char>& range : ranges) total += range.size();
  return total;
}

bool ReadInt32(CodedInputStream* in, int* value) {
  uint64_t raw = 0;
  if (!in->ReadVarint64(&raw)) return false;
  *value = static_cast<int32_t>(raw);  // int32 on the wire: sign-extended varint
  return true;
}

}  // namespace

char* PrefillResponseDecoder::Scratch::Reserve(size_t size) {
  if (size > capacity) {
    bytes.reset(new char[size]);
    capacity = size;
  }
  return bytes.get();
}

absl::StatusOr<bool> PrefillResponseDecoder::DecodeKvChunk(grpc::ByteBuffer* buffer,
                                                           const KvPlacer* placer) {
  grpc::ProtoBufferReader reader(buffer);
  if (!reader.status().ok()) return false;
  CodedInputStream in(&reader);
  in.SetTotalBytesLimit(INT_MAX);
  if (in.ReadTag() != kKvTag) return false;
  uint32_t chunk_length = 0;
  if (!in.ReadVarint32(&chunk_length) || chunk_length > INT_MAX) return false;
  const CodedInputStream::Limit limit = in.PushLimit(static_cast<int>(chunk_length));
  KvChunkView view;
  bool asked = false;  // the placer, once per chunk
  for (uint32_t tag = in.ReadTag(); tag != 0; tag = in.ReadTag()) {
    switch (tag) {
      case kLayerTag:
      case kFirstTokenTag:
      case kNumTokensTag: {
        if (view.placed) {
          return absl::InternalError(
              "prefill stream: a KvChunk's layer or token fields after its payload");
        }
        int* field = tag == kLayerTag        ? &view.layer
                     : tag == kFirstTokenTag ? &view.first_token
                                             : &view.num_tokens;
        if (!ReadInt32(&in, field)) return false;
        break;
      }
      case kKTag:
      case kVTag: {
        uint32_t length = 0;
        if (!in.ReadVarint32(&length) || length > INT_MAX) return false;
        const bool is_k = tag == kKTag;
        if (placer != nullptr && !asked) {
          asked = true;
          k_ranges_.clear();
          v_ranges_.clear();
          view.placed = (*placer)(view.layer, view.first_token, view.num_tokens, length, &k_ranges_,
                                  &v_ranges_) &&
                        TotalBytes(k_ranges_) == length && TotalBytes(v_ranges_) == length;
        }
        if (view.placed) {
          // A V (or second K) of another length than the ranges: protobuf's
          // parser and the consumer's size checks take over.
          if (length != (is_k ? TotalBytes(k_ranges_) : TotalBytes(v_ranges_))) return false;
          for (const std::span<char>& range : is_k ? k_ranges_ : v_ranges_) {
            if (!in.ReadRaw(range.data(), static_cast<int>(range.size()))) return false;
          }
          (is_k ? view.k_bytes : view.v_bytes) = length;
          break;
        }
        Scratch& scratch = is_k ? k_scratch_ : v_scratch_;
        char* bytes = scratch.Reserve(length);
        if (!in.ReadRaw(bytes, static_cast<int>(length))) return false;
        (is_k ? view.k : view.v) = std::span<const char>(bytes, length);
        (is_k ? view.k_bytes : view.v_bytes) = length;
        break;
      }
      default:
        // Unknown fields: let protobuf's parser apply its rules.
        return false;
    }
  }
  if (!in.ConsumedEntireMessage()) return false;
  in.PopLimit(limit);
  // Nothing may follow the chunk (a second oneof member would replace it).
  if (in.ReadTag() != 0 || !in.ConsumedEntireMessage()) return false;
  kv_ = view;
  return true;
}

absl::StatusOr<PrefillResponseDecoder::Kind> PrefillResponseDecoder::Decode(
    grpc::ByteBuffer* buffer, const KvPlacer* placer) {
  absl::StatusOr<bool> fast = DecodeKvChunk(buffer, placer);
  if (!fast.ok()) return fast.status();
  if (*fast) return Kind::kKvChunk;
  other_.Clear();
  const grpc::Status status =
      grpc::SerializationTraits<v1::PrefillResponse>::Deserialize(buffer, &other_);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat(
        "prefill stream: a message that is not a PrefillResponse (", status.error_message(), ")"));
  }
  if (other_.has_kv()) {
    // A KvChunk the fast path declined (unknown fields, odd order of
    // fields): hand it over the same way.
    const v1::KvChunk& chunk = other_.kv();
    kv_.layer = chunk.layer();
    kv_.first_token = chunk.first_token();
    kv_.num_tokens = chunk.num_tokens();
    kv_.k = std::span<const char>(chunk.k().data(), chunk.k().size());
    kv_.v = std::span<const char>(chunk.v().data(), chunk.v().size());
    kv_.placed = false;
    kv_.k_bytes = chunk.k().size();
    kv_.v_bytes = chunk.v().size();
    return Kind::kKvChunk;
  }
  return Kind::kOther;
}

}  // namespace pdserve
