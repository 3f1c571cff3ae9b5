#!/usr/bin/env bash
# Runs every CPU figure docs/benchmarks.md reports, on the machine at hand,
# and leaves the raw outputs in $OUT_DIR (default /tmp/pdserve-bench):
#   1. machine description (cores, memory, BLAS);
#   2. the BLAS rate at decode and prefill GEMM shapes (pdserve_bench_cpu);
#   3. decode step time against the weight-read time, in process
#      (pdserve-decode-step-bench) on stories260K and the TinyLlama-1.1B shape;
#   4. KV transfer over loopback gRPC against memcpy (pdserve-kv-transfer-bench);
#   5. through both services with pdserve-bench: aggregate tokens/s and
#      TTFT / ITL percentiles at 1, 8, 32, 128 concurrent streams, the mean
#      decode step time the decode service measured during each run (its
#      /metrics: pdserve_decode_step_ms), and the notebook's KV-cache
#      comparison.
# Usage: bench/run_cpu_benchmarks.sh [BUILD_DIR]   (build first: scripts/build.sh)
# Environment: OUT_DIR; TINYLLAMA_LAYERS (default 22); SKIP_TINYLLAMA=1.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${1:-$root/build}
out=${OUT_DIR:-/tmp/pdserve-bench}
layers=${TINYLLAMA_LAYERS:-22}
mkdir -p "$out"

{
  echo "date: $(date -u +%FT%TZ)"
  echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores"
  echo "memory: $(free -g | awk '/Mem:/ {print $2}') GiB"
  echo "blas: $(dpkg-query -W -f='${Package} ${Version}' libopenblas0-pthread 2>/dev/null || echo unknown)"
  echo "load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$out/machine.txt"

"$build/bench/pdserve_bench_cpu" --benchmark_min_time=1 | tee "$out/blas.txt"

tiny=$out/tinyllama
if [[ -z ${SKIP_TINYLLAMA:-} && ! -f $tiny/model.safetensors ]]; then
  "$build/tests/testing/pdserve-make-checkpoint" --out_dir="$tiny" --preset=tinyllama-1.1b \
    --num_layers="$layers"
fi

"$build/bench/pdserve-decode-step-bench" --model_dir "$root/models/stories260K" --steps 50 \
  | tee "$out/decode_step_stories260K.txt"
if [[ -z ${SKIP_TINYLLAMA:-} ]]; then
  "$build/bench/pdserve-decode-step-bench" --model_dir "$tiny" --steps 10 --batches 1,8,32 \
    --prefill_tokens 512 \
    | tee "$out/decode_step_tinyllama.txt"
fi

"$build/bench/pdserve-kv-transfer-bench" | tee "$out/kv_transfer.txt"

# Sum and count of the decode service's step-time histogram, from /metrics.
step_totals() {
  /usr/bin/python3 - "$1" <<'PY'
import sys, time, urllib.request
for attempt in range(100):  # the metrics server may still be starting
    try:
        text = urllib.request.urlopen("http://" + sys.argv[1] + "/metrics", timeout=10).read().decode()
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit("no /metrics at " + sys.argv[1])
values = {}
for line in text.splitlines():
    for key in ("pdserve_decode_step_ms_sum", "pdserve_decode_step_ms_count",
                "pdserve_decode_step_samples_total"):
        if line.startswith(key + " "):
            values[key] = float(line.split()[1])
print(values.get("pdserve_decode_step_ms_sum", 0), values.get("pdserve_decode_step_ms_count", 0),
      values.get("pdserve_decode_step_samples_total", 0))
PY
}

free_port() {
  /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Both services on loopback, then pdserve-bench at each concurrency.
run_services_bench() {
  local name=$1 model=$2 prompt_tokens=$3 new_tokens=$4 requests_per_stream=$5
  local work metrics
  work=$(mktemp -d)
  metrics=127.0.0.1:$(free_port)
  "$build/prefill_service/pdserve-prefill" --model_dir "$model" --device cpu \
    --listen 127.0.0.1:0 --port_file "$work/prefill.port" >/dev/null 2>"$work/prefill.log" &
  local prefill_pid=$!
  while [[ ! -s $work/prefill.port ]]; do sleep 0.1; done
  "$build/decode_service/pdserve-decode" --model_dir "$model" --device cpu --listen 127.0.0.1:0 \
    --prefill_target "127.0.0.1:$(cat "$work/prefill.port")" --port_file "$work/decode.port" \
    --max_batch_size 128 --metrics_listen "$metrics" >/dev/null 2>"$work/decode.log" &
  local decode_pid=$!
  while [[ ! -s $work/decode.port ]]; do sleep 0.1; done
  local target=127.0.0.1:$(cat "$work/decode.port")
  for c in 1 8 32 128; do
    local n=$(( c * requests_per_stream ))
    local before after
    before=$(step_totals "$metrics")
    "$build/bench/load_generator/pdserve-bench" --target "$target" --concurrency "$c" \
      --num_requests "$n" --prompt_tokens "$prompt_tokens" --max_new_tokens "$new_tokens" \
      --ignore_eos --progress=false --json_out "$out/${name}_c$c.json" \
      > "$out/${name}_c$c.txt" 2>&1 || echo "pdserve-bench failed at concurrency $c" >&2
    tail -n 12 "$out/${name}_c$c.txt"
    after=$(step_totals "$metrics")
    awk -v before="$before" -v after="$after" -v c="$c" 'BEGIN {
      split(before, x, " "); split(after, y, " ");
      n = y[2] - x[2];
      if (n > 0) printf "decode service, concurrency %d: %d steps, mean batch %.1f, mean step %.2f ms\n", c, n, (y[3] - x[3]) / n, (y[1] - x[1]) / n
    }' \
      | tee "$out/${name}_c${c}_steps.txt"
  done
  "$build/bench/load_generator/pdserve-bench" --target "$target" --compare_kv_cache \
    --prompt_tokens 16 --progress=false --json_out "$out/${name}_kv_compare.json" \
    > "$out/${name}_kv_compare.txt" 2>&1 || true
  tail -n 8 "$out/${name}_kv_compare.txt"
  kill "$decode_pid" "$prefill_pid"
  wait "$decode_pid" "$prefill_pid" 2>/dev/null || true
  rm -rf "$work"
}

run_services_bench stories260K "$root/models/stories260K" 32 64 4
if [[ -z ${SKIP_TINYLLAMA:-} ]]; then
  # 64 new tokens per request so that decode, not the 2-core CPU prefill
  # of every stream's prompt, dominates the run.
  run_services_bench tinyllama "$tiny" 16 64 1
fi
echo "raw outputs in $out"
