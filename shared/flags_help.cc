#include "shared/flags_help.h"

#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"

namespace pdserve {

void ShowMainFlagsInHelp() {
  absl::FlagsUsageConfig config;
  auto in_main = [](absl::string_view file) { return absl::EndsWith(file, "main.cc"); };
  config.contains_help_flags = in_main;
  config.contains_helpshort_flags = in_main;
  absl::SetFlagsUsageConfig(config);
}

}  // namespace pdserve
