// Every Backend op on the CUDA backend against the CPU backend, the
// numerical reference (the llama.cpp test-backend-ops idea), on fresh random
// inputs of awkward sizes: 1, 3, 17 and 129 tokens, grouped-query ratios 1,
// 4 and 8, KV blocks of 1 and 16 tokens, sequences ending mid-block. Outputs
// are poisoned with NaN before each run, so an element an op forgot to write
// fails the comparison.
//
// Inputs are drawn as bf16-representable values, so both backends store them
// exactly (the CPU backend keeps float32, the CUDA one bf16 weights and KV):
// the ops then see identical operands and the remaining difference is
// float32 accumulation order, far below the 1e-2 relative L2 that bf16
// operands would allow (METHOD.md). Each op is held to the tightest bound its
// arithmetic justifies, so that a one-key masking slip or a dropped row
// cannot hide under a loose tolerance; the bf16 rounding of float32 GEMM
// inputs is checked separately at 1e-2.
//
// Every seed is fresh (std::random_device) and printed with each failure;
// PDSERVE_TEST_SEED=<n> replays one.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "kernels/backend_factory.h"
#include "kernels/cuda/argmax.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/cuda/device_memory_pool.h"
#include "kernels/cuda/top_k_rows.h"
#include "shared/dtype.h"
#include "tests/gpu/gpu_test_util.h"

namespace pdserve {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();
// Identical operands, float32 arithmetic in a different order.
constexpr double kFloat32Tolerance = 1e-4;
// float32 operands rounded to bf16 on the way into a tensor-core GEMM.
constexpr double kBf16Tolerance = 1e-2;

constexpr int kTokenCounts[] = {1, 3, 17, 129};

struct HeadConfig {
  int num_heads;
  int num_kv_heads;
  int head_dim;
};
// Grouped-query ratios 1, 4, 8 and 1:8 with a tiny head (stories260K's 8),
// and Phi-3's 96 and Llama's 128.
constexpr HeadConfig kHeadConfigs[] = {{4, 4, 64}, {8, 2, 96}, {16, 2, 128}, {8, 1, 8}};

float RoundToBf16(float x) { return Bf16ToFloat(FloatToBf16(x)); }

// Both backends' copies of one tensor.
struct Pair {
  BufferPtr cpu;
  BufferPtr cuda;
};

class CudaParityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (CudaDeviceCount() == 0) GTEST_SKIP() << kNoCudaDevice;
    auto cpu = CreateBackend("cpu");
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    auto cuda = CreateBackend("cuda");
    ASSERT_TRUE(cuda.ok()) << cuda.status();
    ASSERT_EQ((*cuda)->name(), "cuda");
    cpu_ = std::move(*cpu);
    cuda_ = std::move(*cuda);
    const char* replay = std::getenv("PDSERVE_TEST_SEED");
    seed_ = replay != nullptr ? static_cast<uint32_t>(std::strtoul(replay, nullptr, 10))
                              : std::random_device{}();
    rng_.seed(seed_);
    RecordProperty("seed", std::to_string(seed_));
  }

  std::string Seed() const { return " (PDSERVE_TEST_SEED=" + std::to_string(seed_) + ")"; }

  // n values uniform in [-scale, scale), rounded to bf16.
  std::vector<float> Random(size_t n, float scale = 1.0f) {
    std::uniform_real_distribution<float> uniform(-scale, scale);
    std::vector<float> values(n);
    for (float& x : values) x = RoundToBf16(uniform(rng_));
    return values;
  }
  // The same without the rounding: exercises the float32 -> bf16 paths.
  std::vector<float> RandomFloat32(size_t n, float scale = 1.0f) {
    std::uniform_real_distribution<float> uniform(-scale, scale);
    std::vector<float> values(n);
    for (float& x : values) x = uniform(rng_);
    return values;
  }
  int RandomInt(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng_); }

  static BufferPtr Make(Backend& backend, const std::vector<float>& values, DType dtype) {
    auto buffer = backend.Allocate(std::max<size_t>(values.size(), 1), dtype);
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    const absl::Status copied =
        backend.CopyToDevice(values.data(), DType::kF32, values.size(), **buffer, 0);
    EXPECT_TRUE(copied.ok()) << copied;
    return std::move(buffer).value();
  }

  // Activations in each backend's activation dtype.
  Pair Activation(const std::vector<float>& values) {
    return {Make(*cpu_, values, cpu_->activation_dtype()),
            Make(*cuda_, values, cuda_->activation_dtype())};
  }
  Pair PoisonedActivation(size_t n) { return Activation(std::vector<float>(n, kNaN)); }
  // KV tensors in each backend's kv_dtype.
  Pair Kv(const std::vector<float>& values) {
    return {Make(*cpu_, values, cpu_->kv_dtype()), Make(*cuda_, values, cuda_->kv_dtype())};
  }
  Pair Indices(const std::vector<int32_t>& values) {
    Pair pair;
    for (Backend* backend : {cpu_.get(), cuda_.get()}) {
      auto buffer = backend->Allocate(std::max<size_t>(values.size(), 1), DType::kI32);
      EXPECT_TRUE(buffer.ok()) << buffer.status();
      EXPECT_TRUE(
          backend->CopyToDevice(values.data(), DType::kI32, values.size(), **buffer, 0).ok());
      (backend == cpu_.get() ? pair.cpu : pair.cuda) = std::move(buffer).value();
    }
    return pair;
  }
  // A bf16 weight of `shape` through UploadWeight, as a checkpoint would give.
  Pair Weight(const std::vector<float>& values, std::vector<int64_t> shape) {
    std::vector<uint16_t>& bits = host_weights_.emplace_back(values.size());
    for (size_t i = 0; i < values.size(); ++i) bits[i] = FloatToBf16(values[i]);
    HostTensor tensor;
    tensor.name = "test_weight";
    tensor.dtype = DType::kBF16;
    tensor.shape = std::move(shape);
    tensor.data = bits.data();
    tensor.num_bytes = bits.size() * sizeof(uint16_t);
    auto cpu = cpu_->UploadWeight(std::span<const HostTensor>(&tensor, 1));
    auto cuda = cuda_->UploadWeight(std::span<const HostTensor>(&tensor, 1));
    EXPECT_TRUE(cpu.ok()) << cpu.status();
    EXPECT_TRUE(cuda.ok()) << cuda.status();
    return {std::move(cpu).value(), std::move(cuda).value()};
  }

  static std::vector<float> Read(Backend& backend, const DeviceBuffer& buffer, size_t n) {
    std::vector<float> values(n, kNaN);
    const absl::Status synced = backend.Synchronize();
    EXPECT_TRUE(synced.ok()) << backend.name() << ": " << synced;
    const absl::Status copied = backend.CopyToHost(buffer, 0, n, values.data(), DType::kF32);
    EXPECT_TRUE(copied.ok()) << backend.name() << ": " << copied;
    return values;
  }

  // The first n elements agree within `tolerance` (relative L2), and the
  // CPU reference itself is finite.
  void ExpectParity(const Pair& pair, size_t n, double tolerance, const std::string& what) {
    const std::vector<float> expected = Read(*cpu_, *pair.cpu, n);
    const std::vector<float> actual = Read(*cuda_, *pair.cuda, n);
    for (size_t i = 0; i < n; ++i) {
      ASSERT_TRUE(std::isfinite(expected[i]))
          << what << ": CPU reference element " << i << " is " << expected[i] << Seed();
    }
    const double error = RelativeL2(actual, expected);
    EXPECT_LE(error, tolerance) << what << ": relative L2 error " << error << Seed();
  }

  std::unique_ptr<Backend> cpu_, cuda_;
  uint32_t seed_ = 0;
  std::mt19937 rng_;
  std::deque<std::vector<uint16_t>> host_weights_;  // alive as long as the uploads
};

// ---- without a device --------------------------------------------------------

TEST(CudaBackendWithoutDevice, FactoryFallsBack) {
  if (CudaDeviceCount() > 0) GTEST_SKIP() << "a CUDA device is present";
  auto cuda = CreateBackend("cuda");
  EXPECT_EQ(cuda.status().code(), absl::StatusCode::kUnavailable) << cuda.status();
  auto automatic = CreateBackend("auto");
  ASSERT_TRUE(automatic.ok()) << automatic.status();
  EXPECT_EQ((*automatic)->name(), "cpu");
  EXPECT_EQ(CreateCudaBackend().status().code(), absl::StatusCode::kUnavailable);
}

// ---- memory and copies ----------------------------------------------------------

// Host -> device -> host through each storage dtype, against the host-side
// conversions of shared/dtype.h; bigger than the backend's 32 MiB staging
// buffer and at offsets, so the chunked path is covered.
TEST_F(CudaParityTest, CopiesConvertLikeTheHost) {
  const size_t n = (size_t{32} << 20) / 4 + 1001;
  const std::vector<float> values = RandomFloat32(n, 100.0f);
  for (DType dtype : {DType::kF32, DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    std::vector<uint16_t> stored16(n);
    std::vector<float> expected(n);
    if (dtype == DType::kF32) {
      expected = values;
    } else {
      ConvertFromFloat(values.data(), n, dtype, stored16.data());
      ConvertToFloat(stored16.data(), dtype, n, expected.data());
    }
    auto buffer = cuda_->Allocate(n + 7, dtype);
    ASSERT_TRUE(buffer.ok()) << buffer.status();
    ASSERT_TRUE(cuda_->CopyToDevice(values.data(), DType::kF32, n, **buffer, 5).ok());
    std::vector<float> back(n, kNaN);
    ASSERT_TRUE(cuda_->CopyToHost(**buffer, 5, n, back.data(), DType::kF32).ok());
    ASSERT_EQ(back, expected) << Seed();
    if (dtype != DType::kF32) {
      // Straight to the host's 16-bit format, bit for bit.
      std::vector<uint16_t> bits(n);
      ASSERT_TRUE(cuda_->CopyToHost(**buffer, 5, n, bits.data(), dtype).ok());
      ASSERT_EQ(bits, stored16) << Seed();
    }
  }
  std::vector<int32_t> ids(1000);
  for (int32_t& id : ids) id = RandomInt(-5, 1 << 30);
  auto int_buffer = cuda_->Allocate(ids.size(), DType::kI32);
  ASSERT_TRUE(int_buffer.ok());
  ASSERT_TRUE(cuda_->CopyToDevice(ids.data(), DType::kI32, ids.size(), **int_buffer, 0).ok());
  std::vector<int32_t> ids_back(ids.size());
  ASSERT_TRUE(cuda_->CopyToHost(**int_buffer, 0, ids.size(), ids_back.data(), DType::kI32).ok());
  EXPECT_EQ(ids_back, ids);
}

TEST_F(CudaParityTest, CopyErrorsAreStatusesAndLeaveTheBackendUsable) {
  auto buffer = cuda_->Allocate(10, DType::kF32);
  ASSERT_TRUE(buffer.ok());
  std::vector<float> values(11, 1.0f);
  EXPECT_EQ(cuda_->CopyToDevice(values.data(), DType::kF32, 11, **buffer, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cuda_->CopyToHost(**buffer, 3, 8, values.data(), DType::kF32).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cuda_->CopyToDevice(values.data(), DType::kI32, 4, **buffer, 0).code(),
            absl::StatusCode::kInvalidArgument);
  // Far more than any device holds: a clean RESOURCE_EXHAUSTED, nothing sticky.
  auto huge = cuda_->Allocate(size_t{1} << 48, DType::kF32);
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted) << huge.status();
  EXPECT_TRUE(cuda_->Synchronize().ok());
  ASSERT_TRUE(cuda_->CopyToDevice(values.data(), DType::kF32, 10, **buffer, 0).ok());
  std::vector<float> back(10);
  ASSERT_TRUE(cuda_->CopyToHost(**buffer, 0, 10, back.data(), DType::kF32).ok());
  EXPECT_EQ(back, std::vector<float>(10, 1.0f));
}

// F32 and F16 checkpoints become bf16 on the device; row blocks concatenate.
TEST_F(CudaParityTest, UploadWeightConvertsToBf16) {
  for (DType source : {DType::kF32, DType::kF16, DType::kBF16}) {
    SCOPED_TRACE(std::string(DTypeName(source)));
    const std::vector<float> first = RandomFloat32(3 * 77, 2.0f);
    const std::vector<float> second = RandomFloat32(5 * 77, 2.0f);
    std::vector<std::vector<uint8_t>> storage;
    std::vector<HostTensor> blocks;
    for (const std::vector<float>* values : {&first, &second}) {
      std::vector<uint8_t>& bytes = storage.emplace_back(values->size() * DTypeSize(source));
      ConvertFromFloat(values->data(), values->size(), source, bytes.data());
      HostTensor tensor;
      tensor.name = "block";
      tensor.dtype = source;
      tensor.shape = {static_cast<int64_t>(values->size() / 77), 77};
      tensor.data = bytes.data();
      tensor.num_bytes = bytes.size();
      blocks.push_back(tensor);
    }
    auto weight = cuda_->UploadWeight(blocks);
    ASSERT_TRUE(weight.ok()) << weight.status();
    ASSERT_EQ((*weight)->dtype(), DType::kBF16);
    ASSERT_EQ((*weight)->num_elements(), first.size() + second.size());
    std::vector<float> expected;
    for (size_t b = 0; b < blocks.size(); ++b) {
      std::vector<float> as_stored(blocks[b].num_elements());
      ConvertToFloat(blocks[b].data, source, as_stored.size(), as_stored.data());
      for (float x : as_stored) expected.push_back(RoundToBf16(x));
    }
    std::vector<float> back(expected.size(), kNaN);
    ASSERT_TRUE(cuda_->CopyToHost(**weight, 0, back.size(), back.data(), DType::kF32).ok());
    EXPECT_EQ(back, expected) << Seed();
  }
  HostTensor ragged;
  ragged.name = "ragged";
  ragged.dtype = DType::kF32;
  ragged.shape = {2, 3};
  std::vector<float> six(6, 1.0f);
  ragged.data = six.data();
  ragged.num_bytes = 24;
  HostTensor other = ragged;
  other.shape = {3, 2};
  std::vector<HostTensor> mismatched = {ragged, other};
  EXPECT_EQ(cuda_->UploadWeight(mismatched).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CudaParityTest, SyntheticWeightsAreDeterministicAndScaled) {
  CudaBackendOptions options;
  options.synthetic_weights = true;
  options.synthetic_seed = seed_;
  auto first = CreateCudaBackend(options);
  auto second = CreateCudaBackend(options);
  ASSERT_TRUE(first.ok() && second.ok());
  HostTensor matrix;  // shape only: no data
  matrix.name = "synthetic";
  matrix.dtype = DType::kBF16;
  matrix.shape = {256, 1024};
  HostTensor vector = matrix;
  vector.shape = {1024};
  std::vector<std::vector<float>> values;
  for (auto* backend : {&*first, &*second}) {
    for (const HostTensor& tensor : {matrix, vector}) {
      auto weight = (*backend)->UploadWeight(std::span<const HostTensor>(&tensor, 1));
      ASSERT_TRUE(weight.ok()) << weight.status();
      values.push_back(Read(**backend, **weight, (*weight)->num_elements()));
    }
  }
  EXPECT_EQ(values[0], values[2]);
  EXPECT_EQ(values[1], values[3]);
  const double mean = std::accumulate(values[0].begin(), values[0].end(), 0.0) / values[0].size();
  double variance = 0;
  for (float x : values[0]) variance += (x - mean) * (x - mean);
  variance /= values[0].size();
  EXPECT_NEAR(mean, 0.0, 0.002);
  EXPECT_NEAR(variance * 1024, 1.0, 0.05);  // variance 1/cols
  for (float x : values[1]) {
    ASSERT_GE(x, 0.89f);
    ASSERT_LE(x, 1.11f);
  }
}

// ---- ops --------------------------------------------------------------------

TEST_F(CudaParityTest, Embedding) {
  const int vocab = 131;
  for (int hidden : {64, 96, 77}) {
    const Pair table = Weight(Random(static_cast<size_t>(vocab) * hidden), {vocab, hidden});
    for (int n : kTokenCounts) {
      std::vector<int32_t> ids(n);
      for (int32_t& id : ids) id = RandomInt(0, vocab - 1);
      const Pair ids_buffer = Indices(ids);
      const Pair out = PoisonedActivation(static_cast<size_t>(n) * hidden);
      cpu_->Embedding(*table.cpu, *ids_buffer.cpu, n, hidden, *out.cpu);
      cuda_->Embedding(*table.cuda, *ids_buffer.cuda, n, hidden, *out.cuda);
      ExpectParity(out, static_cast<size_t>(n) * hidden, 0.0,
                   "Embedding n=" + std::to_string(n) + " hidden=" + std::to_string(hidden));
    }
  }
}

TEST_F(CudaParityTest, MatMul) {
  struct Shape {
    int n, k;
  };
  for (Shape s : {Shape{96, 64}, Shape{131, 77}, Shape{1000, 3072}}) {
    const Pair w =
        Weight(Random(static_cast<size_t>(s.n) * s.k, 1.0f / std::sqrt(s.k)), {s.n, s.k});
    for (int m : kTokenCounts) {
      for (bool accumulate : {false, true}) {
        const std::string what = "MatMul m=" + std::to_string(m) + " n=" + std::to_string(s.n) +
                                 " k=" + std::to_string(s.k) + (accumulate ? " accumulate" : "");
        const Pair x = Activation(Random(static_cast<size_t>(m) * s.k));
        const size_t out_elements = static_cast<size_t>(m) * s.n;
        const Pair out =
            accumulate ? Activation(Random(out_elements)) : PoisonedActivation(out_elements);
        cpu_->MatMul(*x.cpu, *w.cpu, m, s.n, s.k, *out.cpu, accumulate);
        cuda_->MatMul(*x.cuda, *w.cuda, m, s.n, s.k, *out.cuda, accumulate);
        ExpectParity(out, out_elements, kFloat32Tolerance, what);
      }
    }
  }
}

// float32 activations that bf16 cannot hold: the CUDA GEMM rounds them.
TEST_F(CudaParityTest, MatMulRoundsFloat32InputsWithinTheBf16Bound) {
  const int n = 512, k = 1024;
  const Pair w = Weight(Random(static_cast<size_t>(n) * k, 1.0f / std::sqrt(k)), {n, k});
  for (int m : kTokenCounts) {
    const Pair x = Activation(RandomFloat32(static_cast<size_t>(m) * k));
    const Pair out = PoisonedActivation(static_cast<size_t>(m) * n);
    cpu_->MatMul(*x.cpu, *w.cpu, m, n, k, *out.cpu, false);
    cuda_->MatMul(*x.cuda, *w.cuda, m, n, k, *out.cuda, false);
    ExpectParity(out, static_cast<size_t>(m) * n, kBf16Tolerance,
                 "MatMul float32 inputs m=" + std::to_string(m));
  }
}

TEST_F(CudaParityTest, RmsNorm) {
  for (int d : {64, 77, 3072}) {
    std::vector<float> weight_values = Random(d, 0.1f);
    for (float& w : weight_values) w = RoundToBf16(1.0f + w);
    const Pair weight = Weight(weight_values, {d});
    for (int m : kTokenCounts) {
      const std::string what = "RmsNorm m=" + std::to_string(m) + " d=" + std::to_string(d);
      const std::vector<float> x_values = Random(static_cast<size_t>(m) * d, 3.0f);
      const Pair x = Activation(x_values);
      const Pair out = PoisonedActivation(static_cast<size_t>(m) * d);
      cpu_->RmsNorm(*x.cpu, *weight.cpu, m, d, 1e-5f, *out.cpu);
      cuda_->RmsNorm(*x.cuda, *weight.cuda, m, d, 1e-5f, *out.cuda);
      ExpectParity(out, static_cast<size_t>(m) * d, kFloat32Tolerance, what);
      // In place, as the Transformer normalises the last hidden row.
      cpu_->RmsNorm(*x.cpu, *weight.cpu, m, d, 1e-5f, *x.cpu);
      cuda_->RmsNorm(*x.cuda, *weight.cuda, m, d, 1e-5f, *x.cuda);
      ExpectParity(x, static_cast<size_t>(m) * d, kFloat32Tolerance, what + " in place");
    }
  }
}

TEST_F(CudaParityTest, SplitQkv) {
  for (const HeadConfig& c : kHeadConfigs) {
    for (int n : kTokenCounts) {
      const std::string what =
          "SplitQkv n=" + std::to_string(n) + " h=" + std::to_string(c.num_heads) +
          " kvh=" + std::to_string(c.num_kv_heads) + " hd=" + std::to_string(c.head_dim);
      const size_t q_elements = static_cast<size_t>(n) * c.num_heads * c.head_dim;
      const size_t kv_elements = static_cast<size_t>(n) * c.num_kv_heads * c.head_dim;
      const Pair qkv = Activation(Random(q_elements + 2 * kv_elements));
      const Pair q = PoisonedActivation(q_elements);
      const Pair k = PoisonedActivation(kv_elements);
      const Pair v = PoisonedActivation(kv_elements);
      cpu_->SplitQkv(*qkv.cpu, n, c.num_heads, c.num_kv_heads, c.head_dim, *q.cpu, *k.cpu, *v.cpu);
      cuda_->SplitQkv(*qkv.cuda, n, c.num_heads, c.num_kv_heads, c.head_dim, *q.cuda, *k.cuda,
                      *v.cuda);
      ExpectParity(q, q_elements, 0.0, what + " q");
      ExpectParity(k, kv_elements, 0.0, what + " k");
      ExpectParity(v, kv_elements, 0.0, what + " v");
    }
  }
}

TEST_F(CudaParityTest, Rope) {
  for (const HeadConfig& c : kHeadConfigs) {
    for (float theta : {10000.0f, 500000.0f}) {
      for (int n : kTokenCounts) {
        const std::string what = "Rope n=" + std::to_string(n) +
                                 " hd=" + std::to_string(c.head_dim) +
                                 " theta=" + std::to_string(theta);
        std::vector<int32_t> positions(n);
        for (int32_t& p : positions) p = RandomInt(0, 4095);
        const Pair position_buffer = Indices(positions);
        const size_t q_elements = static_cast<size_t>(n) * c.num_heads * c.head_dim;
        const size_t k_elements = static_cast<size_t>(n) * c.num_kv_heads * c.head_dim;
        const Pair q = Activation(Random(q_elements));
        const Pair k = Activation(Random(k_elements));
        cpu_->Rope(*q.cpu, *k.cpu, *position_buffer.cpu, n, c.num_heads, c.num_kv_heads, c.head_dim,
                   theta);
        cuda_->Rope(*q.cuda, *k.cuda, *position_buffer.cuda, n, c.num_heads, c.num_kv_heads,
                    c.head_dim, theta);
        ExpectParity(q, q_elements, kFloat32Tolerance, what + " q");
        ExpectParity(k, k_elements, kFloat32Tolerance, what + " k");
      }
    }
  }
}

TEST_F(CudaParityTest, SiluMul) {
  for (int f : {172, 1000, 8192}) {
    for (int m : kTokenCounts) {
      const Pair gate_up = Activation(Random(static_cast<size_t>(m) * 2 * f, 6.0f));
      const Pair out = PoisonedActivation(static_cast<size_t>(m) * f);
      cpu_->SiluMul(*gate_up.cpu, m, f, *out.cpu);
      cuda_->SiluMul(*gate_up.cuda, m, f, *out.cuda);
      ExpectParity(out, static_cast<size_t>(m) * f, kFloat32Tolerance,
                   "SiluMul m=" + std::to_string(m) + " f=" + std::to_string(f));
    }
  }
}

TEST_F(CudaParityTest, PrefillAttention) {
  for (const HeadConfig& c : kHeadConfigs) {
    for (int n : kTokenCounts) {
      for (int past : {0, 7, 40}) {
        const int t = n + past;
        const std::string what = "PrefillAttention n=" + std::to_string(n) +
                                 " t=" + std::to_string(t) + " h=" + std::to_string(c.num_heads) +
                                 " kvh=" + std::to_string(c.num_kv_heads) +
                                 " hd=" + std::to_string(c.head_dim);
        const size_t q_elements = static_cast<size_t>(n) * c.num_heads * c.head_dim;
        const size_t kv_elements = static_cast<size_t>(t) * c.num_kv_heads * c.head_dim;
        // Scores of a few units: softmax neither uniform nor one-hot.
        const Pair q = Activation(Random(q_elements, 2.0f));
        const Pair k = Kv(Random(kv_elements, 2.0f));
        const Pair v = Kv(Random(kv_elements));
        const Pair out = PoisonedActivation(q_elements);
        const PrefillAttentionParams params{
            n,           t,
            c.num_heads, c.num_kv_heads,
            c.head_dim,  1.0f / std::sqrt(static_cast<float>(c.head_dim))};
        cpu_->PrefillAttention(*q.cpu, *k.cpu, *v.cpu, params, *out.cpu);
        cuda_->PrefillAttention(*q.cuda, *k.cuda, *v.cuda, params, *out.cuda);
        ExpectParity(out, q_elements, kFloat32Tolerance, what);
      }
    }
  }
}

// Distinct random slots for n tokens in a cache of num_slots, about one in
// eight set to -1 (padding).
std::vector<int32_t> RandomSlots(std::mt19937& rng, int n, int num_slots) {
  std::vector<int32_t> all(num_slots);
  std::iota(all.begin(), all.end(), 0);
  std::shuffle(all.begin(), all.end(), rng);
  std::vector<int32_t> slots(all.begin(), all.begin() + n);
  for (int32_t& slot : slots) {
    if (std::uniform_int_distribution<int>(0, 7)(rng) == 0) slot = -1;
  }
  return slots;
}

TEST_F(CudaParityTest, KvScatter) {
  for (const HeadConfig& c : kHeadConfigs) {
    const int kv_width = c.num_kv_heads * c.head_dim;
    for (int block_size : {1, 16}) {
      const int num_blocks = (2 * 129 + block_size - 1) / block_size + 3;
      const int num_slots = num_blocks * block_size;
      for (int n : kTokenCounts) {
        const std::string what = "KvScatter n=" + std::to_string(n) +
                                 " block_size=" + std::to_string(block_size) +
                                 " kv_width=" + std::to_string(kv_width);
        const size_t cache_elements = static_cast<size_t>(num_slots) * kv_width;
        // Old cache contents stay where no token goes.
        const Pair k_cache = Kv(Random(cache_elements));
        const Pair v_cache = Kv(Random(cache_elements));
        const Pair k = Activation(Random(static_cast<size_t>(n) * kv_width));
        const Pair v = Activation(Random(static_cast<size_t>(n) * kv_width));
        const Pair slots = Indices(RandomSlots(rng_, n, num_slots));
        cpu_->KvScatter(*k.cpu, *v.cpu, *slots.cpu, n, kv_width, *k_cache.cpu, *v_cache.cpu);
        cuda_->KvScatter(*k.cuda, *v.cuda, *slots.cuda, n, kv_width, *k_cache.cuda, *v_cache.cuda);
        ExpectParity(k_cache, cache_elements, 0.0, what + " k_cache");
        ExpectParity(v_cache, cache_elements, 0.0, what + " v_cache");
      }
    }
  }
}

TEST_F(CudaParityTest, KvGather) {
  for (const HeadConfig& c : kHeadConfigs) {
    const int kv_width = c.num_kv_heads * c.head_dim;
    for (int block_size : {1, 16}) {
      const int num_blocks = (2 * 129 + block_size - 1) / block_size + 3;
      const int num_slots = num_blocks * block_size;
      const size_t cache_elements = static_cast<size_t>(num_slots) * kv_width;
      const Pair k_cache = Kv(Random(cache_elements));
      const Pair v_cache = Kv(Random(cache_elements));
      for (int n : kTokenCounts) {
        // Into kv_dtype (streaming KV out) and activation dtype buffers.
        for (bool into_kv_dtype : {true, false}) {
          const std::string what = "KvGather n=" + std::to_string(n) +
                                   " block_size=" + std::to_string(block_size) +
                                   " kv_width=" + std::to_string(kv_width) +
                                   (into_kv_dtype ? " into kv_dtype" : " into activations");
          const std::vector<int32_t> slot_values = RandomSlots(rng_, n, num_slots);
          const Pair slots = Indices(slot_values);
          const size_t elements = static_cast<size_t>(n) * kv_width;
          const std::vector<float> poison(elements, kNaN);
          const Pair k = into_kv_dtype ? Kv(poison) : Activation(poison);
          const Pair v = into_kv_dtype ? Kv(poison) : Activation(poison);
          cpu_->KvGather(*k_cache.cpu, *v_cache.cpu, *slots.cpu, n, kv_width, *k.cpu, *v.cpu);
          cuda_->KvGather(*k_cache.cuda, *v_cache.cuda, *slots.cuda, n, kv_width, *k.cuda, *v.cuda);
          for (const Pair* out : {&k, &v}) {
            const std::vector<float> expected = Read(*cpu_, *out->cpu, elements);
            const std::vector<float> actual = Read(*cuda_, *out->cuda, elements);
            for (int i = 0; i < n; ++i) {
              for (int j = 0; j < kv_width; ++j) {
                const size_t e = static_cast<size_t>(i) * kv_width + j;
                if (slot_values[i] == -1) {  // left as it was
                  ASSERT_TRUE(std::isnan(actual[e])) << what << " row " << i << Seed();
                } else {
                  ASSERT_EQ(actual[e], expected[e]) << what << " row " << i << Seed();
                }
              }
            }
          }
        }
      }
    }
  }
}

TEST_F(CudaParityTest, PagedAttention) {
  // Lengths ending mid-block for 16-token blocks, one exactly full, one token.
  const std::vector<int32_t> lengths = {1, 3, 17, 129, 40, 16, 33};
  const int batch = static_cast<int>(lengths.size());
  for (const HeadConfig& c : kHeadConfigs) {
    const int kv_width = c.num_kv_heads * c.head_dim;
    for (int block_size : {1, 16}) {
      const std::string what = "PagedAttention block_size=" + std::to_string(block_size) +
                               " h=" + std::to_string(c.num_heads) +
                               " kvh=" + std::to_string(c.num_kv_heads) +
                               " hd=" + std::to_string(c.head_dim);
      int needed = 0;
      int widest = 0;
      for (int len : lengths) {
        const int blocks = (len + block_size - 1) / block_size;
        needed += blocks;
        widest = std::max(widest, blocks);
      }
      const int num_blocks = needed + 5;  // some blocks belong to no one
      const int max_blocks_per_seq = widest + 2;
      // Scattered, non-contiguous blocks; rows padded with 0.
      std::vector<int32_t> pool(num_blocks);
      std::iota(pool.begin(), pool.end(), 0);
      std::shuffle(pool.begin(), pool.end(), rng_);
      std::vector<int32_t> tables(static_cast<size_t>(batch) * max_blocks_per_seq, 0);
      size_t next = 0;
      for (int b = 0; b < batch; ++b) {
        const int blocks = (lengths[b] + block_size - 1) / block_size;
        for (int j = 0; j < blocks; ++j)
          tables[static_cast<size_t>(b) * max_blocks_per_seq + j] = pool[next++];
      }
      const size_t cache_elements = static_cast<size_t>(num_blocks) * block_size * kv_width;
      const Pair k_cache = Kv(Random(cache_elements, 2.0f));
      const Pair v_cache = Kv(Random(cache_elements));
      const size_t q_elements = static_cast<size_t>(batch) * c.num_heads * c.head_dim;
      const Pair q = Activation(Random(q_elements, 2.0f));
      const Pair out = PoisonedActivation(q_elements);
      const Pair table_buffer = Indices(tables);
      const Pair length_buffer = Indices(lengths);
      const PagedAttentionParams params{batch,
                                        c.num_heads,
                                        c.num_kv_heads,
                                        c.head_dim,
                                        block_size,
                                        max_blocks_per_seq,
                                        1.0f / std::sqrt(static_cast<float>(c.head_dim))};
      cpu_->PagedAttention(*q.cpu, *k_cache.cpu, *v_cache.cpu, *table_buffer.cpu,
                           *length_buffer.cpu, params, *out.cpu);
      cuda_->PagedAttention(*q.cuda, *k_cache.cuda, *v_cache.cuda, *table_buffer.cuda,
                            *length_buffer.cuda, params, *out.cuda);
      ExpectParity(out, q_elements, kFloat32Tolerance, what);
    }
  }
}

TEST_F(CudaParityTest, CopyElements) {
  const Pair src = Activation(Random(1000));
  const Pair dst = PoisonedActivation(600);
  cpu_->CopyElements(*src.cpu, 123, *dst.cpu, 50, 500);
  cuda_->CopyElements(*src.cuda, 123, *dst.cuda, 50, 500);
  const std::vector<float> expected = Read(*cpu_, *dst.cpu, 600);
  const std::vector<float> actual = Read(*cuda_, *dst.cuda, 600);
  for (size_t i = 0; i < 600; ++i) {
    if (i < 50 || i >= 550) {
      ASSERT_TRUE(std::isnan(actual[i])) << "element " << i << " outside the copied range";
    } else {
      ASSERT_EQ(actual[i], expected[i]) << "element " << i << Seed();
    }
  }
}

// ---- asynchronous copies to host (CopyToHostAsync, AllocateHostBlock) -------------

// The bytes `values` (bf16-representable) have when stored as `dtype`, from
// the host-side conversions of shared/dtype.h: the reference for what a copy
// in the buffer's own dtype must deliver.
std::vector<char> StoredBytes(const std::vector<float>& values, size_t first, size_t n,
                              DType dtype) {
  std::vector<char> bytes(n * DTypeSize(dtype));
  if (dtype == DType::kF32) {
    std::memcpy(bytes.data(), values.data() + first, bytes.size());
  } else {
    ConvertFromFloat(values.data() + first, n, dtype, bytes.data());
  }
  return bytes;
}

constexpr unsigned char kPoison = 0xff;  // NaN in bf16 and f32 alike

// The first expected.size() bytes of `data` equal `expected`; the `tail` bytes after them
// still hold the poison.
::testing::AssertionResult BytesAre(const char* data, const std::vector<char>& expected,
                                    size_t tail) {
  for (size_t i = 0; i < expected.size(); ++i) {
    if (data[i] != expected[i]) return ::testing::AssertionFailure() << "byte " << i << " differs";
  }
  for (size_t i = 0; i < tail; ++i) {
    if (static_cast<unsigned char>(data[expected.size() + i]) != kPoison) {
      return ::testing::AssertionFailure() << "byte " << i << " past the copy was written";
    }
  }
  return ::testing::AssertionSuccess();
}

// Into page-locked blocks and into ordinary (pageable) memory, at odd sizes
// and offsets: the same bytes as the host's conversion and as CopyToHost.
TEST_F(CudaParityTest, CopyToHostAsyncEqualsCopyToHost) {
  constexpr size_t kTail = 64;
  for (DType dtype : {DType::kBF16, DType::kF32}) {
    for (size_t n : {size_t{1}, size_t{3}, size_t{17}, size_t{129} * 3072}) {
      for (size_t offset : {size_t{0}, size_t{7}}) {
        SCOPED_TRACE(std::string(DTypeName(dtype)) + " n=" + std::to_string(n) +
                     " offset=" + std::to_string(offset));
        const std::vector<float> values = Random(offset + n + 5);
        const BufferPtr buffer = Make(*cuda_, values, dtype);
        const std::vector<char> expected = StoredBytes(values, offset, n, dtype);

        auto block = cuda_->AllocateHostBlock(expected.size() + kTail);
        ASSERT_TRUE(block.ok()) << block.status();
        ASSERT_EQ((*block)->size(), expected.size() + kTail);
        std::memset((*block)->data(), kPoison, (*block)->size());
        auto copy = cuda_->CopyToHostAsync(*buffer, offset, n, (*block)->data());
        ASSERT_TRUE(copy.ok()) << copy.status();
        ASSERT_TRUE((*copy)->Wait().ok());
        EXPECT_TRUE((*copy)->Ready());
        EXPECT_TRUE((*copy)->Wait().ok());  // a second Wait says the same
        EXPECT_TRUE(BytesAre((*block)->data(), expected, kTail)) << Seed();

        std::vector<char> pageable(expected.size() + kTail, static_cast<char>(kPoison));
        auto pageable_copy = cuda_->CopyToHostAsync(*buffer, offset, n, pageable.data());
        ASSERT_TRUE(pageable_copy.ok()) << pageable_copy.status();
        ASSERT_TRUE((*pageable_copy)->Wait().ok());
        EXPECT_TRUE(BytesAre(pageable.data(), expected, kTail)) << Seed();

        std::vector<char> synchronous(expected.size());
        ASSERT_TRUE(cuda_->CopyToHost(*buffer, offset, n, synchronous.data(), dtype).ok());
        EXPECT_EQ(synchronous, expected) << Seed();
      }
    }
  }
  EXPECT_TRUE(cuda_->Synchronize().ok());
}

// The copy sees the source as the ops queued before the call leave it: an
// op queued right after may overwrite the source without reaching the
// destination. 16 MiB take ~0.3 ms over PCIe and ~10 us to overwrite on the
// device, so a copy that read the source itself would very likely see the
// new data.
TEST_F(CudaParityTest, CopyToHostAsyncIsNotChangedByLaterOps) {
  const size_t n = size_t{8} << 20;
  const std::vector<float> first = Random(n);
  const std::vector<float> second = Random(n);
  const std::vector<float> third = Random(n);
  const BufferPtr src = Make(*cuda_, first, DType::kBF16);
  const BufferPtr other = Make(*cuda_, second, DType::kBF16);
  auto block = cuda_->AllocateHostBlock(n * 2);
  ASSERT_TRUE(block.ok()) << block.status();

  // Overwritten by a device-to-device copy on the compute stream.
  std::memset((*block)->data(), kPoison, (*block)->size());
  auto copy = cuda_->CopyToHostAsync(*src, 0, n, (*block)->data());
  ASSERT_TRUE(copy.ok()) << copy.status();
  cuda_->CopyElements(*other, 0, *src, 0, n);
  ASSERT_TRUE((*copy)->Wait().ok());
  EXPECT_TRUE(BytesAre((*block)->data(), StoredBytes(first, 0, n, DType::kBF16), 0)) << Seed();
  std::vector<char> now(n * 2);
  ASSERT_TRUE(cuda_->CopyToHost(*src, 0, n, now.data(), DType::kBF16).ok());
  EXPECT_EQ(now, StoredBytes(second, 0, n, DType::kBF16)) << "the overwrite did not run";

  // Overwritten from the host.
  std::memset((*block)->data(), kPoison, (*block)->size());
  copy = cuda_->CopyToHostAsync(*src, 0, n, (*block)->data());
  ASSERT_TRUE(copy.ok()) << copy.status();
  ASSERT_TRUE(cuda_->CopyToDevice(third.data(), DType::kF32, n, *src, 0).ok());
  ASSERT_TRUE((*copy)->Wait().ok());
  EXPECT_TRUE(BytesAre((*block)->data(), StoredBytes(second, 0, n, DType::kBF16), 0)) << Seed();
  EXPECT_TRUE(cuda_->Synchronize().ok());
}

// Many copies in flight at once from one work buffer that each next op
// overwrites (the Transformer's K/V buffers, layer after layer), waited in
// reverse order; the last few are not waited at all, their destructor does.
TEST_F(CudaParityTest, CopyToHostAsyncManyInFlight) {
  constexpr int kCopies = 24;
  constexpr int kUnwaited = 4;
  const size_t m = size_t{129} * 3072;
  const BufferPtr work = Make(*cuda_, std::vector<float>(m, kNaN), DType::kBF16);
  std::vector<std::vector<float>> values;
  std::vector<BufferPtr> sources;
  std::vector<HostBlockPtr> blocks;
  std::vector<std::unique_ptr<HostCopy>> copies;
  for (int i = 0; i < kCopies; ++i) {
    values.push_back(Random(m));
    sources.push_back(Make(*cuda_, values.back(), DType::kBF16));
  }
  ASSERT_TRUE(cuda_->Synchronize().ok());
  for (int i = 0; i < kCopies; ++i) {
    const size_t offset = i % 5;
    auto block = cuda_->AllocateHostBlock((m - offset) * 2);
    ASSERT_TRUE(block.ok()) << block.status();
    std::memset((*block)->data(), kPoison, (*block)->size());
    blocks.push_back(std::move(block).value());
    cuda_->CopyElements(*sources[i], 0, *work, 0, m);
    auto copy = cuda_->CopyToHostAsync(*work, offset, m - offset, blocks.back()->data());
    ASSERT_TRUE(copy.ok()) << copy.status();
    copies.push_back(std::move(copy).value());
  }
  for (int i = kCopies - 1; i >= 0; --i) {
    if (i >= kCopies - kUnwaited) {
      copies[i].reset();  // waits
    } else {
      ASSERT_TRUE(copies[i]->Wait().ok()) << "copy " << i;
      EXPECT_TRUE(copies[i]->Ready());
    }
    const size_t offset = i % 5;
    EXPECT_TRUE(
        BytesAre(blocks[i]->data(), StoredBytes(values[i], offset, m - offset, DType::kBF16), 0))
        << "copy " << i << Seed();
  }
  EXPECT_TRUE(cuda_->Synchronize().ok());
}

TEST_F(CudaParityTest, CopyToHostAsyncErrorsAndEmptyCopies) {
  const std::vector<float> values = Random(10);
  const BufferPtr buffer = Make(*cuda_, values, DType::kF32);
  auto block = cuda_->AllocateHostBlock(64);
  ASSERT_TRUE(block.ok()) << block.status();
  std::memset((*block)->data(), kPoison, 64);
  char* dst = (*block)->data();
  EXPECT_EQ(cuda_->CopyToHostAsync(*buffer, 3, 8, dst).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cuda_->CopyToHostAsync(*buffer, 11, 0, dst).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(cuda_->CopyToHostAsync(*buffer, SIZE_MAX, 2, dst).status().code(),
            absl::StatusCode::kInvalidArgument);
  for (size_t offset : {size_t{0}, size_t{10}}) {
    auto empty = cuda_->CopyToHostAsync(*buffer, offset, 0, dst);
    ASSERT_TRUE(empty.ok()) << empty.status();
    EXPECT_TRUE((*empty)->Ready());
    EXPECT_TRUE((*empty)->Wait().ok());
  }
  EXPECT_TRUE(BytesAre(dst, {}, 64)) << "a refused or empty copy wrote";
  // Nothing sticky: the backend goes on working.
  EXPECT_TRUE(cuda_->Synchronize().ok());
  auto copy = cuda_->CopyToHostAsync(*buffer, 2, 8, dst);
  ASSERT_TRUE(copy.ok()) << copy.status();
  ASSERT_TRUE((*copy)->Wait().ok());
  EXPECT_TRUE(BytesAre(dst, StoredBytes(values, 2, 8, DType::kF32), 64 - 32));
}

// Blocks are page-locked (so the DMA engine writes them without a bounce),
// a zero-byte block still has an address, an impossible size is a clean
// RESOURCE_EXHAUSTED naming the bytes.
TEST_F(CudaParityTest, AllocateHostBlockIsPageLocked) {
  auto block = cuda_->AllocateHostBlock(3000);
  ASSERT_TRUE(block.ok()) << block.status();
  EXPECT_EQ((*block)->size(), 3000u);
  cudaPointerAttributes attributes{};
  ASSERT_EQ(cudaPointerGetAttributes(&attributes, (*block)->data()), cudaSuccess);
  EXPECT_EQ(attributes.type, cudaMemoryTypeHost);
  std::memset((*block)->data(), 1, 3000);

  auto empty = cuda_->AllocateHostBlock(0);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ((*empty)->size(), 0u);
  EXPECT_NE((*empty)->data(), nullptr);

  // 1 EiB: past any address space (even 57-bit), so it fails at once.
  const size_t huge = size_t{1} << 60;
  auto too_much = cuda_->AllocateHostBlock(huge);
  EXPECT_EQ(too_much.status().code(), absl::StatusCode::kResourceExhausted) << too_much.status();
  EXPECT_NE(std::string(too_much.status().message()).find(std::to_string(huge)), std::string::npos)
      << too_much.status();
  EXPECT_TRUE(cuda_->Synchronize().ok());
  EXPECT_TRUE(cuda_->AllocateHostBlock(1 << 20).ok());
}

// Host blocks may outlive their backend (gRPC may still be sending them)
// and die on another thread.
TEST_F(CudaParityTest, HostBlocksOutliveTheBackend) {
  auto backend = CreateCudaBackend();
  ASSERT_TRUE(backend.ok()) << backend.status();
  const std::vector<float> values = Random(1000);
  HostBlockPtr block;
  HostBlockPtr unused;
  {
    const BufferPtr buffer = Make(**backend, values, DType::kBF16);
    auto allocated = (*backend)->AllocateHostBlock(2000);
    ASSERT_TRUE(allocated.ok()) << allocated.status();
    block = std::move(allocated).value();
    auto other = (*backend)->AllocateHostBlock(5000);
    ASSERT_TRUE(other.ok()) << other.status();
    unused = std::move(other).value();
    auto copy = (*backend)->CopyToHostAsync(*buffer, 0, 1000, block->data());
    ASSERT_TRUE(copy.ok()) << copy.status();
    ASSERT_TRUE((*copy)->Wait().ok());
  }
  backend->reset();
  EXPECT_TRUE(BytesAre(block->data(), StoredBytes(values, 0, 1000, DType::kBF16), 0));
  std::thread([&] { unused.reset(); }).join();
  block.reset();
}

// The pool's pinned kind: page-locked blocks, cached by size class and
// handed out again.
TEST(CudaMemoryPoolTest, PinnedHostBlocksAreCachedAndReused) {
  if (CudaDeviceCount() == 0) GTEST_SKIP() << kNoCudaDevice;
  gpu::DeviceMemoryPool pool(gpu::PoolMemory::kPinnedHost);
  void* block = nullptr;
  size_t capacity = 0;
  ASSERT_EQ(pool.Allocate(3000, &block, &capacity), cudaSuccess);
  EXPECT_EQ(capacity, gpu::DeviceMemoryPool::SizeClass(3000));
  cudaPointerAttributes attributes{};
  ASSERT_EQ(cudaPointerGetAttributes(&attributes, block), cudaSuccess);
  EXPECT_EQ(attributes.type, cudaMemoryTypeHost);
  std::memset(block, 1, capacity);
  pool.Free(block, capacity);
  EXPECT_EQ(pool.cached_bytes(), capacity);
  void* again = nullptr;
  size_t again_capacity = 0;
  ASSERT_EQ(pool.Allocate(2900, &again, &again_capacity), cudaSuccess);
  EXPECT_EQ(again, block);
  EXPECT_EQ(pool.cached_bytes(), 0u);
  pool.Free(again, again_capacity);
  pool.ReleaseCached();
  EXPECT_EQ(pool.cached_bytes(), 0u);
}

// ---- kernels without a Backend op ------------------------------------------------

// Device argmax (greedy decoding) against a host scan: the largest value,
// the smallest index on a tie, NaN never chosen.
TEST_F(CudaParityTest, ArgmaxKernel) {
  for (int vocab : {512, 32064}) {
    for (int b : kTokenCounts) {
      std::vector<float> logits = RandomFloat32(static_cast<size_t>(b) * vocab, 10.0f);
      for (int row = 0; row < b; ++row) {
        float* r = logits.data() + static_cast<size_t>(row) * vocab;
        if (row % 3 == 1) {  // a tie for the maximum: the earlier index wins
          const int first = RandomInt(0, vocab - 2);
          const int second = RandomInt(first + 1, vocab - 1);
          r[first] = r[second] = 100.0f;
        }
        if (row % 4 == 2) r[RandomInt(0, vocab - 1)] = kNaN;
      }
      std::vector<int32_t> expected(b);
      for (int row = 0; row < b; ++row) {
        const float* r = logits.data() + static_cast<size_t>(row) * vocab;
        int best = -1;
        for (int j = 0; j < vocab; ++j) {
          if (!std::isnan(r[j]) && (best < 0 || r[j] > r[best])) best = j;
        }
        expected[row] = best;
      }
      float* device_logits = nullptr;
      int32_t* device_out = nullptr;
      ASSERT_EQ(cudaMalloc(&device_logits, logits.size() * sizeof(float)), cudaSuccess);
      ASSERT_EQ(cudaMalloc(&device_out, b * sizeof(int32_t)), cudaSuccess);
      ASSERT_EQ(cudaMemcpy(device_logits, logits.data(), logits.size() * sizeof(float),
                           cudaMemcpyHostToDevice),
                cudaSuccess);
      ASSERT_EQ(cudaMemset(device_out, 0xff, b * sizeof(int32_t)), cudaSuccess);  // poison: -1
      gpu::ArgmaxParams params;
      params.logits = device_logits;
      params.logits_type = gpu::ElementType::kF32;
      params.out = device_out;
      params.b = b;
      params.vocab = vocab;
      EXPECT_EQ(gpu::InvokeArgmax(params, nullptr), cudaSuccess);
      std::vector<int32_t> actual(b, -2);
      EXPECT_EQ(cudaMemcpy(actual.data(), device_out, b * sizeof(int32_t), cudaMemcpyDeviceToHost),
                cudaSuccess);
      cudaFree(device_logits);
      cudaFree(device_out);
      EXPECT_EQ(actual, expected) << "vocab=" << vocab << " b=" << b << Seed();

      // The same through Backend::ArgmaxRows, the op the decode step runs,
      // on both backends (outputs poisoned with -1).
      const Pair x = Activation(logits);
      const Pair picked = Indices(std::vector<int32_t>(b, -1));
      cpu_->ArgmaxRows(*x.cpu, b, vocab, *picked.cpu);
      cuda_->ArgmaxRows(*x.cuda, b, vocab, *picked.cuda);
      for (Backend* backend : {cpu_.get(), cuda_.get()}) {
        const DeviceBuffer& out = backend == cpu_.get() ? *picked.cpu : *picked.cuda;
        std::vector<int32_t> ids(b, -2);
        ASSERT_TRUE(backend->Synchronize().ok());
        ASSERT_TRUE(backend->CopyToHost(out, 0, b, ids.data(), DType::kI32).ok());
        EXPECT_EQ(ids, expected) << backend->name() << " ArgmaxRows vocab=" << vocab << " b=" << b
                                 << Seed();
      }
    }
  }
}

// Device top-k (Backend::TopKRows) against the CPU backend's, bit for bit:
// random rows and rows with planted ties (across the k-th place too), NaN,
// -inf, ±0, a row of only NaN and rows with fewer than k non-NaN entries
// (padded with (-inf, -1)). Outputs are poisoned first.
TEST_F(CudaParityTest, TopKRowsKernel) {
  const float inf = std::numeric_limits<float>::infinity();
  // Row r's pattern is r % 7: plain random, ties, NaN and -inf, all NaN,
  // fewer than k non-NaN, few distinct values (ties everywhere), ±0 and ±inf.
  auto fill_row = [&](float* r, int row, int cols, int k) {
    switch (row % 7) {
      case 1:  // a tie for the top place and one copied into the tail
        r[RandomInt(0, cols - 1)] = 50.0f;
        r[RandomInt(0, cols - 1)] = 50.0f;
        r[RandomInt(0, cols - 1)] = r[RandomInt(0, cols - 1)];
        break;
      case 2:
        for (int i = 0; i < 1 + cols / 8; ++i) r[RandomInt(0, cols - 1)] = kNaN;
        for (int i = 0; i < 1 + cols / 8; ++i) r[RandomInt(0, cols - 1)] = -inf;
        break;
      case 3:
        std::fill(r, r + cols, kNaN);
        break;
      case 4: {  // k - 1 entries survive, one of them -inf
        std::vector<float> kept(r, r + cols);
        std::fill(r, r + cols, kNaN);
        for (int i = 0; i < k - 1; ++i) {
          const int j = RandomInt(0, cols - 1);
          r[j] = i == 0 ? -inf : kept[j];
        }
        break;
      }
      case 5:
        for (int j = 0; j < cols; ++j) r[j] = static_cast<float>(RandomInt(-2, 2));
        break;
      case 6: {
        const float specials[] = {0.0f, -0.0f, inf, -inf, 1.0f, -1.0f, kNaN};
        for (int j = 0; j < cols; ++j) r[j] = specials[RandomInt(0, 6)];
        break;
      }
      default:
        break;
    }
  };
  auto bits = [](const std::vector<float>& values) {
    std::vector<uint32_t> out(values.size());
    std::memcpy(out.data(), values.data(), values.size() * sizeof(float));
    return out;
  };
  for (int cols : {1, 7, 64, 1000, 32064}) {
    for (int k : {1, 7, 40, 64}) {  // k == cols at cols 1, 7 and 64
      if (k > cols) continue;
      for (int rows : kTokenCounts) {
        std::vector<float> logits = RandomFloat32(static_cast<size_t>(rows) * cols, 10.0f);
        for (int row = 0; row < rows; ++row) {
          fill_row(logits.data() + static_cast<size_t>(row) * cols, row, cols, k);
        }
        const size_t n = static_cast<size_t>(rows) * k;
        const Pair x = Activation(logits);
        Pair values{Make(*cpu_, std::vector<float>(n, kNaN), DType::kF32),
                    Make(*cuda_, std::vector<float>(n, kNaN), DType::kF32)};
        const Pair ids = Indices(std::vector<int32_t>(n, -2));
        cpu_->TopKRows(*x.cpu, rows, cols, k, *values.cpu, *ids.cpu);
        cuda_->TopKRows(*x.cuda, rows, cols, k, *values.cuda, *ids.cuda);
        const std::vector<float> expected_values = Read(*cpu_, *values.cpu, n);
        const std::vector<float> actual_values = Read(*cuda_, *values.cuda, n);
        std::vector<int32_t> expected_ids(n, -3);
        std::vector<int32_t> actual_ids(n, -3);
        ASSERT_TRUE(cpu_->CopyToHost(*ids.cpu, 0, n, expected_ids.data(), DType::kI32).ok());
        ASSERT_TRUE(cuda_->CopyToHost(*ids.cuda, 0, n, actual_ids.data(), DType::kI32).ok());
        std::string what = " cols=" + std::to_string(cols) + " k=" + std::to_string(k) +
                           " rows=" + std::to_string(rows) + Seed();
        for (size_t i = 0; i < n; ++i) {
          if (actual_ids[i] != expected_ids[i] ||
              bits({actual_values[i]}) != bits({expected_values[i]})) {
            what += "; first difference at row " + std::to_string(i / k) + " slot " +
                    std::to_string(i % k) + ": (" + std::to_string(actual_values[i]) + ", " +
                    std::to_string(actual_ids[i]) + ") instead of (" +
                    std::to_string(expected_values[i]) + ", " + std::to_string(expected_ids[i]) +
                    ")";
            break;
          }
        }
        EXPECT_EQ(actual_ids, expected_ids) << what;
        EXPECT_EQ(bits(actual_values), bits(expected_values)) << what;
        // The reference itself padded the all-NaN row.
        if (rows > 3) EXPECT_EQ(expected_ids[3 * k], -1) << what;
      }
    }
  }

  // bf16 input straight into the kernel (the backend's activations are
  // float32): the same picks as the CPU backend over the rounded values.
  const int rows = 17;
  const int cols = 1000;
  const int k = 40;
  std::vector<float> logits = RandomFloat32(static_cast<size_t>(rows) * cols, 10.0f);
  for (int row = 0; row < rows; ++row) {
    fill_row(logits.data() + static_cast<size_t>(row) * cols, row, cols, k);
  }
  std::vector<uint16_t> logits_bf16(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) {
    logits_bf16[i] = FloatToBf16(logits[i]);
    logits[i] = Bf16ToFloat(logits_bf16[i]);
  }
  const size_t n = static_cast<size_t>(rows) * k;
  const BufferPtr x = Make(*cpu_, logits, DType::kF32);
  const BufferPtr values = Make(*cpu_, std::vector<float>(n, kNaN), DType::kF32);
  auto ids = cpu_->Allocate(n, DType::kI32);
  ASSERT_TRUE(ids.ok()) << ids.status();
  cpu_->TopKRows(*x, rows, cols, k, *values, **ids);
  const std::vector<float> expected_values = Read(*cpu_, *values, n);
  std::vector<int32_t> expected_ids(n, -3);
  ASSERT_TRUE(cpu_->CopyToHost(**ids, 0, n, expected_ids.data(), DType::kI32).ok());

  uint16_t* device_x = nullptr;
  float* device_values = nullptr;
  int32_t* device_ids = nullptr;
  ASSERT_EQ(cudaMalloc(&device_x, logits_bf16.size() * sizeof(uint16_t)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&device_values, n * sizeof(float)), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&device_ids, n * sizeof(int32_t)), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(device_x, logits_bf16.data(), logits_bf16.size() * sizeof(uint16_t),
                       cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_EQ(cudaMemset(device_values, 0xff, n * sizeof(float)), cudaSuccess);  // poison: NaN
  ASSERT_EQ(cudaMemset(device_ids, 0xfe, n * sizeof(int32_t)), cudaSuccess);
  gpu::TopKRowsParams params;
  params.x = device_x;
  params.x_type = gpu::ElementType::kBF16;
  params.values = device_values;
  params.ids = device_ids;
  params.rows = rows;
  params.cols = cols;
  params.k = k;
  EXPECT_EQ(gpu::InvokeTopKRows(params, nullptr), cudaSuccess);
  std::vector<float> actual_values(n, 0.0f);
  std::vector<int32_t> actual_ids(n, -3);
  EXPECT_EQ(
      cudaMemcpy(actual_values.data(), device_values, n * sizeof(float), cudaMemcpyDeviceToHost),
      cudaSuccess);
  EXPECT_EQ(cudaMemcpy(actual_ids.data(), device_ids, n * sizeof(int32_t), cudaMemcpyDeviceToHost),
            cudaSuccess);
  cudaFree(device_x);
  cudaFree(device_values);
  cudaFree(device_ids);
  EXPECT_EQ(actual_ids, expected_ids) << "bf16" << Seed();
  EXPECT_EQ(bits(actual_values), bits(expected_values)) << "bf16" << Seed();
}

}  // namespace
}  // namespace pdserve
