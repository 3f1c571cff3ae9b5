// KV transfer rate over loopback gRPC against a plain memory copy of the same
// bytes: the figure docs/benchmarks.md reports for prefill -> decode.
//
// An in-process PrefillService streams a prompt's worth of KvChunk messages
// over TCP 127.0.0.1 to a client that copies every chunk's K and V into one
// destination buffer, as decode's KvCache::WriteTokens does on the CPU
// backend. No model runs: the bench times the transport and its copies.
// Two wire paths:
//   protobuf - generated stubs: the server copies each chunk's K and V into
//              a PrefillResponse (as a backend's CopyToHost would), protobuf
//              serialises it, the client parses it into strings and copies
//              them out (the services' path before proto/kv_wire);
//   pdserve  - what the services use now: the server copies K and V into
//              KvChunkBuffers sent as they are (EncodeKvChunkResponse), the
//              client's PrefillResponseDecoder copies them from gRPC's slices
//              straight into the destination (a KvPlacer, as decode places
//              them in its CPU KV cache);
// each with glibc's default allocator settings and after
// TuneAllocatorForStreaming (both services call it at start-up). The
// memcpy baseline copies the same number of bytes between two buffers.
//
// Usage: pdserve-kv-transfer-bench [--tokens N] [--kv_width W] [--layers L]
//                                  [--repeats R] [--streams S]
// Defaults: Phi-3-mini in bf16: 32 layers, kv_width 3072 (32 heads x 96),
// 1024 tokens = 384 MiB per stream.
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "pdserve/v1/prefill.grpc.pb.h"
#include "proto/kv_wire/kv_chunk_encoder.h"
#include "proto/kv_wire/prefill_response_decoder.h"
#include "shared/allocator_tuning.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  int tokens = 1024;
  int kv_width = 3072;  // num_kv_heads * head_dim
  int layers = 32;
  int bytes_per_value = 2;  // bf16
  int repeats = 3;
  int streams = 1;  // concurrent Prefill streams, each the whole payload
  size_t token_bytes() const { return static_cast<size_t>(kv_width) * bytes_per_value; }
  size_t layer_bytes() const { return token_bytes() * tokens; }  // K (or V) of a layer
  size_t total_bytes() const { return 2 * layer_bytes() * layers; }
};

// One KvChunk's place in the source and destination: K of layer l lives at
// [2l * layer_bytes, ...), V right after it.
struct ChunkPlace {
  int layer;
  int first_token;
  int num_tokens;
};

std::vector<ChunkPlace> PlanChunks(const Shape& s, int64_t chunk_bytes) {
  const int tokens_per_chunk = static_cast<int>(
      std::clamp<int64_t>(chunk_bytes / static_cast<int64_t>(2 * s.token_bytes()), 1, s.tokens));
  std::vector<ChunkPlace> plan;
  for (int layer = 0; layer < s.layers; ++layer) {
    for (int first = 0; first < s.tokens; first += tokens_per_chunk) {
      plan.push_back({layer, first, std::min(tokens_per_chunk, s.tokens - first)});
    }
  }
  return plan;
}

size_t KOffset(const Shape& s, int layer, int first_token) {
  return 2 * s.layer_bytes() * layer + s.token_bytes() * first_token;
}

// The source "backend" both paths copy from, like CopyToHost.
struct Source {
  Shape shape;
  std::vector<ChunkPlace> plan;
  std::vector<char> bytes;
};

// One message per planned chunk, K and V copied from the source (as a
// backend's CopyToHost would) into `Message`:
//   v1::PrefillResponse - the protobuf path (gRPC serialises it);
//   grpc::ByteBuffer    - the pdserve path (EncodeKvChunkResponse).
void FillMessage(const Shape& s, const ChunkPlace& c, const char* k, v1::PrefillResponse* message) {
  const size_t n = s.token_bytes() * c.num_tokens;
  message->Clear();
  v1::KvChunk* chunk = message->mutable_kv();
  chunk->set_layer(c.layer);
  chunk->set_first_token(c.first_token);
  chunk->set_num_tokens(c.num_tokens);
  chunk->set_k(k, n);
  chunk->set_v(k + s.layer_bytes(), n);
}

void FillMessage(const Shape& s, const ChunkPlace& c, const char* k, grpc::ByteBuffer* message) {
  const size_t n = s.token_bytes() * c.num_tokens;
  KvChunkBuffers buffers(n);
  std::memcpy(buffers.k(), k, n);
  std::memcpy(buffers.v(), k + s.layer_bytes(), n);
  *message = EncodeKvChunkResponse(c.layer, c.first_token, c.num_tokens, std::move(buffers));
}

// Messages are made on a producer thread, at most kAhead in front of the
// writes, as the prefill service's worker thread makes them (CopyToHost into
// a new message while gRPC writes earlier ones).
template <typename Message>
class ChunkWriter final : public grpc::ServerWriteReactor<Message> {
 public:
  explicit ChunkWriter(const Source* source) : source_(source) {
    if (source_->plan.empty()) {
      this->Finish(grpc::Status::OK);
      return;
    }
    producer_ = std::thread([this] { Produce(); });
  }
  void OnWriteDone(bool ok) override {
    bool finish = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      write_in_flight_ = false;
      if (!ok) stopped_ = true;
      finish = stopped_ || (produced_all_ && queue_.empty());
    }
    ready_.notify_all();
    if (finish) {
      this->Finish(ok ? grpc::Status::OK
                      : grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    Pump();
  }
  void OnDone() override {
    if (producer_.joinable()) producer_.join();
    delete this;
  }

 private:
  static constexpr size_t kAhead = 8;

  void Produce() {
    for (const ChunkPlace& c : source_->plan) {
      Message message;
      FillMessage(source_->shape, c,
                  source_->bytes.data() + KOffset(source_->shape, c.layer, c.first_token),
                  &message);
      {
        std::unique_lock<std::mutex> lock(mu_);
        ready_.wait(lock, [this] { return stopped_ || queue_.size() < kAhead; });
        if (stopped_) return;
        queue_.push_back(std::move(message));
        if (&c == &source_->plan.back()) produced_all_ = true;
      }
      Pump();
    }
  }

  // Starts the next write when none is in flight. Finish is left to
  // OnWriteDone (a gRPC thread), after the last write.
  void Pump() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (write_in_flight_ || stopped_ || queue_.empty()) return;
      in_flight_ = std::move(queue_.front());
      queue_.pop_front();
      write_in_flight_ = true;
    }
    ready_.notify_all();
    this->StartWrite(&in_flight_);
  }

  const Source* source_;
  std::thread producer_;
  std::mutex mu_;
  std::condition_variable ready_;
  std::deque<Message> queue_;  // guarded by mu_
  Message in_flight_;          // written by Pump under write_in_flight_
  bool write_in_flight_ = false;
  bool produced_all_ = false;
  bool stopped_ = false;
};

// Prefill for the protobuf path; the raw service below answers the same
// method name on a second server.
class ProtobufService final : public v1::PrefillService::CallbackService {
 public:
  explicit ProtobufService(const Source* source) : source_(source) {}
  grpc::ServerWriteReactor<v1::PrefillResponse>* Prefill(grpc::CallbackServerContext*,
                                                         const v1::PrefillRequest*) override {
    return new ChunkWriter<v1::PrefillResponse>(source_);
  }

 private:
  const Source* source_;
};

class RawService final : public v1::PrefillService::WithRawCallbackMethod_Prefill<
                             v1::PrefillService::CallbackService> {
 public:
  explicit RawService(const Source* source) : source_(source) {}
  grpc::ServerWriteReactor<grpc::ByteBuffer>* Prefill(grpc::CallbackServerContext*,
                                                      const grpc::ByteBuffer*) override {
    return new ChunkWriter<grpc::ByteBuffer>(source_);
  }

 private:
  const Source* source_;
};

// Client of the pdserve path, as decode_service/prefill_client.cc reads.
class RawReader final : public grpc::ClientBidiReactor<v1::PrefillRequest, grpc::ByteBuffer> {
 public:
  RawReader(const Shape& shape, char* dest) : shape_(shape), dest_(dest) {}
  void Start(grpc::TemplatedGenericStub<v1::PrefillRequest, grpc::ByteBuffer>* stub) {
    stub->PrepareBidiStreamingCall(
        &context_, absl::StrCat("/", v1::PrefillService::service_full_name(), "/Prefill"),
        grpc::StubOptions(), this);
    StartWriteLast(&request_, grpc::WriteOptions());
    StartRead(&response_);
    StartCall();
  }
  void OnReadDone(bool ok) override {
    if (!ok) return;
    absl::StatusOr<PrefillResponseDecoder::Kind> kind = decoder_.Decode(&response_, &placer_);
    response_.Clear();
    if (!kind.ok() || *kind != PrefillResponseDecoder::Kind::kKvChunk) {
      context_.TryCancel();
      return;
    }
    const KvChunkView& kv = decoder_.kv();
    if (!kv.placed) {
      char* k = dest_ + KOffset(shape_, kv.layer, kv.first_token);
      std::memcpy(k, kv.k.data(), kv.k.size());
      std::memcpy(k + shape_.layer_bytes(), kv.v.data(), kv.v.size());
    }
    received_ += kv.k_bytes + kv.v_bytes;
    StartRead(&response_);
  }
  void OnDone(const grpc::Status& status) override {
    std::lock_guard<std::mutex> lock(mu_);
    status_ = status;
    done_ = true;
    cv_.notify_all();
  }
  size_t Wait(grpc::Status* status) {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return done_; });
    *status = status_;
    return received_;
  }

 private:
  const Shape shape_;
  char* const dest_;
  grpc::ClientContext context_;
  v1::PrefillRequest request_;
  grpc::ByteBuffer response_;
  PrefillResponseDecoder decoder_;
  // As decode does on the CPU backend (KvCache::HostRanges): the payload is
  // copied straight from gRPC's slices into the destination.
  const KvPlacer placer_ = [this](int layer, int first_token, int num_tokens, size_t bytes,
                                  std::vector<std::span<char>>* k,
                                  std::vector<std::span<char>>* v) {
    char* at = dest_ + KOffset(shape_, layer, first_token);
    k->emplace_back(at, bytes);
    v->emplace_back(at + shape_.layer_bytes(), bytes);
    return bytes == shape_.token_bytes() * num_tokens;
  };
  size_t received_ = 0;
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  grpc::Status status_;
};

size_t ReadProtobuf(const std::shared_ptr<grpc::Channel>& channel, const Shape& s, char* dest,
                    grpc::Status* status) {
  auto stub = v1::PrefillService::NewStub(channel);
  grpc::ClientContext context;
  auto reader = stub->Prefill(&context, v1::PrefillRequest());
  v1::PrefillResponse response;
  size_t received = 0;
  while (reader->Read(&response)) {
    const v1::KvChunk& kv = response.kv();
    char* k = dest + KOffset(s, kv.layer(), kv.first_token());
    std::memcpy(k, kv.k().data(), kv.k().size());
    std::memcpy(k + s.layer_bytes(), kv.v().data(), kv.v().size());
    received += kv.k().size() + kv.v().size();
  }
  *status = reader->Finish();
  return received;
}

size_t ReadRaw(const std::shared_ptr<grpc::Channel>& channel, const Shape& s, char* dest,
               grpc::Status* status) {
  grpc::TemplatedGenericStub<v1::PrefillRequest, grpc::ByteBuffer> stub(channel);
  RawReader reader(s, dest);
  reader.Start(&stub);
  return reader.Wait(status);
}

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Best of `repeats` copies of `bytes` between two touched buffers.
double MemcpyGBps(size_t bytes, int repeats) {
  std::vector<char> src(bytes, 1), dst(bytes, 0);
  double best = 1e30;
  for (int r = 0; r < repeats; ++r) {
    const auto start = Clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    best = std::min(best, Seconds(Clock::now() - start));
  }
  if (dst[bytes / 2] != 1) std::abort();
  return bytes / best / 1e9;
}

// Best of `repeats` rounds of s.streams concurrent streams (each stream on
// its own channel, so its own TCP connection); payload GB/s over all
// streams (K and V bytes only). Every byte received is checked.
double GrpcGBps(const Source& source, bool raw) {
  const Shape& s = source.shape;
  ProtobufService protobuf_service(&source);
  RawService raw_service(&source);
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxSendMessageSize(64 << 20);
  if (raw) {
    builder.RegisterService(&raw_service);
  } else {
    builder.RegisterService(&protobuf_service);
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();

  std::vector<std::shared_ptr<grpc::Channel>> channels;
  for (int i = 0; i < s.streams; ++i) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    args.SetInt("pdserve.kv_bench_stream",
                i);  // distinct args: a connection each
    channels.push_back(grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                                 grpc::InsecureChannelCredentials(), args));
  }
  std::vector<std::vector<char>> dests(s.streams, std::vector<char>(s.total_bytes(), 0));
  double best = 1e30;
  for (int r = 0; r < s.repeats; ++r) {
    std::vector<size_t> received(s.streams, 0);
    std::vector<grpc::Status> statuses(s.streams);
    const auto start = Clock::now();
    std::vector<std::thread> threads;
    for (int i = 0; i < s.streams; ++i) {
      threads.emplace_back([&, i] {
        received[i] = raw ? ReadRaw(channels[i], s, dests[i].data(), &statuses[i])
                          : ReadProtobuf(channels[i], s, dests[i].data(), &statuses[i]);
      });
    }
    for (std::thread& thread : threads) thread.join();
    const double seconds = Seconds(Clock::now() - start);
    for (int i = 0; i < s.streams; ++i) {
      if (!statuses[i].ok() || received[i] != s.total_bytes() || dests[i] != source.bytes) {
        std::fprintf(stderr, "stream %d failed: %s, %zu bytes\n", i,
                     statuses[i].error_message().c_str(), received[i]);
        std::exit(1);
      }
      std::fill(dests[i].begin(), dests[i].end(), 0);
    }
    best = std::min(best, seconds);
  }
  server->Shutdown();
  return static_cast<double>(s.total_bytes()) * s.streams / best / 1e9;
}

int Main(int argc, char** argv) {
  Shape s;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const int value = std::atoi(argv[i + 1]);
    if (flag == "--tokens")
      s.tokens = value;
    else if (flag == "--kv_width")
      s.kv_width = value;
    else if (flag == "--layers")
      s.layers = value;
    else if (flag == "--repeats")
      s.repeats = value;
    else if (flag == "--streams")
      s.streams = value;
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  if (s.tokens <= 0 || s.kv_width <= 0 || s.layers <= 0 || s.repeats <= 0 || s.streams <= 0) {
    std::fprintf(stderr, "every flag must be positive\n");
    return 2;
  }
  Source source;
  source.shape = s;
  source.bytes.resize(s.total_bytes());
  for (size_t i = 0; i < source.bytes.size(); ++i) {
    source.bytes[i] = static_cast<char>((i * 2654435761u) >> 13);
  }
  std::printf(
      "KV payload: %d tokens x %d layers x 2 x %d values x %d bytes = "
      "%.1f MiB, %d stream%s\n",
      s.tokens, s.layers, s.kv_width, s.bytes_per_value, s.total_bytes() / 1048576.0, s.streams,
      s.streams == 1 ? "" : "s (concurrent, each the whole payload)");
  const double memcpy_gbps = MemcpyGBps(s.total_bytes(), s.repeats);
  std::printf("%-44s %9s %8s %8s\n", "path", "messages", "GB/s", "ratio");
  std::printf("%-44s %9s %8.2f %8.2f\n", "memcpy", "-", memcpy_gbps, 1.0);
  for (bool tuned : {false, true}) {
    if (tuned && !TuneAllocatorForStreaming()) {
      std::fprintf(stderr, "TuneAllocatorForStreaming: glibc refused\n");
    }
    for (bool raw : {false, true}) {
      for (int64_t chunk_mib : {1, 4}) {
        source.plan = PlanChunks(s, chunk_mib << 20);
        const double gbps = GrpcGBps(source, raw);
        const std::string name = absl::StrCat(raw ? "pdserve wire" : "protobuf", ", ", chunk_mib,
                                              " MiB, ", tuned ? "tuned malloc" : "default malloc");
        std::printf("%-44s %9zu %8.2f %8.2f\n", name.c_str(), source.plan.size(), gbps,
                    gbps / memcpy_gbps);
        std::fflush(stdout);
      }
    }
  }
  return 0;
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) { return pdserve::Main(argc, argv); }
