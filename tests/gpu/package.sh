#!/usr/bin/env bash
# Builds the GPU checks HERE (a machine with nvcc; no GPU needed) and packs
# them for a borrowed GPU machine, whose image has CUDA, cuBLAS and the driver
# but none of our Debian -dev packages (Abseil, gRPC, OpenBLAS,
# sentencepiece, ...), so it cannot build pdserve itself.
#
#   tests/gpu/package.sh
#
# Builds, with -DPDSERVE_CUDA=ON in Release: cuda_backend_parity_test,
# cuda_model_parity_test, cuda_batched_prefill_test, pdserve-gpu-bench and, when they build,
# pdserve-prefill, pdserve-decode and pdserve-cli. Packs into
# tests/gpu/dist/pdserve-gpu.tar.xz (git-ignored):
#   bin/       the executables, stripped, and the modules they dlopen
#              (libpdserve_sentencepiece.so, looked for beside them)
#   lib/       every shared library they load that is not part of the base
#              system or of CUDA (found with ldd)
#   fallback/  libstdc++ and libgcc_s from this machine, used there only if
#              the machine's own are older than the binaries need
#   BUILD_INFO.txt
# CUDA's own libraries (libcuda, libcudart, libcublas, libcublasLt) are left
# out: the driver must match the machine, the runtime is linked statically
# (kernels/cuda/CMakeLists.txt), and cuBLAS (600 MB) is on the GPU image.
# xz keeps the folder small: the working tree and the carried folder travel
# together under a 64 MiB limit.
#
# Environment: PDSERVE_GPU_BUILD_DIR (default <repo>/build-gpu), PDSERVE_JOBS
# (default nproc), PDSERVE_GPU_SERVICES=0 to leave the services out.
# Then, on the GPU machine, from the repository root with tests/gpu/dist
# carried: tests/gpu/run_gpu_checks.sh (docs/cuda.md).
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
build=${PDSERVE_GPU_BUILD_DIR:-$root/build-gpu}
dist=$root/tests/gpu/dist
jobs=${PDSERVE_JOBS:-$(nproc)}
with_services=${PDSERVE_GPU_SERVICES:-1}

echo "package.sh: configuring $build (CUDA on, Release)"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPDSERVE_CUDA=ON \
  >"$build.configure.log" 2>&1 || { tail -30 "$build.configure.log"; exit 1; }

targets=(cuda_backend_parity_test cuda_model_parity_test cuda_batched_prefill_test pdserve-gpu-bench)
echo "package.sh: building ${targets[*]}"
ninja -C "$build" -j "$jobs" "${targets[@]}"

services=()
if [[ $with_services == 1 ]]; then
  wanted=(pdserve-prefill pdserve-decode pdserve-cli)
  available=$(ninja -C "$build" -t targets all | cut -d: -f1)
  missing=0
  for target in "${wanted[@]}"; do
    grep -qx "$target" <<<"$available" || missing=1
  done
  if [[ $missing == 1 ]]; then
    echo "package.sh: the services are not all defined in this tree; packing the checks only"
  elif ninja -C "$build" -j "$jobs" "${wanted[@]}" >"$build.services.log" 2>&1; then
    services=("${wanted[@]}")
  else
    echo "package.sh: the services did not build (log: $build.services.log); packing the checks only"
  fi
fi

stage=$(mktemp -d "${TMPDIR:-/tmp}/pdserve-gpu-stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib" "$stage/fallback"

# Libraries that come from the machine that runs the binaries: the C
# library family and the dynamic loader, and CUDA's.
is_system_library() {
  [[ $1 =~ ^(linux-vdso|ld-linux|libc\.so|libm\.so|libmvec|libpthread|libdl\.so|librt\.so|libresolv|libutil\.so|libcuda\.so|libcudart|libcublas|libnvidia) ]]
}
is_fallback_library() {
  [[ $1 =~ ^(libstdc\+\+\.so|libgcc_s\.so) ]]
}

# Copies the shared libraries `$1` loads (ldd) into lib/ or fallback/.
collect_libraries() {
  local file=$1 name arrow path destination
  while read -r name arrow path _; do
    [[ $arrow == "=>" ]] || continue
    if [[ $path == "not" ]]; then
      echo "package.sh: $(basename "$file") needs $name, which this machine lacks" >&2
      exit 1
    fi
    if is_system_library "$name"; then continue; fi
    destination=$stage/lib
    is_fallback_library "$name" && destination=$stage/fallback
    [[ -e $destination/$name ]] || cp -L "$path" "$destination/$name"
  done < <(ldd "$file")
}

for target in "${targets[@]}" "${services[@]}"; do
  binary=$(find "$build" -type f -name "$target" -perm -u+x | head -n 1)
  [[ -n $binary ]] || { echo "package.sh: $target not found under $build" >&2; exit 1; }
  cp "$binary" "$stage/bin/"
  strip --strip-unneeded "$stage/bin/$target"
  collect_libraries "$binary"
done

# Modules the executables dlopen rather than link: the SentencePiece module
# (shared/sentencepiece_model.cc) is looked for beside the executable.
modules=(libpdserve_sentencepiece.so)
for module in "${modules[@]}"; do
  path=$(find "$build" -type f -name "$module" | head -n 1)
  [[ -n $path ]] || continue
  cp "$path" "$stage/bin/"
  strip --strip-unneeded "$stage/bin/$module"
  collect_libraries "$path"
done

{
  echo "built: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n)"
  echo "commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)$(git -C "$root" diff --quiet 2>/dev/null || echo ' (with uncommitted changes)')"
  echo "nvcc: $(/usr/local/cuda/bin/nvcc --version 2>/dev/null | grep -o 'release [0-9.]*' || echo unknown)"
  echo "c++: $(c++ --version | head -n 1)"
  echo "glibc: $(ldd --version | head -n 1)"
  echo "executables: ${targets[*]} ${services[*]}"
} >"$stage/BUILD_INFO.txt"

rm -rf "$dist"
mkdir -p "$dist"
XZ_OPT="-6 -T0" tar -C "$stage" -cJf "$dist/pdserve-gpu.tar.xz" .
echo "package.sh: $(find "$stage/bin" -type f | wc -l) executables, $(find "$stage/lib" -type f | wc -l) libraries"
echo "package.sh: $dist is $(du -sh "$dist" | cut -f1) ($(du -sb "$dist" | cut -f1) bytes; the working tree travels with it under 64 MiB)"
