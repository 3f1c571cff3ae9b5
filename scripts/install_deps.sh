#!/usr/bin/env bash
# Installs the Debian packages pdserve needs to build, run and test.
# Shared by the README's two commands and by .ci/run. Idempotent: it skips
# apt entirely when every package is already present.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libsentencepiece-dev nlohmann-json3-dev libopenblas-dev
  libgtest-dev libgmock-dev libbenchmark-dev libgoogle-glog-dev
  prometheus-cpp-dev  # shared/metrics.cc: metric registry and text exposition format
  python3 python3-numpy python3-grpcio python3-protobuf python3-grpc-tools
  python3-sentencepiece python3-jinja2  # tests/reference/chat_reference.py
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done

if ((${#missing[@]})); then
  echo "install_deps: installing ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -ne 0 ] && sudo_cmd=(sudo)
  export DEBIAN_FRONTEND=noninteractive
  "${sudo_cmd[@]}" apt-get update -qq
  "${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  echo "install_deps: all packages present"
fi
