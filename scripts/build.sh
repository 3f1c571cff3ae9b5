#!/usr/bin/env bash
# Configures and builds pdserve into $PDSERVE_BUILD_DIR (default: build/).
# CUDA code is compiled when nvcc is found (PDSERVE_CUDA=AUTO); set
# PDSERVE_CUDA=OFF to skip it. Extra arguments go to CMake.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build_dir=${PDSERVE_BUILD_DIR:-$root/build}
jobs=${PDSERVE_JOBS:-$(nproc)}
cmake -S "$root" -B "$build_dir" -G Ninja \
  -DCMAKE_BUILD_TYPE=${PDSERVE_BUILD_TYPE:-Release} \
  -DPDSERVE_CUDA=${PDSERVE_CUDA:-AUTO} "$@"
cmake --build "$build_dir" -j "$jobs"
