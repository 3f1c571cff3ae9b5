#include "decode_service/prefill_target.h"

#include <arpa/inet.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace pdserve {
namespace {

enum class AddressKind { kIpv4, kIpv6, kUri, kHostName, kInvalid };

bool ValidPort(absl::string_view port) {
  int value = 0;
  return absl::SimpleAtoi(port, &value) && value > 0 && value <= 65535;
}

AddressKind Classify(absl::string_view address) {
  if (absl::StartsWith(address, "dns:") || absl::StartsWith(address, "ipv4:") ||
      absl::StartsWith(address, "ipv6:") || absl::StartsWith(address, "unix:") ||
      absl::StrContains(address, "://")) {
    return AddressKind::kUri;
  }
  if (absl::StartsWith(address, "[")) {
    const size_t close = address.find("]:");
    if (close == absl::string_view::npos) return AddressKind::kInvalid;
    std::string host(address.substr(1, close - 1));
    in6_addr parsed;
    if (inet_pton(AF_INET6, host.c_str(), &parsed) != 1) return AddressKind::kInvalid;
    return ValidPort(address.substr(close + 2)) ? AddressKind::kIpv6 : AddressKind::kInvalid;
  }
  const size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0 || !ValidPort(address.substr(colon + 1))) {
    return AddressKind::kInvalid;
  }
  std::string host(address.substr(0, colon));
  if (host.find(':') != std::string::npos) return AddressKind::kInvalid;  // bare IPv6
  in_addr parsed;
  return inet_pton(AF_INET, host.c_str(), &parsed) == 1 ? AddressKind::kIpv4
                                                        : AddressKind::kHostName;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> SplitPrefillTargets(const std::string& flag) {
  std::vector<std::string> addresses;
  for (absl::string_view entry : absl::StrSplit(flag, ',')) {
    entry = absl::StripAsciiWhitespace(entry);
    if (entry.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--prefill_target: empty entry in '", flag, "' (expected ADDR[,ADDR...])"));
    }
    addresses.emplace_back(entry);
  }
  return addresses;
}

absl::StatusOr<std::string> PrefillChannelTarget(const std::vector<std::string>& addresses) {
  if (addresses.empty()) {
    return absl::InvalidArgumentError("--prefill_target: no address given");
  }
  std::vector<AddressKind> kinds;
  for (const std::string& address : addresses) {
    const AddressKind kind = Classify(address);
    if (kind == AddressKind::kInvalid) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--prefill_target: '", address,
          "' is not HOST:PORT, IPV4:PORT, [IPV6]:PORT or a gRPC URI (dns:///HOST:PORT)"));
    }
    kinds.push_back(kind);
  }
  if (addresses.size() == 1) {
    switch (kinds[0]) {
      case AddressKind::kUri:
        return addresses[0];
      case AddressKind::kHostName:
        return absl::StrCat("dns:///", addresses[0]);
      case AddressKind::kIpv4:
        return absl::StrCat("ipv4:", addresses[0]);
      case AddressKind::kIpv6:
        return absl::StrCat("ipv6:", addresses[0]);
      case AddressKind::kInvalid:
        break;
    }
  }
  for (AddressKind kind : kinds) {
    if (kind != kinds[0] || (kind != AddressKind::kIpv4 && kind != AddressKind::kIpv6)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--prefill_target: a list of ", addresses.size(),
          " addresses must be all IPv4 or all IPv6 literals ('", absl::StrJoin(addresses, ","),
          "'); for host names pass one dns:///NAME:PORT that resolves to every instance"));
    }
  }
  return absl::StrCat(kinds[0] == AddressKind::kIpv4 ? "ipv4:" : "ipv6:",
                      absl::StrJoin(addresses, ","));
}

}  // namespace pdserve
