// Turns --prefill_target into a gRPC channel target that load-balances over
// every prefill instance with gRPC's round_robin policy.
#ifndef PDSERVE_DECODE_SERVICE_PREFILL_TARGET_H_
#define PDSERVE_DECODE_SERVICE_PREFILL_TARGET_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace pdserve {

// Splits a comma list ("127.0.0.1:50051,127.0.0.1:50061") into its entries,
// trimming spaces. INVALID_ARGUMENT naming --prefill_target for an empty list
// or an empty entry.
absl::StatusOr<std::vector<std::string>> SplitPrefillTargets(const std::string& flag);

// The channel target for `addresses` (entries of SplitPrefillTargets):
//   * all IPv4 "a.b.c.d:port"      -> "ipv4:a.b.c.d:port,..." (one subchannel each)
//   * all IPv6 "[addr]:port"       -> "ipv6:[addr]:port,..."
//   * one URI with a scheme ("dns:///prefill.svc:50051", "unix:/path", ...)
//                                  -> passed through unchanged
//   * one "host:port"              -> "dns:///host:port" (every address the
//                                     name resolves to is a backend)
// INVALID_ARGUMENT for anything else (several host names, mixed families, a
// missing port), naming --prefill_target and the entry.
absl::StatusOr<std::string> PrefillChannelTarget(const std::vector<std::string>& addresses);

}  // namespace pdserve

#endif  // PDSERVE_DECODE_SERVICE_PREFILL_TARGET_H_
