#include "proto/grpc_support/callback_cq_pin.h"

#include <grpcpp/client_context.h>
#include <grpcpp/create_channel.h>
#include <grpcpp/security/credentials.h>

#include <chrono>
#include <memory>
#include <mutex>

#include "pdserve/v1/prefill.grpc.pb.h"

namespace pdserve {
namespace {

// The pinning channel's one call: to an address nothing listens on, so it
// fails at once; only its start matters (it takes the queue reference).
struct PinCall {
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::PrefillService::Stub> stub;
  grpc::ClientContext context;
  v1::GetModelInfoRequest request;
  v1::ModelInfo response;
};

}  // namespace

void PinCallbackCompletionQueue() {
  static std::once_flag once;
  std::call_once(once, [] {
    // Deliberately never freed: it must outlive every other channel.
    auto* pin = new PinCall();
    pin->channel = grpc::CreateChannel("unix:/nonexistent/pdserve-cq-pin",
                                       grpc::InsecureChannelCredentials());
    pin->stub = v1::PrefillService::NewStub(pin->channel);
    pin->context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(1));
    pin->stub->async()->GetModelInfo(&pin->context, &pin->request, &pin->response,
                                     [](grpc::Status) {});
  });
}

}  // namespace pdserve
