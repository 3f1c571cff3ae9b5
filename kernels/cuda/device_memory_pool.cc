#include "kernels/cuda/device_memory_pool.h"

namespace pdserve::gpu {

DeviceMemoryPool::~DeviceMemoryPool() { ReleaseCachedLocked(); }

size_t DeviceMemoryPool::SizeClass(size_t bytes) {
  constexpr size_t kSmallGranule = 512;
  constexpr size_t kLargeGranule = size_t{2} << 20;
  constexpr size_t kLargeThreshold = size_t{1} << 20;
  const size_t granule = bytes < kLargeThreshold ? kSmallGranule : kLargeGranule;
  return (bytes + granule - 1) / granule * granule;
}

cudaError_t DeviceMemoryPool::Allocate(size_t bytes, void** block, size_t* capacity) {
  const size_t size = SizeClass(bytes);
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = cached_.find(size);
  if (it != cached_.end() && !it->second.empty()) {
    *block = it->second.back();
    it->second.pop_back();
    cached_bytes_ -= size;
    *capacity = size;
    return cudaSuccess;
  }
  cudaError_t status = AllocateFromDriver(block, size);
  if (status == cudaErrorMemoryAllocation && cached_bytes_ > 0) {
    cudaGetLastError();  // not sticky; clear it before retrying
    ReleaseCachedLocked();
    status = AllocateFromDriver(block, size);
  }
  if (status != cudaSuccess) {
    *block = nullptr;
    return status;
  }
  *capacity = size;
  return cudaSuccess;
}

void DeviceMemoryPool::Free(void* block, size_t capacity) {
  if (block == nullptr) return;
  std::lock_guard<std::mutex> lock(mutex_);
  cached_[capacity].push_back(block);
  cached_bytes_ += capacity;
}

void DeviceMemoryPool::ReleaseCached() {
  std::lock_guard<std::mutex> lock(mutex_);
  ReleaseCachedLocked();
}

cudaError_t DeviceMemoryPool::AllocateFromDriver(void** block, size_t size) const {
  if (memory_ == PoolMemory::kPinnedHost) return cudaHostAlloc(block, size, cudaHostAllocDefault);
  return cudaMalloc(block, size);
}

void DeviceMemoryPool::FreeToDriver(void* block) const {
  if (memory_ == PoolMemory::kPinnedHost) {
    cudaFreeHost(block);
  } else {
    cudaFree(block);
  }
}

void DeviceMemoryPool::ReleaseCachedLocked() {
  for (auto& [size, blocks] : cached_) {
    for (void* block : blocks) FreeToDriver(block);
  }
  cached_.clear();
  cached_bytes_ = 0;
}

size_t DeviceMemoryPool::cached_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return cached_bytes_;
}

}  // namespace pdserve::gpu
