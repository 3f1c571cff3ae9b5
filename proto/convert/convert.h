// Conversions between the wire types of pdserve.v1 and the C++ core, and
// from absl::Status to grpc::Status. The services' server and client files
// are the only users.
#ifndef PDSERVE_PROTO_CONVERT_CONVERT_H_
#define PDSERVE_PROTO_CONVERT_CONVERT_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "pdserve/v1/common.pb.h"
#include "shared/dtype.h"
#include "shared/model_fingerprint.h"

namespace pdserve {

// Same code and message; absl and gRPC share the canonical code numbering.
grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

v1::DType ToProto(DType dtype);
// INVALID_ARGUMENT for DTYPE_UNSPECIFIED or an unknown value, naming `field`.
absl::StatusOr<DType> FromProto(v1::DType dtype, const char* field);

void ToProto(const ModelFingerprint& fingerprint, v1::ModelFingerprint* out);
absl::StatusOr<ModelFingerprint> FromProto(const v1::ModelFingerprint& fingerprint);

}  // namespace pdserve

#endif  // PDSERVE_PROTO_CONVERT_CONVERT_H_
