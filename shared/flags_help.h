// --help for our binaries.
#ifndef PDSERVE_SHARED_FLAGS_HELP_H_
#define PDSERVE_SHARED_FLAGS_HELP_H_

namespace pdserve {

// Makes --help (and --helpshort) list the flags defined in the program's
// main.cc. Abseil's default matches flag files against the program name
// (pdserve-prefill vs main.cc), so our binaries' --help printed "No flags
// matched" and only --helpfull listed them. Call before ParseCommandLine.
void ShowMainFlagsInHelp();

}  // namespace pdserve

#endif  // PDSERVE_SHARED_FLAGS_HELP_H_
