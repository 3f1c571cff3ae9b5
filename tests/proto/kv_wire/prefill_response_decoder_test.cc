#include "proto/kv_wire/prefill_response_decoder.h"

#include <grpcpp/support/slice.h>

#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "proto/kv_wire/kv_chunk_encoder.h"

namespace pdserve {
namespace {

using Kind = PrefillResponseDecoder::Kind;

// `bytes` as a ByteBuffer cut into slices at `cuts` (as TCP reads cut a
// message), so fields and payloads straddle slice boundaries.
grpc::ByteBuffer Sliced(const std::string& bytes, std::vector<size_t> cuts) {
  cuts.push_back(bytes.size());
  std::vector<grpc::Slice> slices;
  size_t begin = 0;
  for (size_t end : cuts) {
    if (end <= begin || end > bytes.size()) continue;
    slices.emplace_back(bytes.data() + begin, end - begin);
    begin = end;
  }
  return grpc::ByteBuffer(slices.data(), slices.size());
}

std::string Pattern(size_t n, int seed) {
  std::string bytes(n, '\0');
  for (size_t i = 0; i < n; ++i) bytes[i] = static_cast<char>((i * 29 + seed * 13) & 0xff);
  return bytes;
}

v1::PrefillResponse Chunk(int layer, int first, int count, size_t bytes_each) {
  v1::PrefillResponse response;
  v1::KvChunk* chunk = response.mutable_kv();
  chunk->set_layer(layer);
  chunk->set_first_token(first);
  chunk->set_num_tokens(count);
  chunk->set_k(Pattern(bytes_each, layer));
  chunk->set_v(Pattern(bytes_each, layer + 100));
  return response;
}

void ExpectChunk(const PrefillResponseDecoder& decoder, const v1::KvChunk& expected) {
  const KvChunkView& view = decoder.kv();
  EXPECT_EQ(view.layer, expected.layer());
  EXPECT_EQ(view.first_token, expected.first_token());
  EXPECT_EQ(view.num_tokens, expected.num_tokens());
  EXPECT_EQ(std::string(view.k.data(), view.k.size()), expected.k());
  EXPECT_EQ(std::string(view.v.data(), view.v.size()), expected.v());
}

TEST(PrefillResponseDecoderTest, ReadsProtobufSerialisedChunksCutAnywhere) {
  std::mt19937 rng(7);
  PrefillResponseDecoder decoder;
  for (size_t bytes_each : {size_t{1}, size_t{100}, size_t{65536}, size_t{300000}}) {
    const v1::PrefillResponse expected = Chunk(5, 300, 17, bytes_each);
    const std::string bytes = expected.SerializeAsString();
    for (int trial = 0; trial < 8; ++trial) {
      std::vector<size_t> cuts;
      // Trial 0: one byte per slice over the field headers.
      if (trial == 0) {
        for (size_t i = 1; i < 16 && i < bytes.size(); ++i) cuts.push_back(i);
      } else {
        std::uniform_int_distribution<size_t> at(1, bytes.size() - 1);
        for (int i = 0; i < trial * 3; ++i) cuts.push_back(at(rng));
        std::sort(cuts.begin(), cuts.end());
      }
      grpc::ByteBuffer buffer = Sliced(bytes, cuts);
      absl::StatusOr<Kind> kind = decoder.Decode(&buffer);
      ASSERT_TRUE(kind.ok()) << kind.status();
      ASSERT_EQ(*kind, Kind::kKvChunk);
      ExpectChunk(decoder, expected.kv());
    }
  }
}

TEST(PrefillResponseDecoderTest, RoundTripsTheEncoder) {
  PrefillResponseDecoder decoder;
  // A large chunk, then a smaller one: the reused buffers must report the
  // new sizes, not their capacity.
  for (size_t bytes_each : {size_t{1} << 20, size_t{4096}, size_t{0}}) {
    const v1::PrefillResponse expected = Chunk(0, 0, 3, bytes_each);
    KvChunkBuffers buffers(bytes_each);
    if (bytes_each > 0) {
      std::memcpy(buffers.k(), expected.kv().k().data(), bytes_each);
      std::memcpy(buffers.v(), expected.kv().v().data(), bytes_each);
    }
    grpc::ByteBuffer buffer = EncodeKvChunkResponse(0, 0, 3, std::move(buffers));
    absl::StatusOr<Kind> kind = decoder.Decode(&buffer);
    ASSERT_TRUE(kind.ok()) << kind.status();
    ASSERT_EQ(*kind, Kind::kKvChunk);
    ExpectChunk(decoder, expected.kv());
  }
}

TEST(PrefillResponseDecoderTest, HandsOtherMessagesOverParsed) {
  v1::PrefillResponse header;
  header.mutable_header()->set_num_tokens(9);
  header.mutable_header()->set_head_dim(96);
  v1::PrefillResponse final_hidden;
  final_hidden.mutable_final_hidden()->add_values(1.5f);
  final_hidden.mutable_final_hidden()->set_prefill_ms(3.0);
  PrefillResponseDecoder decoder;
  for (const v1::PrefillResponse& expected : {header, final_hidden}) {
    grpc::ByteBuffer buffer = Sliced(expected.SerializeAsString(), {3});
    absl::StatusOr<Kind> kind = decoder.Decode(&buffer);
    ASSERT_TRUE(kind.ok()) << kind.status();
    ASSERT_EQ(*kind, Kind::kOther);
    EXPECT_EQ(decoder.other().SerializeAsString(), expected.SerializeAsString());
  }
}

// Fields in another order than protobuf writes them are still one KvChunk.
TEST(PrefillResponseDecoderTest, AcceptsFieldsInAnyOrder) {
  const std::string k = Pattern(40, 1), v = Pattern(40, 2);
  std::string chunk;
  chunk += '\x2a';  // v = 5, length-delimited
  chunk += static_cast<char>(v.size());
  chunk += v;
  chunk += '\x18';  // num_tokens = 3
  chunk += '\x02';
  chunk += '\x22';  // k = 4
  chunk += static_cast<char>(k.size());
  chunk += k;
  chunk += "\x08\x07";  // layer = 7
  std::string message = "\x12";
  message += static_cast<char>(chunk.size());
  message += chunk;
  v1::PrefillResponse reference;
  ASSERT_TRUE(reference.ParseFromString(message));
  PrefillResponseDecoder decoder;
  grpc::ByteBuffer buffer = Sliced(message, {});
  absl::StatusOr<Kind> kind = decoder.Decode(&buffer);
  ASSERT_TRUE(kind.ok()) << kind.status();
  ASSERT_EQ(*kind, Kind::kKvChunk);
  ExpectChunk(decoder, reference.kv());
}

// An unknown field inside the chunk takes protobuf's parser (which skips
// it); the chunk still arrives whole.
TEST(PrefillResponseDecoderTest, UnknownFieldsFallBackToProtobuf) {
  v1::PrefillResponse expected = Chunk(2, 4, 6, 32);
  std::string bytes = expected.SerializeAsString();
  // Append field 9 (varint 1) inside the KvChunk: grow its length prefix.
  ASSERT_LT(bytes.size(), 120u);  // one-byte length prefixes before and after
  const std::string chunk = bytes.substr(2) + "\x48\x01";
  std::string message = "\x12";
  message += static_cast<char>(chunk.size());
  message += chunk;
  PrefillResponseDecoder decoder;
  grpc::ByteBuffer buffer = Sliced(message, {5});
  absl::StatusOr<Kind> kind = decoder.Decode(&buffer);
  ASSERT_TRUE(kind.ok()) << kind.status();
  ASSERT_EQ(*kind, Kind::kKvChunk);
  ExpectChunk(decoder, expected.kv());
}

// Protobuf's rule for a oneof set twice: the last member wins. A chunk
// followed by a header is a header.
TEST(PrefillResponseDecoderTest, LaterOneofMemberWins) {
  v1::PrefillResponse header;
  header.mutable_header()->set_num_tokens(4);
  const std::string bytes = Chunk(1, 0, 1, 8).SerializeAsString() + header.SerializeAsString();
  v1::PrefillResponse reference;
  ASSERT_TRUE(reference.ParseFromString(bytes));
  ASSERT_TRUE(reference.has_header());
  PrefillResponseDecoder decoder;
  grpc::ByteBuffer buffer = Sliced(bytes, {});
  absl::StatusOr<Kind> kind = decoder.Decode(&buffer);
  ASSERT_TRUE(kind.ok()) << kind.status();
  ASSERT_EQ(*kind, Kind::kOther);
  EXPECT_EQ(decoder.other().header().num_tokens(), 4);
}

// A placer's ranges, in order, receive K and V as they are: here three
// uneven pieces of one destination each, as a paged cache hands out.
TEST(PrefillResponseDecoderTest, PlacerRangesReceiveThePayloadDirectly) {
  const v1::PrefillResponse expected = Chunk(3, 40, 5, 3000);
  std::string k_dest(3000, '\0'), v_dest(3000, '\0');
  int calls = 0;
  const KvPlacer placer = [&](int layer, int first, int count, size_t bytes,
                              std::vector<std::span<char>>* k, std::vector<std::span<char>>* v) {
    ++calls;
    EXPECT_EQ(layer, 3);
    EXPECT_EQ(first, 40);
    EXPECT_EQ(count, 5);
    EXPECT_EQ(bytes, 3000u);
    for (std::string* dest : {&k_dest, &v_dest}) {
      auto* ranges = dest == &k_dest ? k : v;
      ranges->emplace_back(dest->data(), 1000);
      ranges->emplace_back(dest->data() + 1000, 1);
      ranges->emplace_back(dest->data() + 1001, 1999);
    }
    return true;
  };
  PrefillResponseDecoder decoder;
  grpc::ByteBuffer buffer = Sliced(expected.SerializeAsString(), {7, 700, 2500, 4000});
  absl::StatusOr<Kind> kind = decoder.Decode(&buffer, &placer);
  ASSERT_TRUE(kind.ok()) << kind.status();
  ASSERT_EQ(*kind, Kind::kKvChunk);
  EXPECT_EQ(calls, 1);
  const KvChunkView& view = decoder.kv();
  EXPECT_TRUE(view.placed);
  EXPECT_TRUE(view.k.empty());
  EXPECT_EQ(view.k_bytes, 3000u);
  EXPECT_EQ(view.v_bytes, 3000u);
  EXPECT_EQ(view.layer, 3);
  EXPECT_EQ(k_dest, expected.kv().k());
  EXPECT_EQ(v_dest, expected.kv().v());
}

// A placer that declines, or whose ranges do not add up to the field, leaves
// the chunk in the decoder's own buffers.
TEST(PrefillResponseDecoderTest, DeclinedOrMismatchedPlacementUsesTheDecodersBuffers) {
  const v1::PrefillResponse expected = Chunk(1, 2, 3, 600);
  std::string dest(600, '\0');
  const KvPlacer declines = [](int, int, int, size_t, std::vector<std::span<char>>*,
                               std::vector<std::span<char>>*) { return false; };
  const KvPlacer too_short = [&](int, int, int, size_t, std::vector<std::span<char>>* k,
                                 std::vector<std::span<char>>* v) {
    k->emplace_back(dest.data(), 599);
    v->emplace_back(dest.data(), 599);
    return true;
  };
  for (const KvPlacer* placer : {&declines, &too_short}) {
    PrefillResponseDecoder decoder;
    grpc::ByteBuffer buffer = Sliced(expected.SerializeAsString(), {});
    absl::StatusOr<Kind> kind = decoder.Decode(&buffer, placer);
    ASSERT_TRUE(kind.ok()) << kind.status();
    ASSERT_EQ(*kind, Kind::kKvChunk);
    EXPECT_FALSE(decoder.kv().placed);
    ExpectChunk(decoder, expected.kv());
  }
  EXPECT_EQ(dest, std::string(600, '\0')) << "a rejected placement was written";
}

// Placement uses the layer and tokens read before the payload; if they come
// after it, the bytes went to the wrong place: the stream must fail.
TEST(PrefillResponseDecoderTest, TokenFieldsAfterAPlacedPayloadAreAnError) {
  const std::string k(8, 'k'), v(8, 'v');
  std::string chunk = "\x22\x08" + k + "\x2a\x08" + v + "\x08\x05";  // k, v, then layer 5
  std::string message = "\x12";
  message += static_cast<char>(chunk.size());
  message += chunk;
  std::string dest(16, '\0');
  const KvPlacer placer = [&](int, int, int, size_t, std::vector<std::span<char>>* kr,
                              std::vector<std::span<char>>* vr) {
    kr->emplace_back(dest.data(), 8);
    vr->emplace_back(dest.data() + 8, 8);
    return true;
  };
  PrefillResponseDecoder decoder;
  grpc::ByteBuffer buffer = Sliced(message, {});
  absl::StatusOr<Kind> kind = decoder.Decode(&buffer, &placer);
  ASSERT_FALSE(kind.ok());
  EXPECT_EQ(kind.status().code(), absl::StatusCode::kInternal);
  EXPECT_NE(kind.status().message().find("after its payload"), std::string::npos);
}

TEST(PrefillResponseDecoderTest, RejectsBytesThatAreNotAResponse) {
  PrefillResponseDecoder decoder;
  // A KvChunk whose k claims more bytes than the message has, and plain
  // garbage with an invalid wire type.
  const std::string truncated = std::string("\x12\x10\x22\x40", 4) + "abc";
  const std::string garbage = "\x0f\xff\xff\xff";
  for (const std::string& bytes : {truncated, garbage}) {
    grpc::ByteBuffer buffer = Sliced(bytes, {});
    absl::StatusOr<Kind> kind = decoder.Decode(&buffer);
    ASSERT_FALSE(kind.ok());
    EXPECT_EQ(kind.status().code(), absl::StatusCode::kInternal);
    EXPECT_NE(kind.status().message().find("PrefillResponse"), std::string::npos) << kind.status();
  }
}

}  // namespace
}  // namespace pdserve
