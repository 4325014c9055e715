#!/usr/bin/env bash
# Fuzzes rimc's file readers: builds the libFuzzer harnesses of tests/fuzz
# with clang, ASan and UBSan into build/fuzz, seeds each corpus with small
# valid files written by rimc itself, and runs each harness for the given
# time. Not part of CI.
#
#   tools/fuzz.sh [seconds-per-target (default 300)] [target ...]
#
# Targets: safetensors idx cifar peft (default: all). Corpora grow in
# build/fuzz/corpus/<target>, full logs go to build/fuzz/<target>.log, and a
# crashing or hanging input is saved as build/fuzz/artifacts/<target>-*.
# Exits non-zero if any harness found a problem.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-300}
[ $# -gt 0 ] && shift
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(safetensors idx cifar peft)

tools/install-deps.sh clang libomp-dev
build=build/fuzz
cmake -S . -B "$build" -G Ninja -DCMAKE_CXX_COMPILER=clang++ -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DRIMC_BUILD_TESTS=OFF -DRIMC_BUILD_EXAMPLES=OFF -DRIMC_BUILD_BENCH=OFF -DRIMC_INSTALL=OFF -DRIMC_BUILD_FUZZERS=ON
cmake --build "$build" ${RIMC_FUZZ_JOBS:+-j "$RIMC_FUZZ_JOBS"}
"$build/tests/fuzz/make_fuzz_seeds" "$build/seeds"
mkdir -p "$build/artifacts"

export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=passive
failed=()
for t in "${targets[@]}"; do
  mkdir -p "$build/corpus/$t"
  opts=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
        -artifact_prefix="$build/artifacts/$t-")
  case $t in
    safetensors) opts+=(-dict=tests/fuzz/safetensors.dict) ;;
    peft) opts+=(-dict=tests/fuzz/peft.dict -max_len=8192) ;;
    cifar) opts+=(-max_len=8192) ;;
  esac
  echo "== fuzz_$t: $seconds s ==" >&2
  if "$build/tests/fuzz/fuzz_$t" "${opts[@]}" "$build/corpus/$t" "$build/seeds/$t" >"$build/$t.log" 2>&1; then
    grep -E "^#[0-9]+ +DONE|^stat::number_of_executed_units" "$build/$t.log" >&2 || true
  else
    tail -n 40 "$build/$t.log" >&2
    failed+=("$t")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: problems found by ${failed[*]}; inputs in $build/artifacts" >&2
  exit 1
fi
