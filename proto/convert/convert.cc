#include "proto/convert/convert.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "shared/status_macros.h"

namespace pdserve {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

v1::DType ToProto(DType dtype) {
  switch (dtype) {
    case DType::kF32:
      return v1::DTYPE_F32;
    case DType::kBF16:
      return v1::DTYPE_BF16;
    case DType::kF16:
      return v1::DTYPE_F16;
    case DType::kI32:
      break;
  }
  return v1::DTYPE_UNSPECIFIED;
}

absl::StatusOr<DType> FromProto(v1::DType dtype, const char* field) {
  switch (dtype) {
    case v1::DTYPE_F32:
      return DType::kF32;
    case v1::DTYPE_BF16:
      return DType::kBF16;
    case v1::DTYPE_F16:
      return DType::kF16;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": unsupported dtype ", static_cast<int>(dtype),
                       " (expected DTYPE_F32, DTYPE_BF16 or DTYPE_F16)"));
  }
}

void ToProto(const ModelFingerprint& fingerprint, v1::ModelFingerprint* out) {
  out->set_architecture(fingerprint.architecture);
  out->set_num_layers(fingerprint.num_layers);
  out->set_hidden_size(fingerprint.hidden_size);
  out->set_num_heads(fingerprint.num_heads);
  out->set_num_kv_heads(fingerprint.num_kv_heads);
  out->set_head_dim(fingerprint.head_dim);
  out->set_vocab_size(fingerprint.vocab_size);
  out->set_dtype(ToProto(fingerprint.dtype));
  out->set_weights_hash(fingerprint.weights_hash);
}

absl::StatusOr<ModelFingerprint> FromProto(const v1::ModelFingerprint& fingerprint) {
  ModelFingerprint out;
  out.architecture = fingerprint.architecture();
  out.num_layers = fingerprint.num_layers();
  out.hidden_size = fingerprint.hidden_size();
  out.num_heads = fingerprint.num_heads();
  out.num_kv_heads = fingerprint.num_kv_heads();
  out.head_dim = fingerprint.head_dim();
  out.vocab_size = fingerprint.vocab_size();
  PDSERVE_ASSIGN_OR_RETURN(out.dtype, FromProto(fingerprint.dtype(), "fingerprint.dtype"));
  out.weights_hash = fingerprint.weights_hash();
  return out;
}

}  // namespace pdserve
