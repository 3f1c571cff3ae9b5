// Conversions between the wire types of pdserve.v1 and the C++ core, and
// from absl::Status to grpc::Status. The services' server and client files
// are the only users.
#ifndef PDSERVE_PROTO_CONVERT_CONVERT_H_
#define PDSERVE_PROTO_CONVERT_CONVERT_H_

#include <grpcpp/impl/codegen/proto_utils.h>
#include <grpcpp/support/byte_buffer.h>
#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "pdserve/v1/common.pb.h"
#include "shared/dtype.h"
#include "shared/model_fingerprint.h"

namespace pdserve {

// Same code and message; absl and gRPC share the canonical code numbering.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// The request of a method registered raw (WithRawCallbackMethod_*), parsed
// here rather than by gRPC's generated handler, which answers a request it
// cannot parse with a bare UNIMPLEMENTED. INVALID_ARGUMENT naming the
// message type when the bytes are not a valid T: not protobuf, or a string
// field that is not UTF-8 (which proto3 requires). CANCELLED when no
// request arrived at all (gRPC then hands over an invalid buffer, where an
// empty message is a valid empty one): the client cancelled first.
template <typename T>
absl::Status ParseRawRequest(const grpc::ByteBuffer& bytes, T* message) {
  if (!bytes.Valid()) {
    return absl::CancelledError(absl::StrCat(std::string(T::descriptor()->name()),
                                             ": the call ended before its request arrived"));
  }
  // Deserialize consumes its buffer; the copy shares the slices.
  grpc::ByteBuffer copy(bytes);
  const grpc::Status parsed = grpc::SerializationTraits<T>::Deserialize(&copy, message);
  if (parsed.ok()) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      std::string(T::descriptor()->name()),
      ": the request bytes are not a valid message (not protobuf, or a string field that is "
      "not UTF-8)",
      parsed.error_message().empty() ? "" : ": ", parsed.error_message()));
}

// A response of a raw method. INTERNAL when protobuf refuses (over 2 GiB).
template <typename T>
absl::StatusOr<grpc::ByteBuffer> SerializeRawResponse(const T& message) {
  grpc::ByteBuffer bytes;
  bool own_buffer = false;
  const grpc::Status status = grpc::SerializationTraits<T>::Serialize(message, &bytes, &own_buffer);
  if (!status.ok()) {
    return absl::InternalError(absl::StrCat("serialising a ", std::string(T::descriptor()->name()),
                                            ": ", status.error_message()));
  }
  return bytes;
}

v1::DType ToProto(DType dtype);
// INVALID_ARGUMENT for DTYPE_UNSPECIFIED or an unknown value, naming `field`.
absl::StatusOr<DType> FromProto(v1::DType dtype, const char* field);

void ToProto(const ModelFingerprint& fingerprint, v1::ModelFingerprint* out);
absl::StatusOr<ModelFingerprint> FromProto(const v1::ModelFingerprint& fingerprint);

}  // namespace pdserve

#endif  // PDSERVE_PROTO_CONVERT_CONVERT_H_
