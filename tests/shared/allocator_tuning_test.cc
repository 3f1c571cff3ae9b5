// TuneAllocatorForStreaming, observed through glibc's own accounting
// (mallinfo2): after it, a message-sized block comes from the heap rather
// than from its own mmap, and freeing it keeps the memory for reuse. Its
// own executable, since mallopt changes the whole process.
#include "shared/allocator_tuning.h"

#include <cstdlib>
#include <cstring>

#include <gtest/gtest.h>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace pdserve {
namespace {

#if defined(__GLIBC__)

// glibc's defaults: M_MMAP_THRESHOLD 128 KiB (raised dynamically up to
// 32 MiB as mmapped blocks are freed), M_TRIM_THRESHOLD twice that. 8 MiB is
// a typical KV chunk message plus gRPC's framing.
constexpr size_t kMessageBytes = size_t{8} << 20;
// Above the 32 MiB threshold the header sets: still mmapped.
constexpr size_t kHugeBytes = size_t{64} << 20;

// Touches every page so the allocation is real, and keeps the compiler from
// dropping the malloc/free pair.
void Touch(void* block, size_t bytes) {
  std::memset(block, 1, bytes);
  asm volatile("" : : "r"(block) : "memory");
}

TEST(AllocatorTuningTest, MessageSizedBlocksComeFromTheHeapAndStayAfterFree) {
  ASSERT_TRUE(TuneAllocatorForStreaming());

  const size_t mmapped_before = mallinfo2().hblkhd;
  void* message = std::malloc(kMessageBytes);
  ASSERT_NE(message, nullptr);
  Touch(message, kMessageBytes);
  // Not its own mapping: the default threshold (128 KiB) would have mapped it.
  EXPECT_EQ(mallinfo2().hblkhd, mmapped_before);
  std::free(message);
  // Kept as free heap for the next message (under the 256 MiB trim
  // threshold), not handed back to the kernel.
  EXPECT_GE(mallinfo2().fordblks, kMessageBytes);

  // Larger than the mmap threshold: a mapping of its own, as before.
  void* huge = std::malloc(kHugeBytes);
  ASSERT_NE(huge, nullptr);
  Touch(huge, kHugeBytes);
  EXPECT_GE(mallinfo2().hblkhd, mmapped_before + kHugeBytes);
  std::free(huge);
  EXPECT_EQ(mallinfo2().hblkhd, mmapped_before);
}

#else

TEST(AllocatorTuningTest, DoesNothingOutsideGlibc) { EXPECT_TRUE(TuneAllocatorForStreaming()); }

#endif

}  // namespace
}  // namespace pdserve
