#!/usr/bin/env bash
# The README's main command: installs what is needed, builds, starts the
# prefill and decode services on loopback with the bundled stories260K model,
# streams a completion for the prompt ($1, default "Once upon a time"), and
# stops both services. Further arguments go to `pdserve-cli generate`.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/install_deps.sh"
"$root/scripts/build.sh" >/tmp/pdserve-build.log 2>&1 || { tail -50 /tmp/pdserve-build.log; exit 1; }
echo "build: ok (log in /tmp/pdserve-build.log)"
PDSERVE_BUILD_DIR=${PDSERVE_BUILD_DIR:-$root/build} exec "$root/deploy/run_local.sh" "$@"
