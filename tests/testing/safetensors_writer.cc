#include "tests/testing/safetensors_writer.h"

#include <algorithm>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace pdserve {
namespace {

// Elements converted and written per step: bounds memory for big tensors.
constexpr int64_t kChunkElements = int64_t{1} << 20;

void AppendLength(std::string& out, uint64_t value) {
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

}  // namespace

int64_t TensorSpec::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::Status WriteSafetensorsStreaming(const std::string& path,
                                       const std::vector<TensorSpec>& specs,
                                       const TensorFiller& fill,
                                       const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::set<std::string> names;
  uint64_t offset = 0;
  for (const TensorSpec& spec : specs) {
    if (!names.insert(spec.name).second || spec.name == "__metadata__") {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": duplicate or reserved tensor name '", spec.name, "'"));
    }
    if (std::any_of(spec.shape.begin(), spec.shape.end(), [](int64_t d) { return d < 0; })) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", spec.name, "' has a negative dimension"));
    }
    const uint64_t bytes = static_cast<uint64_t>(spec.num_elements()) * DTypeSize(spec.dtype);
    header[spec.name] = {{"dtype", std::string(DTypeName(spec.dtype))},
                         {"shape", spec.shape},
                         {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string header_text = header.dump();
  header_text.append((8 - header_text.size() % 8) % 8, ' ');

  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat(path, ": cannot create"));
  std::string prefix;
  AppendLength(prefix, header_text.size());
  out.write(prefix.data(), static_cast<std::streamsize>(prefix.size()));
  out.write(header_text.data(), static_cast<std::streamsize>(header_text.size()));

  std::vector<float> values;
  std::vector<char> converted;
  for (size_t i = 0; i < specs.size(); ++i) {
    const TensorSpec& spec = specs[i];
    const int64_t total = spec.num_elements();
    for (int64_t first = 0; first < total; first += kChunkElements) {
      const int64_t count = std::min(kChunkElements, total - first);
      values.assign(static_cast<size_t>(count), 0.0f);
      fill(i, spec, first, std::span<float>(values));
      converted.resize(static_cast<size_t>(count) * DTypeSize(spec.dtype));
      ConvertFromFloat(values.data(), static_cast<size_t>(count), spec.dtype, converted.data());
      out.write(converted.data(), static_cast<std::streamsize>(converted.size()));
    }
  }
  out.close();
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

absl::Status WriteSafetensors(const std::string& path, const std::vector<NamedTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const NamedTensor& tensor : tensors) {
    if (static_cast<int64_t>(tensor.values.size()) != tensor.spec.num_elements()) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": tensor '", tensor.spec.name, "' has ",
                                                     tensor.values.size(), " values for ",
                                                     tensor.spec.num_elements(), " elements"));
    }
    specs.push_back(tensor.spec);
  }
  return WriteSafetensorsStreaming(
      path, specs,
      [&tensors](size_t index, const TensorSpec&, int64_t first, std::span<float> out) {
        const std::vector<float>& values = tensors[index].values;
        std::copy_n(values.begin() + first, out.size(), out.begin());
      },
      metadata);
}

absl::Status WriteRawSafetensors(const std::string& path, std::string_view header,
                                 std::string_view data, std::optional<uint64_t> header_length) {
  std::string bytes;
  AppendLength(bytes, header_length.value_or(header.size()));
  bytes.append(header);
  bytes.append(data);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat(path, ": cannot create"));
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) return absl::InternalError(absl::StrCat(path, ": write failed"));
  return absl::OkStatus();
}

}  // namespace pdserve
