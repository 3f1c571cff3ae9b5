#include "decode_service/serving_model.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "kernels/backend_factory.h"
#include "shared/status_macros.h"

namespace pdserve {

absl::StatusOr<std::unique_ptr<ServingModel>> ServingModel::Load(
    const std::string& model_dir, std::string_view device, const CpuBackendOptions& cpu_options) {
  std::unique_ptr<ServingModel> model(new ServingModel());
  model->model_dir_ = model_dir;
  PDSERVE_ASSIGN_OR_RETURN(model->config_, LoadModelConfig(model_dir));
  PDSERVE_ASSIGN_OR_RETURN(model->weights_, LoadModelWeights(model_dir, model->config_));
  model->fingerprint_ = MakeFingerprint(model->config_, *model->weights_.store);
  for (const std::string& name : model->weights_.store->Names()) {
    model->parameter_count_ += model->weights_.store->Find(name)->num_elements();
  }
  PDSERVE_ASSIGN_OR_RETURN(model->tokenizer_, Tokenizer::Load(model_dir));
  if (model->tokenizer_->vocab_size() > model->config_.vocab_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        model_dir, ": the tokenizer has ", model->tokenizer_->vocab_size(),
        " ids but config.json's vocab_size is ", model->config_.vocab_size));
  }
  PDSERVE_ASSIGN_OR_RETURN(model->backend_, CreateBackend(device, cpu_options));
  PDSERVE_ASSIGN_OR_RETURN(model->transformer_,
                           Transformer::Create(model->config_, model->weights_,
                                               model->backend_.get()));
  return model;
}

}  // namespace pdserve
