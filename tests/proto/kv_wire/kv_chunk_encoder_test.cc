#include "proto/kv_wire/kv_chunk_encoder.h"

#include <grpcpp/support/slice.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "tests/testing/byte_buffer_bytes.h"

namespace pdserve {
namespace {

std::string Pattern(size_t n, int seed) {
  std::string bytes(n, '\0');
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<char>((i * 131 + seed * 7) & 0xff);
  return bytes;
}

struct Case {
  int layer;
  int first_token;
  int num_tokens;
  size_t bytes_each;
};

// Protobuf's own serialiser is the reference: the encoder must write the
// same bytes, including for zero fields (left out) and multi-byte varints.
TEST(KvChunkEncoderTest, WritesWhatProtobufWrites) {
  const Case cases[] = {{0, 0, 1, 16},        {3, 5, 7, 7 * 192},   {31, 300, 200, 200 * 6144},
                        {127, 128, 1, 16384}, {1, 16383, 2, 70000}, {2, 0, 0, 0}};
  for (const Case& c : cases) {
    SCOPED_TRACE(testing::Message()
                 << "layer " << c.layer << " first " << c.first_token << " bytes " << c.bytes_each);
    const std::string k = Pattern(c.bytes_each, 1);
    const std::string v = Pattern(c.bytes_each, 2);
    KvChunkBuffers buffers(c.bytes_each);
    if (c.bytes_each > 0) {
      std::memcpy(buffers.k(), k.data(), k.size());
      std::memcpy(buffers.v(), v.data(), v.size());
    }
    const grpc::ByteBuffer encoded =
        EncodeKvChunkResponse(c.layer, c.first_token, c.num_tokens, std::move(buffers));

    v1::PrefillResponse expected;
    v1::KvChunk* chunk = expected.mutable_kv();
    chunk->set_layer(c.layer);
    chunk->set_first_token(c.first_token);
    chunk->set_num_tokens(c.num_tokens);
    chunk->set_k(k);
    chunk->set_v(v);
    const std::string bytes = ByteBufferBytes(encoded);
    EXPECT_EQ(bytes, expected.SerializeAsString());
    EXPECT_EQ(encoded.Length(), expected.ByteSizeLong());

    v1::PrefillResponse parsed;
    ASSERT_TRUE(parsed.ParseFromString(bytes));
    EXPECT_EQ(parsed.kv().layer(), c.layer);
    EXPECT_EQ(parsed.kv().k(), k);
    EXPECT_EQ(parsed.kv().v(), v);
  }
}

// K and V travel in the buffers the producer filled: the ByteBuffer's
// second and fourth slices are those arrays, not copies of them.
TEST(KvChunkEncoderTest, SendsTheProducersBuffersWithoutCopying) {
  KvChunkBuffers buffers(4096);
  const char* k = buffers.k();
  const char* v = buffers.v();
  std::memset(buffers.k(), 1, 4096);
  std::memset(buffers.v(), 2, 4096);
  const grpc::ByteBuffer encoded = EncodeKvChunkResponse(4, 8, 16, std::move(buffers));
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(encoded.Dump(&slices).ok());
  ASSERT_EQ(slices.size(), 4u);
  EXPECT_EQ(reinterpret_cast<const char*>(slices[1].begin()), k);
  EXPECT_EQ(slices[1].size(), 4096u);
  EXPECT_EQ(reinterpret_cast<const char*>(slices[3].begin()), v);
  EXPECT_EQ(slices[3].size(), 4096u);
}

// The buffers outlive the encoder's caller: a copy of the ByteBuffer (as
// gRPC keeps while writing) still reads the right bytes after the original
// is gone.
TEST(KvChunkEncoderTest, ByteBufferOwnsTheBytes) {
  grpc::ByteBuffer kept;
  {
    KvChunkBuffers buffers(1000);
    std::memset(buffers.k(), 'k', 1000);
    std::memset(buffers.v(), 'v', 1000);
    grpc::ByteBuffer encoded = EncodeKvChunkResponse(1, 2, 3, std::move(buffers));
    kept = encoded;
  }
  v1::PrefillResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(ByteBufferBytes(kept)));
  EXPECT_EQ(parsed.kv().k(), std::string(1000, 'k'));
  EXPECT_EQ(parsed.kv().v(), std::string(1000, 'v'));
}

// A producer's own blocks (a backend's pinned memory) travel as the slices
// and go back to their owner exactly when the last copy of the ByteBuffer
// is gone, not before (gRPC may still be writing them) and not never (a
// leak of pinned memory).
class CountedBlock final : public HostBlock {
 public:
  CountedBlock(size_t bytes, int* live) : HostBlock(new char[bytes], bytes), live_(live) {
    ++*live_;
  }
  ~CountedBlock() override {
    delete[] data();
    --*live_;
  }

 private:
  int* live_;
};

TEST(KvChunkEncoderTest, ReleasesTheProducersBlocksWhenGrpcIsDone) {
  int live = 0;
  grpc::ByteBuffer kept;
  {
    KvChunkBuffers buffers(std::make_unique<CountedBlock>(256, &live),
                           std::make_unique<CountedBlock>(256, &live));
    ASSERT_EQ(live, 2);
    const char* k = buffers.k();
    std::memset(buffers.k(), 'k', 256);
    std::memset(buffers.v(), 'v', 256);
    grpc::ByteBuffer encoded = EncodeKvChunkResponse(3, 0, 1, std::move(buffers));
    std::vector<grpc::Slice> slices;
    ASSERT_TRUE(encoded.Dump(&slices).ok());
    ASSERT_EQ(slices.size(), 4u);
    EXPECT_EQ(reinterpret_cast<const char*>(slices[1].begin()), k);
    kept = encoded;
  }
  EXPECT_EQ(live, 2);  // `kept` still refers to them
  v1::PrefillResponse parsed;
  ASSERT_TRUE(parsed.ParseFromString(ByteBufferBytes(kept)));
  EXPECT_EQ(parsed.kv().layer(), 3);
  EXPECT_EQ(parsed.kv().k(), std::string(256, 'k'));
  EXPECT_EQ(parsed.kv().v(), std::string(256, 'v'));
  kept.Clear();
  EXPECT_EQ(live, 0);
}

}  // namespace
}  // namespace pdserve
