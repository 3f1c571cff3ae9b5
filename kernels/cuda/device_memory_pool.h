// A caching allocator over cudaMalloc (device memory for one backend's
// stream) or cudaHostAlloc (page-locked host memory that device-to-host
// copies land in).
//
// The Transformer allocates its activations per call (llama2.c's RunState,
// made per prefill and per decode step). cudaMalloc costs tens of
// microseconds and cudaFree synchronizes the whole device, which at a few
// milliseconds per decode step is a large, avoidable share; cudaHostAlloc
// pins pages one by one and costs milliseconds per MiB, far more than the
// copy it serves. So freed blocks go to a cache keyed by their rounded size
// and the next request of that size takes one back.
//
// When reuse is safe:
//  * device memory: stream ordering. A block returned while work queued on
//    the backend's stream may still read it is handed out again only to
//    work queued later on that same stream, which runs after. A block that
//    another stream reads (CopyToHostAsync's staging) goes back only once
//    that stream's work on it has completed (its event synchronized).
//  * pinned host memory: the block's owner (a HostBlock) returns it, and it
//    must not do so while a copy into it is pending (a HostCopy waits for
//    its copy before it ends).
#ifndef PDSERVE_KERNELS_CUDA_DEVICE_MEMORY_POOL_H_
#define PDSERVE_KERNELS_CUDA_DEVICE_MEMORY_POOL_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace pdserve::gpu {

// What a DeviceMemoryPool hands out.
enum class PoolMemory {
  kDevice,      // cudaMalloc / cudaFree
  kPinnedHost,  // cudaHostAlloc(cudaHostAllocDefault) / cudaFreeHost
};

// Thread-safe: Allocate, Free and ReleaseCached may be called from any
// thread (pinned blocks are released wherever their HostBlock dies).
class DeviceMemoryPool {
 public:
  explicit DeviceMemoryPool(PoolMemory memory = PoolMemory::kDevice) : memory_(memory) {}
  DeviceMemoryPool(const DeviceMemoryPool&) = delete;
  DeviceMemoryPool& operator=(const DeviceMemoryPool&) = delete;
  // Frees the cache. Blocks still handed out keep their owner alive (see
  // CudaBuffer, PinnedHostBlock), so there are none left by then.
  ~DeviceMemoryPool();

  PoolMemory memory() const { return memory_; }

  // A block of at least `bytes` (> 0), its size class in *capacity. When
  // the allocation fails, the cache is released (cudaFree and cudaFreeHost
  // wait for the device) and the allocation tried once more;
  // cudaErrorMemoryAllocation then means the device (or, pinned, the host's
  // lockable memory) is full.
  cudaError_t Allocate(size_t bytes, void** block, size_t* capacity);

  // Returns a block from Allocate, with the capacity it reported.
  void Free(void* block, size_t capacity);

  // Gives every cached block back to the driver.
  void ReleaseCached();

  size_t cached_bytes() const;

  // Size classes: multiples of 512 bytes below 1 MiB, of 2 MiB above, so a
  // request reuses any block freed by a request of nearly the same size.
  static size_t SizeClass(size_t bytes);

 private:
  cudaError_t AllocateFromDriver(void** block, size_t size) const;
  void FreeToDriver(void* block) const;
  void ReleaseCachedLocked();

  const PoolMemory memory_;
  mutable std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> cached_;  // size class -> free blocks
  size_t cached_bytes_ = 0;
};

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_DEVICE_MEMORY_POOL_H_
