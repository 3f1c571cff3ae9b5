#include "shared/buffer_range.h"

#include "absl/strings/str_cat.h"

namespace pdserve {

absl::Status CheckBufferRange(const DeviceBuffer& buffer, size_t offset, size_t n,
                              const char* what) {
  // Written so that nothing overflows: n is compared with what is left.
  if (offset > buffer.num_elements() || n > buffer.num_elements() - offset) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": elements [", offset, ", ", offset + n,
                                                   ") exceed the buffer's ",
                                                   buffer.num_elements()));
  }
  return absl::OkStatus();
}

}  // namespace pdserve
