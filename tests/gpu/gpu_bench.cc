// pdserve-gpu-bench: the CUDA backend on the reference workload's shape,
// Phi-3-mini-4k-instruct (32 layers, hidden 3072, 32 heads of 96, no GQA,
// FFN 8192, vocab 32064, bf16 weights, bf16 KV), against two ceilings
// measured in the same run:
//   * device-to-device copy bandwidth (bytes read + written per second), the
//     limit for memory-bound work: a decode step must stream every weight
//     once (and, at large batch, the KV cache), a KV pack moves its bytes;
//   * cuBLAS's bf16 GEMM rate on an 8192^3 product of random data, with
//     float32 accumulation and output as the backend calls it: the limit for
//     prefill, whose FLOPs are the GEMMs plus causal attention;
//   * device-to-host copy bandwidth into page-locked memory (PCIe), what the
//     prefill's KV stream to the host costs when nothing hides it.
// Each timing is printed with its limit and the ratio time / limit (1.0 would
// be perfect). The prefill of 512 tokens runs twice more with every layer's
// K and V going to page-locked host blocks, as the prefill service sends
// them: once with a synchronous CopyToHost per tensor, once with
// CopyToHostAsync (each layer waits for the previous layer's copies); their
// limit is the prefill without KV, so time/limit is the KV stream's cost.
// Weights are random bf16 generated on the device
// (CudaBackendOptions::synthetic_weights), so no 7.6 GB checkpoint is read;
// the KV cache is filled with random values too (never time zeros).
//
// Timing: CUDA events on the legacy default stream, which orders against the
// backend's (blocking) stream; warm-up runs first; the median of several
// runs, with min and max to show the spread. A decode step is timed as the
// services run a greedy batch, Transformer::DecodeStep from host batch to the
// rows' argmax ids on the host; at b=32 also with top-50 candidates per row
// (top-k sampling) and with every row's logits copied to the host.
//
// Usage: pdserve-gpu-bench [--layers=N] [--repeats=N]
//   --layers: decoder layers (default 32, the real model; fewer for a smoke run)
//   --repeats: timed runs per measurement (default 10; prefill uses half)
// Exit status 0 with a message when no CUDA device is present.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/random_fill.h"
#include "shared/kv_cache.h"
#include "shared/model_config.h"
#include "shared/model_weights.h"
#include "shared/transformer.h"

namespace pdserve {
namespace {

constexpr int kContext = 512;  // tokens cached per sequence for the decode rows
constexpr int kBlockSize = 16;
constexpr int kBatchSizes[] = {1, 8, 32, 128};
constexpr int kPrefillLengths[] = {128, 512, 2048};
constexpr int kKvPrefillLength = 512;  // one of kPrefillLengths: the KV-to-host rows

[[noreturn]] void Fail(const std::string& what) {
  std::fprintf(stderr, "pdserve-gpu-bench: %s\n", what.c_str());
  std::exit(1);
}

void Check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) Fail(std::string(what) + ": " + cudaGetErrorString(status));
}

void Check(const absl::Status& status, const char* what) {
  if (!status.ok()) Fail(std::string(what) + ": " + status.ToString());
}

template <typename T>
T Value(absl::StatusOr<T> value, const char* what) {
  Check(value.status(), what);
  return std::move(value).value();
}

struct Timing {
  double median_ms = 0, min_ms = 0, max_ms = 0;
};

// Times `body` with events on the legacy default stream: `warmup` untimed
// runs, then `repeats` timed ones.
template <typename Body>
Timing Time(int warmup, int repeats, Body&& body) {
  cudaEvent_t start, stop;
  Check(cudaEventCreate(&start), "cudaEventCreate");
  Check(cudaEventCreate(&stop), "cudaEventCreate");
  for (int i = 0; i < warmup; ++i) body();
  Check(cudaDeviceSynchronize(), "warm-up");
  std::vector<double> ms;
  for (int i = 0; i < repeats; ++i) {
    Check(cudaEventRecord(start, 0), "cudaEventRecord");
    body();
    Check(cudaEventRecord(stop, 0), "cudaEventRecord");
    Check(cudaEventSynchronize(stop), "timed run");
    float elapsed = 0;
    Check(cudaEventElapsedTime(&elapsed, start, stop), "cudaEventElapsedTime");
    ms.push_back(elapsed);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  std::sort(ms.begin(), ms.end());
  return {ms[ms.size() / 2], ms.front(), ms.back()};
}

// Device memory for the ceiling measurements.
struct DeviceArray {
  explicit DeviceArray(size_t bytes) { Check(cudaMalloc(&data, bytes), "cudaMalloc"); }
  ~DeviceArray() { cudaFree(data); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  void* data = nullptr;
};

void FillRandom(void* data, size_t bf16_elements, uint64_t seed) {
  gpu::RandomFillParams params;
  params.out = data;
  params.out_type = gpu::ElementType::kBF16;
  params.n = bf16_elements;
  params.seed = seed;
  Check(gpu::InvokeRandomFill(params, nullptr), "random fill");
}

// Bytes per second of a large device-to-host copy into page-locked memory.
double HostCopyBandwidth(int repeats) {
  const size_t bytes = size_t{256} << 20;
  DeviceArray src(bytes);
  FillRandom(src.data, bytes / 2, 4);
  void* host = nullptr;
  Check(cudaHostAlloc(&host, bytes, cudaHostAllocDefault), "cudaHostAlloc");
  const Timing t = Time(2, repeats, [&] {
    Check(cudaMemcpyAsync(host, src.data, bytes, cudaMemcpyDeviceToHost, 0), "copy to host");
  });
  cudaFreeHost(host);
  return bytes / (t.median_ms * 1e-3);
}

// Bytes per second of a large device-to-device copy, read + written.
double CopyBandwidth(int repeats) {
  const size_t bytes = size_t{2} << 30;
  DeviceArray src(bytes), dst(bytes);
  FillRandom(src.data, bytes / 2, 1);
  const Timing t = Time(2, repeats, [&] {
    Check(cudaMemcpyAsync(dst.data, src.data, bytes, cudaMemcpyDeviceToDevice, 0), "copy");
  });
  return 2.0 * bytes / (t.median_ms * 1e-3);
}

// FLOP/s of cuBLAS's bf16 GEMM (float32 accumulation and output, the
// backend's configuration) on an n x n x n product of random data.
double GemmRate(int repeats) {
  const int n = 8192;
  const size_t elements = static_cast<size_t>(n) * n;
  DeviceArray a(elements * 2), b(elements * 2), c(elements * 4);
  FillRandom(a.data, elements, 2);
  FillRandom(b.data, elements, 3);
  cublasHandle_t handle;
  if (cublasCreate(&handle) != CUBLAS_STATUS_SUCCESS) Fail("cublasCreate");
  const float alpha = 1.0f, beta = 0.0f;
  const Timing t = Time(3, repeats, [&] {
    if (cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a.data, CUDA_R_16BF, n,
                     b.data, CUDA_R_16BF, n, &beta, c.data, CUDA_R_32F, n, CUBLAS_COMPUTE_32F,
                     CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
      Fail("cublasGemmEx");
    }
  });
  cublasDestroy(handle);
  return 2.0 * n * n * static_cast<double>(n) / (t.median_ms * 1e-3);
}

ModelConfig Phi3MiniConfig(int layers) {
  const std::string json =
      R"({"architectures": ["Phi3ForCausalLM"], "model_type": "phi3", "vocab_size": 32064,
          "hidden_size": 3072, "intermediate_size": 8192, "num_hidden_layers": )" +
      std::to_string(layers) +
      R"(, "num_attention_heads": 32, "num_key_value_heads": 32,
          "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
          "rope_scaling": null, "hidden_act": "silu", "torch_dtype": "bfloat16",
          "tie_word_embeddings": false, "bos_token_id": 1, "eos_token_id": 32000})";
  return Value(ParseModelConfig(json, "", ""), "Phi-3-mini config");
}

HostTensor Shape(const std::string& name, std::vector<int64_t> shape) {
  HostTensor t;
  t.name = name;
  t.dtype = DType::kBF16;
  t.shape = std::move(shape);
  return t;  // no data: the synthetic-weights backend fills it on the device
}

// The tensor table of the checkpoint, shapes only. lm_head and embed_tokens
// both have null data, so the Transformer treats them as tied and reads
// embed_tokens for the lm_head GEMM: the same [vocab, hidden] bytes a real
// untied lm_head costs per step.
ModelWeights Phi3MiniWeights(const ModelConfig& c) {
  ModelWeights w;
  const int64_t hidden = c.hidden_size;
  const int64_t q = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  w.embed_tokens = Shape("model.embed_tokens.weight", {c.vocab_size, hidden});
  w.norm = Shape("model.norm.weight", {hidden});
  w.lm_head = Shape("lm_head.weight", {c.vocab_size, hidden});
  for (int l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights layer;
    layer.input_layernorm = Shape(p + "input_layernorm.weight", {hidden});
    layer.qkv_proj = {Shape(p + "self_attn.qkv_proj.weight", {q + 2 * kv, hidden})};
    layer.o_proj = Shape(p + "self_attn.o_proj.weight", {hidden, q});
    layer.post_attention_layernorm = Shape(p + "post_attention_layernorm.weight", {hidden});
    layer.gate_up_proj = {Shape(p + "mlp.gate_up_proj.weight", {2 * c.intermediate_size, hidden})};
    layer.down_proj = Shape(p + "mlp.down_proj.weight", {hidden, c.intermediate_size});
    w.layers.push_back(std::move(layer));
  }
  return w;
}

// Linear-layer parameters per layer (what each token's GEMMs multiply by).
double LayerLinearParams(const ModelConfig& c) {
  const double hidden = c.hidden_size;
  const double q = static_cast<double>(c.num_heads) * c.head_dim;
  const double kv = static_cast<double>(c.num_kv_heads) * c.head_dim;
  return hidden * (q + 2 * kv) + q * hidden + hidden * 2.0 * c.intermediate_size +
         c.intermediate_size * hidden;
}

// Weight bytes one decode step reads: every layer, the final norm, lm_head.
double DecodeWeightBytes(const ModelConfig& c) {
  const double per_layer = LayerLinearParams(c) + 2.0 * c.hidden_size;
  return 2.0 * (c.num_layers * per_layer + c.hidden_size +
                static_cast<double>(c.vocab_size) * c.hidden_size);
}

struct Row {
  std::string what;
  Timing time;
  std::string rate;
  double limit_ms;
  std::string limit_basis;
};

std::string Format(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), format, value);
  return buffer;
}

int ParseIntFlag(const char* arg, const char* name, int fallback) {
  const size_t length = std::strlen(name);
  if (std::strncmp(arg, name, length) == 0 && arg[length] == '=')
    return std::atoi(arg + length + 1);
  return fallback;
}

int Run(int layers, int repeats) {
  cudaDeviceProp props;
  Check(cudaGetDeviceProperties(&props, 0), "cudaGetDeviceProperties");
  std::printf("device: %s, %d SMs, %.1f GiB, L2 %.0f MiB, compute capability %d.%d\n", props.name,
              props.multiProcessorCount, props.totalGlobalMem / double(1 << 30),
              props.l2CacheSize / double(1 << 20), props.major, props.minor);
  std::fflush(stdout);

  const double copy_bandwidth = CopyBandwidth(repeats);
  const double gemm_rate = GemmRate(repeats);
  const double host_bandwidth = HostCopyBandwidth(repeats);
  std::printf("ceilings: copy %.2f TB/s, bf16 GEMM %.0f TFLOP/s, to pinned host %.1f GB/s\n",
              copy_bandwidth / 1e12, gemm_rate / 1e12, host_bandwidth / 1e9);
  std::fflush(stdout);

  const ModelConfig config = Phi3MiniConfig(layers);
  const ModelWeights weights = Phi3MiniWeights(config);
  CudaBackendOptions options;
  options.synthetic_weights = true;
  options.synthetic_seed = 20241129;
  std::unique_ptr<Backend> backend = Value(CreateCudaBackend(options), "CreateCudaBackend");
  std::unique_ptr<Transformer> model =
      Value(Transformer::Create(config, weights, backend.get()), "Transformer::Create");
  const double weight_bytes = DecodeWeightBytes(config);
  std::printf("model: Phi-3-mini shape, %d layers, %.2f GB of bf16 weights read per decode step\n",
              layers, weight_bytes / 1e9);
  std::fflush(stdout);

  std::vector<Row> rows;
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> token(0, config.vocab_size - 1);
  const int kv_width = config.num_kv_heads * config.head_dim;

  {
    // Decode: b sequences with kContext tokens cached, one new token each.
    const int max_batch = kBatchSizes[std::size(kBatchSizes) - 1];
    KvCacheOptions cache_options;
    cache_options.block_size = kBlockSize;
    cache_options.num_blocks = max_batch * ((kContext + 1 + kBlockSize - 1) / kBlockSize);
    cache_options.num_layers = config.num_layers;
    cache_options.num_kv_heads = config.num_kv_heads;
    cache_options.head_dim = config.head_dim;
    std::unique_ptr<KvCache> cache =
        Value(KvCache::Create(backend.get(), cache_options), "KvCache");
    for (int l = 0; l < config.num_layers; ++l) {
      FillRandom(cache->k(l).data(), cache->k(l).num_elements(), 100 + 2 * l);
      FillRandom(cache->v(l).data(), cache->v(l).num_elements(), 101 + 2 * l);
    }
    Check(cudaDeviceSynchronize(), "KV fill");
    std::vector<std::unique_ptr<KvCache::Sequence>> sequences;
    for (int i = 0; i < max_batch; ++i) {
      sequences.push_back(Value(cache->Allocate(kContext + 1), "KV lease"));
    }
    for (int b : kBatchSizes) {
      DecodeBatch batch;
      for (int i = 0; i < b; ++i) batch.Add(token(rng), kContext, *sequences[i]);
      // As the decode service runs greedy requests: each row's token is
      // picked on the device and only the ids come back.
      DecodeStepOptions greedy;
      greedy.want_logits.assign(b, false);
      const Timing t =
          Time(3, repeats, [&] { Value(model->DecodeStep(batch, *cache, greedy), "DecodeStep"); });
      const double kv_bytes = 2.0 * b * (kContext + 1) * config.num_layers * kv_width * 2;
      rows.push_back({"decode b=" + std::to_string(b) + ", ctx " + std::to_string(kContext), t,
                      Format("%.0f tok/s", b / (t.median_ms * 1e-3)),
                      weight_bytes / copy_bandwidth * 1e3, "weights / copy bw"});
      rows.push_back({"  same, weights + KV bytes", t,
                      Format("%.2f GB/step", (weight_bytes + kv_bytes) / 1e9),
                      (weight_bytes + kv_bytes) / copy_bandwidth * 1e3, "(weights+KV) / copy bw"});
      if (b == 32) {
        // What the device-side picks save: top-50 candidates per row (top-k
        // sampling), and every row's logits copied to the host (sampling
        // over all tokens, logprobs), against the greedy step above.
        DecodeStepOptions top_k = greedy;
        top_k.top_candidates = 50;
        const Timing candidates =
            Time(3, repeats, [&] { Value(model->DecodeStep(batch, *cache, top_k), "DecodeStep"); });
        rows.push_back({"  same, top-50 candidates per row", candidates,
                        Format("+%.3f ms", candidates.median_ms - t.median_ms), t.median_ms,
                        "greedy step"});
        const Timing logits =
            Time(3, repeats, [&] { Value(model->DecodeStep(batch, *cache), "DecodeStep"); });
        rows.push_back({"  same, all logits to host", logits,
                        Format("+%.3f ms", logits.median_ms - t.median_ms), t.median_ms,
                        "greedy step"});
      }
    }

    // KV pack: one sequence's kContext tokens, every layer, into contiguous
    // bf16 token ranges (what prefill streams and decode unpacks).
    std::vector<int32_t> slots(kContext);
    for (int j = 0; j < kContext; ++j) slots[j] = sequences[0]->Slot(j);
    BufferPtr slot_buffer = Value(backend->Allocate(kContext, DType::kI32), "Allocate");
    Check(backend->CopyToDevice(slots.data(), DType::kI32, kContext, *slot_buffer, 0), "slots");
    const size_t packed = static_cast<size_t>(kContext) * kv_width;
    BufferPtr k_out = Value(backend->Allocate(packed, backend->kv_dtype()), "Allocate");
    BufferPtr v_out = Value(backend->Allocate(packed, backend->kv_dtype()), "Allocate");
    const Timing t = Time(3, repeats, [&] {
      for (int l = 0; l < config.num_layers; ++l) {
        backend->KvGather(cache->k(l), cache->v(l), *slot_buffer, kContext, kv_width, *k_out,
                          *v_out);
      }
    });
    Check(backend->Synchronize(), "KvGather");
    const double bytes = 2.0 /*read+write*/ * 2 /*K,V*/ * config.num_layers * packed * 2;
    rows.push_back({"KV pack " + std::to_string(kContext) + " tokens, all layers", t,
                    Format("%.2f TB/s", bytes / (t.median_ms * 1e-3) / 1e12),
                    bytes / copy_bandwidth * 1e3, "bytes / copy bw"});
  }

  // Prefill (the decode KV cache is gone: its memory is free again).
  const int prefill_repeats = std::max(3, repeats / 2);
  Timing kv_baseline;  // prefill of kKvPrefillLength tokens without KV
  for (int n : kPrefillLengths) {
    std::vector<int32_t> prompt(n);
    for (int32_t& id : prompt) id = token(rng);
    const Timing t =
        Time(1, prefill_repeats, [&] { Value(model->Prefill(prompt, LayerKvSink()), "Prefill"); });
    if (n == kKvPrefillLength) kv_baseline = t;
    const double gemm_flops = 2.0 * n * config.num_layers * LayerLinearParams(config);
    const double attention_flops = 4.0 * config.head_dim * config.num_heads * config.num_layers *
                                   (static_cast<double>(n) * (n + 1) / 2);
    const double flops = gemm_flops + attention_flops;
    rows.push_back({"prefill " + std::to_string(n) + " tokens", t,
                    Format("%.0f TFLOP/s", flops / (t.median_ms * 1e-3) / 1e12),
                    flops / gemm_rate * 1e3, "FLOPs / GEMM rate"});
  }

  // Prefill with the KV of every layer going to page-locked host blocks
  // (pooled by the backend: after the warm-up run no block is allocated
  // from the driver).
  {
    std::vector<int32_t> prompt(kKvPrefillLength);
    for (int32_t& id : prompt) id = token(rng);
    const double kv_bytes = 2.0 /*K,V*/ * config.num_layers * kKvPrefillLength * kv_width *
                            DTypeSize(backend->kv_dtype());
    const std::string label = "prefill " + std::to_string(kKvPrefillLength) + " + KV to host, ";
    const std::string basis = "prefill " + std::to_string(kKvPrefillLength) + " without KV";
    auto overhead = [&](const Timing& t) {
      return Format("+%.2f ms", t.median_ms - kv_baseline.median_ms);
    };

    std::vector<HostBlockPtr> blocks;
    LayerKvSink synchronous = [&](int, const DeviceBuffer& k, const DeviceBuffer& v,
                                  int num_tokens) -> absl::Status {
      const size_t n = static_cast<size_t>(num_tokens) * kv_width;
      for (const DeviceBuffer* tensor : {&k, &v}) {
        absl::StatusOr<HostBlockPtr> block =
            backend->AllocateHostBlock(n * DTypeSize(tensor->dtype()));
        if (!block.ok()) return block.status();
        blocks.push_back(std::move(block).value());
        absl::Status copied =
            backend->CopyToHost(*tensor, 0, n, blocks.back()->data(), tensor->dtype());
        if (!copied.ok()) return copied;
      }
      return absl::OkStatus();
    };
    const Timing sync_time = Time(1, prefill_repeats, [&] {
      Value(model->Prefill(prompt, synchronous), "Prefill, synchronous KV");
      blocks.clear();
    });
    rows.push_back(
        {label + "CopyToHost", sync_time,
         overhead(sync_time) + Format(" (KV/D2H %.2f ms)", kv_bytes / host_bandwidth * 1e3),
         kv_baseline.median_ms, basis});

    // The prefill service's pattern: start this layer's copies, then wait
    // for the previous layer's, so one layer's copies overlap the next
    // layer's compute.
    std::vector<std::unique_ptr<HostCopy>> pending;
    LayerKvSink overlapped = [&](int, const DeviceBuffer& k, const DeviceBuffer& v,
                                 int num_tokens) -> absl::Status {
      const size_t n = static_cast<size_t>(num_tokens) * kv_width;
      std::vector<std::unique_ptr<HostCopy>> started;
      for (const DeviceBuffer* tensor : {&k, &v}) {
        absl::StatusOr<HostBlockPtr> block =
            backend->AllocateHostBlock(n * DTypeSize(tensor->dtype()));
        if (!block.ok()) return block.status();
        blocks.push_back(std::move(block).value());
        absl::StatusOr<std::unique_ptr<HostCopy>> copy =
            backend->CopyToHostAsync(*tensor, 0, n, blocks.back()->data());
        if (!copy.ok()) return copy.status();
        started.push_back(std::move(copy).value());
      }
      for (const std::unique_ptr<HostCopy>& copy : pending) {
        absl::Status waited = copy->Wait();
        if (!waited.ok()) return waited;
      }
      pending = std::move(started);
      return absl::OkStatus();
    };
    const Timing async_time = Time(1, prefill_repeats, [&] {
      Value(model->Prefill(prompt, overlapped), "Prefill, overlapped KV");
      for (const std::unique_ptr<HostCopy>& copy : pending) Check(copy->Wait(), "last KV copy");
      pending.clear();
      blocks.clear();
    });
    rows.push_back({label + "CopyToHostAsync", async_time, overhead(async_time),
                    kv_baseline.median_ms, basis});
  }

  // The table last: the reply of a remote run carries the end of the output.
  std::printf("\n## pdserve-gpu-bench: %s, Phi-3-mini shape (%d layers), bf16 weights and KV\n",
              props.name, layers);
  std::printf(
      "ceilings measured in this run: device copy %.2f TB/s (read + write), cuBLAS bf16 "
      "GEMM %.0f TFLOP/s (8192^3, random data), device to pinned host %.1f GB/s\n\n",
      copy_bandwidth / 1e12, gemm_rate / 1e12, host_bandwidth / 1e9);
  std::printf(
      "| measurement | median ms | min..max ms | rate | limit ms | limit basis | time/limit |\n");
  std::printf("|---|---:|---:|---:|---:|---|---:|\n");
  for (const Row& r : rows) {
    std::printf("| %s | %.3f | %.3f..%.3f | %s | %.3f | %s | %.2f |\n", r.what.c_str(),
                r.time.median_ms, r.time.min_ms, r.time.max_ms, r.rate.c_str(), r.limit_ms,
                r.limit_basis.c_str(), r.time.median_ms / r.limit_ms);
  }
  return 0;
}

}  // namespace
}  // namespace pdserve

int main(int argc, char** argv) {
  int layers = 32;
  int repeats = 10;
  for (int i = 1; i < argc; ++i) {
    const int before_layers = layers, before_repeats = repeats;
    layers = pdserve::ParseIntFlag(argv[i], "--layers", layers);
    repeats = pdserve::ParseIntFlag(argv[i], "--repeats", repeats);
    if (layers == before_layers && repeats == before_repeats &&
        std::strncmp(argv[i], "--layers=", 9) != 0 &&
        std::strncmp(argv[i], "--repeats=", 10) != 0) {
      std::fprintf(stderr, "usage: %s [--layers=N] [--repeats=N]\n", argv[0]);
      return 2;
    }
  }
  if (layers < 1 || repeats < 1) {
    std::fprintf(stderr, "pdserve-gpu-bench: --layers and --repeats must be >= 1\n");
    return 2;
  }
  if (pdserve::CudaDeviceCount() == 0) {
    std::printf(
        "pdserve-gpu-bench: no CUDA device (cudaGetDeviceCount found none or the driver "
        "is missing); nothing to measure\n");
    return 0;
  }
  return pdserve::Run(layers, repeats);
}
