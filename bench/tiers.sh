#!/usr/bin/env bash
# The whole ResNet-20 calibration (bench_calibration's calibrate_resnet20/10
# and calibrate_layer/10) as three machine kinds, alternating R rounds:
#
#   avx512  the machine as it is (rimc's kernels and oneDNN on their best ISA)
#   avx2    a CPU without AVX-512: RIMC_MAX_ISA=avx2, ONEDNN_MAX_CPU_ISA=AVX2
#   scalar  a CPU without AVX2: rimc's portable tier, ONEDNN_MAX_CPU_ISA=SSE41
#
# and prints the median wall time of each with its ratio to the first. The
# in-process variants (calibrate_resnet20/isa:avx2/10, ...) cap only rimc's
# kernels; this script caps oneDNN as well, as the machine would.
#
#   bench/tiers.sh [-r R] [-b build-dir] [-o out-dir]
#
# Defaults: R = 3, build/release (configured Release if missing),
# bench/results/tiers. Sets OMP_WAIT_POLICY=passive unless it is set.
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3 build=build/release out=bench/results/tiers
while getopts "r:b:o:" opt; do
  case $opt in
    r) reps=$OPTARG ;;
    b) build=$OPTARG ;;
    o) out=$OPTARG ;;
    *) sed -n '2,17p' "$0"; exit 2 ;;
  esac
done
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$build" --target bench_calibration >/dev/null
mkdir -p "$out"
rm -f "$out"/*.json
declare -A envs=(
  [avx512]=""
  [avx2]="RIMC_MAX_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2"
  [scalar]="RIMC_MAX_ISA=scalar ONEDNN_MAX_CPU_ISA=SSE41"
)
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >"$out/conditions.txt"
for i in $(seq 1 "$reps"); do
  for tier in avx512 avx2 scalar; do
    # shellcheck disable=SC2086
    env ${envs[$tier]} "$build/bench/bench_calibration" --benchmark_filter='^calibrate_(resnet20|layer)/10/' \
      --benchmark_repetitions=3 --benchmark_format=json >"$out/$tier.$i.json" 2>/dev/null
  done
  echo "round $i of $reps done" >&2
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/conditions.txt"

/usr/bin/python3 - "$out" "$reps" <<'PY'
import json, pathlib, statistics, sys
out, reps = pathlib.Path(sys.argv[1]), int(sys.argv[2])
times = {}
for tier in ("avx512", "avx2", "scalar"):
    for i in range(1, reps + 1):
        d = json.loads((out / f"{tier}.{i}.json").read_text())
        for b in d["benchmarks"]:
            if b.get("run_type") == "iteration":
                times.setdefault((tier, b["run_name"]), []).append(b["real_time"])
names = sorted({n for _, n in times})
cond = (out / "conditions.txt").read_text().strip().replace("\n", ", ")
print(f"median ms of {reps} rounds x 3 repetitions ({cond})\n")
print(f"| {'benchmark':32} | {'AVX-512':>8} | {'AVX2':>8} | {'portable':>8} | AVX2 / AVX-512 | portable / AVX-512 |")
print(f"| {'-' * 32} | {'-' * 7}:| {'-' * 7}:| {'-' * 7}:| {'-' * 13}:| {'-' * 17}:|")
for n in names:
    m = {t: statistics.median(times[(t, n)]) for t in ("avx512", "avx2", "scalar")}
    print(f"| {n:32} | {m['avx512']:8.1f} | {m['avx2']:8.1f} | {m['scalar']:8.1f} | "
          f"{m['avx2'] / m['avx512']:13.2f}x | {m['scalar'] / m['avx512']:16.2f}x |")
PY
