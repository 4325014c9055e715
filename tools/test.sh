#!/usr/bin/env bash
# The whole test suite: installs dependencies, then configures, builds and runs
# every CTest test in Release and again under AddressSanitizer + UBSan.
# RIMC_TEST_PRESETS="release" limits the presets run.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
for preset in ${RIMC_TEST_PRESETS:-release asan}; do
  echo "== $preset ==" >&2
  cmake --preset "$preset"
  cmake --build --preset "$preset"
  ctest --preset "$preset"
done
