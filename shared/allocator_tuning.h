#ifndef PDSERVE_SHARED_ALLOCATOR_TUNING_H_
#define PDSERVE_SHARED_ALLOCATOR_TUNING_H_

namespace pdserve {

// Keeps glibc malloc from handing the large buffers of KV streaming back to
// the kernel after every message.
//
// Why: gRPC allocates a fresh buffer for every TCP read and every received
// message (MiB each during a KV transfer) and frees it right after. With
// glibc's defaults, freed memory at the top of the heap beyond the trim
// threshold goes back to the kernel and large blocks are mmap()ed, so each
// message lands in newly faulted pages that the kernel must zero first;
// profiles of a loopback KV stream spent more time in clear_page than in
// copying the payload (0.9-1.1 GB/s before, 2.2-2.8 GB/s after on a 2-core
// Sapphire Rapids VM; docs/benchmarks.md). This sets M_MMAP_THRESHOLD to
// 32 MiB (the largest every glibc accepts) and M_TRIM_THRESHOLD to 256 MiB: a
// process keeps at most 256 MiB of freed heap for reuse.
//
// Call once at the top of main(), before any thread starts. Does nothing on
// a C library other than glibc. Returns false when glibc refused a setting.
bool TuneAllocatorForStreaming();

} // namespace pdserve

#endif // PDSERVE_SHARED_ALLOCATOR_TUNING_H_
