// KV transfer rate over loopback gRPC against a plain memory copy of the same
// bytes: the figure docs/benchmarks.md reports for prefill -> decode.
//
// An in-process PrefillService streams a prompt's worth of KvChunk messages
// (the real wire messages, built once up front so no model compute is
// timed) over TCP 127.0.0.1 to a client that copies every chunk's K and V
// into one destination buffer, as decode's KvCache::WriteTokens does on the
// CPU backend. The memcpy baseline copies the same number of bytes between
// two buffers of the same size.
//
// Usage: pdserve-kv-transfer-bench [--tokens N] [--kv_width W] [--layers L]
//                                  [--repeats R]
// Defaults: Phi-3-mini in bf16: 32 layers, kv_width 3072 (32 heads x 96),
// 1024 tokens = 384 MiB.
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "pdserve/v1/prefill.grpc.pb.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  int tokens = 1024;
  int kv_width = 3072;  // num_kv_heads * head_dim
  int layers = 32;
  int bytes_per_value = 2;  // bf16
  int repeats = 3;
};

// Streams the prebuilt messages of one request; frees itself when done.
class StreamReactor final : public grpc::ServerWriteReactor<v1::PrefillResponse> {
 public:
  explicit StreamReactor(const std::vector<v1::PrefillResponse>* messages) : messages_(messages) {
    Next();
  }
  void OnWriteDone(bool ok) override {
    if (!ok) {
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "write failed"));
      return;
    }
    Next();
  }
  void OnDone() override { delete this; }

 private:
  void Next() {
    if (next_ == messages_->size()) {
      Finish(grpc::Status::OK);
      return;
    }
    StartWrite(&(*messages_)[next_++]);
  }
  const std::vector<v1::PrefillResponse>* messages_;
  size_t next_ = 0;
};

class PrebuiltPrefillService final : public v1::PrefillService::CallbackService {
 public:
  explicit PrebuiltPrefillService(std::vector<v1::PrefillResponse> messages)
      : messages_(std::move(messages)) {}
  grpc::ServerWriteReactor<v1::PrefillResponse>* Prefill(grpc::CallbackServerContext*,
                                                         const v1::PrefillRequest*) override {
    return new StreamReactor(&messages_);
  }

 private:
  std::vector<v1::PrefillResponse> messages_;
};

// KvChunk messages covering every layer's tokens, each chunk's K+V at most
// `chunk_bytes`.
std::vector<v1::PrefillResponse> BuildMessages(const Shape& s, int64_t chunk_bytes) {
  const int64_t token_bytes = int64_t{2} * s.kv_width * s.bytes_per_value;  // K and V
  const int tokens_per_chunk =
      static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(s.tokens, chunk_bytes / token_bytes)));
  std::vector<v1::PrefillResponse> messages;
  for (int layer = 0; layer < s.layers; ++layer) {
    for (int first = 0; first < s.tokens; first += tokens_per_chunk) {
      const int n = std::min(tokens_per_chunk, s.tokens - first);
      v1::PrefillResponse message;
      v1::KvChunk* kv = message.mutable_kv();
      kv->set_layer(layer);
      kv->set_first_token(first);
      kv->set_num_tokens(n);
      const size_t half = static_cast<size_t>(n) * s.kv_width * s.bytes_per_value;
      kv->mutable_k()->assign(half, static_cast<char>(layer + 1));
      kv->mutable_v()->assign(half, static_cast<char>(layer + 2));
      messages.push_back(std::move(message));
    }
  }
  return messages;
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

// Best of `repeats` full streams, received into `dest` like decode's
// KvCache::WriteTokens. Returns payload GB/s (K and V bytes only).
double GrpcGBps(const Shape& s, int64_t chunk_bytes, int* messages_out) {
  std::vector<v1::PrefillResponse> messages = BuildMessages(s, chunk_bytes);
  *messages_out = static_cast<int>(messages.size());
  PrebuiltPrefillService service(std::move(messages));
  grpc::ServerBuilder builder;
  int port = 0;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxSendMessageSize(64 << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();

  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(64 << 20);
  auto channel = grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                           grpc::InsecureChannelCredentials(), args);
  auto stub = v1::PrefillService::NewStub(channel);
  const size_t layer_bytes = static_cast<size_t>(s.tokens) * s.kv_width * s.bytes_per_value;
  std::vector<char> dest_k(layer_bytes * s.layers), dest_v(layer_bytes * s.layers);
  const size_t token_bytes = static_cast<size_t>(s.kv_width) * s.bytes_per_value;
  double best = 1e30;
  for (int r = 0; r < s.repeats; ++r) {
    grpc::ClientContext context;
    v1::PrefillRequest request;
    const auto start = Clock::now();
    auto reader = stub->Prefill(&context, request);
    v1::PrefillResponse response;
    size_t received = 0;
    while (reader->Read(&response)) {
      const v1::KvChunk& kv = response.kv();
      const size_t offset = (static_cast<size_t>(kv.layer()) * s.tokens + kv.first_token()) *
                            token_bytes;
      std::memcpy(dest_k.data() + offset, kv.k().data(), kv.k().size());
      std::memcpy(dest_v.data() + offset, kv.v().data(), kv.v().size());
      received += kv.k().size() + kv.v().size();
    }
    grpc::Status status = reader->Finish();
    const double seconds = Seconds(Clock::now() - start);
    if (!status.ok() || received != 2 * layer_bytes * s.layers) {
      std::fprintf(stderr, "stream failed: %s, %zu bytes\n", status.error_message().c_str(),
                   received);
      std::exit(1);
    }
    best = std::min(best, seconds);
  }
  server->Shutdown();
  return 2.0 * layer_bytes * s.layers / best / 1e9;
}

int Main(int argc, char** argv) {
  Shape s;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    const int value = std::atoi(argv[i + 1]);
    if (flag == "--tokens") s.tokens = value;
    else if (flag == "--kv_width") s.kv_width = value;
    else if (flag == "--layers") s.layers = value;
    else if (flag == "--repeats") s.repeats = value;
    else {
      std::fprintf(stderr, "unknown flag %s\n", flag.c_str());
      return 2;
    }
  }
  const size_t total = size_t{2} * s.tokens * s.kv_width * s.bytes_per_value * s.layers;
  std::printf("KV payload: %d tokens x %d layers x 2 x %d values x %d bytes = %.1f MiB\n",
              s.tokens, s.layers, s.kv_width, s.bytes_per_value, total / 1048576.0);
  const double memcpy_gbps = MemcpyGBps(total, s.repeats);
  std::printf("%-28s %10s %10s %8s\n", "path", "messages", "GB/s", "ratio");
  std::printf("%-28s %10s %10.2f %8.2f\n", "memcpy", "-", memcpy_gbps, 1.0);
  for (int64_t chunk_mib : {1, 4, 16}) {
    int messages = 0;
    const double gbps = GrpcGBps(s, chunk_mib << 20, &messages);
    char name[64];
    std::snprintf(name, sizeof(name), "gRPC loopback, %lld MiB chunks",
                  static_cast<long long>(chunk_mib));
    std::printf("%-28s %10d %10.2f %8.2f\n", name, messages, gbps, gbps / memcpy_gbps);
  }
  return 0;
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) { return pdserve::Main(argc, argv); }
