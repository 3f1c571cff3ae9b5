#!/usr/bin/env bash
# The README's test command: installs what is needed, builds, and runs the
# whole test suite with CTest (GPU tests skip where no device is present).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${PDSERVE_BUILD_DIR:-$root/build}
"$root/scripts/install_deps.sh"
"$root/scripts/build.sh"
cd "$build_dir"
ctest --output-on-failure -j "${PDSERVE_JOBS:-$(nproc)}" --timeout 600
