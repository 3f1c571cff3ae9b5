// Host memory that device-to-host copies land in and that leaves the process
// through gRPC without another copy (the prefill service's KvChunks).
#ifndef PDSERVE_SHARED_HOST_BLOCK_H_
#define PDSERVE_SHARED_HOST_BLOCK_H_

#include <cstddef>
#include <memory>

namespace pdserve {

// `size()` bytes of host memory, uninitialised when handed out and released
// (freed, or returned to its pool) when destroyed. Backends make blocks of
// their own kind (Backend::AllocateHostBlock): page-locked memory for CUDA,
// so the DMA engine writes it asynchronously at full link speed; ordinary
// heap memory for the CPU backend. A block may be destroyed on any thread
// and may outlive the backend that made it.
class HostBlock {
 public:
  virtual ~HostBlock() = default;
  HostBlock(const HostBlock&) = delete;
  HostBlock& operator=(const HostBlock&) = delete;

  char* data() { return data_; }
  const char* data() const { return data_; }
  size_t size() const { return size_; }

 protected:
  HostBlock(char* data, size_t size) : data_(data), size_(size) {}

 private:
  char* data_;
  size_t size_;
};

using HostBlockPtr = std::unique_ptr<HostBlock>;

// A block of `bytes` from the heap (operator new[]); bytes may be 0.
HostBlockPtr MakeHeapHostBlock(size_t bytes);

}  // namespace pdserve

#endif  // PDSERVE_SHARED_HOST_BLOCK_H_
