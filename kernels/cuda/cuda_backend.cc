// CudaBackend: device buffers, argument checks, and dispatch to cuBLAS and
// to the kernels of this directory (each behind one Invoke<Name> function).
#include "kernels/cuda/cuda_backend.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <optional>
#include <source_location>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/cuda/argmax.h"
#include "kernels/cuda/causal_attention.h"
#include "kernels/cuda/convert.h"
#include "kernels/cuda/device_memory_pool.h"
#include "kernels/cuda/element_type.h"
#include "kernels/cuda/embedding.h"
#include "kernels/cuda/kv_gather.h"
#include "kernels/cuda/kv_scatter.h"
#include "kernels/cuda/paged_decode_attention.h"
#include "kernels/cuda/random_fill.h"
#include "kernels/cuda/rms_norm.h"
#include "kernels/cuda/rope.h"
#include "kernels/cuda/silu_mul.h"
#include "kernels/cuda/split_qkv.h"
#include "kernels/cuda/top_k_rows.h"
#include "shared/buffer_range.h"
#include "shared/weight_row_blocks.h"

namespace pdserve {
namespace {

// Backend ops have no error channel: a bad argument is a bug in the caller
// (backend.h), so it aborts naming the op and the condition.
[[noreturn]] void Die(const char* file, int line, const char* condition, const char* what) {
  std::fprintf(stderr, "%s:%d: CudaBackend check failed: %s (%s)\n", file, line, condition, what);
  std::abort();
}

#define PDSERVE_CUDA_CHECK(condition, what)                      \
  do {                                                           \
    if (!(condition)) Die(__FILE__, __LINE__, #condition, what); \
  } while (0)

bool IsFloat(DType dtype) { return dtype != DType::kI32; }

gpu::ElementType ToElementType(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return gpu::ElementType::kF32;
    case DType::kBF16:
      return gpu::ElementType::kBF16;
    case DType::kF16:
      return gpu::ElementType::kF16;
    case DType::kI32:
      break;
  }
  Die(__FILE__, __LINE__, "IsFloat(dtype)", "a float tensor was expected, got I32");
}

// Debian's Abseil has its own absl::string_view, which StrCat takes and
// std::string_view does not convert to.
std::string Name(DType dtype) { return std::string(DTypeName(dtype)); }

size_t Product(int a, int b) { return static_cast<size_t>(a) * static_cast<size_t>(b); }

const char* CublasStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS:
      return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED:
      return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED:
      return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE:
      return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH:
      return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_EXECUTION_FAILED:
      return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED:
      return "CUBLAS_STATUS_NOT_SUPPORTED";
    default:
      return "cublasStatus_t (other)";
  }
}

// A block of the backend's memory pool, returned to it when the buffer is
// destroyed. The buffer shares ownership of the pool, so buffers may outlive
// the backend that made them.
class CudaBuffer final : public DeviceBuffer {
 public:
  CudaBuffer(size_t num_elements, DType dtype, std::shared_ptr<gpu::DeviceMemoryPool> pool,
             void* data, size_t capacity)
      : DeviceBuffer(num_elements, dtype),
        pool_(std::move(pool)),
        data_(data),
        capacity_(capacity) {}
  ~CudaBuffer() override { pool_->Free(data_, capacity_); }
  void* data() override { return data_; }
  const void* data() const override { return data_; }

 private:
  std::shared_ptr<gpu::DeviceMemoryPool> pool_;
  void* data_;
  size_t capacity_;
};

// Page-locked host memory leased from the backend's pinned pool
// (AllocateHostBlock). Like CudaBuffer it shares ownership of its pool, so
// it may outlive the backend and die on any thread.
class PinnedHostBlock final : public HostBlock {
 public:
  PinnedHostBlock(std::shared_ptr<gpu::DeviceMemoryPool> pool, void* data, size_t bytes,
                  size_t capacity)
      : HostBlock(static_cast<char*>(data), bytes), pool_(std::move(pool)), capacity_(capacity) {}
  ~PinnedHostBlock() override { pool_->Free(data(), capacity_); }

 private:
  std::shared_ptr<gpu::DeviceMemoryPool> pool_;
  size_t capacity_;
};

std::string CudaErrorText(const char* what, cudaError_t status) {
  return absl::StrCat("cuda ", what, ": ", cudaGetErrorName(status), ": ",
                      cudaGetErrorString(status));
}

// One CopyToHostAsync: the device staging block the copy stream reads and
// the event recorded on the copy stream after the device-to-host copy.
//
// The staging block goes back to the device pool only after `done_` has
// completed: the pool's reuse is safe in the compute stream's order only,
// and the copy stream reads the block outside that order. The copy holds no
// pointer to the backend (the pool is shared, events belong to the
// context), so nothing dangles if it ends after the backend.
class CudaHostCopy final : public HostCopy {
 public:
  // A copy with nothing to do (n == 0): already ended.
  CudaHostCopy() = default;
  // Takes ownership of `staging` (capacity from the pool) and `done`.
  CudaHostCopy(std::shared_ptr<gpu::DeviceMemoryPool> pool, void* staging, size_t capacity,
               cudaEvent_t done)
      : pool_(std::move(pool)), staging_(staging), capacity_(capacity), done_(done) {}
  ~CudaHostCopy() override {
    Wait().IgnoreError();  // the DMA engine must be done with the destination
    if (done_ != nullptr) cudaEventDestroy(done_);
  }

  bool Ready() override {
    if (result_.has_value() || done_ == nullptr) return true;
    const cudaError_t status = cudaEventQuery(done_);
    if (status == cudaErrorNotReady) {
      // "Not ready" is an answer, not a failure: clear it so that the next
      // launch's cudaGetLastError() on this thread does not report it.
      cudaGetLastError();
      return false;
    }
    return true;  // ended, or failed (Wait says how)
  }

  absl::Status Wait() override {
    if (result_.has_value()) return *result_;
    if (done_ == nullptr) {
      result_ = absl::OkStatus();
      return *result_;
    }
    const cudaError_t status = cudaEventSynchronize(done_);
    // On failure the context holds a sticky error and runs no more work, so
    // nothing reads the staging block any longer either.
    result_ = status == cudaSuccess ? absl::OkStatus()
                                    : absl::InternalError(CudaErrorText("CopyToHostAsync", status));
    pool_->Free(staging_, capacity_);
    staging_ = nullptr;
    return *result_;
  }

 private:
  std::shared_ptr<gpu::DeviceMemoryPool> pool_;
  void* staging_ = nullptr;
  size_t capacity_ = 0;
  cudaEvent_t done_ = nullptr;
  std::optional<absl::Status> result_;  // set by the first Wait()
};

// Device scratch that grows on demand and is freed with its owner.
class DeviceScratch {
 public:
  DeviceScratch() = default;
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  ~DeviceScratch() {
    if (data_ != nullptr) cudaFree(data_);
  }

  // At least `bytes` of scratch. Work queued on `stream` may still read the
  // old allocation, so the stream is drained before it is replaced.
  cudaError_t Reserve(size_t bytes, cudaStream_t stream, void** out) {
    if (bytes > bytes_) {
      if (data_ != nullptr) {
        const cudaError_t drained = cudaStreamSynchronize(stream);
        if (drained != cudaSuccess) return drained;
        cudaFree(data_);
        data_ = nullptr;
        bytes_ = 0;
      }
      const cudaError_t allocated = cudaMalloc(&data_, bytes);
      if (allocated != cudaSuccess) {
        data_ = nullptr;
        return allocated;
      }
      bytes_ = bytes;
    }
    *out = data_;
    return cudaSuccess;
  }

 private:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// The CUDA backend.
//
// Storage formats:
//  * weights: bfloat16, whatever the checkpoint's dtype (F32 and F16
//    checkpoints are converted at upload, on the device). bf16 halves the
//    bytes that memory-bound decode GEMVs must stream, relative to float32,
//    and is what cuBLAS's bf16 tensor-core GEMMs read.
//  * activations: float32. The residual stream, RMSNorm, RoPE and softmax
//    stay at the CPU reference's precision, so the parity tests measure
//    kernel error rather than storage rounding, and `accumulate` adds the
//    o_proj/down_proj output to the residual in float32 inside the GEMM
//    epilogue. The price is one conversion pass (x -> bf16) before each GEMM,
//    which is small next to the weight bytes at decode and to the GEMM
//    arithmetic at prefill.
//  * KV cache: bfloat16 (kv_dtype), half the bytes of float32 for the decode
//    attention that streams it every step and for the prefill->decode
//    transfer.
//
// Linear layers: cublasGemmEx, bf16 x bf16 with float32 accumulation
// (CUBLAS_COMPUTE_32F), float32 (or bf16) output.
//
// Memory: plain device memory from cudaMalloc (never managed memory), cached
// for reuse by DeviceMemoryPool. All work runs in order on one stream; a
// device failure is kept (sticky) and returned by the next Synchronize.
//
// Copies to the host that overlap compute (CopyToHostAsync, the prefill's
// per-layer KV): a second stream, created non-blocking so that it orders
// against nothing but the events it waits for, carries the device-to-host
// copies into page-locked blocks from a second pool (AllocateHostBlock).
// Each copy first packs its source range into a device staging block on
// the compute stream. That device-to-device copy runs at ~4 TB/s: a few
// microseconds for a layer's K or V of a 512-token prompt (3 MiB), against
// milliseconds of the layer's compute and ~60 us for the same bytes over
// PCIe. It decouples the source buffer from the slow copy: ops queued after
// the call may overwrite the source at once (the Transformer reuses its K/V
// buffers layer after layer), and only the staging block waits for PCIe.
// Order: pack on stream_ -> event on stream_ -> copy stream waits for it ->
// staging -> host on the copy stream -> completion event, which Ready()
// queries and Wait() synchronizes before the staging block is freed.
class CudaBackend final : public Backend {
 public:
  static absl::StatusOr<std::unique_ptr<Backend>> Create(const CudaBackendOptions& options) {
    if (CudaDeviceCount() == 0) {
      return absl::UnavailableError(
          "cuda backend: no CUDA device is present (or the driver failed)");
    }
    cudaError_t status = cudaSetDevice(0);
    if (status != cudaSuccess) {
      return absl::UnavailableError(
          absl::StrCat("cuda backend: cudaSetDevice(0): ", cudaGetErrorString(status)));
    }
    cudaStream_t stream = nullptr;
    status = cudaStreamCreate(&stream);
    if (status != cudaSuccess) {
      return absl::InternalError(
          absl::StrCat("cuda backend: cudaStreamCreate: ", cudaGetErrorString(status)));
    }
    cudaStream_t copy_stream = nullptr;
    status = cudaStreamCreateWithFlags(&copy_stream, cudaStreamNonBlocking);
    if (status != cudaSuccess) {
      cudaStreamDestroy(stream);
      return absl::InternalError(absl::StrCat("cuda backend: cudaStreamCreateWithFlags (copies): ",
                                              cudaGetErrorString(status)));
    }
    cudaEvent_t packed = nullptr;
    status = cudaEventCreateWithFlags(&packed, cudaEventDisableTiming);
    if (status != cudaSuccess) {
      cudaStreamDestroy(copy_stream);
      cudaStreamDestroy(stream);
      return absl::InternalError(
          absl::StrCat("cuda backend: cudaEventCreateWithFlags: ", cudaGetErrorString(status)));
    }
    cublasHandle_t cublas = nullptr;
    cublasStatus_t blas_status = cublasCreate(&cublas);
    if (blas_status == CUBLAS_STATUS_SUCCESS) blas_status = cublasSetStream(cublas, stream);
    if (blas_status != CUBLAS_STATUS_SUCCESS) {
      if (cublas != nullptr) cublasDestroy(cublas);
      cudaEventDestroy(packed);
      cudaStreamDestroy(copy_stream);
      cudaStreamDestroy(stream);
      return absl::InternalError(
          absl::StrCat("cuda backend: cuBLAS set-up: ", CublasStatusName(blas_status)));
    }
    return std::unique_ptr<Backend>(new CudaBackend(options, stream, copy_stream, packed, cublas));
  }

  // Copies still in flight keep their staging blocks and events (see
  // CudaHostCopy); their streams are drained here before being destroyed.
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);
    cudaStreamSynchronize(copy_stream_);
    cublasDestroy(cublas_);
    cudaEventDestroy(packed_);
    cudaStreamDestroy(copy_stream_);
    cudaStreamDestroy(stream_);
  }

  std::string_view name() const override { return "cuda"; }
  DType activation_dtype() const override { return DType::kF32; }
  DType kv_dtype() const override { return DType::kBF16; }

  // ---- memory ---------------------------------------------------------------
  absl::StatusOr<BufferPtr> Allocate(size_t num_elements, DType dtype) override {
    const size_t element_size = DTypeSize(dtype);
    if (num_elements > SIZE_MAX / element_size) {
      return absl::ResourceExhaustedError(absl::StrCat("cuda Allocate: ", num_elements,
                                                       " elements of ", Name(dtype),
                                                       " overflow the address space"));
    }
    const size_t bytes = num_elements * element_size;
    void* data = nullptr;
    size_t capacity = 0;
    if (bytes > 0) {
      const cudaError_t status = pool_->Allocate(bytes, &data, &capacity);
      if (status != cudaSuccess) {
        cudaGetLastError();  // an allocation failure is not sticky; clear it
        const std::string message =
            absl::StrCat("cuda Allocate: ", bytes, " bytes (", num_elements, " ", Name(dtype),
                         "): ", cudaGetErrorString(status));
        if (status == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
        return absl::InternalError(message);
      }
    }
    return std::make_unique<CudaBuffer>(num_elements, dtype, pool_, data, capacity);
  }

  absl::StatusOr<BufferPtr> UploadWeight(std::span<const HostTensor> row_blocks) override {
    absl::StatusOr<size_t> total =
        CheckWeightRowBlocks(row_blocks, /*require_data=*/!options_.synthetic_weights);
    if (!total.ok()) return total.status();
    auto buffer = Allocate(*total, DType::kBF16);
    if (!buffer.ok()) return buffer.status();
    char* dst = static_cast<char*>((*buffer)->data());
    for (const HostTensor& block : row_blocks) {
      const size_t elements = static_cast<size_t>(block.num_elements());
      absl::Status status;
      if (options_.synthetic_weights) {
        status = FillSynthetic(block, dst, elements);
      } else {
        status = HostToDevice(block.data, block.dtype, elements, dst, DType::kBF16, block.name);
      }
      if (!status.ok()) return status;
      dst += elements * DTypeSize(DType::kBF16);
      ++uploads_;
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
    return HostToDevice(src, src_dtype, n, base, dst.dtype(), "CopyToDevice");
  }

  absl::Status CopyToHost(const DeviceBuffer& src, size_t src_offset, size_t n, void* dst,
                          DType dst_dtype) override {
    if (absl::Status range = CheckBufferRange(src, src_offset, n, "CopyToHost src"); !range.ok()) {
      return range;
    }
    if (n == 0) return absl::OkStatus();
    if (src.dtype() != dst_dtype && (!IsFloat(src.dtype()) || !IsFloat(dst_dtype))) {
      return absl::InvalidArgumentError(
          absl::StrCat("CopyToHost: cannot convert ", Name(src.dtype()), " to ", Name(dst_dtype)));
    }
    // Results computed after a failed launch are garbage: report it here too
    // (Synchronize still returns it).
    if (!sticky_.ok()) return sticky_;
    const char* base = static_cast<const char*>(src.data()) + src_offset * DTypeSize(src.dtype());
    char* out = static_cast<char*>(dst);
    if (src.dtype() == dst_dtype) {
      cudaError_t status =
          cudaMemcpyAsync(out, base, n * DTypeSize(dst_dtype), cudaMemcpyDeviceToHost, stream_);
      if (status == cudaSuccess) status = cudaStreamSynchronize(stream_);
      return Fail(status, "CopyToHost");
    }
    // Convert on the device into staging, then copy; chunked so staging
    // stays bounded. Stream order keeps each chunk's copy after its
    // conversion and the next conversion after that copy.
    const size_t chunk = kStagingBytes / DTypeSize(dst_dtype);
    void* staging = nullptr;
    cudaError_t status =
        staging_.Reserve(std::min(n, chunk) * DTypeSize(dst_dtype), stream_, &staging);
    for (size_t done = 0; status == cudaSuccess && done < n; done += chunk) {
      const size_t count = std::min(chunk, n - done);
      status = ConvertOnDevice(base + done * DTypeSize(src.dtype()), src.dtype(), staging,
                               dst_dtype, count);
      if (status == cudaSuccess) {
        status = cudaMemcpyAsync(out + done * DTypeSize(dst_dtype), staging,
                                 count * DTypeSize(dst_dtype), cudaMemcpyDeviceToHost, stream_);
      }
    }
    if (status == cudaSuccess) status = cudaStreamSynchronize(stream_);
    return Fail(status, "CopyToHost");
  }

  absl::StatusOr<HostBlockPtr> AllocateHostBlock(size_t bytes) override {
    // A zero-byte request still gets a (smallest) block, so data() is never
    // null.
    void* data = nullptr;
    size_t capacity = 0;
    const cudaError_t status = host_pool_->Allocate(std::max<size_t>(bytes, 1), &data, &capacity);
    if (status != cudaSuccess) {
      cudaGetLastError();  // an allocation failure is not sticky; clear it
      const std::string message =
          absl::StrCat("cuda AllocateHostBlock: ", bytes,
                       " bytes of page-locked host memory: ", cudaGetErrorName(status), ": ",
                       cudaGetErrorString(status));
      if (status == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
      return absl::InternalError(message);
    }
    return std::make_unique<PinnedHostBlock>(host_pool_, data, bytes, capacity);
  }

  absl::StatusOr<std::unique_ptr<HostCopy>> CopyToHostAsync(const DeviceBuffer& src,
                                                            size_t src_offset, size_t n,
                                                            void* dst) override {
    if (absl::Status range = CheckBufferRange(src, src_offset, n, "CopyToHostAsync src");
        !range.ok()) {
      return range;
    }
    if (n == 0) return std::make_unique<CudaHostCopy>();
    if (!sticky_.ok()) return sticky_;  // the source may be garbage (CopyToHost)
    const size_t bytes = n * DTypeSize(src.dtype());
    const char* base = static_cast<const char*>(src.data()) + src_offset * DTypeSize(src.dtype());

    void* staging = nullptr;
    size_t capacity = 0;
    cudaError_t status = pool_->Allocate(bytes, &staging, &capacity);
    if (status != cudaSuccess) {
      cudaGetLastError();  // an allocation failure is not sticky; clear it
      const std::string message =
          absl::StrCat("cuda CopyToHostAsync: staging block of ", bytes,
                       " bytes: ", cudaGetErrorName(status), ": ", cudaGetErrorString(status));
      if (status == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(message);
      return absl::InternalError(message);
    }
    cudaEvent_t done = nullptr;
    status = cudaEventCreateWithFlags(&done, cudaEventDisableTiming);
    if (status != cudaSuccess) {
      pool_->Free(staging, capacity);  // nothing queued uses it yet
      return Fail(status, "CopyToHostAsync");
    }
    // From here the copy owns both; until `done` is recorded its Wait()
    // returns at once (an unrecorded event counts as complete) and frees
    // the staging block, which is then safe: only stream_ has touched it,
    // and stream order protects its next user.
    auto copy = std::make_unique<CudaHostCopy>(pool_, staging, capacity, done);
    status = cudaMemcpyAsync(staging, base, bytes, cudaMemcpyDeviceToDevice, stream_);
    if (status == cudaSuccess) status = cudaEventRecord(packed_, stream_);
    // The wait takes the event's state now, so packed_ may be recorded again
    // by the next call at once.
    if (status == cudaSuccess) status = cudaStreamWaitEvent(copy_stream_, packed_, 0);
    if (status == cudaSuccess) {
      status = cudaMemcpyAsync(dst, staging, bytes, cudaMemcpyDeviceToHost, copy_stream_);
    }
    if (status != cudaSuccess) return Fail(status, "CopyToHostAsync");
    status = cudaEventRecord(done, copy_stream_);
    if (status != cudaSuccess) {
      // The host copy is queued but `done` is not: drain the copy stream so
      // that neither `dst` nor the staging block is written after we return.
      cudaStreamSynchronize(copy_stream_);
      return Fail(status, "CopyToHostAsync");
    }
    return copy;
  }

  absl::Status Synchronize() override {
    Record(cudaStreamSynchronize(stream_), "Synchronize");
    absl::Status status = std::move(sticky_);
    sticky_ = absl::OkStatus();
    return status;
  }

  // ---- ops --------------------------------------------------------------------
  void Embedding(const DeviceBuffer& table, const DeviceBuffer& ids, int n, int hidden,
                 DeviceBuffer& out) override {
    PDSERVE_CUDA_CHECK(n >= 0 && hidden > 0, "Embedding sizes");
    PDSERVE_CUDA_CHECK(table.num_elements() % hidden == 0, "Embedding table [vocab, hidden]");
    CheckIds(ids, n, "Embedding ids [n]");
    CheckFloat(out, Product(n, hidden), "Embedding out [n, hidden]");
    gpu::EmbeddingParams params;
    params.table = table.data();
    params.table_type = ToElementType(table.dtype());
    params.ids = static_cast<const int32_t*>(ids.data());
    params.out = out.data();
    params.out_type = ToElementType(out.dtype());
    params.n = n;
    params.hidden = hidden;
    params.vocab = static_cast<int>(table.num_elements() / hidden);
    Launch("Embedding", params, gpu::InvokeEmbedding);
  }

  // Row-major out[m, n] = x[m, k] · w[n, k]ᵀ seen by column-major cuBLAS: a
  // row-major [r, c] array is a column-major [c, r] one, so out is the
  // column-major n×m matrix outᶜ = w · xᵀ, where w (column-major k×n, lda k)
  // enters transposed (OP_T) and x (column-major k×m, ldb k) as it is (OP_N).
  void MatMul(const DeviceBuffer& x, const DeviceBuffer& w, int m, int n, int k, DeviceBuffer& out,
              bool accumulate) override {
    PDSERVE_CUDA_CHECK(m >= 0 && n > 0 && k > 0, "MatMul sizes");
    PDSERVE_CUDA_CHECK(&x != &out, "MatMul out must not alias x");
    PDSERVE_CUDA_CHECK(w.dtype() == DType::kBF16, "MatMul w must be a bf16 weight (UploadWeight)");
    PDSERVE_CUDA_CHECK(w.num_elements() >= Product(n, k), "MatMul w [n, k]");
    CheckFloat(x, Product(m, k), "MatMul x [m, k]");
    CheckFloat(out, Product(m, n), "MatMul out [m, n]");
    PDSERVE_CUDA_CHECK(out.dtype() != DType::kF16, "MatMul out must be F32 or BF16");
    if (m == 0) return;
    const void* x_bf16 = x.data();
    if (x.dtype() != DType::kBF16) {
      void* scratch = nullptr;
      cudaError_t status =
          gemm_input_.Reserve(Product(m, k) * DTypeSize(DType::kBF16), stream_, &scratch);
      if (status == cudaSuccess) {
        status = ConvertOnDevice(x.data(), x.dtype(), scratch, DType::kBF16, Product(m, k));
      }
      if (status != cudaSuccess) {
        Record(status, "MatMul input conversion");
        return;
      }
      x_bf16 = scratch;
    }
    const float alpha = 1.0f;
    const float beta = accumulate ? 1.0f : 0.0f;
    const cudaDataType_t out_type = out.dtype() == DType::kF32 ? CUDA_R_32F : CUDA_R_16BF;
    const cublasStatus_t status = cublasGemmEx(
        cublas_, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w.data(), CUDA_R_16BF, k, x_bf16,
        CUDA_R_16BF, k, &beta, out.data(), out_type, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
    if (status != CUBLAS_STATUS_SUCCESS && sticky_.ok()) {
      sticky_ = absl::InternalError(absl::StrCat("cuda MatMul: cublasGemmEx (m=", m, ", n=", n,
                                                 ", k=", k, "): ", CublasStatusName(status)));
    }
  }

  void RmsNorm(const DeviceBuffer& x, const DeviceBuffer& weight, int m, int d, float eps,
               DeviceBuffer& out) override {
    PDSERVE_CUDA_CHECK(m >= 0 && d > 0, "RmsNorm sizes");
    CheckFloat(x, Product(m, d), "RmsNorm x [m, d]");
    CheckFloat(weight, static_cast<size_t>(d), "RmsNorm weight [d]");
    CheckFloat(out, Product(m, d), "RmsNorm out [m, d]");
    gpu::RmsNormParams params;
    params.x = x.data();
    params.x_type = ToElementType(x.dtype());
    params.weight = weight.data();
    params.weight_type = ToElementType(weight.dtype());
    params.out = out.data();
    params.out_type = ToElementType(out.dtype());
    params.m = m;
    params.d = d;
    params.eps = eps;
    Launch("RmsNorm", params, gpu::InvokeRmsNorm);
  }

  void SplitQkv(const DeviceBuffer& qkv, int n, int num_heads, int num_kv_heads, int head_dim,
                DeviceBuffer& q, DeviceBuffer& k, DeviceBuffer& v) override {
    PDSERVE_CUDA_CHECK(n >= 0 && num_heads > 0 && num_kv_heads > 0 && head_dim > 0,
                       "SplitQkv sizes");
    const size_t q_width = Product(num_heads, head_dim);
    const size_t kv_width = Product(num_kv_heads, head_dim);
    CheckFloat(qkv, static_cast<size_t>(n) * (q_width + 2 * kv_width), "SplitQkv qkv");
    CheckFloat(q, static_cast<size_t>(n) * q_width, "SplitQkv q [n, h, hd]");
    CheckFloat(k, static_cast<size_t>(n) * kv_width, "SplitQkv k [n, kvh, hd]");
    CheckFloat(v, static_cast<size_t>(n) * kv_width, "SplitQkv v [n, kvh, hd]");
    gpu::SplitQkvParams params;
    params.qkv = qkv.data();
    params.qkv_type = ToElementType(qkv.dtype());
    params.q = q.data();
    params.q_type = ToElementType(q.dtype());
    params.k = k.data();
    params.k_type = ToElementType(k.dtype());
    params.v = v.data();
    params.v_type = ToElementType(v.dtype());
    params.n = n;
    params.num_heads = num_heads;
    params.num_kv_heads = num_kv_heads;
    params.head_dim = head_dim;
    Launch("SplitQkv", params, gpu::InvokeSplitQkv);
  }

  void Rope(DeviceBuffer& q, DeviceBuffer& k, const DeviceBuffer& positions, int n, int num_heads,
            int num_kv_heads, int head_dim, float theta) override {
    PDSERVE_CUDA_CHECK(n >= 0 && num_heads > 0 && num_kv_heads > 0, "Rope sizes");
    PDSERVE_CUDA_CHECK(head_dim > 0 && head_dim % 2 == 0, "Rope head_dim must be even");
    CheckFloat(q, static_cast<size_t>(n) * Product(num_heads, head_dim), "Rope q [n, h, hd]");
    CheckFloat(k, static_cast<size_t>(n) * Product(num_kv_heads, head_dim), "Rope k [n, kvh, hd]");
    CheckIds(positions, n, "Rope positions [n]");
    gpu::RopeParams params;
    params.q = q.data();
    params.q_type = ToElementType(q.dtype());
    params.k = k.data();
    params.k_type = ToElementType(k.dtype());
    params.positions = static_cast<const int32_t*>(positions.data());
    params.n = n;
    params.num_heads = num_heads;
    params.num_kv_heads = num_kv_heads;
    params.head_dim = head_dim;
    params.theta = theta;
    Launch("Rope", params, gpu::InvokeRope);
  }

  void SiluMul(const DeviceBuffer& gate_up, int m, int f, DeviceBuffer& out) override {
    PDSERVE_CUDA_CHECK(m >= 0 && f > 0, "SiluMul sizes");
    CheckFloat(gate_up, Product(m, 2 * f), "SiluMul gate_up [m, 2f]");
    CheckFloat(out, Product(m, f), "SiluMul out [m, f]");
    PDSERVE_CUDA_CHECK(&gate_up != &out, "SiluMul out must not alias gate_up");
    gpu::SiluMulParams params;
    params.gate_up = gate_up.data();
    params.gate_up_type = ToElementType(gate_up.dtype());
    params.out = out.data();
    params.out_type = ToElementType(out.dtype());
    params.m = m;
    params.f = f;
    Launch("SiluMul", params, gpu::InvokeSiluMul);
  }

  void PrefillAttention(const DeviceBuffer& q, const DeviceBuffer& k, const DeviceBuffer& v,
                        const PrefillAttentionParams& p, DeviceBuffer& out) override {
    PDSERVE_CUDA_CHECK(p.num_queries >= 0 && p.num_queries <= p.num_keys,
                       "PrefillAttention needs 0 <= num_queries <= num_keys");
    PDSERVE_CUDA_CHECK(p.num_heads > 0 && p.num_kv_heads > 0 && p.head_dim > 0,
                       "PrefillAttention sizes");
    const size_t q_elements = static_cast<size_t>(p.num_queries) * Product(p.num_heads, p.head_dim);
    const size_t kv_elements =
        static_cast<size_t>(p.num_keys) * Product(p.num_kv_heads, p.head_dim);
    CheckFloat(q, q_elements, "PrefillAttention q [n, h, hd]");
    CheckFloat(k, kv_elements, "PrefillAttention k [t, kvh, hd]");
    CheckFloat(v, kv_elements, "PrefillAttention v [t, kvh, hd]");
    PDSERVE_CUDA_CHECK(k.dtype() == v.dtype(), "PrefillAttention k and v dtypes differ");
    CheckFloat(out, q_elements, "PrefillAttention out [n, h, hd]");
    gpu::CausalAttentionParams params;
    params.q = q.data();
    params.q_type = ToElementType(q.dtype());
    params.k = k.data();
    params.v = v.data();
    params.kv_type = ToElementType(k.dtype());
    params.out = out.data();
    params.out_type = ToElementType(out.dtype());
    params.num_queries = p.num_queries;
    params.num_keys = p.num_keys;
    params.num_heads = p.num_heads;
    params.num_kv_heads = p.num_kv_heads;
    params.head_dim = p.head_dim;
    params.scale = p.scale;
    Launch("PrefillAttention", params, gpu::InvokeCausalAttention);
  }

  void KvScatter(const DeviceBuffer& k, const DeviceBuffer& v, const DeviceBuffer& slot_mapping,
                 int n, int kv_width, DeviceBuffer& k_cache, DeviceBuffer& v_cache) override {
    PDSERVE_CUDA_CHECK(n >= 0 && kv_width > 0, "KvScatter sizes");
    CheckFloat(k, Product(n, kv_width), "KvScatter k [n, kv_width]");
    CheckFloat(v, Product(n, kv_width), "KvScatter v [n, kv_width]");
    CheckIds(slot_mapping, n, "KvScatter slot_mapping [n]");
    CheckCaches(k_cache, v_cache, kv_width, "KvScatter");
    gpu::KvScatterParams params;
    params.k = k.data();
    params.k_type = ToElementType(k.dtype());
    params.v = v.data();
    params.v_type = ToElementType(v.dtype());
    params.slot_mapping = static_cast<const int32_t*>(slot_mapping.data());
    params.k_cache = k_cache.data();
    params.v_cache = v_cache.data();
    params.cache_type = ToElementType(k_cache.dtype());
    params.n = n;
    params.kv_width = kv_width;
    params.num_slots = NumSlots(k_cache, kv_width);
    Launch("KvScatter", params, gpu::InvokeKvScatter);
  }

  void KvGather(const DeviceBuffer& k_cache, const DeviceBuffer& v_cache,
                const DeviceBuffer& slot_mapping, int n, int kv_width, DeviceBuffer& k,
                DeviceBuffer& v) override {
    PDSERVE_CUDA_CHECK(n >= 0 && kv_width > 0, "KvGather sizes");
    CheckCaches(k_cache, v_cache, kv_width, "KvGather");
    CheckIds(slot_mapping, n, "KvGather slot_mapping [n]");
    CheckFloat(k, Product(n, kv_width), "KvGather k [n, kv_width]");
    CheckFloat(v, Product(n, kv_width), "KvGather v [n, kv_width]");
    gpu::KvGatherParams params;
    params.k_cache = k_cache.data();
    params.v_cache = v_cache.data();
    params.cache_type = ToElementType(k_cache.dtype());
    params.slot_mapping = static_cast<const int32_t*>(slot_mapping.data());
    params.k = k.data();
    params.k_type = ToElementType(k.dtype());
    params.v = v.data();
    params.v_type = ToElementType(v.dtype());
    params.n = n;
    params.kv_width = kv_width;
    params.num_slots = NumSlots(k_cache, kv_width);
    Launch("KvGather", params, gpu::InvokeKvGather);
  }

  void PagedAttention(const DeviceBuffer& q, const DeviceBuffer& k_cache,
                      const DeviceBuffer& v_cache, const DeviceBuffer& block_tables,
                      const DeviceBuffer& context_lens, const PagedAttentionParams& p,
                      DeviceBuffer& out) override {
    PDSERVE_CUDA_CHECK(p.batch_size >= 0 && p.num_heads > 0 && p.num_kv_heads > 0 &&
                           p.head_dim > 0 && p.block_size > 0 && p.max_blocks_per_seq > 0,
                       "PagedAttention sizes");
    const int kv_width = p.num_kv_heads * p.head_dim;
    CheckCaches(k_cache, v_cache, kv_width, "PagedAttention");
    PDSERVE_CUDA_CHECK(NumSlots(k_cache, kv_width) % p.block_size == 0,
                       "PagedAttention cache [num_blocks * block_size, kvh * hd]");
    const size_t q_elements = static_cast<size_t>(p.batch_size) * Product(p.num_heads, p.head_dim);
    CheckFloat(q, q_elements, "PagedAttention q [b, h, hd]");
    CheckFloat(out, q_elements, "PagedAttention out [b, h, hd]");
    CheckIds(block_tables, static_cast<int>(Product(p.batch_size, p.max_blocks_per_seq)),
             "PagedAttention block_tables [b, max_blocks_per_seq]");
    CheckIds(context_lens, p.batch_size, "PagedAttention context_lens [b]");
    gpu::PagedDecodeAttentionParams params;
    params.q = q.data();
    params.q_type = ToElementType(q.dtype());
    params.k_cache = k_cache.data();
    params.v_cache = v_cache.data();
    params.cache_type = ToElementType(k_cache.dtype());
    params.block_tables = static_cast<const int32_t*>(block_tables.data());
    params.context_lens = static_cast<const int32_t*>(context_lens.data());
    params.out = out.data();
    params.out_type = ToElementType(out.dtype());
    params.batch = p.batch_size;
    params.num_heads = p.num_heads;
    params.num_kv_heads = p.num_kv_heads;
    params.head_dim = p.head_dim;
    params.block_size = p.block_size;
    params.max_blocks_per_seq = p.max_blocks_per_seq;
    params.num_blocks = NumSlots(k_cache, kv_width) / p.block_size;
    params.scale = p.scale;
    Launch("PagedAttention", params, gpu::InvokePagedDecodeAttention);
  }

  void ArgmaxRows(const DeviceBuffer& x, int rows, int cols, DeviceBuffer& out) override {
    PDSERVE_CUDA_CHECK(rows >= 0 && cols > 0, "ArgmaxRows sizes");
    CheckFloat(x, Product(rows, cols), "ArgmaxRows x [rows, cols]");
    CheckIds(out, rows, "ArgmaxRows out [rows]");
    gpu::ArgmaxParams params;
    params.logits = x.data();
    params.logits_type = ToElementType(x.dtype());
    params.out = static_cast<int32_t*>(out.data());
    params.b = rows;
    params.vocab = cols;
    Launch("ArgmaxRows", params, gpu::InvokeArgmax);
  }

  void TopKRows(const DeviceBuffer& x, int rows, int cols, int k, DeviceBuffer& values,
                DeviceBuffer& ids) override {
    PDSERVE_CUDA_CHECK(rows >= 0 && cols > 0 && k >= 1 && k <= std::min(cols, kMaxTopKRows),
                       "TopKRows sizes: rows >= 0, 1 <= k <= min(cols, kMaxTopKRows)");
    CheckFloat(x, Product(rows, cols), "TopKRows x [rows, cols]");
    static_assert(gpu::TopKRowsParams::kMaxK == kMaxTopKRows);
    PDSERVE_CUDA_CHECK(values.dtype() == DType::kF32 && values.num_elements() >= Product(rows, k),
                       "TopKRows values F32 [rows, k]");
    PDSERVE_CUDA_CHECK(Product(rows, k) <= static_cast<size_t>(INT32_MAX), "TopKRows rows * k");
    CheckIds(ids, rows * k, "TopKRows ids [rows, k]");
    gpu::TopKRowsParams params;
    params.x = x.data();
    params.x_type = ToElementType(x.dtype());
    params.values = static_cast<float*>(values.data());
    params.ids = static_cast<int32_t*>(ids.data());
    params.rows = rows;
    params.cols = cols;
    params.k = k;
    Launch("TopKRows", params, gpu::InvokeTopKRows);
  }

  void CopyElements(const DeviceBuffer& src, size_t src_offset, DeviceBuffer& dst,
                    size_t dst_offset, size_t n) override {
    PDSERVE_CUDA_CHECK(src.dtype() == dst.dtype(), "CopyElements dtypes differ");
    PDSERVE_CUDA_CHECK(CheckBufferRange(src, src_offset, n, "src").ok(), "CopyElements src range");
    PDSERVE_CUDA_CHECK(CheckBufferRange(dst, dst_offset, n, "dst").ok(), "CopyElements dst range");
    if (n == 0) return;
    const size_t size = DTypeSize(src.dtype());
    Record(cudaMemcpyAsync(static_cast<char*>(dst.data()) + dst_offset * size,
                           static_cast<const char*>(src.data()) + src_offset * size, n * size,
                           cudaMemcpyDeviceToDevice, stream_),
           "CopyElements");
  }

 private:
  // Staging for host<->device conversions: bounded, so converting a 15 GB
  // float32 checkpoint needs no 15 GB of scratch.
  static constexpr size_t kStagingBytes = size_t{32} << 20;

  CudaBackend(const CudaBackendOptions& options, cudaStream_t stream, cudaStream_t copy_stream,
              cudaEvent_t packed, cublasHandle_t cublas)
      : options_(options),
        stream_(stream),
        copy_stream_(copy_stream),
        packed_(packed),
        cublas_(cublas) {}

  // Keeps the first failure for Synchronize.
  void Record(cudaError_t status, const char* what) {
    if (status == cudaSuccess || !sticky_.ok()) return;
    sticky_ = absl::InternalError(CudaErrorText(what, status));
  }

  // A failed copy is reported by the copy itself and kept for Synchronize.
  absl::Status Fail(cudaError_t status, const char* what) {
    if (status == cudaSuccess) return absl::OkStatus();
    Record(status, what);
    return absl::InternalError(CudaErrorText(what, status));
  }

  // Queues one of this directory's kernels: `invoke` is its Invoke<Name>.
  // A parameter struct that fails its own Validate() is a caller bug and
  // aborts like PDSERVE_CUDA_CHECK, at the calling op's line; a launch
  // failure is kept for Synchronize.
  template <typename Params>
  void Launch(const char* op, const Params& params,
              cudaError_t (*invoke)(const Params&, cudaStream_t),
              std::source_location where = std::source_location::current()) {
    if (const char* why = params.Validate()) {
      Die(where.file_name(), static_cast<int>(where.line()), "Validate()", why);
    }
    Record(invoke(params, stream_), op);
  }

  // Queues the conversion of n elements from src to dst (both device
  // memory, float dtypes).
  cudaError_t ConvertOnDevice(const void* src, DType src_dtype, void* dst, DType dst_dtype,
                              size_t n) {
    gpu::ConvertParams convert;
    convert.src = src;
    convert.src_type = ToElementType(src_dtype);
    convert.dst = dst;
    convert.dst_type = ToElementType(dst_dtype);
    convert.n = n;
    return gpu::InvokeConvert(convert, stream_);
  }

  static void CheckFloat(const DeviceBuffer& buffer, size_t min_elements, const char* what) {
    PDSERVE_CUDA_CHECK(IsFloat(buffer.dtype()), what);
    PDSERVE_CUDA_CHECK(buffer.num_elements() >= min_elements, what);
  }

  static void CheckIds(const DeviceBuffer& buffer, int min_elements, const char* what) {
    PDSERVE_CUDA_CHECK(buffer.dtype() == DType::kI32, what);
    PDSERVE_CUDA_CHECK(buffer.num_elements() >= static_cast<size_t>(std::max(min_elements, 0)),
                       what);
  }

  static void CheckCaches(const DeviceBuffer& k_cache, const DeviceBuffer& v_cache, int kv_width,
                          const char* what) {
    PDSERVE_CUDA_CHECK(IsFloat(k_cache.dtype()) && k_cache.dtype() == v_cache.dtype(), what);
    PDSERVE_CUDA_CHECK(k_cache.num_elements() == v_cache.num_elements(), what);
    PDSERVE_CUDA_CHECK(k_cache.num_elements() % static_cast<size_t>(kv_width) == 0, what);
    PDSERVE_CUDA_CHECK(k_cache.num_elements() / kv_width <= static_cast<size_t>(INT32_MAX), what);
  }

  static int NumSlots(const DeviceBuffer& cache, int kv_width) {
    return static_cast<int>(cache.num_elements() / static_cast<size_t>(kv_width));
  }

  // Copies n elements from host `src` to device `dst`, converting on the
  // device when the dtypes differ. Returns once `src` may be reused.
  absl::Status HostToDevice(const void* src, DType src_dtype, size_t n, void* dst, DType dst_dtype,
                            const std::string& what) {
    if (src_dtype != dst_dtype && (!IsFloat(src_dtype) || !IsFloat(dst_dtype))) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, ": cannot convert ", Name(src_dtype), " to ", Name(dst_dtype)));
    }
    const char* in = static_cast<const char*>(src);
    char* out = static_cast<char*>(dst);
    if (src_dtype == dst_dtype) {
      cudaError_t status =
          cudaMemcpyAsync(out, in, n * DTypeSize(src_dtype), cudaMemcpyHostToDevice, stream_);
      if (status == cudaSuccess) status = cudaStreamSynchronize(stream_);
      return Fail(status, what.c_str());
    }
    const size_t chunk = kStagingBytes / DTypeSize(src_dtype);
    void* staging = nullptr;
    cudaError_t status =
        staging_.Reserve(std::min(n, chunk) * DTypeSize(src_dtype), stream_, &staging);
    for (size_t done = 0; status == cudaSuccess && done < n; done += chunk) {
      const size_t count = std::min(chunk, n - done);
      status = cudaMemcpyAsync(staging, in + done * DTypeSize(src_dtype),
                               count * DTypeSize(src_dtype), cudaMemcpyHostToDevice, stream_);
      if (status != cudaSuccess) break;
      status =
          ConvertOnDevice(staging, src_dtype, out + done * DTypeSize(dst_dtype), dst_dtype, count);
    }
    // Also makes `src` reusable when it is page-locked memory, which the
    // copies above read asynchronously.
    if (status == cudaSuccess) status = cudaStreamSynchronize(stream_);
    return Fail(status, what.c_str());
  }

  // Synthetic weights (CudaBackendOptions::synthetic_weights).
  absl::Status FillSynthetic(const HostTensor& block, void* dst, size_t elements) {
    gpu::RandomFillParams params;
    params.out = dst;
    params.out_type = gpu::ElementType::kBF16;
    params.n = elements;
    params.seed = options_.synthetic_seed * 0x100000001b3ull + uploads_;
    if (block.shape.size() == 1) {
      params.center = 1.0f;
      params.scale = 0.1f;
    } else {
      // Uniform on [-a, a] has variance a²/3: a = sqrt(3 / cols) keeps each
      // output of x·wᵀ at the variance of x's elements.
      params.center = 0.0f;
      params.scale = std::sqrt(3.0f / static_cast<float>(block.shape.back()));
    }
    return Fail(gpu::InvokeRandomFill(params, stream_), "UploadWeight synthetic fill");
  }

  CudaBackendOptions options_;
  std::shared_ptr<gpu::DeviceMemoryPool> pool_ = std::make_shared<gpu::DeviceMemoryPool>();
  // Page-locked blocks for AllocateHostBlock, shared with the blocks.
  std::shared_ptr<gpu::DeviceMemoryPool> host_pool_ =
      std::make_shared<gpu::DeviceMemoryPool>(gpu::PoolMemory::kPinnedHost);
  cudaStream_t stream_;       // every op, in order (blocking: orders against stream 0)
  cudaStream_t copy_stream_;  // CopyToHostAsync's device-to-host copies (non-blocking)
  cudaEvent_t packed_;        // recorded on stream_ after each CopyToHostAsync pack
  cublasHandle_t cublas_;
  absl::Status sticky_;       // first device failure since the last Synchronize
  DeviceScratch staging_;     // host<->device conversions
  DeviceScratch gemm_input_;  // bf16 copy of a float32 GEMM input
  uint64_t uploads_ = 0;      // weight row blocks uploaded so far (synthetic seeds)
};

}  // namespace

int CudaDeviceCount() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();  // clear it: "no device" is an answer, not a failure
    return 0;
  }
  return count;
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend() {
  return CudaBackend::Create(CudaBackendOptions{});
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const CudaBackendOptions& options) {
  return CudaBackend::Create(options);
}

}  // namespace pdserve
