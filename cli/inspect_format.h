// pdserve-cli inspect's output: an InspectResponse printed the way one looks
// at a Hugging Face model in a notebook: token ids beside their pieces, the
// module tree, tensor shapes, hidden-state values and the most likely next
// tokens.
#ifndef PDSERVE_CLI_INSPECT_FORMAT_H_
#define PDSERVE_CLI_INSPECT_FORMAT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "pdserve/v1/inspect.pb.h"

namespace pdserve {

// Parses "0,3,-1" into integers ("" is none). INVALID_ARGUMENT naming `flag`
// for anything else.
absl::StatusOr<std::vector<int32_t>> ParseIntList(const std::string& text, const char* flag);

// The response as text (see the file comment); values are shown like
// PyTorch does, the first and last few of a long row.
std::string FormatInspectResponse(const v1::InspectResponse& response);

}  // namespace pdserve

#endif  // PDSERVE_CLI_INSPECT_FORMAT_H_
