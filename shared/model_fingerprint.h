// What prefill and decode compare before trusting each other's KV cache.
#ifndef PDSERVE_SHARED_MODEL_FINGERPRINT_H_
#define PDSERVE_SHARED_MODEL_FINGERPRINT_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "shared/model_config.h"
#include "shared/safetensors.h"

namespace pdserve {

struct ModelFingerprint {
  std::string architecture;
  int num_layers = 0;
  int hidden_size = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;
  int vocab_size = 0;
  DType dtype = DType::kF32;  // checkpoint dtype
  uint64_t weights_hash = 0;  // TensorStore::TableHash()
};

ModelFingerprint MakeFingerprint(const ModelConfig& config, const TensorStore& store);

// OK when equal; otherwise FAILED_PRECONDITION naming the first differing
// field with both values ("num_layers: ours 5, prefill's 2").
absl::Status CheckSameModel(const ModelFingerprint& ours, const ModelFingerprint& theirs);

}  // namespace pdserve

#endif  // PDSERVE_SHARED_MODEL_FINGERPRINT_H_
