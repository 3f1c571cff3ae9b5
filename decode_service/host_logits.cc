#include "decode_service/host_logits.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"

namespace pdserve {

absl::StatusOr<std::vector<float>> HostLogits(const HostTensor& lm_head,
                                              std::span<const float> hidden) {
  if (lm_head.shape.size() != 2 || lm_head.shape[1] != static_cast<int64_t>(hidden.size())) {
    std::string shape;
    for (int64_t d : lm_head.shape) absl::StrAppend(&shape, shape.empty() ? "" : ", ", d);
    return absl::InvalidArgumentError(absl::StrCat("lm_head '", lm_head.name, "': shape [", shape,
                                                   "], expected [vocab, ", hidden.size(), "]"));
  }
  if (lm_head.dtype != DType::kF32 && lm_head.dtype != DType::kBF16 &&
      lm_head.dtype != DType::kF16) {
    return absl::InvalidArgumentError(absl::StrCat("lm_head '", lm_head.name, "': dtype ",
                                                   std::string(DTypeName(lm_head.dtype)),
                                                   " is not F32, BF16 or F16"));
  }
  const size_t vocab = static_cast<size_t>(lm_head.shape[0]);
  const size_t width = hidden.size();
  const size_t row_bytes = width * DTypeSize(lm_head.dtype);
  const char* base = static_cast<const char*>(lm_head.data);
  std::vector<float> row(width);
  std::vector<float> logits(vocab);
  for (size_t i = 0; i < vocab; ++i) {
    ConvertToFloat(base + i * row_bytes, lm_head.dtype, width, row.data());
    double sum = 0.0;
    for (size_t j = 0; j < width; ++j) sum += static_cast<double>(row[j]) * hidden[j];
    logits[i] = static_cast<float>(sum);
  }
  return logits;
}

}  // namespace pdserve
