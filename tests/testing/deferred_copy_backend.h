// A test backend whose device-to-host copies end late, as on a GPU.
#ifndef PDSERVE_TESTS_TESTING_DEFERRED_COPY_BACKEND_H_
#define PDSERVE_TESTS_TESTING_DEFERRED_COPY_BACKEND_H_

#include <memory>

#include "shared/backend.h"
#include "tests/testing/forwarding_backend.h"

namespace pdserve {

// Wraps a (CPU) backend and models a device's asynchronous copies, so that
// CPU-only tests see what a GPU run would: CopyToHostAsync snapshots the
// source at once (the device's pack into staging, so later ops may
// overwrite it) but writes the destination only when the copy is waited
// for (or, with set_copies_end_at_once(true), at once). AllocateHostBlock's
// blocks are filled with kPoison, so a consumer that reads a destination
// before its copy ended reads poison. It counts live blocks and copies for
// leak checks, notes a copy destroyed after its destination block (the DMA
// engine would write freed memory), and can fail one copy. Thread-safe
// counters: blocks may be destroyed on gRPC threads, after the backend.
class DeferredCopyBackend final : public ForwardingBackend {
 public:
  static constexpr unsigned char kPoison = 0xCD;

  explicit DeferredCopyBackend(std::unique_ptr<Backend> inner);
  ~DeferredCopyBackend() override;

  absl::StatusOr<HostBlockPtr> AllocateHostBlock(size_t bytes) override;
  absl::StatusOr<std::unique_ptr<HostCopy>> CopyToHostAsync(const DeviceBuffer& src,
                                                            size_t src_offset, size_t n,
                                                            void* dst) override;

  // The copy started `ordinal`-th (1-based, counting every CopyToHostAsync)
  // ends with INTERNAL in Wait() and writes nothing; 0: none fails.
  void FailCopy(int ordinal);
  void set_copies_end_at_once(bool at_once);

  int live_blocks() const;
  int live_copies() const;
  int copies_started() const;
  // Copies destroyed after the block they write into was freed (must be 0).
  int copies_outliving_destination() const;

  struct State;  // shared with the blocks and copies it hands out

 private:
  std::shared_ptr<State> state_;
};

}  // namespace pdserve

#endif  // PDSERVE_TESTS_TESTING_DEFERRED_COPY_BACKEND_H_
