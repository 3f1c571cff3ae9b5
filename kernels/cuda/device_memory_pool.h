// A caching allocator over cudaMalloc for one backend's stream.
//
// The Transformer allocates its activations per call (llama2.c's RunState,
// made per prefill and per decode step). cudaMalloc costs tens of
// microseconds and cudaFree synchronizes the whole device, which at a few
// milliseconds per decode step is a large, avoidable share; so freed blocks
// go to a cache keyed by their rounded size and the next request of that
// size takes one back.
//
// Stream ordering makes the reuse safe: a block returned while work queued
// on the backend's stream may still read it is handed out again only to
// work queued later on that same stream, which runs after. Blocks must not
// be shared with other streams or with the host.
#ifndef PDSERVE_KERNELS_CUDA_DEVICE_MEMORY_POOL_H_
#define PDSERVE_KERNELS_CUDA_DEVICE_MEMORY_POOL_H_

#include <cuda_runtime.h>

#include <cstddef>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace pdserve::gpu {

class DeviceMemoryPool {
 public:
  DeviceMemoryPool() = default;
  DeviceMemoryPool(const DeviceMemoryPool&) = delete;
  DeviceMemoryPool& operator=(const DeviceMemoryPool&) = delete;
  // Frees the cache. Blocks still handed out keep their owner alive (see
  // CudaBuffer), so there are none left by then.
  ~DeviceMemoryPool();

  // A block of at least `bytes` (> 0), its size class in *capacity. When
  // cudaMalloc fails, the cache is released (cudaFree waits for the device)
  // and the allocation tried once more; cudaErrorMemoryAllocation then means
  // the device is full.
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
  void ReleaseCachedLocked();

  mutable std::mutex mutex_;
  std::unordered_map<size_t, std::vector<void*>> cached_;  // size class -> free blocks
  size_t cached_bytes_ = 0;
};

}  // namespace pdserve::gpu

#endif  // PDSERVE_KERNELS_CUDA_DEVICE_MEMORY_POOL_H_
