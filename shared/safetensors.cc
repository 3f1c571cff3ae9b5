#include "shared/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "shared/file_util.h"
#include "shared/status_macros.h"

namespace pdserve {
namespace {

using Json = nlohmann::json;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";

// The safetensors reference implementation refuses headers above 100 MB; a
// larger one is a corrupt length field, not a real table.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

// Closes a file descriptor on scope exit.
class FdCloser {
 public:
  explicit FdCloser(int fd) : fd_(fd) {}
  ~FdCloser() {
    if (fd_ >= 0) ::close(fd_);
  }
  FdCloser(const FdCloser&) = delete;
  FdCloser& operator=(const FdCloser&) = delete;

 private:
  int fd_;
};

// Unmaps on scope exit unless released.
class MappingGuard {
 public:
  MappingGuard(void* address, size_t bytes) : address_(address), bytes_(bytes) {}
  ~MappingGuard() {
    if (address_ != nullptr) ::munmap(address_, bytes_);
  }
  MappingGuard(const MappingGuard&) = delete;
  MappingGuard& operator=(const MappingGuard&) = delete;
  void* Release() {
    void* address = address_;
    address_ = nullptr;
    return address;
  }

 private:
  void* address_;
  size_t bytes_;
};

absl::StatusOr<DType> ParseDType(const std::string& name) {
  if (name == "F32") return DType::kF32;
  if (name == "BF16") return DType::kBF16;
  if (name == "F16") return DType::kF16;
  if (name == "I32") return DType::kI32;
  return absl::InvalidArgumentError(
      absl::StrCat("dtype \"", name, "\" is not supported (F32, BF16, F16, I32)"));
}

// A non-negative JSON integer, or an error describing `what`.
absl::StatusOr<uint64_t> NonNegativeInteger(const Json& value, const char* what) {
  if (!value.is_number_integer() ||
      (value.is_number_integer() && !value.is_number_unsigned() && value.get<int64_t>() < 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " must be a non-negative integer, got ", value.dump()));
  }
  return value.get<uint64_t>();
}

// Parses one header entry into `tensor` (data left null), checking the
// offsets against `data_bytes`, the size of the data section.
absl::Status ParseEntry(const std::string& name, const Json& entry, uint64_t data_bytes,
                        HostTensor& tensor, uint64_t& begin) {
  if (!entry.is_object()) return absl::InvalidArgumentError("entry must be a JSON object");
  auto dtype_it = entry.find("dtype");
  auto shape_it = entry.find("shape");
  auto offsets_it = entry.find("data_offsets");
  if (dtype_it == entry.end() || !dtype_it->is_string()) {
    return absl::InvalidArgumentError("field 'dtype' missing or not a string");
  }
  if (shape_it == entry.end() || !shape_it->is_array()) {
    return absl::InvalidArgumentError("field 'shape' missing or not a list");
  }
  if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2) {
    return absl::InvalidArgumentError("field 'data_offsets' missing or not a list of two integers");
  }
  tensor.name = name;
  PDSERVE_ASSIGN_OR_RETURN(tensor.dtype, ParseDType(dtype_it->get<std::string>()));

  // Element count with an overflow guard: any count whose byte size exceeds
  // the data section is wrong anyway, so stop as soon as it does.
  uint64_t elements = 1;
  bool too_large = false;
  for (const Json& dim : *shape_it) {
    PDSERVE_ASSIGN_OR_RETURN(uint64_t d, NonNegativeInteger(dim, "shape dimension"));
    if (d > static_cast<uint64_t>(INT64_MAX)) too_large = true;
    tensor.shape.push_back(static_cast<int64_t>(d));
    if (d != 0 && elements > data_bytes / d) too_large = true;
    elements *= d;
  }
  PDSERVE_ASSIGN_OR_RETURN(begin, NonNegativeInteger((*offsets_it)[0], "data_offsets[0]"));
  PDSERVE_ASSIGN_OR_RETURN(uint64_t end, NonNegativeInteger((*offsets_it)[1], "data_offsets[1]"));
  if (begin > end || end > data_bytes) {
    return absl::InvalidArgumentError(absl::StrCat("data_offsets [", begin, ", ", end,
                                                   ") out of range: the data section has ",
                                                   data_bytes, " bytes"));
  }
  const uint64_t element_bytes = DTypeSize(tensor.dtype);
  if (too_large || elements * element_bytes != end - begin) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data_offsets [", begin, ", ", end, ") span ", end - begin, " bytes but shape [",
        absl::StrJoin(tensor.shape, ", "), "] of ", std::string(DTypeName(tensor.dtype)), " needs ",
        too_large ? std::string("more than the whole data section")
                  : absl::StrCat(elements * element_bytes)));
  }
  tensor.num_bytes = static_cast<size_t>(end - begin);
  return absl::OkStatus();
}

// A shard name must stay inside the model directory: relative, and no ".."
// component.
bool IsPlainRelativePath(const std::string& path) {
  if (path.empty() || path.front() == '/') return false;
  size_t start = 0;
  while (start <= path.size()) {
    size_t slash = path.find('/', start);
    if (slash == std::string::npos) slash = path.size();
    if (path.compare(start, slash - start, "..") == 0) return false;
    start = slash + 1;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    if (err == ENOENT) return absl::NotFoundError(absl::StrCat(path, ": no such file"));
    return absl::InvalidArgumentError(absl::StrCat(path, ": cannot open: ", std::strerror(err)));
  }
  FdCloser closer(fd);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    return absl::InternalError(absl::StrCat(path, ": fstat failed: ", std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode))
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a regular file"));
  const uint64_t file_bytes = static_cast<uint64_t>(st.st_size);
  if (file_bytes < 8) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": file has ", file_bytes,
                                                   " bytes, fewer than the 8-byte header length"));
  }
  void* mapping = ::mmap(nullptr, file_bytes, PROT_READ, MAP_SHARED, fd, 0);
  if (mapping == MAP_FAILED) {
    return absl::InternalError(
        absl::StrCat(path, ": mmap of ", file_bytes, " bytes failed: ", std::strerror(errno)));
  }
  MappingGuard guard(mapping, file_bytes);
  const unsigned char* bytes = static_cast<const unsigned char*>(mapping);

  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | bytes[i];  // little-endian
  if (header_bytes > file_bytes - 8 || header_bytes > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length ", header_bytes, " exceeds the ", file_bytes - 8,
                     " bytes after the length field (limit ", kMaxHeaderBytes, ")"));
  }
  Json header;
  try {
    header = Json::parse(bytes + 8, bytes + 8 + header_bytes);
  } catch (const Json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": header JSON parse error: ", e.what()));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header must be a JSON object, got ", header.type_name()));
  }

  const unsigned char* data = bytes + 8 + header_bytes;
  const uint64_t data_bytes = file_bytes - 8 - header_bytes;
  std::map<std::string, HostTensor> tensors;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") continue;  // free-form string map; nothing we need
    HostTensor tensor;
    uint64_t begin = 0;
    absl::Status status = ParseEntry(it.key(), it.value(), data_bytes, tensor, begin);
    if (!status.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", it.key(), "': ", status.message()));
    }
    tensor.data = data + begin;
    tensors.emplace(it.key(), std::move(tensor));
  }

  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = guard.Release();
  file->mapping_bytes_ = file_bytes;
  file->tensors_ = std::move(tensors);
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, mapping_bytes_);
}

const HostTensor* SafetensorsFile::Find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

absl::StatusOr<std::unique_ptr<TensorStore>> TensorStore::Open(const std::string& model_dir) {
  std::unique_ptr<TensorStore> store(new TensorStore());
  const std::string index_path = JoinPath(model_dir, kIndexFile);
  if (RegularFileExists(index_path)) {
    PDSERVE_ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path));
    Json index;
    try {
      index = Json::parse(text);
    } catch (const Json::exception& e) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, ": JSON parse error: ", e.what()));
    }
    auto map_it = index.is_object() ? index.find("weight_map") : index.end();
    if (map_it == index.end() || !map_it->is_object() || map_it->empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": field 'weight_map' missing or not a non-empty object"));
    }
    // Open each shard once, in name order, so a missing shard is reported the
    // same way on every run.
    std::map<std::string, SafetensorsFile*> shards;
    for (auto it = map_it->begin(); it != map_it->end(); ++it) {
      if (!it->is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(index_path,
                                                       ": weight_map entry for tensor '", it.key(),
                                                       "' must be a file name, got ", it->dump()));
      }
      const std::string shard = it->get<std::string>();
      if (!IsPlainRelativePath(shard)) {
        return absl::InvalidArgumentError(
            absl::StrCat(index_path, ": weight_map entry for tensor '", it.key(), "' names '",
                         shard, "', which is not a file inside the model directory"));
      }
      shards.emplace(shard, nullptr);
    }
    for (auto& [shard, file] : shards) {
      PDSERVE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> opened,
                               SafetensorsFile::Open(JoinPath(model_dir, shard)));
      file = opened.get();
      store->files_.push_back(std::move(opened));
    }
    for (auto it = map_it->begin(); it != map_it->end(); ++it) {
      const std::string shard = it->get<std::string>();
      const HostTensor* tensor = shards.at(shard)->Find(it.key());
      if (tensor == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(index_path, ": tensor '", it.key(),
                                                       "' is mapped to '", shard,
                                                       "' but that shard does not contain it"));
      }
      store->index_.emplace(it.key(), tensor);
    }
    return store;
  }

  const std::string single_path = JoinPath(model_dir, kSingleFile);
  if (!RegularFileExists(single_path)) {
    return absl::NotFoundError(
        absl::StrCat(model_dir, ": neither ", kSingleFile, " nor ", kIndexFile, " exists"));
  }
  PDSERVE_ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> file,
                           SafetensorsFile::Open(single_path));
  for (const auto& [name, tensor] : file->tensors()) store->index_.emplace(name, &tensor);
  store->files_.push_back(std::move(file));
  return store;
}

absl::StatusOr<const HostTensor*> TensorStore::Get(const std::string& name) const {
  const HostTensor* tensor = Find(name);
  if (tensor == nullptr)
    return absl::NotFoundError(absl::StrCat("tensor '", name, "' not found in the checkpoint"));
  return tensor;
}

const HostTensor* TensorStore::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

std::vector<std::string> TensorStore::Names() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& entry : index_) names.push_back(entry.first);
  return names;
}

uint64_t TensorStore::TableHash() const {
  // FNV-1a 64 (http://www.isthe.com/chongo/tech/comp/fnv/): offset basis
  // 14695981039346656037, prime 1099511628211. Per tensor, in name order:
  // the name, a 0 byte, the dtype name, a 0 byte, the rank and each
  // dimension as 8 little-endian bytes, so no two tables share an encoding.
  uint64_t hash = 14695981039346656037ull;
  auto mix_byte = [&hash](unsigned char byte) {
    hash ^= byte;
    hash *= 1099511628211ull;
  };
  auto mix_u64 = [&mix_byte](uint64_t value) {
    for (int i = 0; i < 8; ++i) mix_byte(static_cast<unsigned char>(value >> (8 * i)));
  };
  for (const auto& [name, tensor] : index_) {
    for (char c : name) mix_byte(static_cast<unsigned char>(c));
    mix_byte(0);
    for (char c : DTypeName(tensor->dtype)) mix_byte(static_cast<unsigned char>(c));
    mix_byte(0);
    mix_u64(tensor->shape.size());
    for (int64_t d : tensor->shape) mix_u64(static_cast<uint64_t>(d));
  }
  return hash;
}

}  // namespace pdserve
