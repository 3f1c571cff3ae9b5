// A Backend that hands every call to another one: the base of test doubles
// that change one behaviour (e.g. DeferredCopyBackend) and keep the rest.
#ifndef PDSERVE_TESTS_TESTING_FORWARDING_BACKEND_H_
#define PDSERVE_TESTS_TESTING_FORWARDING_BACKEND_H_

#include <memory>
#include <utility>

#include "shared/backend.h"

namespace pdserve {

class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(std::unique_ptr<Backend> inner) : inner_(std::move(inner)) {}

  std::string_view name() const override { return inner_->name(); }
  DType activation_dtype() const override { return inner_->activation_dtype(); }
  DType kv_dtype() const override { return inner_->kv_dtype(); }
  bool host_memory_buffers() const override { return inner_->host_memory_buffers(); }

  absl::StatusOr<BufferPtr> Allocate(size_t num_elements, DType dtype) override {
    return inner_->Allocate(num_elements, dtype);
  }
  absl::StatusOr<BufferPtr> UploadWeight(std::span<const HostTensor> row_blocks) override {
    return inner_->UploadWeight(row_blocks);
  }
  absl::Status CopyToDevice(const void* src, DType src_dtype, size_t n, DeviceBuffer& dst,
                            size_t dst_offset) override {
    return inner_->CopyToDevice(src, src_dtype, n, dst, dst_offset);
  }
  absl::Status CopyToHost(const DeviceBuffer& src, size_t src_offset, size_t n, void* dst,
                          DType dst_dtype) override {
    return inner_->CopyToHost(src, src_offset, n, dst, dst_dtype);
  }
  absl::Status Synchronize() override { return inner_->Synchronize(); }
  absl::StatusOr<HostBlockPtr> AllocateHostBlock(size_t bytes) override {
    return inner_->AllocateHostBlock(bytes);
  }
  absl::StatusOr<std::unique_ptr<HostCopy>> CopyToHostAsync(const DeviceBuffer& src,
                                                            size_t src_offset, size_t n,
                                                            void* dst) override {
    return inner_->CopyToHostAsync(src, src_offset, n, dst);
  }

  void Embedding(const DeviceBuffer& table, const DeviceBuffer& ids, int n, int hidden,
                 DeviceBuffer& out) override {
    inner_->Embedding(table, ids, n, hidden, out);
  }
  void MatMul(const DeviceBuffer& x, const DeviceBuffer& w, int m, int n, int k, DeviceBuffer& out,
              bool accumulate) override {
    inner_->MatMul(x, w, m, n, k, out, accumulate);
  }
  void RmsNorm(const DeviceBuffer& x, const DeviceBuffer& weight, int m, int d, float eps,
               DeviceBuffer& out) override {
    inner_->RmsNorm(x, weight, m, d, eps, out);
  }
  void SplitQkv(const DeviceBuffer& qkv, int n, int num_heads, int num_kv_heads, int head_dim,
                DeviceBuffer& q, DeviceBuffer& k, DeviceBuffer& v) override {
    inner_->SplitQkv(qkv, n, num_heads, num_kv_heads, head_dim, q, k, v);
  }
  void Rope(DeviceBuffer& q, DeviceBuffer& k, const DeviceBuffer& positions, int n, int num_heads,
            int num_kv_heads, int head_dim, float theta) override {
    inner_->Rope(q, k, positions, n, num_heads, num_kv_heads, head_dim, theta);
  }
  void SiluMul(const DeviceBuffer& gate_up, int m, int f, DeviceBuffer& out) override {
    inner_->SiluMul(gate_up, m, f, out);
  }
  void PrefillAttention(const DeviceBuffer& q, const DeviceBuffer& k, const DeviceBuffer& v,
                        const PrefillAttentionParams& params, DeviceBuffer& out) override {
    inner_->PrefillAttention(q, k, v, params, out);
  }
  void KvScatter(const DeviceBuffer& k, const DeviceBuffer& v, const DeviceBuffer& slot_mapping,
                 int n, int kv_width, DeviceBuffer& k_cache, DeviceBuffer& v_cache) override {
    inner_->KvScatter(k, v, slot_mapping, n, kv_width, k_cache, v_cache);
  }
  void KvGather(const DeviceBuffer& k_cache, const DeviceBuffer& v_cache,
                const DeviceBuffer& slot_mapping, int n, int kv_width, DeviceBuffer& k,
                DeviceBuffer& v) override {
    inner_->KvGather(k_cache, v_cache, slot_mapping, n, kv_width, k, v);
  }
  void PagedAttention(const DeviceBuffer& q, const DeviceBuffer& k_cache,
                      const DeviceBuffer& v_cache, const DeviceBuffer& block_tables,
                      const DeviceBuffer& context_lens, const PagedAttentionParams& params,
                      DeviceBuffer& out) override {
    inner_->PagedAttention(q, k_cache, v_cache, block_tables, context_lens, params, out);
  }
  void ArgmaxRows(const DeviceBuffer& x, int rows, int cols, DeviceBuffer& out) override {
    inner_->ArgmaxRows(x, rows, cols, out);
  }
  void TopKRows(const DeviceBuffer& x, int rows, int cols, int k, DeviceBuffer& values,
                DeviceBuffer& ids) override {
    inner_->TopKRows(x, rows, cols, k, values, ids);
  }
  void CopyElements(const DeviceBuffer& src, size_t src_offset, DeviceBuffer& dst,
                    size_t dst_offset, size_t n) override {
    inner_->CopyElements(src, src_offset, dst, dst_offset, n);
  }

 protected:
  Backend& inner() { return *inner_; }

 private:
  std::unique_ptr<Backend> inner_;
};

}  // namespace pdserve

#endif  // PDSERVE_TESTS_TESTING_FORWARDING_BACKEND_H_
