#include "shared/model_fingerprint.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pdserve {

ModelFingerprint MakeFingerprint(const ModelConfig& config, const TensorStore& store) {
  ModelFingerprint fingerprint;
  fingerprint.architecture = config.architecture;
  fingerprint.num_layers = config.num_layers;
  fingerprint.hidden_size = config.hidden_size;
  fingerprint.num_heads = config.num_heads;
  fingerprint.num_kv_heads = config.num_kv_heads;
  fingerprint.head_dim = config.head_dim;
  fingerprint.vocab_size = config.vocab_size;
  fingerprint.dtype = config.torch_dtype;
  fingerprint.weights_hash = store.TableHash();
  return fingerprint;
}

absl::Status CheckSameModel(const ModelFingerprint& ours, const ModelFingerprint& theirs) {
  auto mismatch = [](const char* field, const auto& our_value, const auto& their_value) {
    return absl::FailedPreconditionError(
        absl::StrCat("model mismatch: ", field, ": ours ", our_value, ", prefill's ", their_value));
  };
  if (ours.architecture != theirs.architecture)
    return mismatch("architecture", ours.architecture, theirs.architecture);
  if (ours.num_layers != theirs.num_layers)
    return mismatch("num_layers", ours.num_layers, theirs.num_layers);
  if (ours.hidden_size != theirs.hidden_size)
    return mismatch("hidden_size", ours.hidden_size, theirs.hidden_size);
  if (ours.num_heads != theirs.num_heads)
    return mismatch("num_heads", ours.num_heads, theirs.num_heads);
  if (ours.num_kv_heads != theirs.num_kv_heads) {
    return mismatch("num_kv_heads", ours.num_kv_heads, theirs.num_kv_heads);
  }
  if (ours.head_dim != theirs.head_dim) return mismatch("head_dim", ours.head_dim, theirs.head_dim);
  if (ours.vocab_size != theirs.vocab_size)
    return mismatch("vocab_size", ours.vocab_size, theirs.vocab_size);
  if (ours.dtype != theirs.dtype)
    return mismatch("dtype", std::string(DTypeName(ours.dtype)),
                    std::string(DTypeName(theirs.dtype)));
  if (ours.weights_hash != theirs.weights_hash) {
    return mismatch("weights_hash", absl::StrFormat("%016x", ours.weights_hash),
                    absl::StrFormat("%016x", theirs.weights_hash));
  }
  return absl::OkStatus();
}

}  // namespace pdserve
