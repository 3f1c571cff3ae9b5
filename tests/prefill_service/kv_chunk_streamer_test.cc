#include "prefill_service/kv_chunk_streamer.h"

#include <grpcpp/support/slice.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "kernels/cpu/cpu_backend.h"
#include "pdserve/v1/prefill.pb.h"
#include "tests/testing/byte_buffer_bytes.h"
#include "tests/testing/deferred_copy_backend.h"

namespace pdserve {
namespace {

constexpr int kKvWidth = 8;
constexpr int kTokens = 7;
constexpr int kTokensPerChunk = 3;  // chunks of 3, 3, 1 tokens
constexpr int kLayers = 4;

// The K (or V) value of `token`, element `e`, in `layer`: distinct for
// every position, so a chunk holding the wrong rows or another layer's
// rows (or poison) does not match.
float Value(int layer, int token, int e, bool is_v) {
  return (is_v ? -1.0f : 1.0f) * (1000.0f * layer + 10.0f * token + e + 1.0f);
}

struct Sent {
  v1::KvChunk chunk;
};

class KvChunkStreamerTest : public ::testing::Test {
 protected:
  KvChunkStreamerTest() : backend_(CreateCpuBackend()) {
    k_ = *backend_.Allocate(static_cast<size_t>(kTokens) * kKvWidth, DType::kF32);
    v_ = *backend_.Allocate(static_cast<size_t>(kTokens) * kKvWidth, DType::kF32);
  }

  // Writes `layer`'s K and V into the one pair of buffers every layer
  // reuses, as the Transformer does.
  void ComputeLayer(int layer) {
    std::vector<float> k, v;
    for (int t = 0; t < kTokens; ++t) {
      for (int e = 0; e < kKvWidth; ++e) {
        k.push_back(Value(layer, t, e, false));
        v.push_back(Value(layer, t, e, true));
      }
    }
    ASSERT_TRUE(backend_.CopyToDevice(k.data(), DType::kF32, k.size(), *k_, 0).ok());
    ASSERT_TRUE(backend_.CopyToDevice(v.data(), DType::kF32, v.size(), *v_, 0).ok());
  }

  KvChunkStreamer::Send Collect() {
    return [this](grpc::ByteBuffer message, int64_t payload_bytes) {
      v1::PrefillResponse response;
      EXPECT_TRUE(response.ParseFromString(ByteBufferBytes(message)));
      EXPECT_TRUE(response.has_kv());
      EXPECT_EQ(payload_bytes, 2 * static_cast<int64_t>(response.kv().k().size()));
      sent_.push_back(response.kv());
      kept_.push_back(std::move(message));  // as gRPC holds it while writing
      return absl::Status();
    };
  }

  // Every chunk of `layers`, in order, with the right bytes.
  void ExpectSentInOrder(int layers) {
    ASSERT_EQ(sent_.size(), static_cast<size_t>(layers) * 3);
    size_t i = 0;
    for (int layer = 0; layer < layers; ++layer) {
      for (int first = 0; first < kTokens; first += kTokensPerChunk, ++i) {
        const v1::KvChunk& chunk = sent_[i];
        const int count = std::min(kTokensPerChunk, kTokens - first);
        EXPECT_EQ(chunk.layer(), layer);
        EXPECT_EQ(chunk.first_token(), first);
        ASSERT_EQ(chunk.num_tokens(), count);
        ASSERT_EQ(chunk.k().size(), static_cast<size_t>(count) * kKvWidth * sizeof(float));
        ASSERT_EQ(chunk.v().size(), chunk.k().size());
        std::vector<float> k(count * kKvWidth), v(count * kKvWidth);
        std::memcpy(k.data(), chunk.k().data(), chunk.k().size());
        std::memcpy(v.data(), chunk.v().data(), chunk.v().size());
        for (int t = 0; t < count; ++t) {
          for (int e = 0; e < kKvWidth; ++e) {
            ASSERT_EQ(k[t * kKvWidth + e], Value(layer, first + t, e, false))
                << "layer " << layer << " token " << first + t;
            ASSERT_EQ(v[t * kKvWidth + e], Value(layer, first + t, e, true))
                << "layer " << layer << " token " << first + t;
          }
        }
      }
    }
  }

  DeferredCopyBackend backend_;
  BufferPtr k_, v_;
  std::vector<v1::KvChunk> sent_;
  std::vector<grpc::ByteBuffer> kept_;
};

// The GPU pattern: layer l's copies are still running when Add returns;
// they go out (waited for) at layer l + 1's Add, the last layer's at Flush.
// Every layer reuses the same source buffers, so a chunk taken from the
// source after its Add returned, or sent before its copy ended (poison),
// would fail the byte check.
TEST_F(KvChunkStreamerTest, SendsEachLayerOnceItsCopiesEndedInOrder) {
  KvChunkStreamer streamer(backend_, kKvWidth, kTokensPerChunk, Collect());
  for (int layer = 0; layer < kLayers; ++layer) {
    ComputeLayer(layer);
    ASSERT_TRUE(streamer.Add(layer, *k_, *v_, 0, kTokens).ok());
    EXPECT_EQ(sent_.size(), static_cast<size_t>(layer) * 3) << "after layer " << layer;
    EXPECT_EQ(streamer.chunks_in_flight(), 3);
  }
  ASSERT_TRUE(streamer.Flush().ok());
  EXPECT_EQ(streamer.chunks_in_flight(), 0);
  ExpectSentInOrder(kLayers);
  EXPECT_EQ(backend_.copies_started(), kLayers * 3 * 2);
  EXPECT_EQ(backend_.live_copies(), 0);
  EXPECT_EQ(backend_.copies_outliving_destination(), 0);
  EXPECT_EQ(backend_.live_blocks(), kLayers * 3 * 2);  // held by the sent messages
  kept_.clear();
  EXPECT_EQ(backend_.live_blocks(), 0);
}

// Copies that have ended by the time Add looks (the CPU backend's always
// have) go out within that Add: the KV stream is never held back a layer.
TEST_F(KvChunkStreamerTest, SendsCopiesThatAlreadyEndedAtOnce) {
  backend_.set_copies_end_at_once(true);
  KvChunkStreamer streamer(backend_, kKvWidth, kTokensPerChunk, Collect());
  for (int layer = 0; layer < kLayers; ++layer) {
    ComputeLayer(layer);
    ASSERT_TRUE(streamer.Add(layer, *k_, *v_, 0, kTokens).ok());
    EXPECT_EQ(sent_.size(), static_cast<size_t>(layer + 1) * 3);
    EXPECT_EQ(streamer.chunks_in_flight(), 0);
  }
  ASSERT_TRUE(streamer.Flush().ok());
  ExpectSentInOrder(kLayers);
}

// The production CPU path, through the real CPU backend's default
// CopyToHostAsync and heap blocks.
TEST_F(KvChunkStreamerTest, CpuBackendSendsEveryChunkWithinItsAdd) {
  std::unique_ptr<Backend> cpu = CreateCpuBackend();
  KvChunkStreamer streamer(*cpu, kKvWidth, kTokensPerChunk, Collect());
  for (int layer = 0; layer < kLayers; ++layer) {
    ComputeLayer(layer);  // (backend_ and cpu share nothing but host memory)
    ASSERT_TRUE(streamer.Add(layer, *k_, *v_, 0, kTokens).ok());
    EXPECT_EQ(streamer.chunks_in_flight(), 0);
  }
  ASSERT_TRUE(streamer.Flush().ok());
  ExpectSentInOrder(kLayers);
}

// A prompt computed in chunks hands out token ranges per (chunk, layer);
// each range is cut on its own.
TEST_F(KvChunkStreamerTest, CutsEachTokenRangeOnItsOwn) {
  KvChunkStreamer streamer(backend_, kKvWidth, kTokensPerChunk, Collect());
  ComputeLayer(0);
  ASSERT_TRUE(streamer.Add(0, *k_, *v_, 0, 4).ok());  // tokens 0-2, 3
  ASSERT_TRUE(streamer.Add(0, *k_, *v_, 4, 3).ok());  // tokens 4-6
  ASSERT_TRUE(streamer.Flush().ok());
  ASSERT_EQ(sent_.size(), 3u);
  EXPECT_EQ(sent_[0].first_token(), 0);
  EXPECT_EQ(sent_[0].num_tokens(), 3);
  EXPECT_EQ(sent_[1].first_token(), 3);
  EXPECT_EQ(sent_[1].num_tokens(), 1);
  EXPECT_EQ(sent_[2].first_token(), 4);
  EXPECT_EQ(sent_[2].num_tokens(), 3);
  std::vector<float> k(kKvWidth);
  std::memcpy(k.data(), sent_[2].k().data(), k.size() * sizeof(float));
  EXPECT_EQ(k[0], Value(0, 4, 0, false));
}

// A failed copy ends the stream: its error comes back, every other chunk
// in flight is dropped after its copy was waited for, nothing is sent
// after it, and later calls keep failing. No block or copy is left.
TEST_F(KvChunkStreamerTest, CopyFailureDropsTheChunksInFlightAndSticks) {
  backend_.FailCopy(3);  // layer 0's second chunk's K
  {
    KvChunkStreamer streamer(backend_, kKvWidth, kTokensPerChunk, Collect());
    ComputeLayer(0);
    ASSERT_TRUE(streamer.Add(0, *k_, *v_, 0, kTokens).ok());
    ComputeLayer(1);
    const absl::Status failed = streamer.Add(1, *k_, *v_, 0, kTokens);
    EXPECT_EQ(failed.code(), absl::StatusCode::kInternal) << failed;
    EXPECT_EQ(sent_.size(), 1u);  // the chunk before the failed one
    EXPECT_EQ(streamer.chunks_in_flight(), 0);
    EXPECT_EQ(backend_.live_copies(), 0);
    EXPECT_EQ(streamer.Add(2, *k_, *v_, 0, kTokens).code(), absl::StatusCode::kInternal);
    EXPECT_EQ(streamer.Flush().code(), absl::StatusCode::kInternal);
    EXPECT_EQ(sent_.size(), 1u);
  }
  EXPECT_EQ(backend_.copies_outliving_destination(), 0);
  kept_.clear();
  EXPECT_EQ(backend_.live_blocks(), 0);
}

// The call was cancelled (send fails): the stream stops there, as above.
TEST_F(KvChunkStreamerTest, SendFailureStopsTheStream) {
  int calls = 0;
  KvChunkStreamer streamer(
      backend_, kKvWidth, kTokensPerChunk, [&calls](grpc::ByteBuffer, int64_t) {
        return ++calls == 2 ? absl::CancelledError("the client went away") : absl::OkStatus();
      });
  ComputeLayer(0);
  ASSERT_TRUE(streamer.Add(0, *k_, *v_, 0, kTokens).ok());
  ComputeLayer(1);
  ASSERT_TRUE(streamer.Add(1, *k_, *v_, 0, kTokens).ok() == false);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(streamer.Flush().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(calls, 2);
  EXPECT_EQ(streamer.chunks_in_flight(), 0);
  EXPECT_EQ(backend_.live_copies(), 0);
  EXPECT_EQ(backend_.live_blocks(), 0);  // the messages went nowhere
  EXPECT_EQ(backend_.copies_outliving_destination(), 0);
}

// A prompt that ends without Flush (another prompt's failure, a cancelled
// forward): the streamer waits for its copies before their blocks go.
TEST_F(KvChunkStreamerTest, DestroyingWithCopiesInFlightWaitsForThemFirst) {
  {
    KvChunkStreamer streamer(backend_, kKvWidth, kTokensPerChunk, Collect());
    ComputeLayer(0);
    ASSERT_TRUE(streamer.Add(0, *k_, *v_, 0, kTokens).ok());
    ASSERT_EQ(backend_.live_copies(), 6);
  }
  EXPECT_TRUE(sent_.empty());
  EXPECT_EQ(backend_.live_copies(), 0);
  EXPECT_EQ(backend_.live_blocks(), 0);
  EXPECT_EQ(backend_.copies_outliving_destination(), 0);
}

// A range outside the source is the backend's INVALID_ARGUMENT, and
// leaves nothing behind.
TEST_F(KvChunkStreamerTest, RangeOutsideTheBuffersIsInvalidArgument) {
  KvChunkStreamer streamer(backend_, kKvWidth, kTokensPerChunk, Collect());
  ComputeLayer(0);
  const absl::Status status = streamer.Add(0, *k_, *v_, 5, 4);  // tokens 5..8 of 7
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(streamer.chunks_in_flight(), 0);
  EXPECT_EQ(backend_.live_copies(), 0);
  kept_.clear();
  EXPECT_EQ(backend_.live_blocks(), 0);
}

}  // namespace
}  // namespace pdserve
