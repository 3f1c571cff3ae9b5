// Reader for the safetensors format
// (https://github.com/huggingface/safetensors#format): an 8-byte
// little-endian header length N, N bytes of JSON mapping tensor names to
// {dtype, shape, data_offsets}, then the raw data. Files are memory-mapped
// read-only and tensors are used in place.
#ifndef PDSERVE_SHARED_SAFETENSORS_H_
#define PDSERVE_SHARED_SAFETENSORS_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "shared/host_tensor.h"

namespace pdserve {

// One memory-mapped .safetensors file.
class SafetensorsFile {
 public:
  // Errors (INVALID_ARGUMENT unless noted, each naming the file and, where it
  // applies, the tensor): NOT_FOUND for a missing file; header length beyond
  // the file; JSON parse error; unsupported dtype; data_offsets out of range
  // or not matching dtype x shape.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // nullptr when absent.
  const HostTensor* Find(const std::string& name) const;
  const std::map<std::string, HostTensor>& tensors() const { return tensors_; }
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;
  std::string path_;
  void* mapping_ = nullptr;
  size_t mapping_bytes_ = 0;
  std::map<std::string, HostTensor> tensors_;
};

// All tensors of a model directory: `model.safetensors`, or the shards listed
// in `model.safetensors.index.json` ("weight_map": name -> file).
class TensorStore {
 public:
  // Errors: NOT_FOUND when neither file exists; those of SafetensorsFile::Open;
  // INVALID_ARGUMENT for a bad index or a tensor the index names but its shard
  // lacks.
  static absl::StatusOr<std::unique_ptr<TensorStore>> Open(const std::string& model_dir);

  // NOT_FOUND naming the tensor when absent.
  absl::StatusOr<const HostTensor*> Get(const std::string& name) const;
  const HostTensor* Find(const std::string& name) const;
  std::vector<std::string> Names() const;  // sorted

  // FNV-1a 64 hash over the sorted (name, dtype, shape) table: identifies the
  // checkpoint's layout for the model fingerprint without reading the data.
  uint64_t TableHash() const;

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const HostTensor*> index_;
};

}  // namespace pdserve

#endif  // PDSERVE_SHARED_SAFETENSORS_H_
