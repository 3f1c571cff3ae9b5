// Whole-file reads for the small text files of a model directory
// (config.json, tokenizer_config.json, model.safetensors.index.json, ...).
#ifndef PDSERVE_SHARED_FILE_UTIL_H_
#define PDSERVE_SHARED_FILE_UTIL_H_

#include <string>

#include "absl/status/statusor.h"

namespace pdserve {

// The bytes of `path`. Errors: NOT_FOUND when it does not exist;
// INVALID_ARGUMENT when it is a directory; INTERNAL for a read error; each
// naming the path.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// True when `path` names an existing regular file (or a link to one).
bool RegularFileExists(const std::string& path);

// `dir` + "/" + `name`, without doubling a trailing slash.
std::string JoinPath(const std::string& dir, const std::string& name);

}  // namespace pdserve

#endif  // PDSERVE_SHARED_FILE_UTIL_H_
