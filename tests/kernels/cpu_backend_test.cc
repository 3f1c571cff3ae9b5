// Every CpuBackend op against a naive double-precision loop written here from
// the op's definition in shared/backend.h, on random inputs of awkward sizes.
// Outputs are poisoned with NaN before each run, so an element the op forgot
// to write fails the comparison.
#include "kernels/cpu/cpu_backend.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace pdserve {
namespace {

constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

class CpuBackendTest : public ::testing::Test {
 protected:
  BufferPtr Upload(const std::vector<float>& values) {
    auto buffer = backend_->Allocate(values.size(), DType::kF32);
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    EXPECT_TRUE(
        backend_->CopyToDevice(values.data(), DType::kF32, values.size(), **buffer, 0).ok());
    return std::move(*buffer);
  }
  BufferPtr UploadInts(const std::vector<int32_t>& values) {
    auto buffer = backend_->Allocate(std::max<size_t>(values.size(), 1), DType::kI32);
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    EXPECT_TRUE(
        backend_->CopyToDevice(values.data(), DType::kI32, values.size(), **buffer, 0).ok());
    return std::move(*buffer);
  }
  // A float32 buffer full of NaN.
  BufferPtr Poisoned(size_t n) { return Upload(std::vector<float>(n, kNaN)); }
  std::vector<float> Download(const DeviceBuffer& buffer, size_t n) {
    std::vector<float> values(n);
    EXPECT_TRUE(backend_->Synchronize().ok());
    EXPECT_TRUE(backend_->CopyToHost(buffer, 0, n, values.data(), DType::kF32).ok());
    return values;
  }
  std::vector<float> Random(size_t n, float scale = 1.0f) {
    std::uniform_real_distribution<float> uniform(-scale, scale);
    std::vector<float> values(n);
    for (float& x : values) x = uniform(rng_);
    return values;
  }

  std::unique_ptr<Backend> backend_ = CreateCpuBackend();
  std::mt19937 rng_{20240611};
};

// |actual - expected| <= tolerance * (1 + |expected|) everywhere (NaN fails).
void ExpectClose(const std::vector<float>& actual, const std::vector<double>& expected,
                 double tolerance) {
  ASSERT_EQ(actual.size(), expected.size());
  for (size_t i = 0; i < actual.size(); ++i) {
    const double error = std::fabs(actual[i] - expected[i]);
    ASSERT_TRUE(error <= tolerance * (1.0 + std::fabs(expected[i])))
        << "element " << i << ": got " << actual[i] << ", want " << expected[i];
  }
}

// softmax(scale · q·k_j) · v over the given rows, in double.
std::vector<double> ReferenceAttention(const float* q, const std::vector<const float*>& keys,
                                       const std::vector<const float*>& values, int head_dim,
                                       double scale) {
  std::vector<double> scores(keys.size());
  for (size_t j = 0; j < keys.size(); ++j) {
    double dot = 0;
    for (int d = 0; d < head_dim; ++d) dot += static_cast<double>(q[d]) * keys[j][d];
    scores[j] = dot * scale;
  }
  const double max_score = *std::max_element(scores.begin(), scores.end());
  double sum = 0;
  for (double& s : scores) sum += (s = std::exp(s - max_score));
  std::vector<double> out(head_dim, 0.0);
  for (size_t j = 0; j < keys.size(); ++j) {
    for (int d = 0; d < head_dim; ++d) out[d] += scores[j] / sum * values[j][d];
  }
  return out;
}

TEST_F(CpuBackendTest, DtypesAndName) {
  EXPECT_EQ(backend_->name(), "cpu");
  EXPECT_EQ(backend_->activation_dtype(), DType::kF32);
  EXPECT_EQ(backend_->kv_dtype(), DType::kF32);
}

TEST_F(CpuBackendTest, AllocateTooMuchIsResourceExhausted) {
  auto huge = backend_->Allocate(std::numeric_limits<size_t>::max() / 2, DType::kF32);
  EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
  auto unsatisfiable = backend_->Allocate(size_t{1} << 60, DType::kF32);  // 4 EiB
  EXPECT_EQ(unsatisfiable.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(CpuBackendTest, CopyConvertsAndChecksRange) {
  const std::vector<float> values = {1.0f, -2.5f, 3.25f, 1e-3f};
  std::vector<uint16_t> bf16(values.size());
  for (size_t i = 0; i < values.size(); ++i) bf16[i] = FloatToBf16(values[i]);
  auto buffer = backend_->Allocate(6, DType::kF32);
  ASSERT_TRUE(buffer.ok());
  ASSERT_TRUE(backend_->CopyToDevice(bf16.data(), DType::kBF16, 4, **buffer, 2).ok());
  std::vector<float> back(4);
  ASSERT_TRUE(backend_->CopyToHost(**buffer, 2, 4, back.data(), DType::kF32).ok());
  for (size_t i = 0; i < values.size(); ++i)
    EXPECT_NEAR(back[i], values[i], 1e-2 * std::fabs(values[i]));

  EXPECT_EQ(backend_->CopyToDevice(values.data(), DType::kF32, 4, **buffer, 3).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend_->CopyToHost(**buffer, 5, 2, back.data(), DType::kF32).code(),
            absl::StatusCode::kInvalidArgument);
  const std::vector<int32_t> ints = {1, 2};
  EXPECT_EQ(backend_->CopyToDevice(ints.data(), DType::kI32, 2, **buffer, 0).code(),
            absl::StatusCode::kInvalidArgument);
}

// The default CopyToHostAsync (shared/backend.cc): a finished copy of the
// same bytes as CopyToHost in the buffer's own dtype, the same range check,
// and heap blocks from AllocateHostBlock.
TEST_F(CpuBackendTest, CopyToHostAsyncCopiesInTheBuffersDtypeAndChecksRange) {
  const std::vector<float> values = Random(40);
  for (DType dtype : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(std::string(DTypeName(dtype)));
    auto buffer = backend_->Allocate(values.size(), dtype);
    ASSERT_TRUE(buffer.ok());
    ASSERT_TRUE(backend_->CopyToDevice(values.data(), DType::kF32, 40, **buffer, 0).ok());
    const size_t size = DTypeSize(dtype);
    // The stored bytes of elements [5, 22), from dtype.h's conversion.
    std::vector<char> expected(17 * size);
    ConvertFromFloat(values.data() + 5, 17, dtype, expected.data());

    auto block = backend_->AllocateHostBlock(17 * size + 8);
    ASSERT_TRUE(block.ok()) << block.status();
    ASSERT_EQ((*block)->size(), 17 * size + 8);
    std::memset((*block)->data(), 0x7f, (*block)->size());
    auto copy = backend_->CopyToHostAsync(**buffer, 5, 17, (*block)->data());
    ASSERT_TRUE(copy.ok()) << copy.status();
    EXPECT_TRUE((*copy)->Ready());
    ASSERT_TRUE((*copy)->Wait().ok());
    EXPECT_EQ(std::vector<char>((*block)->data(), (*block)->data() + expected.size()), expected);
    for (size_t i = expected.size(); i < (*block)->size(); ++i) {
      ASSERT_EQ((*block)->data()[i], 0x7f) << "byte " << i << " past the copy was written";
    }
    std::vector<char> synchronous(expected.size());
    ASSERT_TRUE(backend_->CopyToHost(**buffer, 5, 17, synchronous.data(), dtype).ok());
    EXPECT_EQ(synchronous, expected);

    EXPECT_EQ(backend_->CopyToHostAsync(**buffer, 30, 11, (*block)->data()).status().code(),
              absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(backend_->CopyToHostAsync(**buffer, 41, 0, (*block)->data()).status().code(),
              absl::StatusCode::kInvalidArgument);
    auto empty = backend_->CopyToHostAsync(**buffer, 40, 0, (*block)->data());
    ASSERT_TRUE(empty.ok()) << empty.status();
    EXPECT_TRUE((*empty)->Wait().ok());
  }
  auto zero = backend_->AllocateHostBlock(0);
  ASSERT_TRUE(zero.ok());
  EXPECT_EQ((*zero)->size(), 0u);
}

TEST_F(CpuBackendTest, UploadWeightAliasesOneF32BlockAndConcatenatesOthers) {
  std::vector<float> a = Random(3 * 5), b = Random(2 * 5);
  HostTensor ta{"a", DType::kF32, {3, 5}, a.data(), a.size() * 4};
  HostTensor tb{"b", DType::kF32, {2, 5}, b.data(), b.size() * 4};

  auto single = backend_->UploadWeight(std::span<const HostTensor>(&ta, 1));
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ((*single)->data(), static_cast<const void*>(a.data()));  // used in place
  EXPECT_EQ((*single)->num_elements(), a.size());

  std::vector<uint16_t> c(4 * 5);
  std::vector<double> c_values(c.size());
  for (size_t i = 0; i < c.size(); ++i) {
    c[i] = static_cast<uint16_t>(0x3f80 + i);  // 1.0 and up in bf16 steps
    const uint32_t bits = static_cast<uint32_t>(c[i]) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    c_values[i] = f;
  }
  HostTensor tc{"c", DType::kBF16, {4, 5}, c.data(), c.size() * 2};
  const std::vector<HostTensor> blocks = {ta, tb, tc};
  auto fused = backend_->UploadWeight(blocks);
  ASSERT_TRUE(fused.ok()) << fused.status();
  std::vector<double> expected(a.begin(), a.end());
  expected.insert(expected.end(), b.begin(), b.end());
  expected.insert(expected.end(), c_values.begin(), c_values.end());
  ExpectClose(Download(**fused, expected.size()), expected, 0.0);

  HostTensor wrong{"wrong", DType::kF32, {2, 4}, b.data(), 2 * 4 * 4};
  const std::vector<HostTensor> mismatched = {ta, wrong};
  EXPECT_EQ(backend_->UploadWeight(mismatched).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(backend_->UploadWeight({}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(CpuBackendTest, Embedding) {
  const int vocab = 37, hidden = 17;
  const std::vector<float> table = Random(vocab * hidden);
  HostTensor view{"table", DType::kF32, {vocab, hidden}, table.data(), table.size() * 4};
  auto weight = backend_->UploadWeight(std::span<const HostTensor>(&view, 1));
  ASSERT_TRUE(weight.ok());
  for (int n : {1, 3, 17, 129}) {
    SCOPED_TRACE(n);
    std::vector<int32_t> ids(n);
    for (int32_t& id : ids) id = static_cast<int32_t>(rng_() % vocab);
    ids.back() = vocab - 1;
    auto id_buffer = UploadInts(ids);
    auto out = Poisoned(n * hidden);
    backend_->Embedding(**weight, *id_buffer, n, hidden, *out);
    std::vector<double> expected;
    for (int id : ids)
      expected.insert(expected.end(), &table[id * hidden], &table[(id + 1) * hidden]);
    ExpectClose(Download(*out, n * hidden), expected, 0.0);
  }
}

// m = 64 and 65 sit on either side of the switch from the backend's own
// GEMM to OpenBLAS (kSkinnyMaxRowsF32).
TEST_F(CpuBackendTest, MatMul) {
  for (int m : {1, 2, 3, 17, 64, 65, 129}) {
    for (auto [n, k] : {std::pair{1, 1}, {5, 7}, {64, 129}, {257, 33}}) {
      for (bool accumulate : {false, true}) {
        SCOPED_TRACE(testing::Message()
                     << "m=" << m << " n=" << n << " k=" << k << " accumulate=" << accumulate);
        const std::vector<float> x = Random(m * k), w = Random(n * k), base = Random(m * n);
        auto xb = Upload(x), wb = Upload(w);
        auto out = accumulate ? Upload(base) : Poisoned(m * n);
        backend_->MatMul(*xb, *wb, m, n, k, *out, accumulate);
        std::vector<double> expected(m * n);
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < n; ++j) {
            double sum = accumulate ? base[i * n + j] : 0.0;
            for (int l = 0; l < k; ++l) sum += static_cast<double>(x[i * k + l]) * w[j * k + l];
            expected[i * n + j] = sum;
          }
        }
        ExpectClose(Download(*out, m * n), expected, 1e-5);
      }
    }
  }
}

TEST_F(CpuBackendTest, RmsNormOutOfPlaceAndInPlace) {
  const float eps = 1e-5f;
  for (int m : {1, 3, 17, 129}) {
    for (int d : {1, 7, 64, 129}) {
      SCOPED_TRACE(testing::Message() << "m=" << m << " d=" << d);
      const std::vector<float> x = Random(m * d, 3.0f), w = Random(d);
      std::vector<double> expected(m * d);
      for (int i = 0; i < m; ++i) {
        double mean_square = 0;
        for (int j = 0; j < d; ++j) mean_square += static_cast<double>(x[i * d + j]) * x[i * d + j];
        mean_square /= d;
        for (int j = 0; j < d; ++j) {
          expected[i * d + j] = x[i * d + j] / std::sqrt(mean_square + eps) * w[j];
        }
      }
      auto xb = Upload(x), wb = Upload(w);
      auto out = Poisoned(m * d);
      backend_->RmsNorm(*xb, *wb, m, d, eps, *out);
      ExpectClose(Download(*out, m * d), expected, 1e-5);
      backend_->RmsNorm(*xb, *wb, m, d, eps, *xb);  // may alias
      ExpectClose(Download(*xb, m * d), expected, 1e-5);
    }
  }
}

TEST_F(CpuBackendTest, SplitQkv) {
  for (int n : {1, 3, 17, 129}) {
    for (auto [h, kvh, hd] : {std::tuple{1, 1, 3}, {8, 2, 8}, {8, 1, 5}}) {
      SCOPED_TRACE(testing::Message() << "n=" << n << " h=" << h << " kvh=" << kvh);
      const int qw = h * hd, kw = kvh * hd, row = qw + 2 * kw;
      const std::vector<float> qkv = Random(n * row);
      auto in = Upload(qkv);
      auto q = Poisoned(n * qw), k = Poisoned(n * kw), v = Poisoned(n * kw);
      backend_->SplitQkv(*in, n, h, kvh, hd, *q, *k, *v);
      std::vector<double> eq, ek, ev;
      for (int i = 0; i < n; ++i) {
        const float* r = &qkv[i * row];
        eq.insert(eq.end(), r, r + qw);
        ek.insert(ek.end(), r + qw, r + qw + kw);
        ev.insert(ev.end(), r + qw + kw, r + row);
      }
      ExpectClose(Download(*q, n * qw), eq, 0.0);
      ExpectClose(Download(*k, n * kw), ek, 0.0);
      ExpectClose(Download(*v, n * kw), ev, 0.0);
    }
  }
}

// HF apply_rotary_pos_emb: x·cos + rotate_half(x)·sin with
// rotate_half(x) = [-x2, x1] and cos/sin of position·theta^(-2i/hd).
std::vector<double> ReferenceRope(const std::vector<float>& x, const std::vector<int32_t>& pos,
                                  int heads, int hd, double theta) {
  std::vector<double> out(x.size());
  const int half = hd / 2;
  for (size_t t = 0; t < pos.size(); ++t) {
    for (int h = 0; h < heads; ++h) {
      const float* head = &x[(t * heads + h) * hd];
      double* dst = &out[(t * heads + h) * hd];
      for (int d = 0; d < hd; ++d) {
        const int i = d % half;
        const double angle = pos[t] * std::pow(theta, -2.0 * i / hd);
        const double rotated = d < half ? -static_cast<double>(head[d + half]) : head[d - half];
        dst[d] = head[d] * std::cos(angle) + rotated * std::sin(angle);
      }
    }
  }
  return out;
}

TEST_F(CpuBackendTest, Rope) {
  const double theta = 10000.0;
  for (int n : {1, 3, 17, 129}) {
    for (auto [h, kvh, hd] : {std::tuple{1, 1, 2}, {8, 4, 8}, {4, 1, 96}}) {
      SCOPED_TRACE(testing::Message() << "n=" << n << " h=" << h << " kvh=" << kvh << " hd=" << hd);
      std::vector<int32_t> positions(n);
      for (int32_t& p : positions) p = static_cast<int32_t>(rng_() % 4096);
      positions[0] = 0;
      const std::vector<float> q = Random(n * h * hd), k = Random(n * kvh * hd);
      auto qb = Upload(q), kb = Upload(k), pb = UploadInts(positions);
      backend_->Rope(*qb, *kb, *pb, n, h, kvh, hd, static_cast<float>(theta));
      ExpectClose(Download(*qb, q.size()), ReferenceRope(q, positions, h, hd, theta), 2e-6);
      ExpectClose(Download(*kb, k.size()), ReferenceRope(k, positions, kvh, hd, theta), 2e-6);
    }
  }
}

TEST_F(CpuBackendTest, SiluMul) {
  for (int m : {1, 3, 17, 129}) {
    for (int f : {1, 13, 172}) {
      SCOPED_TRACE(testing::Message() << "m=" << m << " f=" << f);
      const std::vector<float> gate_up = Random(m * 2 * f, 8.0f);
      auto in = Upload(gate_up);
      auto out = Poisoned(m * f);
      backend_->SiluMul(*in, m, f, *out);
      std::vector<double> expected(m * f);
      for (int i = 0; i < m; ++i) {
        for (int j = 0; j < f; ++j) {
          const double g = gate_up[i * 2 * f + j], u = gate_up[i * 2 * f + f + j];
          expected[i * f + j] = g / (1.0 + std::exp(-g)) * u;
        }
      }
      ExpectClose(Download(*out, m * f), expected, 1e-6);
    }
  }
}

TEST_F(CpuBackendTest, PrefillAttentionCausalGroupedQuery) {
  for (int n : {1, 3, 17, 129}) {
    for (int past : {0, 5}) {
      for (int ratio : {1, 4, 8}) {
        for (int kvh : {1, 2}) {
          for (int hd : {8, 96}) {
            SCOPED_TRACE(testing::Message() << "n=" << n << " past=" << past << " ratio=" << ratio
                                            << " kvh=" << kvh << " hd=" << hd);
            const int h = ratio * kvh, t = n + past;
            PrefillAttentionParams params{n, t, h, kvh, hd, 1.0f / std::sqrt(float(hd))};
            // Scale 4 makes the softmax peaky, exercising the max subtraction.
            const std::vector<float> q = Random(n * h * hd, 4.0f), k = Random(t * kvh * hd),
                                     v = Random(t * kvh * hd);
            auto qb = Upload(q), kb = Upload(k), vb = Upload(v);
            auto out = Poisoned(n * h * hd);
            backend_->PrefillAttention(*qb, *kb, *vb, params, *out);
            std::vector<double> expected;
            for (int i = 0; i < n; ++i) {
              for (int head = 0; head < h; ++head) {
                const int g = head / ratio;
                std::vector<const float*> keys, values;
                for (int j = 0; j <= past + i; ++j) {
                  keys.push_back(&k[(j * kvh + g) * hd]);
                  values.push_back(&v[(j * kvh + g) * hd]);
                }
                const std::vector<double> o =
                    ReferenceAttention(&q[(i * h + head) * hd], keys, values, hd, params.scale);
                expected.insert(expected.end(), o.begin(), o.end());
              }
            }
            ExpectClose(Download(*out, n * h * hd), expected, 1e-5);
          }
        }
      }
    }
  }
}

TEST_F(CpuBackendTest, KvScatterSkipsPaddingAndKvGatherInverts) {
  for (int block_size : {1, 16}) {
    for (int n : {1, 3, 17, 129}) {
      for (DType dtype : {DType::kF32, DType::kBF16}) {
        SCOPED_TRACE(testing::Message()
                     << "block_size=" << block_size << " n=" << n << " dtype=" << DTypeName(dtype));
        const int kv_width = 12;
        const int num_blocks = (n + 2 * block_size) / block_size + 2;
        const int num_slots = num_blocks * block_size;
        std::vector<int32_t> all_slots(num_slots);
        std::iota(all_slots.begin(), all_slots.end(), 0);
        std::shuffle(all_slots.begin(), all_slots.end(), rng_);
        std::vector<int32_t> slots(all_slots.begin(), all_slots.begin() + n);
        if (n > 2) slots[1] = -1;  // padding: must be skipped

        std::vector<float> k = Random(n * kv_width), v = Random(n * kv_width);
        std::vector<uint16_t> k16(k.size()), v16(v.size());
        for (size_t i = 0; i < k.size(); ++i) {
          k16[i] = FloatToBf16(k[i]);
          v16[i] = FloatToBf16(v[i]);
          if (dtype == DType::kBF16) {  // what the cache must then hold
            k[i] = Bf16ToFloat(k16[i]);
            v[i] = Bf16ToFloat(v16[i]);
          }
        }
        auto kb = backend_->Allocate(k.size(), dtype);
        auto vb = backend_->Allocate(v.size(), dtype);
        ASSERT_TRUE(kb.ok() && vb.ok());
        const void* k_src = dtype == DType::kF32 ? static_cast<const void*>(k.data()) : k16.data();
        const void* v_src = dtype == DType::kF32 ? static_cast<const void*>(v.data()) : v16.data();
        ASSERT_TRUE(backend_->CopyToDevice(k_src, dtype, k.size(), **kb, 0).ok());
        ASSERT_TRUE(backend_->CopyToDevice(v_src, dtype, v.size(), **vb, 0).ok());

        const std::vector<float> k_cache_before = Random(num_slots * kv_width);
        const std::vector<float> v_cache_before = Random(num_slots * kv_width);
        auto k_cache = Upload(k_cache_before), v_cache = Upload(v_cache_before);
        auto slot_buffer = UploadInts(slots);
        backend_->KvScatter(**kb, **vb, *slot_buffer, n, kv_width, *k_cache, *v_cache);

        std::vector<double> k_expected(k_cache_before.begin(), k_cache_before.end());
        std::vector<double> v_expected(v_cache_before.begin(), v_cache_before.end());
        for (int i = 0; i < n; ++i) {
          if (slots[i] < 0) continue;
          std::copy_n(&k[i * kv_width], kv_width, &k_expected[slots[i] * kv_width]);
          std::copy_n(&v[i * kv_width], kv_width, &v_expected[slots[i] * kv_width]);
        }
        ExpectClose(Download(*k_cache, k_expected.size()), k_expected, 0.0);
        ExpectClose(Download(*v_cache, v_expected.size()), v_expected, 0.0);

        // Gather back; the padded row stays as it was (poisoned).
        auto k_back = Poisoned(n * kv_width), v_back = Poisoned(n * kv_width);
        backend_->KvGather(*k_cache, *v_cache, *slot_buffer, n, kv_width, *k_back, *v_back);
        const std::vector<float> k_got = Download(*k_back, n * kv_width);
        const std::vector<float> v_got = Download(*v_back, n * kv_width);
        for (int i = 0; i < n; ++i) {
          for (int d = 0; d < kv_width; ++d) {
            if (slots[i] < 0) {
              EXPECT_TRUE(std::isnan(k_got[i * kv_width + d]));
              continue;
            }
            ASSERT_EQ(k_got[i * kv_width + d], k[i * kv_width + d]) << i;
            ASSERT_EQ(v_got[i * kv_width + d], v[i * kv_width + d]) << i;
          }
        }
      }
    }
  }
}

TEST_F(CpuBackendTest, PagedAttentionOverScatteredBlocks) {
  for (int block_size : {1, 16}) {
    for (int ratio : {1, 4, 8}) {
      for (int hd : {8, 96}) {
        SCOPED_TRACE(testing::Message()
                     << "block_size=" << block_size << " ratio=" << ratio << " hd=" << hd);
        const int kvh = 2, h = kvh * ratio, kv_width = kvh * hd;
        // Lengths ending mid-block (and on a boundary), batch of 4.
        const std::vector<int32_t> lens = {1, 17, 40, 129};
        const int batch = static_cast<int>(lens.size());
        int max_blocks = 0, total_blocks = 0;
        for (int len : lens) {
          const int blocks = (len + block_size - 1) / block_size;
          max_blocks = std::max(max_blocks, blocks);
          total_blocks += blocks;
        }
        max_blocks += 1;  // a padded column, as the decode batch has
        const int num_blocks = total_blocks + 3;
        std::vector<int32_t> pool(num_blocks);
        std::iota(pool.begin(), pool.end(), 0);
        std::shuffle(pool.begin(), pool.end(), rng_);
        std::vector<int32_t> tables(batch * max_blocks, 0);
        int next = 0;
        for (int b = 0; b < batch; ++b) {
          for (int i = 0; i < (lens[b] + block_size - 1) / block_size; ++i) {
            tables[b * max_blocks + i] = pool[next++];
          }
        }
        const std::vector<float> k_cache = Random(num_blocks * block_size * kv_width);
        const std::vector<float> v_cache = Random(num_blocks * block_size * kv_width);
        const std::vector<float> q = Random(batch * h * hd, 4.0f);
        auto kb = Upload(k_cache), vb = Upload(v_cache), qb = Upload(q);
        auto tb = UploadInts(tables), lb = UploadInts(lens);
        auto out = Poisoned(batch * h * hd);
        PagedAttentionParams params{
            batch, h, kvh, hd, block_size, max_blocks, 1.0f / std::sqrt(float(hd))};
        backend_->PagedAttention(*qb, *kb, *vb, *tb, *lb, params, *out);

        std::vector<double> expected;
        for (int b = 0; b < batch; ++b) {
          for (int head = 0; head < h; ++head) {
            const int g = head / ratio;
            std::vector<const float*> keys, values;
            for (int j = 0; j < lens[b]; ++j) {
              const int slot =
                  tables[b * max_blocks + j / block_size] * block_size + j % block_size;
              keys.push_back(&k_cache[slot * kv_width + g * hd]);
              values.push_back(&v_cache[slot * kv_width + g * hd]);
            }
            const std::vector<double> o =
                ReferenceAttention(&q[(b * h + head) * hd], keys, values, hd, params.scale);
            expected.insert(expected.end(), o.begin(), o.end());
          }
        }
        ExpectClose(Download(*out, batch * h * hd), expected, 1e-5);
      }
    }
  }
}

// Greedy decoding's pick, with hand-made rows: ties go to the earlier
// index, NaN never wins, an all-NaN row gives 0, -inf can still win.
TEST_F(CpuBackendTest, ArgmaxRows) {
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<std::vector<float>> rows = {
      {0.5f, 2.0f, -1.0f, 2.0f, 1.0f},     // tie: 1
      {kNaN, 3.0f, kNaN, 2.0f, 3.5f},      // NaN first: 4
      {kNaN, kNaN, kNaN, kNaN, kNaN},      // only NaN: 0
      {-inf, -inf, -inf, -inf, -inf},      // all equal: 0
      {-7.0f, -3.0f, -9.0f, -3.0f, -8.0f}  // negatives, tie: 1
  };
  const std::vector<int32_t> expected = {1, 4, 0, 0, 1};
  std::vector<float> flat;
  for (const std::vector<float>& row : rows) flat.insert(flat.end(), row.begin(), row.end());
  auto x = Upload(flat);
  auto out = UploadInts(std::vector<int32_t>(rows.size(), -1));
  backend_->ArgmaxRows(*x, static_cast<int>(rows.size()), 5, *out);
  std::vector<int32_t> got(rows.size(), -2);
  ASSERT_TRUE(backend_->CopyToHost(*out, 0, got.size(), got.data(), DType::kI32).ok());
  EXPECT_EQ(got, expected);
}

// Each row's k largest entries against a stable full sort written here:
// ties to the earlier index, NaN never chosen, -inf chosen like any value,
// (-inf, -1) padding past a row's non-NaN entries; k == cols too.
TEST_F(CpuBackendTest, TopKRows) {
  const float inf = std::numeric_limits<float>::infinity();
  const int cols = 40;
  std::vector<std::vector<float>> rows;
  for (int r = 0; r < 3; ++r) {
    std::vector<float> row = Random(cols, 4.0f);
    for (int j = r; j < cols; j += 7) row[j] = 1.5f;  // ties
    rows.push_back(row);
  }
  std::vector<float> sparse(cols, kNaN);  // 3 non-NaN entries, one -inf
  sparse[5] = 2.0f;
  sparse[17] = -inf;
  sparse[30] = 2.0f;
  rows.push_back(sparse);
  rows.push_back(std::vector<float>(cols, kNaN));
  std::vector<float> flat;
  for (const std::vector<float>& row : rows) flat.insert(flat.end(), row.begin(), row.end());
  auto x = Upload(flat);
  const int n = static_cast<int>(rows.size());
  for (int k : {1, 7, cols}) {
    auto values = Poisoned(static_cast<size_t>(n) * k);
    auto ids = UploadInts(std::vector<int32_t>(static_cast<size_t>(n) * k, -7));
    backend_->TopKRows(*x, n, cols, k, *values, *ids);
    const std::vector<float> got_values = Download(*values, static_cast<size_t>(n) * k);
    std::vector<int32_t> got_ids(static_cast<size_t>(n) * k);
    ASSERT_TRUE(backend_->CopyToHost(*ids, 0, got_ids.size(), got_ids.data(), DType::kI32).ok());
    for (int r = 0; r < n; ++r) {
      std::vector<int32_t> order;
      for (int j = 0; j < cols; ++j) {
        if (!std::isnan(rows[r][j])) order.push_back(j);
      }
      std::stable_sort(order.begin(), order.end(),
                       [&](int32_t a, int32_t b) { return rows[r][a] > rows[r][b]; });
      for (int i = 0; i < k; ++i) {
        const size_t at = static_cast<size_t>(r) * k + i;
        if (i < static_cast<int>(order.size())) {
          EXPECT_EQ(got_ids[at], order[i]) << "k " << k << " row " << r << " rank " << i;
          EXPECT_EQ(got_values[at], rows[r][order[i]]);
        } else {
          EXPECT_EQ(got_ids[at], -1) << "k " << k << " row " << r << " rank " << i;
          EXPECT_EQ(got_values[at], -inf);
        }
      }
    }
  }
}

TEST_F(CpuBackendTest, CopyElements) {
  const std::vector<float> src = Random(40);
  auto sb = Upload(src);
  auto db = Poisoned(30);
  backend_->CopyElements(*sb, 7, *db, 3, 20);
  const std::vector<float> got = Download(*db, 30);
  for (int i = 0; i < 30; ++i) {
    if (i >= 3 && i < 23) {
      EXPECT_EQ(got[i], src[i + 4]) << i;
    } else {
      EXPECT_TRUE(std::isnan(got[i])) << i;
    }
  }
}

// bfloat16 weights (CpuBackendOptions::weight_dtype). The reference rounds
// the weight to bfloat16 with a rounding written here (nearest even) and
// keeps x in float32; the backend may round x to bfloat16 too, which moves
// each product by at most 2^-9 of its size, so results must be within
// 2^-8 · Σ|x·w| of the reference.
class CpuBackendBf16Test : public CpuBackendTest {
 protected:
  CpuBackendBf16Test() { backend_ = CreateCpuBackend({.weight_dtype = DType::kBF16}); }

  static float RoundToBf16(float f) {
    uint32_t bits;
    std::memcpy(&bits, &f, 4);
    bits = (bits + 0x7fffu + ((bits >> 16) & 1u)) & 0xffff0000u;
    float rounded;
    std::memcpy(&rounded, &bits, 4);
    return rounded;
  }
  static std::vector<double> Rounded(const std::vector<float>& values) {
    std::vector<double> out(values.size());
    for (size_t i = 0; i < values.size(); ++i) out[i] = RoundToBf16(values[i]);
    return out;
  }
  BufferPtr UploadMatrix(const std::vector<float>& values, int64_t rows, int64_t cols) {
    HostTensor view{"w", DType::kF32, {rows, cols}, values.data(), values.size() * 4};
    auto weight = backend_->UploadWeight(std::span<const HostTensor>(&view, 1));
    EXPECT_TRUE(weight.ok()) << weight.status();
    return std::move(*weight);
  }
};

TEST_F(CpuBackendBf16Test, UploadWeightStoresMatricesAsBf16AndVectorsAsF32) {
  const std::vector<float> a = Random(3 * 5), norm = Random(5);
  auto matrix = UploadMatrix(a, 3, 5);
  EXPECT_EQ(matrix->dtype(), DType::kBF16);
  ExpectClose(Download(*matrix, a.size()), Rounded(a), 0.0);

  HostTensor norm_view{"norm", DType::kF32, {5}, norm.data(), norm.size() * 4};
  auto vector = backend_->UploadWeight(std::span<const HostTensor>(&norm_view, 1));
  ASSERT_TRUE(vector.ok()) << vector.status();
  EXPECT_EQ((*vector)->dtype(), DType::kF32);
  EXPECT_EQ((*vector)->data(), static_cast<const void*>(norm.data()));  // used in place

  // One bf16 block is used in place; blocks of mixed dtypes are concatenated.
  std::vector<uint16_t> c(4 * 5);
  std::vector<double> c_values(c.size());
  for (size_t i = 0; i < c.size(); ++i) {
    c[i] = static_cast<uint16_t>(0xbf80 + 3 * i);  // -1.0 and down in bf16 steps
    const uint32_t bits = static_cast<uint32_t>(c[i]) << 16;
    float f;
    std::memcpy(&f, &bits, 4);
    c_values[i] = f;
  }
  HostTensor tc{"c", DType::kBF16, {4, 5}, c.data(), c.size() * 2};
  auto single = backend_->UploadWeight(std::span<const HostTensor>(&tc, 1));
  ASSERT_TRUE(single.ok()) << single.status();
  EXPECT_EQ((*single)->data(), static_cast<const void*>(c.data()));
  EXPECT_EQ((*single)->dtype(), DType::kBF16);
  HostTensor ta{"a", DType::kF32, {3, 5}, a.data(), a.size() * 4};
  const std::vector<HostTensor> blocks = {ta, tc};
  auto fused = backend_->UploadWeight(blocks);
  ASSERT_TRUE(fused.ok()) << fused.status();
  EXPECT_EQ((*fused)->dtype(), DType::kBF16);
  std::vector<double> expected = Rounded(a);
  expected.insert(expected.end(), c_values.begin(), c_values.end());
  ExpectClose(Download(**fused, expected.size()), expected, 0.0);
}

// k a multiple of 32 takes the AMX kernel where the CPU has it (n = 40 and
// 257: its last rows go to the AVX-512 one); other k: m up to 128 takes
// the AVX-512 BF16 kernel, 129 and 200 widen the weight for OpenBLAS.
TEST_F(CpuBackendBf16Test, MatMul) {
  for (int m : {1, 2, 7, 17, 129, 200}) {
    for (auto [n, k] :
         {std::pair{1, 1}, {5, 7}, {64, 129}, {257, 33}, {40, 64}, {257, 96}, {64, 32}}) {
      for (bool accumulate : {false, true}) {
        SCOPED_TRACE(testing::Message()
                     << "m=" << m << " n=" << n << " k=" << k << " accumulate=" << accumulate);
        const std::vector<float> x = Random(m * k), w = Random(n * k), base = Random(m * n);
        const std::vector<double> w_rounded = Rounded(w);
        auto xb = Upload(x);
        auto wb = UploadMatrix(w, n, k);
        auto out = accumulate ? Upload(base) : Poisoned(m * n);
        backend_->MatMul(*xb, *wb, m, n, k, *out, accumulate);
        const std::vector<float> got = Download(*out, m * n);
        for (int i = 0; i < m; ++i) {
          for (int j = 0; j < n; ++j) {
            double sum = accumulate ? base[i * n + j] : 0.0, magnitude = 0.0;
            for (int l = 0; l < k; ++l) {
              const double product = x[i * k + l] * w_rounded[j * k + l];
              sum += product;
              magnitude += std::fabs(product);
            }
            ASSERT_LE(std::fabs(got[i * n + j] - sum), std::ldexp(magnitude, -8) + 1e-6)
                << "row " << i << " column " << j << ": got " << got[i * n + j] << ", want " << sum;
          }
        }
      }
    }
  }
}

TEST_F(CpuBackendBf16Test, Embedding) {
  const int vocab = 37, hidden = 17;
  const std::vector<float> table = Random(vocab * hidden);
  auto weight = UploadMatrix(table, vocab, hidden);
  const std::vector<double> rounded = Rounded(table);
  const std::vector<int32_t> ids = {5, 0, 36, 5};
  auto id_buffer = UploadInts(ids);
  auto out = Poisoned(ids.size() * hidden);
  backend_->Embedding(*weight, *id_buffer, ids.size(), hidden, *out);
  std::vector<double> expected;
  for (int id : ids) {
    expected.insert(expected.end(), &rounded[id * hidden], &rounded[(id + 1) * hidden]);
  }
  ExpectClose(Download(*out, ids.size() * hidden), expected, 0.0);
}

}  // namespace
}  // namespace pdserve
