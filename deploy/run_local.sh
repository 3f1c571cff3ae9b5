#!/usr/bin/env bash
# Starts pdserve-prefill and pdserve-decode on loopback (ephemeral ports, read
# from their port files), streams a completion with `pdserve-cli generate`,
# then stops both services.
#
#   deploy/run_local.sh ["PROMPT"] [pdserve-cli generate flags...]
#
# PROMPT defaults to "Once upon a time"; further arguments go to
# `pdserve-cli generate` and override its defaults here (--max_new_tokens 64).
# Environment: PDSERVE_BUILD_DIR (default build/), PDSERVE_MODEL_DIR (default
# models/stories260K), PDSERVE_DEVICE (default auto). Service logs go to a
# temporary directory and are printed if something fails.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${PDSERVE_BUILD_DIR:-build}
case "$build_dir" in /*) ;; *) build_dir="$root/$build_dir" ;; esac
model_dir=${PDSERVE_MODEL_DIR:-$root/models/stories260K}
device=${PDSERVE_DEVICE:-auto}
prompt="Once upon a time"
if [[ $# -gt 0 ]]; then
  prompt=$1
  shift
fi

prefill_bin=$build_dir/prefill_service/pdserve-prefill
decode_bin=$build_dir/decode_service/pdserve-decode
cli_bin=$build_dir/cli/pdserve-cli
for bin in "$prefill_bin" "$decode_bin" "$cli_bin"; do
  if [[ ! -x $bin ]]; then
    echo "run_local.sh: $bin not found; build first (scripts/build.sh) or set PDSERVE_BUILD_DIR" >&2
    exit 1
  fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/pdserve-local.XXXXXX")
pids=()
status=0
cleanup() {
  status=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ $status -ne 0 ]]; then
    for log in "$work"/*.log; do
      [[ -s $log ]] || continue
      echo "---- $(basename "$log") (last 30 lines) ----" >&2
      tail -n 30 "$log" >&2
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Waits for $1/NAME.port, written once the service listens; fails if the
# process $2 exits first or 120 s pass (model loading on a large checkpoint).
wait_for_port() {
  local name=$1 pid=$2 waited=0
  while [[ ! -s $work/$name.port ]]; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "run_local.sh: $name exited before listening" >&2
      return 1
    fi
    if (( waited >= 12000 )); then
      echo "run_local.sh: $name did not listen within 120 s" >&2
      return 1
    fi
    sleep 0.01
    waited=$((waited + 1))
  done
  cat "$work/$name.port"
}

"$prefill_bin" --model_dir "$model_dir" --device "$device" --listen 127.0.0.1:0 \
  --port_file "$work/prefill.port" >"$work/prefill.stdout.log" 2>"$work/prefill.log" &
pids+=($!)
prefill_port=$(wait_for_port prefill "${pids[0]}")

"$decode_bin" --model_dir "$model_dir" --device "$device" --listen 127.0.0.1:0 \
  --port_file "$work/decode.port" --prefill_target "127.0.0.1:$prefill_port" \
  >"$work/decode.stdout.log" 2>"$work/decode.log" &
pids+=($!)
decode_port=$(wait_for_port decode "${pids[1]}")

"$cli_bin" generate --target "127.0.0.1:$decode_port" --prompt "$prompt" \
  --max_new_tokens 64 --timeout 300s "$@"
