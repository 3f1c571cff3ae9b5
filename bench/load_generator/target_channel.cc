#include "bench/load_generator/target_channel.h"

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>
#include <grpcpp/support/channel_arguments.h>

#include "absl/strings/str_cat.h"
#include "proto/grpc_support/callback_cq_pin.h"

namespace pdserve::bench {

absl::StatusOr<std::vector<std::shared_ptr<grpc::Channel>>> ConnectToTarget(
    const std::string& target, int count, absl::Duration connect_timeout) {
  PinCallbackCompletionQueue();  // before any callback call: see callback_cq_pin.h
  std::vector<std::shared_ptr<grpc::Channel>> channels;
  const absl::Time deadline = absl::Now() + connect_timeout;
  for (int i = 0; i < count; ++i) {
    grpc::ChannelArguments args;
    // A private subchannel pool per channel: one TCP connection each.
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    args.SetInt("pdserve.bench.channel_index", i);
    auto channel = grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
    if (!channel->WaitForConnected(absl::ToChronoTime(deadline))) {
      return absl::UnavailableError(absl::StrCat("target ", target, ": channel ", i,
                                                 " not connected within connect_timeout_s ",
                                                 absl::ToDoubleSeconds(connect_timeout)));
    }
    channels.push_back(std::move(channel));
  }
  return channels;
}

absl::StatusOr<std::vector<int32_t>> TokenizeOnTarget(v1::GenerateService::Stub* stub,
                                                      const std::string& text,
                                                      absl::Duration timeout) {
  grpc::ClientContext context;
  context.set_deadline(absl::ToChronoTime(absl::Now() + timeout));
  v1::TokenizeRequest request;
  request.set_text(text);
  v1::TokenizeResponse response;
  const grpc::Status status = stub->Tokenize(&context, request, &response);
  if (!status.ok()) {
    return absl::Status(static_cast<absl::StatusCode>(status.error_code()),
                        absl::StrCat("Tokenize: ", status.error_message()));
  }
  return std::vector<int32_t>(response.token_ids().begin(), response.token_ids().end());
}

}  // namespace pdserve::bench
