// The CPU backend's GEMM rate (OpenBLAS through Backend::MatMul) at the
// shapes a Phi-3-mini step runs, to compare decode and prefill timings with
// what the BLAS library itself can do on this machine:
//   decode: x [m, 3072] · qkv_proj [9216, 3072]ᵀ for m = 1, 8, 32 running
//           sequences (memory-bound: the 113 MB weight is read once per step;
//           weight_bytes/s shows how close that is to memory bandwidth);
//   prefill: x [512, 3072] · o_proj [3072, 3072]ᵀ (compute-bound);
// each with float32 weights (bf16=0) and with bfloat16 weights (bf16=1,
// CpuBackendOptions::weight_dtype).
// Run: pdserve_bench_cpu [--benchmark_filter=...]
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "kernels/cpu/cpu_backend.h"

namespace pdserve {
namespace {

BufferPtr RandomBuffer(Backend& backend, size_t n, std::mt19937& rng) {
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> values(n);
  for (float& v : values) v = uniform(rng);
  BufferPtr buffer = backend.Allocate(n, DType::kF32).value();
  if (!backend.CopyToDevice(values.data(), DType::kF32, n, *buffer, 0).ok()) std::abort();
  return buffer;
}

// Arguments: m, n, k of out[m, n] = x[m, k] · w[n, k]ᵀ; bf16: the weight's
// storage.
void BM_MatMul(benchmark::State& state) {
  const int m = static_cast<int>(state.range(0));
  const int n = static_cast<int>(state.range(1));
  const int k = static_cast<int>(state.range(2));
  const bool bf16 = state.range(3) != 0;
  std::unique_ptr<Backend> backend =
      CreateCpuBackend({.weight_dtype = bf16 ? DType::kBF16 : DType::kF32});
  std::mt19937 rng(1);
  BufferPtr x = RandomBuffer(*backend, static_cast<size_t>(m) * k, rng);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  std::vector<float> w_host(static_cast<size_t>(n) * k);
  for (float& v : w_host) v = uniform(rng);
  const HostTensor w_view{"w", DType::kF32, {n, k}, w_host.data(), w_host.size() * 4};
  BufferPtr w = backend->UploadWeight(std::span<const HostTensor>(&w_view, 1)).value();
  BufferPtr out = RandomBuffer(*backend, static_cast<size_t>(m) * n, rng);
  for (auto _ : state) {
    backend->MatMul(*x, *w, m, n, k, *out, /*accumulate=*/false);
    benchmark::DoNotOptimize(out->data());
    benchmark::ClobberMemory();
  }
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * m * n * k, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["weight_bytes/s"] = benchmark::Counter(
      double(DTypeSize(w->dtype())) * n * k, benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::kIs1024);
}

BENCHMARK(BM_MatMul)
    ->ArgNames({"m", "n", "k", "bf16"})
    ->ArgsProduct({{1, 8, 32}, {9216}, {3072}, {0, 1}})
    ->ArgsProduct({{512}, {3072}, {3072}, {0, 1}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace
}  // namespace pdserve

BENCHMARK_MAIN();
