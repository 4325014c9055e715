#!/usr/bin/env bash
# Installs the Debian 12 packages rimc needs to build, test, document and benchmark.
# Idempotent: does nothing (and needs no network) when all are present.
# Arguments name extra packages to install with them (tools/fuzz.sh: clang).
# `install-deps.sh --list` prints the list and installs nothing (tools/audit_deps.py reads it).
#
# Installs run with --no-install-recommends, so every package the build uses must be named
# here or be a Depends of one named here: Debian's libdnnl-dev only *recommends* the OpenCL
# loader its CMake config requires, hence ocl-icd-opencl-dev below. The CTest test
# "deps: install-deps.sh installs every file the configure step found" checks this.
set -euo pipefail

packages=(
  g++ cmake ninja-build pkg-config
  libeigen3-dev libdnnl-dev ocl-icd-opencl-dev doctest-dev libbenchmark-dev nlohmann-json3-dev zlib1g-dev
  libcli11-dev
  libopenmpi-dev openmpi-bin
  doxygen
  dataset-fashion-mnist
  python3
)
if [ "${1:-}" = "--list" ]; then
  printf '%s\n' "${packages[@]}"
  exit 0
fi
packages+=("$@")

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "install-deps: installing ${missing[*]}" >&2
sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install ${missing[*]}" >&2; exit 1; }
  sudo_cmd=(sudo)
fi
export DEBIAN_FRONTEND=noninteractive
"${sudo_cmd[@]}" apt-get update -qq
"${sudo_cmd[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
