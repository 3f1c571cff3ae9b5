// The port file a service writes once it listens, so that a launcher that
// asked for an ephemeral port (--listen 127.0.0.1:0) learns the real one.
#ifndef PDSERVE_SHARED_PORT_FILE_H_
#define PDSERVE_SHARED_PORT_FILE_H_

#include <string>

#include "absl/status/status.h"

namespace pdserve {

// Writes `port` and a newline to `path` atomically: into a temporary file in
// the same directory, then rename(2), so a reader polling for `path` never
// sees it empty or half written. INTERNAL naming the path on any I/O error;
// INVALID_ARGUMENT when `port` is outside [1, 65535].
absl::Status WritePortFile(const std::string& path, int port);

}  // namespace pdserve

#endif  // PDSERVE_SHARED_PORT_FILE_H_
