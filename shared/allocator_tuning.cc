#include "shared/allocator_tuning.h"

// Any C library header defines __GLIBC__ on glibc (through <features.h>);
// the test below needs one first, or it never sees glibc.
#include <cstdlib>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace pdserve {

bool TuneAllocatorForStreaming() {
#if defined(__GLIBC__)
  constexpr int kMmapThresholdBytes = 32 << 20;
  constexpr int kTrimThresholdBytes = 256 << 20;
  // mallopt returns 1 on success; setting either value also turns off
  // glibc's own adjustment of them, which is what lets them stay put.
  const bool mmap_ok = mallopt(M_MMAP_THRESHOLD, kMmapThresholdBytes) == 1;
  const bool trim_ok = mallopt(M_TRIM_THRESHOLD, kTrimThresholdBytes) == 1;
  return mmap_ok && trim_ok;
#else
  return true;
#endif
}

} // namespace pdserve
