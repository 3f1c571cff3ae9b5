#include "proto/kv_wire/kv_chunk_encoder.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

namespace pdserve {
namespace {

using google::protobuf::internal::WireFormatLite;
using google::protobuf::io::CodedOutputStream;

// Field numbers of pdserve/v1/prefill.proto.
constexpr int kResponseKvField = 2;
constexpr int kLayerField = 1;
constexpr int kFirstTokenField = 2;
constexpr int kNumTokensField = 3;
constexpr int kKField = 4;
constexpr int kVField = 5;

// Tag and length prefix of a length-delimited field, as protobuf writes it.
size_t LengthPrefixSize(int field, size_t length) {
  return CodedOutputStream::VarintSize32(
             WireFormatLite::MakeTag(field, WireFormatLite::WIRETYPE_LENGTH_DELIMITED)) +
         CodedOutputStream::VarintSize64(length);
}

uint8_t* WriteLengthPrefix(int field, size_t length, uint8_t* target) {
  target =
      WireFormatLite::WriteTagToArray(field, WireFormatLite::WIRETYPE_LENGTH_DELIMITED, target);
  return CodedOutputStream::WriteVarint64ToArray(length, target);
}

// proto3 leaves zero scalars out; keeping that makes the bytes canonical.
size_t Int32FieldSize(int field, int32_t value) {
  if (value == 0) return 0;
  return CodedOutputStream::VarintSize32(
             WireFormatLite::MakeTag(field, WireFormatLite::WIRETYPE_VARINT)) +
         WireFormatLite::Int32Size(value);
}

uint8_t* WriteInt32Field(int field, int32_t value, uint8_t* target) {
  if (value == 0) return target;
  return WireFormatLite::WriteInt32ToArray(field, value, target);
}

// The slice owns a heap array from KvChunkBuffers.
void FreeArray(void* bytes) { delete[] static_cast<char*>(bytes); }

}  // namespace

KvChunkBuffers::KvChunkBuffers(size_t bytes_each)
    : k_(new char[bytes_each]), v_(new char[bytes_each]), bytes_each_(bytes_each) {}

grpc::ByteBuffer EncodeKvChunkResponse(int layer, int first_token, int num_tokens,
                                       KvChunkBuffers buffers) {
  const size_t n = buffers.bytes_each_;
  const size_t scalars = Int32FieldSize(kLayerField, layer) +
                         Int32FieldSize(kFirstTokenField, first_token) +
                         Int32FieldSize(kNumTokensField, num_tokens);
  // An empty bytes field is left out too.
  const size_t k_prefix = n == 0 ? 0 : LengthPrefixSize(kKField, n);
  const size_t v_prefix = n == 0 ? 0 : LengthPrefixSize(kVField, n);
  const size_t chunk_size = scalars + k_prefix + n + v_prefix + n;

  std::string head(LengthPrefixSize(kResponseKvField, chunk_size) + scalars + k_prefix, '\0');
  uint8_t* target = reinterpret_cast<uint8_t*>(head.data());
  target = WriteLengthPrefix(kResponseKvField, chunk_size, target);
  target = WriteInt32Field(kLayerField, layer, target);
  target = WriteInt32Field(kFirstTokenField, first_token, target);
  target = WriteInt32Field(kNumTokensField, num_tokens, target);
  if (n == 0) {
    grpc::Slice only(head);
    return grpc::ByteBuffer(&only, 1);
  }
  WriteLengthPrefix(kKField, n, target);
  std::string v_head(v_prefix, '\0');
  WriteLengthPrefix(kVField, n, reinterpret_cast<uint8_t*>(v_head.data()));

  grpc::Slice slices[4] = {grpc::Slice(head), grpc::Slice(buffers.k_.release(), n, &FreeArray),
                           grpc::Slice(v_head), grpc::Slice(buffers.v_.release(), n, &FreeArray)};
  return grpc::ByteBuffer(slices, 4);
}

absl::StatusOr<grpc::ByteBuffer> EncodeResponse(const v1::PrefillResponse& response) {
  grpc::ByteBuffer buffer;
  bool own_buffer = false;
  const grpc::Status status =
      grpc::SerializationTraits<v1::PrefillResponse>::Serialize(response, &buffer, &own_buffer);
  if (!status.ok()) {
    return absl::InternalError(
        absl::StrCat("serialising a PrefillResponse: ", status.error_message()));
  }
  return buffer;
}

}  // namespace pdserve
