#!/usr/bin/env bash
# Runs the GPU checks THERE, on a borrowed GPU machine, from the repository
# root, with tests/gpu/dist (made here by tests/gpu/package.sh) carried:
#
#   tests/gpu/run_gpu_checks.sh
#
# Steps, each under `timeout` (120 + 90 + 2 x 45 + 170 s, plus unpacking) so
# that the whole run ends within 8 minutes:
#   1. unpack dist, find cuBLAS on the machine, print nvidia-smi;
#   2. the gpu-labelled tests: CUDA vs CPU backend, op by op and whole models;
#   3. when the services were packed: pdserve-prefill and pdserve-decode on
#      loopback with --device cuda, then --device cpu, each generating 32
#      greedy tokens from models/stories260K through pdserve-cli; the two
#      texts must be identical;
#   4. pdserve-gpu-bench (Phi-3-mini shape, random weights made on the GPU);
# then a summary, and the benchmark's table LAST (the remote reply carries
# the end of the output). Logs go to $OUT when it is set (the device tool's
# folder that comes back), else to a temporary directory.
# Exit status: 0 when every step passed.
set -uo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root" || exit 2
archive=$root/tests/gpu/dist/pdserve-gpu.tar.xz
logs=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/pdserve-gpu-logs.XXXXXX")}
mkdir -p "$logs"
work=$(mktemp -d "${TMPDIR:-/tmp}/pdserve-gpu.XXXXXX")
results=()
failed=0

note() { echo "== $*"; }
record() {  # record NAME STATUS
  if [[ $2 == 0 ]]; then
    results+=("PASS  $1")
  elif [[ $2 == 124 || $2 == 137 ]]; then
    results+=("FAIL  $1 (timed out)")
    failed=1
  else
    results+=("FAIL  $1 (exit $2)")
    failed=1
  fi
}

# ---- 1. unpack, libraries, device -------------------------------------------------
if [[ ! -f $archive ]]; then
  echo "run_gpu_checks.sh: $archive is missing: run tests/gpu/package.sh where the project" \
       "builds and carry tests/gpu/dist" >&2
  exit 2
fi
if ! tar -C "$work" -xJf "$archive" 2>/dev/null; then
  # No xz support in this tar: Python's tarfile reads it.
  python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' \
    "$archive" "$work" || { echo "run_gpu_checks.sh: cannot unpack $archive" >&2; exit 2; }
fi
cat "$work/BUILD_INFO.txt"

cublas_dir=""
for dir in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu; do
  if [[ -e $dir/libcublas.so.13 ]]; then cublas_dir=$dir; break; fi
done
if [[ -z $cublas_dir ]]; then
  found=$(ldconfig -p 2>/dev/null | awk '/libcublas\.so\.13 / {print $NF; exit}')
  [[ -n $found ]] || found=$(timeout 20 find / -xdev -name 'libcublas.so.13' -not -path '/proc/*' 2>/dev/null | head -n 1)
  [[ -n $found ]] && cublas_dir=$(dirname "$found")
fi
if [[ -z $cublas_dir ]]; then
  echo "run_gpu_checks.sh: libcublas.so.13 not found on this machine" >&2
  exit 2
fi
export LD_LIBRARY_PATH=$work/lib:$cublas_dir${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
# This machine's libstdc++ may be older than the one the binaries were built
# against; then the packed one goes in front.
if ldd "$work/bin/pdserve-gpu-bench" 2>&1 | grep -q "not found"; then
  export LD_LIBRARY_PATH=$work/fallback:$LD_LIBRARY_PATH
  note "using the packed libstdc++/libgcc_s"
fi
if ldd "$work/bin/pdserve-gpu-bench" 2>&1 | grep "not found"; then
  echo "run_gpu_checks.sh: libraries missing (above)" >&2
  exit 2
fi
echo "cuBLAS from $cublas_dir"
# The tests find models/ and tests/data/ here, not where they were built.
export PDSERVE_SOURCE_DIR=$root

note "nvidia-smi"
timeout 30 nvidia-smi 2>&1 | tee "$logs/nvidia-smi.txt"

# ---- 2. tests -----------------------------------------------------------------------
declare -A test_limit=([cuda_backend_parity_test]=120 [cuda_model_parity_test]=90
                       [cuda_batched_prefill_test]=60)
for test in cuda_backend_parity_test cuda_model_parity_test cuda_batched_prefill_test; do
  note "$test"
  timeout "${test_limit[$test]}" "$work/bin/$test" --gtest_output="xml:$logs/$test.xml" 2>&1 | tee "$logs/$test.log" |
    grep -E '^\[ *(OK|FAILED|SKIPPED|PASSED) *\]|Failure|error|Error|Expected|Which is|seed' | awk 'NR <= 80'
  record "$test" "${PIPESTATUS[0]}"
done

# ---- 3. services: --device cuda against --device cpu ---------------------------
if [[ -x $work/bin/pdserve-prefill && -x $work/bin/pdserve-decode && -x $work/bin/pdserve-cli ]]; then
  # deploy/run_local.sh expects a build tree's layout.
  mkdir -p "$work/build/prefill_service" "$work/build/decode_service" "$work/build/cli"
  ln -sf "$work/bin/pdserve-prefill" "$work/build/prefill_service/pdserve-prefill"
  ln -sf "$work/bin/pdserve-decode" "$work/build/decode_service/pdserve-decode"
  ln -sf "$work/bin/pdserve-cli" "$work/build/cli/pdserve-cli"
  for device in cuda cpu; do
    note "services on loopback, --device $device"
    PDSERVE_BUILD_DIR=$work/build PDSERVE_DEVICE=$device timeout 45 \
      deploy/run_local.sh "Once upon a time" --max_new_tokens 32 --temperature 0 \
      >"$logs/generate_$device.txt" 2>"$logs/generate_$device.err"
    status=$?
    cat "$logs/generate_$device.txt"
    [[ $status == 0 ]] || tail -n 30 "$logs/generate_$device.err"
    record "generate with --device $device" "$status"
  done
  # The text, without the timing line.
  grep -v '^\[ttft' "$logs/generate_cuda.txt" >"$work/cuda.text"
  grep -v '^\[ttft' "$logs/generate_cpu.txt" >"$work/cpu.text"
  if [[ -s $work/cuda.text ]] && cmp -s "$work/cuda.text" "$work/cpu.text"; then
    record "greedy text identical on cuda and cpu" 0
  else
    diff "$work/cpu.text" "$work/cuda.text"
    record "greedy text identical on cuda and cpu" 1
  fi
else
  results+=("SKIP  services (not packed)")
fi

# ---- 4. benchmark -------------------------------------------------------------------
note "pdserve-gpu-bench"
timeout 170 "$work/bin/pdserve-gpu-bench" 2>&1 | tee "$logs/gpu_bench.txt"
record "pdserve-gpu-bench" "${PIPESTATUS[0]}"

rm -rf "$work"
echo
note "summary (logs in $logs)"
printf '%s\n' "${results[@]}"
echo
# The table last.
sed -n '/^## pdserve-gpu-bench/,$p' "$logs/gpu_bench.txt"
exit "$failed"
