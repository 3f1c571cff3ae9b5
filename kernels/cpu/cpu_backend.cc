// CpuBackend: host memory buffers, shape and dtype checks, and dispatch to
// the kernels in cpu_kernels.h on the backend's thread pool. Ops run
// synchronously, so Synchronize() has nothing to wait for.
#include "kernels/cpu/cpu_backend.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_kernels.h"
#include "kernels/cpu/cpu_thread_pool.h"
#include "shared/buffer_range.h"
#include "shared/weight_row_blocks.h"

namespace pdserve {
namespace {

// Backend ops have no error channel: a bad argument is a bug in the caller
// (backend.h), so it aborts with the failed condition.
#define PDSERVE_CPU_CHECK(condition, what)                                                  \
  do {                                                                                      \
    if (!(condition)) {                                                                     \
      std::fprintf(stderr, "%s:%d: CpuBackend check failed: %s (%s)\n", __FILE__, __LINE__, \
                   #condition, what);                                                       \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)

constexpr std::align_val_t kAlignment{64};  // a cache line, and AVX-512 loads

// A buffer this backend owns.
class CpuBuffer final : public DeviceBuffer {
 public:
  CpuBuffer(size_t num_elements, DType dtype, void* data)
      : DeviceBuffer(num_elements, dtype), data_(data) {}
  ~CpuBuffer() override { ::operator delete(data_, kAlignment); }
  void* data() override { return data_; }
  const void* data() const override { return data_; }

 private:
  void* data_;
};

// A weight already in the stored dtype, used in place inside memory the
// caller keeps alive (e.g. a memory-mapped safetensors file). Ops never write
// through a weight.
class CpuWeightView final : public DeviceBuffer {
 public:
  CpuWeightView(size_t num_elements, DType dtype, const void* data)
      : DeviceBuffer(num_elements, dtype), data_(data) {}
  void* data() override { return const_cast<void*>(data_); }
  const void* data() const override { return data_; }

 private:
  const void* data_;
};

bool IsFloat(DType dtype) { return dtype != DType::kI32; }

// Typed element pointers, checking dtype and that the buffer holds at least
// `min_elements`.
const float* F32(const DeviceBuffer& buffer, size_t min_elements, const char* what) {
  PDSERVE_CPU_CHECK(buffer.dtype() == DType::kF32, what);
  PDSERVE_CPU_CHECK(buffer.num_elements() >= min_elements, what);
  return static_cast<const float*>(buffer.data());
}
float* F32(DeviceBuffer& buffer, size_t min_elements, const char* what) {
  return const_cast<float*>(F32(static_cast<const DeviceBuffer&>(buffer), min_elements, what));
}
const int32_t* I32(const DeviceBuffer& buffer, size_t min_elements, const char* what) {
  PDSERVE_CPU_CHECK(buffer.dtype() == DType::kI32, what);
  PDSERVE_CPU_CHECK(buffer.num_elements() >= min_elements, what);
  return static_cast<const int32_t*>(buffer.data());
}

int32_t* I32Out(DeviceBuffer& buffer, size_t min_elements, const char* what) {
  return const_cast<int32_t*>(I32(static_cast<const DeviceBuffer&>(buffer), min_elements, what));
}

size_t Product(int a, int b) { return static_cast<size_t>(a) * static_cast<size_t>(b); }

// Converts n elements between two float dtypes, or copies I32 to I32.
absl::Status ConvertElements(const void* src, DType src_dtype, size_t n, void* dst,
                             DType dst_dtype) {
  if (src_dtype == dst_dtype) {
    std::memcpy(dst, src, n * DTypeSize(src_dtype));
    return absl::OkStatus();
  }
  if (!IsFloat(src_dtype) || !IsFloat(dst_dtype)) {
    return absl::InvalidArgumentError(absl::StrCat("copy: cannot convert ",
                                                   std::string(DTypeName(src_dtype)), " to ",
                                                   std::string(DTypeName(dst_dtype))));
  }
  if (dst_dtype == DType::kF32) {
    ConvertToFloat(src, src_dtype, n, static_cast<float*>(dst));
  } else if (src_dtype == DType::kF32) {
    ConvertFromFloat(static_cast<const float*>(src), n, dst_dtype, dst);
  } else {
    std::vector<float> staging(n);
    ConvertToFloat(src, src_dtype, n, staging.data());
    ConvertFromFloat(staging.data(), n, dst_dtype, dst);
  }
  return absl::OkStatus();
}

// A weight matrix's elements as MatMul and Embedding take them.
bool IsWeightDtype(DType dtype) { return dtype == DType::kF32 || dtype == DType::kBF16; }

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuBackendOptions& options)
      : weight_dtype_(options.weight_dtype == DType::kBF16 ? DType::kBF16 : DType::kF32),
        pool_(options.num_threads > 0
                  ? options.num_threads
                  : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()))) {}

  std::string_view name() const override { return "cpu"; }
  // Buffers are host arrays and CopyToDevice is a plain conversion loop.
  bool host_memory_buffers() const override { return true; }
  DType activation_dtype() const override { return DType::kF32; }
  DType kv_dtype() const override { return DType::kF32; }

  absl::StatusOr<BufferPtr> Allocate(size_t num_elements, DType dtype) override {
    const size_t element_size = DTypeSize(dtype);
    if (num_elements > std::numeric_limits<size_t>::max() / element_size) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cpu Allocate: ", num_elements, " elements of ",
                       std::string(DTypeName(dtype)), " overflow the address space"));
    }
    const size_t bytes = std::max<size_t>(num_elements * element_size, 1);
    void* data = ::operator new(bytes, kAlignment, std::nothrow);
    if (data == nullptr) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cpu Allocate: out of host memory for ", bytes, " bytes"));
    }
    return std::make_unique<CpuBuffer>(num_elements, dtype, data);
  }

  absl::StatusOr<BufferPtr> UploadWeight(std::span<const HostTensor> row_blocks) override {
    absl::StatusOr<size_t> total = CheckWeightRowBlocks(row_blocks, /*require_data=*/true);
    if (!total.ok()) return total.status();
    // Vectors (norm weights) are read by float32 loops; matrices by MatMul
    // and Embedding, which take weight_dtype_.
    const DType stored = row_blocks[0].shape.size() == 2 ? weight_dtype_ : DType::kF32;
    if (row_blocks.size() == 1 && row_blocks[0].dtype == stored) {
      return std::make_unique<CpuWeightView>(*total, stored, row_blocks[0].data);
    }
    auto buffer = Allocate(*total, stored);
    if (!buffer.ok()) return buffer.status();
    char* dst = static_cast<char*>((*buffer)->data());
    for (const HostTensor& block : row_blocks) {
      const size_t elements = static_cast<size_t>(block.num_elements());
      absl::Status converted = ConvertElements(block.data, block.dtype, elements, dst, stored);
      if (!converted.ok()) return converted;
      dst += elements * DTypeSize(stored);
    }
    return buffer;
  }

  absl::Status CopyToDevice(const void* src, DType src_dtype, size_t n, DeviceBuffer& dst,
                            size_t dst_offset) override {
    if (absl::Status range = CheckBufferRange(dst, dst_offset, n, "CopyToDevice dst");
        !range.ok()) {
      return range;
    }
    if (n == 0) return absl::OkStatus();
    char* base = static_cast<char*>(dst.data()) + dst_offset * DTypeSize(dst.dtype());
    return ConvertElements(src, src_dtype, n, base, dst.dtype());
  }

  absl::Status CopyToHost(const DeviceBuffer& src, size_t src_offset, size_t n, void* dst,
                          DType dst_dtype) override {
    if (absl::Status range = CheckBufferRange(src, src_offset, n, "CopyToHost src"); !range.ok()) {
      return range;
    }
    if (n == 0) return absl::OkStatus();
    const char* base = static_cast<const char*>(src.data()) + src_offset * DTypeSize(src.dtype());
    return ConvertElements(base, src.dtype(), n, dst, dst_dtype);
  }

  absl::Status Synchronize() override { return absl::OkStatus(); }

  void Embedding(const DeviceBuffer& table, const DeviceBuffer& ids, int n, int hidden,
                 DeviceBuffer& out) override {
    PDSERVE_CPU_CHECK(n >= 0 && hidden > 0, "Embedding sizes");
    PDSERVE_CPU_CHECK(IsWeightDtype(table.dtype()), "Embedding table dtype (UploadWeight)");
    PDSERVE_CPU_CHECK(table.num_elements() % hidden == 0, "Embedding table [vocab, hidden]");
    const int64_t vocab = static_cast<int64_t>(table.num_elements() / hidden);
    const int32_t* id_data = I32(ids, n, "Embedding ids [n]");
    for (int i = 0; i < n; ++i) {
      PDSERVE_CPU_CHECK(id_data[i] >= 0 && id_data[i] < vocab, "Embedding id out of vocabulary");
    }
    cpu::Embedding(table.data(), table.dtype(), id_data, n, hidden,
                   F32(out, Product(n, hidden), "Embedding out"));
  }

  void MatMul(const DeviceBuffer& x, const DeviceBuffer& w, int m, int n, int k, DeviceBuffer& out,
              bool accumulate) override {
    PDSERVE_CPU_CHECK(m >= 0 && n > 0 && k > 0, "MatMul sizes");
    PDSERVE_CPU_CHECK(&x != &out, "MatMul out must not alias x");
    if (m == 0) return;
    const float* x_data = F32(x, Product(m, k), "MatMul x [m, k]");
    float* out_data = F32(out, Product(m, n), "MatMul out [m, n]");
    PDSERVE_CPU_CHECK(w.num_elements() >= Product(n, k), "MatMul w [n, k]");
    if (w.dtype() == DType::kBF16) {
      cpu::MatMulBf16(pool_, x_data, static_cast<const uint16_t*>(w.data()), m, n, k, out_data,
                      accumulate);
    } else {
      cpu::MatMul(pool_, x_data, F32(w, Product(n, k), "MatMul w [n, k]"), m, n, k, out_data,
                  accumulate);
    }
  }

  void RmsNorm(const DeviceBuffer& x, const DeviceBuffer& weight, int m, int d, float eps,
               DeviceBuffer& out) override {
    PDSERVE_CPU_CHECK(m >= 0 && d > 0, "RmsNorm sizes");
    cpu::RmsNorm(F32(x, Product(m, d), "RmsNorm x [m, d]"), F32(weight, d, "RmsNorm weight [d]"), m,
                 d, eps, F32(out, Product(m, d), "RmsNorm out [m, d]"));
  }

  void SplitQkv(const DeviceBuffer& qkv, int n, int num_heads, int num_kv_heads, int head_dim,
                DeviceBuffer& q, DeviceBuffer& k, DeviceBuffer& v) override {
    PDSERVE_CPU_CHECK(n >= 0 && num_heads > 0 && num_kv_heads > 0 && head_dim > 0,
                      "SplitQkv sizes");
    const size_t q_elements = Product(n, num_heads * head_dim);
    const size_t kv_elements = Product(n, num_kv_heads * head_dim);
    cpu::SplitQkv(F32(qkv, q_elements + 2 * kv_elements, "SplitQkv qkv"), n, num_heads,
                  num_kv_heads, head_dim, F32(q, q_elements, "SplitQkv q"),
                  F32(k, kv_elements, "SplitQkv k"), F32(v, kv_elements, "SplitQkv v"));
  }

  void Rope(DeviceBuffer& q, DeviceBuffer& k, const DeviceBuffer& positions, int n, int num_heads,
            int num_kv_heads, int head_dim, float theta) override {
    PDSERVE_CPU_CHECK(n >= 0 && num_heads > 0 && num_kv_heads > 0, "Rope sizes");
    PDSERVE_CPU_CHECK(head_dim > 0 && head_dim % 2 == 0, "Rope head_dim must be even");
    const int32_t* position_data = I32(positions, n, "Rope positions [n]");
    for (int i = 0; i < n; ++i) PDSERVE_CPU_CHECK(position_data[i] >= 0, "Rope position < 0");
    cpu::Rope(F32(q, Product(n, num_heads * head_dim), "Rope q"),
              F32(k, Product(n, num_kv_heads * head_dim), "Rope k"), position_data, n, num_heads,
              num_kv_heads, head_dim, theta);
  }

  void SiluMul(const DeviceBuffer& gate_up, int m, int f, DeviceBuffer& out) override {
    PDSERVE_CPU_CHECK(m >= 0 && f > 0, "SiluMul sizes");
    cpu::SiluMul(F32(gate_up, Product(m, 2 * f), "SiluMul gate_up [m, 2f]"), m, f,
                 F32(out, Product(m, f), "SiluMul out [m, f]"));
  }

  void PrefillAttention(const DeviceBuffer& q, const DeviceBuffer& k, const DeviceBuffer& v,
                        const PrefillAttentionParams& p, DeviceBuffer& out) override {
    PDSERVE_CPU_CHECK(p.num_queries >= 0 && p.num_queries <= p.num_keys,
                      "PrefillAttention needs 0 <= num_queries <= num_keys");
    PDSERVE_CPU_CHECK(p.num_heads > 0 && p.num_kv_heads > 0 && p.head_dim > 0,
                      "PrefillAttention sizes");
    PDSERVE_CPU_CHECK(p.num_heads % p.num_kv_heads == 0,
                      "PrefillAttention num_heads % num_kv_heads");
    if (p.num_queries == 0) return;
    const size_t q_elements = Product(p.num_queries, p.num_heads * p.head_dim);
    const size_t kv_elements = Product(p.num_keys, p.num_kv_heads * p.head_dim);
    cpu::PrefillAttention(F32(q, q_elements, "PrefillAttention q [n, h, hd]"),
                          F32(k, kv_elements, "PrefillAttention k [t, kvh, hd]"),
                          F32(v, kv_elements, "PrefillAttention v [t, kvh, hd]"), p,
                          F32(out, q_elements, "PrefillAttention out [n, h, hd]"));
  }

  void KvScatter(const DeviceBuffer& k, const DeviceBuffer& v, const DeviceBuffer& slot_mapping,
                 int n, int kv_width, DeviceBuffer& k_cache, DeviceBuffer& v_cache) override {
    PDSERVE_CPU_CHECK(n >= 0 && kv_width > 0, "KvScatter sizes");
    PDSERVE_CPU_CHECK(IsFloat(k.dtype()) && k.num_elements() >= Product(n, kv_width),
                      "KvScatter k");
    PDSERVE_CPU_CHECK(IsFloat(v.dtype()) && v.num_elements() >= Product(n, kv_width),
                      "KvScatter v");
    const int32_t* slots = I32(slot_mapping, n, "KvScatter slot_mapping [n]");
    float* k_dst = F32(k_cache, 0, "KvScatter k_cache");
    float* v_dst = F32(v_cache, 0, "KvScatter v_cache");
    PDSERVE_CPU_CHECK(k_cache.num_elements() == v_cache.num_elements(), "KvScatter cache sizes");
    const int64_t num_slots = static_cast<int64_t>(k_cache.num_elements() / kv_width);
    const size_t k_row_bytes = kv_width * DTypeSize(k.dtype());
    const size_t v_row_bytes = kv_width * DTypeSize(v.dtype());
    for (int i = 0; i < n; ++i) {
      if (slots[i] == -1) continue;  // padding
      PDSERVE_CPU_CHECK(slots[i] >= 0 && slots[i] < num_slots, "KvScatter slot out of the cache");
      const size_t dst = static_cast<size_t>(slots[i]) * kv_width;
      ConvertToFloat(static_cast<const char*>(k.data()) + i * k_row_bytes, k.dtype(), kv_width,
                     k_dst + dst);
      ConvertToFloat(static_cast<const char*>(v.data()) + i * v_row_bytes, v.dtype(), kv_width,
                     v_dst + dst);
    }
  }

  void KvGather(const DeviceBuffer& k_cache, const DeviceBuffer& v_cache,
                const DeviceBuffer& slot_mapping, int n, int kv_width, DeviceBuffer& k,
                DeviceBuffer& v) override {
    PDSERVE_CPU_CHECK(n >= 0 && kv_width > 0, "KvGather sizes");
    const float* k_src = F32(k_cache, 0, "KvGather k_cache");
    const float* v_src = F32(v_cache, 0, "KvGather v_cache");
    PDSERVE_CPU_CHECK(k_cache.num_elements() == v_cache.num_elements(), "KvGather cache sizes");
    PDSERVE_CPU_CHECK(IsFloat(k.dtype()) && k.num_elements() >= Product(n, kv_width), "KvGather k");
    PDSERVE_CPU_CHECK(IsFloat(v.dtype()) && v.num_elements() >= Product(n, kv_width), "KvGather v");
    const int32_t* slots = I32(slot_mapping, n, "KvGather slot_mapping [n]");
    const int64_t num_slots = static_cast<int64_t>(k_cache.num_elements() / kv_width);
    const size_t k_row_bytes = kv_width * DTypeSize(k.dtype());
    const size_t v_row_bytes = kv_width * DTypeSize(v.dtype());
    for (int i = 0; i < n; ++i) {
      if (slots[i] == -1) continue;  // as in KvScatter: the row is left as it is
      PDSERVE_CPU_CHECK(slots[i] >= 0 && slots[i] < num_slots, "KvGather slot out of the cache");
      const size_t src = static_cast<size_t>(slots[i]) * kv_width;
      ConvertFromFloat(k_src + src, kv_width, k.dtype(),
                       static_cast<char*>(k.data()) + i * k_row_bytes);
      ConvertFromFloat(v_src + src, kv_width, v.dtype(),
                       static_cast<char*>(v.data()) + i * v_row_bytes);
    }
  }

  void PagedAttention(const DeviceBuffer& q, const DeviceBuffer& k_cache,
                      const DeviceBuffer& v_cache, const DeviceBuffer& block_tables,
                      const DeviceBuffer& context_lens, const PagedAttentionParams& p,
                      DeviceBuffer& out) override {
    PDSERVE_CPU_CHECK(p.batch_size >= 0 && p.num_heads > 0 && p.num_kv_heads > 0 &&
                          p.head_dim > 0 && p.block_size > 0 && p.max_blocks_per_seq > 0,
                      "PagedAttention sizes");
    PDSERVE_CPU_CHECK(p.num_heads % p.num_kv_heads == 0, "PagedAttention num_heads % num_kv_heads");
    if (p.batch_size == 0) return;
    const size_t kv_width = Product(p.num_kv_heads, p.head_dim);
    const float* k_data = F32(k_cache, 0, "PagedAttention k_cache");
    const float* v_data = F32(v_cache, 0, "PagedAttention v_cache");
    PDSERVE_CPU_CHECK(k_cache.num_elements() == v_cache.num_elements() &&
                          k_cache.num_elements() % (kv_width * p.block_size) == 0,
                      "PagedAttention cache [num_blocks * block_size, kvh * hd]");
    const int64_t num_blocks =
        static_cast<int64_t>(k_cache.num_elements() / kv_width / p.block_size);
    const int32_t* tables = I32(block_tables, Product(p.batch_size, p.max_blocks_per_seq),
                                "PagedAttention block_tables");
    const int32_t* lens = I32(context_lens, p.batch_size, "PagedAttention context_lens [b]");
    for (int b = 0; b < p.batch_size; ++b) {
      PDSERVE_CPU_CHECK(lens[b] >= 1 && lens[b] <= p.max_blocks_per_seq * p.block_size,
                        "PagedAttention context_len outside [1, max_blocks_per_seq * block_size]");
      const int used_blocks = (lens[b] + p.block_size - 1) / p.block_size;
      for (int i = 0; i < used_blocks; ++i) {
        const int32_t block = tables[Product(b, p.max_blocks_per_seq) + i];
        PDSERVE_CPU_CHECK(block >= 0 && block < num_blocks,
                          "PagedAttention block out of the cache");
      }
    }
    const size_t q_elements = Product(p.batch_size, p.num_heads * p.head_dim);
    cpu::PagedAttention(pool_, F32(q, q_elements, "PagedAttention q [b, h, hd]"), k_data, v_data,
                        tables, lens, p, F32(out, q_elements, "PagedAttention out [b, h, hd]"));
  }

  void ArgmaxRows(const DeviceBuffer& x, int rows, int cols, DeviceBuffer& out) override {
    PDSERVE_CPU_CHECK(rows >= 0 && cols > 0, "ArgmaxRows rows >= 0, cols > 0");
    cpu::ArgmaxRows(F32(x, Product(rows, cols), "ArgmaxRows x [rows, cols]"), rows, cols,
                    I32Out(out, rows, "ArgmaxRows out [rows]"));
  }

  void TopKRows(const DeviceBuffer& x, int rows, int cols, int k, DeviceBuffer& values,
                DeviceBuffer& ids) override {
    PDSERVE_CPU_CHECK(rows >= 0 && cols > 0 && k >= 1 && k <= std::min(cols, kMaxTopKRows),
                      "TopKRows sizes: rows >= 0, 1 <= k <= min(cols, kMaxTopKRows)");
    cpu::TopKRows(F32(x, Product(rows, cols), "TopKRows x [rows, cols]"), rows, cols, k,
                  F32(values, Product(rows, k), "TopKRows values [rows, k]"),
                  I32Out(ids, Product(rows, k), "TopKRows ids [rows, k]"));
  }

  void CopyElements(const DeviceBuffer& src, size_t src_offset, DeviceBuffer& dst,
                    size_t dst_offset, size_t n) override {
    PDSERVE_CPU_CHECK(src.dtype() == dst.dtype(), "CopyElements dtypes differ");
    PDSERVE_CPU_CHECK(CheckBufferRange(src, src_offset, n, "src").ok(), "CopyElements src range");
    PDSERVE_CPU_CHECK(CheckBufferRange(dst, dst_offset, n, "dst").ok(), "CopyElements dst range");
    const size_t size = DTypeSize(src.dtype());
    std::memmove(static_cast<char*>(dst.data()) + dst_offset * size,
                 static_cast<const char*>(src.data()) + src_offset * size, n * size);
  }

 private:
  const DType weight_dtype_;
  cpu::ThreadPool pool_;
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend(const CpuBackendOptions& options) {
  return std::make_unique<CpuBackend>(options);
}

}  // namespace pdserve
