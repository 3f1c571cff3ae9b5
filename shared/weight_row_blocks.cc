#include "shared/weight_row_blocks.h"

#include <string>

#include "absl/strings/str_cat.h"

namespace pdserve {

absl::StatusOr<size_t> CheckWeightRowBlocks(std::span<const HostTensor> row_blocks,
                                            bool require_data) {
  if (row_blocks.empty()) return absl::InvalidArgumentError("UploadWeight: no row blocks");
  auto columns = [](const HostTensor& t) { return t.shape.size() >= 2 ? t.shape.back() : 1; };
  const int64_t cols = columns(row_blocks[0]);
  size_t total = 0;
  for (const HostTensor& block : row_blocks) {
    if (block.shape.empty() || block.shape.size() > 2) {
      return absl::InvalidArgumentError(absl::StrCat("UploadWeight: ", block.name, " has rank ",
                                                     block.shape.size(), ", expected 1 or 2"));
    }
    if (columns(block) != cols) {
      return absl::InvalidArgumentError(absl::StrCat("UploadWeight: ", block.name, " has ",
                                                     columns(block), " columns, but ",
                                                     row_blocks[0].name, " has ", cols));
    }
    if (block.dtype == DType::kI32) {
      return absl::InvalidArgumentError(
          absl::StrCat("UploadWeight: ", block.name, " has dtype I32, expected F32, BF16 or F16"));
    }
    const size_t elements = static_cast<size_t>(block.num_elements());
    if (require_data &&
        (block.data == nullptr || block.num_bytes != elements * DTypeSize(block.dtype))) {
      return absl::InvalidArgumentError(absl::StrCat("UploadWeight: ", block.name, " holds ",
                                                     block.num_bytes, " bytes, its shape needs ",
                                                     elements * DTypeSize(block.dtype)));
    }
    total += elements;
  }
  return total;
}

}  // namespace pdserve
