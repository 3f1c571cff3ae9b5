// The argument check every Backend::UploadWeight implementation shares.
#ifndef PDSERVE_SHARED_WEIGHT_ROW_BLOCKS_H_
#define PDSERVE_SHARED_WEIGHT_ROW_BLOCKS_H_

#include <cstddef>
#include <span>

#include "absl/status/statusor.h"
#include "shared/host_tensor.h"

namespace pdserve {

// Checks the row blocks of one weight as Backend::UploadWeight receives them
// (blocks of [rows_i, cols], or vectors [n], which count as n rows of one
// column) and returns the total element count. INVALID_ARGUMENT, naming the
// tensor, for: no blocks; a rank other than 1 or 2; a column count that
// differs from the first block's; a dtype other than F32, BF16, F16; and,
// when `require_data`, a null data pointer or num_bytes that does not match
// the shape.
absl::StatusOr<size_t> CheckWeightRowBlocks(std::span<const HostTensor> row_blocks,
                                            bool require_data);

}  // namespace pdserve

#endif  // PDSERVE_SHARED_WEIGHT_ROW_BLOCKS_H_
