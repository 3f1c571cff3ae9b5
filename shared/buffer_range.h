// The element-range check every Backend implementation shares for its copy
// operations (CopyToDevice, CopyToHost, CopyElements).
#ifndef PDSERVE_SHARED_BUFFER_RANGE_H_
#define PDSERVE_SHARED_BUFFER_RANGE_H_

#include <cstddef>

#include "absl/status/status.h"
#include "shared/backend.h"

namespace pdserve {

// OK when elements [offset, offset + n) lie inside `buffer` (n == 0 at
// offset == num_elements() included). Otherwise INVALID_ARGUMENT naming
// `what`, the range and the buffer's element count; an offset + n past
// SIZE_MAX is out of range, not a wrap-around.
absl::Status CheckBufferRange(const DeviceBuffer& buffer, size_t offset, size_t n,
                              const char* what);

}  // namespace pdserve

#endif  // PDSERVE_SHARED_BUFFER_RANGE_H_
