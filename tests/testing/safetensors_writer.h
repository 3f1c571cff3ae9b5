// Writes .safetensors files for tests and tools: well-formed ones from float
// data, and raw bytes for crafting malformed ones.
#ifndef PDSERVE_TESTS_TESTING_SAFETENSORS_WRITER_H_
#define PDSERVE_TESTS_TESTING_SAFETENSORS_WRITER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "shared/dtype.h"

namespace pdserve {

// Name, element type on disk and shape (row-major) of one tensor.
struct TensorSpec {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;

  int64_t num_elements() const;
};

// A tensor with its values as float32; WriteSafetensors converts them to
// `dtype` (bf16/f16 round to nearest even, dtype.h).
struct NamedTensor {
  TensorSpec spec;
  std::vector<float> values;  // num_elements() values, row-major
};

// Produces elements [first, first + out.size()) of `spec`, row-major, as
// float32. Called in order, in chunks, so a writer never holds a whole large
// tensor in memory.
using TensorFiller = std::function<void(size_t tensor_index, const TensorSpec& spec, int64_t first,
                                        std::span<float> out)>;

// Writes `specs` in the given order to `path`: header with data_offsets laid
// out back to back (header padded with spaces to a multiple of 8 bytes so
// every tensor starts 8-byte aligned), then each tensor's data from `fill`.
// `metadata` becomes "__metadata__" when not empty. Errors: INVALID_ARGUMENT
// for a duplicate name or negative dimension; INTERNAL for an I/O failure.
absl::Status WriteSafetensorsStreaming(const std::string& path,
                                       const std::vector<TensorSpec>& specs,
                                       const TensorFiller& fill,
                                       const std::map<std::string, std::string>& metadata = {});

// As above from in-memory tensors; INVALID_ARGUMENT when a tensor's values
// do not match its shape.
absl::Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Writes exactly: the 8-byte little-endian header length (`header.size()`
// unless `header_length` overrides it), `header`, then `data`. For malformed
// files; no validation at all.
absl::Status WriteRawSafetensors(const std::string& path, std::string_view header,
                                 std::string_view data,
                                 std::optional<uint64_t> header_length = std::nullopt);

}  // namespace pdserve

#endif  // PDSERVE_TESTS_TESTING_SAFETENSORS_WRITER_H_
