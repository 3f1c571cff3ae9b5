// Connections to the decode service under test.
#ifndef PDSERVE_BENCH_LOAD_GENERATOR_TARGET_CHANNEL_H_
#define PDSERVE_BENCH_LOAD_GENERATOR_TARGET_CHANNEL_H_

#include <grpcpp/channel.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "pdserve/v1/generate.grpc.pb.h"

namespace pdserve::bench {

// `count` insecure channels to `target`, each with its own TCP connection
// (gRPC would otherwise share one subchannel among equal channels), and
// waits until each is connected. Errors: UNAVAILABLE naming the target when
// a channel is not connected within `connect_timeout`.
absl::StatusOr<std::vector<std::shared_ptr<grpc::Channel>>> ConnectToTarget(
    const std::string& target, int count, absl::Duration connect_timeout);

// Token ids the target's tokenizer makes of `text` (Tokenize RPC with the
// server's default BOS setting, as for a Generate request without add_bos).
// Errors: the RPC's status, with "Tokenize" prefixed to the message.
absl::StatusOr<std::vector<int32_t>> TokenizeOnTarget(v1::GenerateService::Stub* stub,
                                                      const std::string& text,
                                                      absl::Duration timeout);

}  // namespace pdserve::bench

#endif  // PDSERVE_BENCH_LOAD_GENERATOR_TARGET_CHANNEL_H_
