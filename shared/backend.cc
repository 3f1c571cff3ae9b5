#include "shared/backend.h"

#include <memory>

#include "shared/status_macros.h"

namespace pdserve {
namespace {

// What the default CopyToHostAsync returns: its copy ran synchronously.
class FinishedHostCopy final : public HostCopy {
 public:
  bool Ready() override { return true; }
  absl::Status Wait() override { return absl::OkStatus(); }
};

}  // namespace

absl::StatusOr<HostBlockPtr> Backend::AllocateHostBlock(size_t bytes) {
  return MakeHeapHostBlock(bytes);
}

absl::StatusOr<std::unique_ptr<HostCopy>> Backend::CopyToHostAsync(const DeviceBuffer& src,
                                                                   size_t src_offset, size_t n,
                                                                   void* dst) {
  PDSERVE_RETURN_IF_ERROR(CopyToHost(src, src_offset, n, dst, src.dtype()));
  return std::make_unique<FinishedHostCopy>();
}

}  // namespace pdserve
