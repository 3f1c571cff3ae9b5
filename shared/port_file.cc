#include "shared/port_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace pdserve {

absl::Status WritePortFile(const std::string& path, int port) {
  if (port < 1 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("port file ", path, ": port ", port, " outside [1, 65535]"));
  }
  // The pid keeps two writers of the same path from sharing a temporary.
  const std::string tmp = absl::StrCat(path, ".tmp.", getpid());
  const int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return absl::InternalError(absl::StrCat("port file ", tmp, ": open failed: ", std::strerror(errno)));
  }
  const std::string text = absl::StrCat(port, "\n");
  const ssize_t written = write(fd, text.data(), text.size());
  const int write_errno = errno;
  if (close(fd) != 0 || written != static_cast<ssize_t>(text.size())) {
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("port file ", tmp, ": write failed: ",
                                            std::strerror(written < 0 ? write_errno : EIO)));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const int rename_errno = errno;
    unlink(tmp.c_str());
    return absl::InternalError(absl::StrCat("port file ", path, ": rename from ", tmp,
                                            " failed: ", std::strerror(rename_errno)));
  }
  return absl::OkStatus();
}

}  // namespace pdserve
