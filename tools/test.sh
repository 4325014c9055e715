#!/usr/bin/env bash
# The whole test suite: installs dependencies, then configures, builds and runs
# every CTest test in Release; reruns the unit tests and the small example runs
# as an AVX2-only machine would (rimc's kernels and oneDNN capped at AVX2) and
# with rimc's kernels on their portable tier, so every ISA fallback runs; then
# builds at -O1 and runs every test of rimc's code again under AddressSanitizer
# + UBSan (the build-system, header, dependency and docs checks run in Release).
# RIMC_TEST_PRESETS="release" limits the presets run (release-avx2 and
# release-scalar reuse the release build).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
for preset in ${RIMC_TEST_PRESETS:-release release-avx2 release-scalar asan}; do
  echo "== $preset ==" >&2
  case "$preset" in
    release-*) ;;  # test presets on the release build
    *)
      cmake --preset "$preset"
      cmake --build --preset "$preset"
      ;;
  esac
  ctest --preset "$preset"
done
