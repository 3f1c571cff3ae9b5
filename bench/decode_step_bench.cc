// Decode step time against the memory-bandwidth limit, in process (no gRPC):
// the figure docs/benchmarks.md reports as "step time / weight-read time".
//
// A decode step must read every weight once, so at small batch its floor is
// weight_bytes / memory bandwidth. This program measures, in one run:
//   * the machine's copy bandwidth (memcpy of a buffer larger than the
//     caches; bytes read per second, the read side of the copy);
//   * Transformer::DecodeStep at each batch size with every sequence at
//     `context` cached tokens (KV written through the real cache);
// and prints step ms, tokens/s (batch / step) and step / weight-read time.
// With --prefill_tokens it also times Transformer::Prefill of prompts of
// those lengths against 2 · (linear-layer parameters) · tokens FLOPs, next
// to the rate of one layer's GEMMs at the same shapes measured just before
// (Backend::MatMul: OpenBLAS sgemm on the CPU backend), so prefill/GEMM is
// the share of the GEMM rate the whole prefill achieves (attention, norms,
// RoPE and SiLU are the rest).
//
// Usage: pdserve-decode-step-bench --model_dir DIR [--batches 1,8,32,128]
//          [--context 128] [--steps 10] [--device cpu]
//          [--cpu_weight_dtype f32|bf16] [--prefill_tokens 128,512]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "kernels/backend_factory.h"
#include "shared/kv_cache.h"
#include "shared/model_config.h"
#include "shared/model_weights.h"
#include "shared/transformer.h"

namespace pdserve {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// Bytes per second of reading a 1 GiB buffer while writing another (best of 5).
double CopyReadBandwidth() {
  const size_t bytes = size_t{1} << 30;
  std::vector<char> src(bytes, 1), dst(bytes, 2);
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    const auto start = Clock::now();
    std::memcpy(dst.data(), src.data(), bytes);
    best = std::min(best, Seconds(Clock::now() - start));
  }
  if (dst[bytes - 1] != 1) std::abort();
  return bytes / best;
}

// Parameters of one layer's linear projections (qkv, o, gate, up, down).
double LayerLinearParams(const ModelConfig& c) {
  return double(c.num_heads + 2 * c.num_kv_heads) * c.head_dim * c.hidden_size +  // qkv
         double(c.num_heads) * c.head_dim * c.hidden_size +                       // o
         3.0 * c.intermediate_size * c.hidden_size;                               // gate, up, down
}

// Bytes per second of reading a 1 GiB float buffer with every core (a sum
// per thread over its share; best of 5): the read-only limit, which a copy
// understates because it also writes.
double ParallelReadBandwidth() {
  const size_t count = (size_t{1} << 30) / sizeof(float);
  std::vector<float> data(count, 1.0f);
  const int threads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<double> sums(threads);
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    const auto start = Clock::now();
    std::vector<std::thread> workers;
    for (int t = 0; t < threads; ++t) {
      workers.emplace_back([&, t] {
        const size_t begin = count * t / threads, end = count * (t + 1) / threads;
        float acc[16] = {};
        for (size_t i = begin; i + 16 <= end; i += 16) {
          for (int j = 0; j < 16; ++j) acc[j] += data[i + j];
        }
        double total = 0;
        for (float a : acc) total += a;
        sums[t] = total;
      });
    }
    for (std::thread& w : workers) w.join();
    best = std::min(best, Seconds(Clock::now() - start));
  }
  double total = 0;
  for (double s : sums) total += s;
  if (total < 1.0) std::abort();
  return count * sizeof(float) / best;
}

// Bytes of every weight the step reads, matrices as the backend stores them
// (`stored`), norm vectors in float32; lm_head counted once even when tied.
double WeightBytes(const ModelConfig& c, DType stored) {
  // The embedding gather reads one row per token: negligible.
  const double matrices =
      c.num_layers * LayerLinearParams(c) + double(c.vocab_size) * c.hidden_size;
  const double vectors = (2.0 * c.num_layers + 1) * c.hidden_size;
  return matrices * DTypeSize(stored) + vectors * 4;
}

// The dtype the backend's UploadWeight stores a matrix in.
DType StoredMatrixDtype(Backend& backend) {
  const float value = 0.0f;
  const HostTensor probe{"probe", DType::kF32, {1, 1}, &value, sizeof(value)};
  absl::StatusOr<BufferPtr> weight = backend.UploadWeight(std::span<const HostTensor>(&probe, 1));
  return weight.ok() ? (*weight)->dtype() : DType::kF32;
}

// FLOP/s of the GEMMs of one decoder layer over `m` tokens through
// Backend::MatMul (qkv, o, gate_up, down: [m, in] · [out, in]ᵀ each), best of
// 3 on buffers of zeros (the rate does not depend on the values): what a
// prefill's linear layers could run at if nothing else took time.
double LayerGemmRate(Backend& backend, const ModelConfig& c, int m) {
  struct Shape {
    int n, k;
  };
  const int q_width = c.num_heads * c.head_dim;
  const Shape shapes[] = {{q_width + 2 * c.num_kv_heads * c.head_dim, c.hidden_size},
                          {c.hidden_size, q_width},
                          {2 * c.intermediate_size, c.hidden_size},
                          {c.hidden_size, c.intermediate_size}};
  const int widest = std::max({c.hidden_size, q_width, c.intermediate_size});
  const DType dtype = backend.activation_dtype();
  std::vector<float> zeros(size_t(2 * c.intermediate_size) * widest, 0.0f);
  auto x = backend.Allocate(size_t(m) * widest, dtype);
  auto out = backend.Allocate(size_t(m) * 2 * c.intermediate_size, dtype);
  if (!x.ok() || !out.ok() ||
      !backend.CopyToDevice(zeros.data(), DType::kF32, size_t(m) * widest, **x, 0).ok()) {
    std::abort();
  }
  std::vector<BufferPtr> weights;
  double flops = 0;
  for (const Shape& shape : shapes) {
    const HostTensor view{
        "w", DType::kF32, {shape.n, shape.k}, zeros.data(), size_t(shape.n) * shape.k * 4};
    auto w = backend.UploadWeight(std::span<const HostTensor>(&view, 1));
    if (!w.ok()) std::abort();
    weights.push_back(*std::move(w));
    flops += 2.0 * m * shape.n * shape.k;
  }
  double best = 1e30;
  for (int r = 0; r < 3; ++r) {
    const auto start = Clock::now();
    for (size_t i = 0; i < weights.size(); ++i) {
      backend.MatMul(**x, *weights[i], m, shapes[i].n, shapes[i].k, **out, /*accumulate=*/false);
    }
    if (!backend.Synchronize().ok()) std::abort();
    best = std::min(best, Seconds(Clock::now() - start));
  }
  return flops / best;
}

std::vector<int> ParseList(const std::string& text) {
  std::vector<int> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    out.push_back(std::atoi(text.substr(start, end - start).c_str()));
    start = end + 1;
  }
  return out;
}

int Fail(const std::string& message) {
  std::fprintf(stderr, "pdserve-decode-step-bench: %s\n", message.c_str());
  return 1;
}

int Main(int argc, char** argv) {
  std::string model_dir, device = "cpu", batches_text = "1,8,32,128", weight_dtype_text = "f32";
  std::string prefill_text;
  int context = 128, steps = 10;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--model_dir") model_dir = value;
    else if (flag == "--batches") batches_text = value;
    else if (flag == "--context") context = std::atoi(value.c_str());
    else if (flag == "--steps") steps = std::atoi(value.c_str());
    else if (flag == "--device") device = value;
    else if (flag == "--cpu_weight_dtype") weight_dtype_text = value;
    else if (flag == "--prefill_tokens") prefill_text = value;
    else return Fail("unknown flag " + flag);
  }
  if (model_dir.empty()) return Fail("--model_dir is required");
  const std::vector<int> batches = ParseList(batches_text);
  const std::vector<int> prefill_lengths = ParseList(prefill_text);
  absl::StatusOr<DType> weight_dtype = ParseCpuWeightDtype(weight_dtype_text);
  if (!weight_dtype.ok()) return Fail(weight_dtype.status().ToString());

  absl::StatusOr<ModelConfig> config = LoadModelConfig(model_dir);
  if (!config.ok()) return Fail(config.status().ToString());
  absl::StatusOr<ModelWeights> weights = LoadModelWeights(model_dir, *config);
  if (!weights.ok()) return Fail(weights.status().ToString());
  absl::StatusOr<std::unique_ptr<Backend>> backend =
      CreateBackend(device, CpuBackendOptions{.weight_dtype = *weight_dtype});
  if (!backend.ok()) return Fail(backend.status().ToString());
  absl::StatusOr<std::unique_ptr<Transformer>> model =
      Transformer::Create(*config, *weights, backend->get());
  if (!model.ok()) return Fail(model.status().ToString());

  const int max_batch = *std::max_element(batches.begin(), batches.end());
  const int block_size = 16;
  const int blocks_per_seq = (context + steps + 2 + block_size - 1) / block_size;
  KvCacheOptions cache_options{max_batch * blocks_per_seq, block_size, config->num_layers,
                               config->num_kv_heads, config->head_dim};
  absl::StatusOr<std::unique_ptr<KvCache>> cache = KvCache::Create(backend->get(), cache_options);
  if (!cache.ok()) return Fail(cache.status().ToString());
  // Every sequence holds `context` cached tokens. Their values do not change
  // the step's cost, so the cache's contents are left as allocated (the
  // tokens' K and V are written by the timed steps themselves).
  std::vector<std::unique_ptr<KvCache::Sequence>> sequences;
  for (int i = 0; i < max_batch; ++i) {
    auto sequence = (*cache)->Allocate(context + steps + 1);
    if (!sequence.ok()) return Fail(sequence.status().ToString());
    sequences.push_back(*std::move(sequence));
  }

  const double bandwidth = CopyReadBandwidth();
  const DType stored = StoredMatrixDtype(**backend);
  const double weight_bytes = WeightBytes(*config, stored);
  const double weight_read_ms = weight_bytes / bandwidth * 1e3;
  const double read_bandwidth = ParallelReadBandwidth();
  const double weight_read_all_cores_ms = weight_bytes / read_bandwidth * 1e3;
  std::printf("model %s: %d layers, hidden %d, weights %.1f MB as %s on %s\n",
              config->architecture.c_str(), config->num_layers, config->hidden_size,
              weight_bytes / 1e6, std::string(DTypeName(stored)).c_str(), device.c_str());
  std::printf("memcpy read bandwidth %.1f GB/s -> weight-read time %.2f ms; context %d\n",
              bandwidth / 1e9, weight_read_ms, context);
  std::printf("all-core read bandwidth %.1f GB/s -> weight-read time %.2f ms\n",
              read_bandwidth / 1e9, weight_read_all_cores_ms);
  std::printf("%6s %12s %12s %14s %16s %8s\n", "batch", "step ms", "tokens/s", "step/copy-read",
              "step/all-core-read", "(steps)");
  for (int batch : batches) {
    std::vector<double> times;
    for (int step = 0; step < steps + 1; ++step) {  // the first step is a warm-up
      DecodeBatch decode;
      for (int i = 0; i < batch; ++i) {
        decode.Add(/*token=*/(7 * i + step) % config->vocab_size, context + step, *sequences[i]);
      }
      const auto start = Clock::now();
      absl::StatusOr<std::vector<float>> logits = (*model)->DecodeStep(decode, **cache);
      if (!logits.ok()) return Fail(logits.status().ToString());
      if (step > 0) times.push_back(Seconds(Clock::now() - start) * 1e3);
    }
    std::sort(times.begin(), times.end());
    const double median = times[times.size() / 2];
    std::printf("%6d %12.2f %12.1f %14.2f %16.2f %8d\n", batch, median, batch / median * 1e3,
                median / weight_read_ms, median / weight_read_all_cores_ms, steps);
  }

  if (!prefill_lengths.empty()) {
    std::printf("%8s %12s %12s %14s %12s\n", "tokens", "prefill ms", "GFLOP/s", "GEMM GFLOP/s",
                "prefill/GEMM");
  }
  for (int tokens : prefill_lengths) {
    const double gemm_rate = LayerGemmRate(**backend, *config, tokens);
    std::vector<int32_t> prompt(tokens);
    for (int i = 0; i < tokens; ++i) prompt[i] = (31 * i + 7) % config->vocab_size;
    double best = 1e30;
    for (int r = 0; r < 2; ++r) {
      const auto start = Clock::now();
      absl::StatusOr<std::vector<float>> hidden = (*model)->Prefill(prompt, LayerKvSink());
      if (!hidden.ok()) return Fail(hidden.status().ToString());
      best = std::min(best, Seconds(Clock::now() - start));
    }
    const double flops = 2.0 * config->num_layers * LayerLinearParams(*config) * tokens;
    std::printf("%8d %12.1f %12.1f %14.1f %12.2f\n", tokens, best * 1e3, flops / best / 1e9,
                gemm_rate / 1e9, flops / best / gemm_rate);
  }
  return 0;
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) { return pdserve::Main(argc, argv); }
