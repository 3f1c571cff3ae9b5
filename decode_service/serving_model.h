// Everything the decode service loads at start-up for one model: config,
// weights, tokenizer, the backend and the Transformer on it.
#ifndef PDSERVE_DECODE_SERVICE_SERVING_MODEL_H_
#define PDSERVE_DECODE_SERVICE_SERVING_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/cpu/cpu_backend.h"
#include "shared/backend.h"
#include "shared/model_config.h"
#include "shared/model_fingerprint.h"
#include "shared/model_weights.h"
#include "shared/tokenizer.h"
#include "shared/transformer.h"

namespace pdserve {

class ServingModel {
 public:
  // Loads `model_dir` onto the backend for `device` ("cpu", "cuda", "auto");
  // a CPU backend is built with `cpu_options` (weight dtype, threads).
  // Errors: those of LoadModelConfig, LoadModelWeights, Tokenizer::Load,
  // CreateBackend and Transformer::Create; INVALID_ARGUMENT when the
  // tokenizer's vocabulary is larger than the model's vocab_size.
  static absl::StatusOr<std::unique_ptr<ServingModel>> Load(
      const std::string& model_dir, std::string_view device,
      const CpuBackendOptions& cpu_options = CpuBackendOptions());

  const std::string& model_dir() const { return model_dir_; }
  const ModelConfig& config() const { return config_; }
  const ModelFingerprint& fingerprint() const { return fingerprint_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  Backend& backend() { return *backend_; }
  Transformer& transformer() { return *transformer_; }
  // The checkpoint's host tensors (memory-mapped): the tensor table, and
  // weights read on the host (Inspect's lm_head).
  const ModelWeights& weights() const { return weights_; }
  // Elements of every weight tensor of the checkpoint.
  int64_t parameter_count() const { return parameter_count_; }

 private:
  ServingModel() = default;

  std::string model_dir_;
  ModelConfig config_;
  ModelFingerprint fingerprint_;
  int64_t parameter_count_ = 0;
  std::unique_ptr<Tokenizer> tokenizer_;
  // Destroyed in reverse: the Transformer before the backend it uses, the
  // backend before the weights it may alias.
  ModelWeights weights_;
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Transformer> transformer_;
};

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_SERVING_MODEL_H_
