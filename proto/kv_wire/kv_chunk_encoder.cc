#include "proto/kv_wire/kv_chunk_encoder.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/wire_format_lite.h>
#include <grpcpp/support/slice.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <utility>

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

// A slice's destroy callback: it owns one HostBlock of KvChunkBuffers.
void DestroyHostBlock(void* block) { delete static_cast<HostBlock*>(block); }

// A slice over `block`'s bytes that destroys the block when gRPC is done.
grpc::Slice OwningSlice(HostBlockPtr block) {
  char* data = block->data();
  const size_t size = block->size();
  return grpc::Slice(data, size, &DestroyHostBlock, block.release());
}

}  // namespace

KvChunkBuffers::KvChunkBuffers(size_t bytes_each)
    : k_(MakeHeapHostBlock(bytes_each)), v_(MakeHeapHostBlock(bytes_each)) {}

KvChunkBuffers::KvChunkBuffers(HostBlockPtr k, HostBlockPtr v)
    : k_(std::move(k)), v_(std::move(v)) {
  if (k_ == nullptr || v_ == nullptr || k_->size() != v_->size()) {
    std::fprintf(stderr, "KvChunkBuffers: K and V blocks must be non-null and of equal size\n");
    std::abort();
  }
}

grpc::ByteBuffer EncodeKvChunkResponse(int layer, int first_token, int num_tokens,
                                       KvChunkBuffers buffers) {
  const size_t n = buffers.bytes_each();
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

  grpc::Slice slices[4] = {grpc::Slice(head), OwningSlice(std::move(buffers.k_)),
                           grpc::Slice(v_head), OwningSlice(std::move(buffers.v_))};
  return grpc::ByteBuffer(slices, 4);
}

}  // namespace pdserve
