#include "decode_service/prefill_stream_checks.h"

#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/str_cat.h"
#include "proto/convert/convert.h"
#include "proto/grpc_support/callback_cq_pin.h"
#include "shared/status_macros.h"

namespace pdserve {
namespace {

absl::Status CheckLayoutField(const char* field, int theirs, int ours) {
  if (theirs == ours) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("prefill header ", field, ": prefill's ", theirs, ", ours ", ours));
}

}  // namespace

PrefillExpectation PrefillExpectation::For(const ModelConfig& config,
                                           const ModelFingerprint& fingerprint) {
  PrefillExpectation expectation;
  expectation.fingerprint = fingerprint;
  expectation.num_layers = config.num_layers;
  expectation.num_kv_heads = config.num_kv_heads;
  expectation.head_dim = config.head_dim;
  expectation.hidden_size = config.hidden_size;
  return expectation;
}

std::shared_ptr<grpc::Channel> MakePrefillChannel(const std::string& target,
                                                  int max_message_bytes) {
  PinCallbackCompletionQueue();  // before any callback call: see callback_cq_pin.h
  grpc::ChannelArguments args;
  args.SetLoadBalancingPolicyName("round_robin");
  args.SetMaxReceiveMessageSize(max_message_bytes);
  args.SetMaxSendMessageSize(max_message_bytes);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

absl::StatusOr<DType> CheckPrefillHeader(const v1::PrefillHeader& header,
                                         const PrefillExpectation& expected, int prompt_tokens) {
  absl::StatusOr<ModelFingerprint> theirs = FromProto(header.fingerprint());
  if (!theirs.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("prefill header fingerprint: ", theirs.status().message()));
  }
  PDSERVE_RETURN_IF_ERROR(CheckSameModel(expected.fingerprint, *theirs));
  PDSERVE_RETURN_IF_ERROR(CheckLayoutField("num_layers", header.num_layers(), expected.num_layers));
  PDSERVE_RETURN_IF_ERROR(
      CheckLayoutField("num_kv_heads", header.num_kv_heads(), expected.num_kv_heads));
  PDSERVE_RETURN_IF_ERROR(CheckLayoutField("head_dim", header.head_dim(), expected.head_dim));
  PDSERVE_RETURN_IF_ERROR(
      CheckLayoutField("hidden_size", header.hidden_size(), expected.hidden_size));
  if (header.num_tokens() != prompt_tokens) {
    return absl::InternalError(absl::StrCat("prefill header num_tokens: ", header.num_tokens(),
                                            ", but the prompt has ", prompt_tokens, " tokens"));
  }
  absl::StatusOr<DType> kv_dtype = FromProto(header.kv_dtype(), "prefill header kv_dtype");
  if (!kv_dtype.ok()) return absl::InternalError(kv_dtype.status().message());
  return *kv_dtype;
}

absl::Status PrefillStreamStatus(const grpc::Status& status, bool cancelled_by_us,
                                 bool after_header, absl::string_view peer,
                                 absl::string_view what) {
  if (cancelled_by_us)
    return absl::CancelledError(absl::StrCat(what, " cancelled: the request ended"));
  const std::string where = peer.empty() ? "" : absl::StrCat(" (", peer, ")");
  switch (status.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::UNKNOWN:
    case grpc::StatusCode::CANCELLED:  // not by us: the instance went away
      return absl::UnavailableError(absl::StrCat(
          after_header ? "prefill instance failed mid-stream" : "no prefill instance reachable",
          where, ": ", status.error_message()));
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return absl::DeadlineExceededError(absl::StrCat(
          what,
          " did not finish before its deadline (the request's deadline or --prefill_timeout_ms)",
          where, ": ", status.error_message()));
    default:
      return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                          absl::StrCat(what, where, ": ", status.error_message()));
  }
}

}  // namespace pdserve
