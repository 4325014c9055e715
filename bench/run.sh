#!/usr/bin/env bash
# Runs every benchmark program (bench_kernels, bench_dora, bench_crossbar,
# bench_network, bench_calibration) with short timings and 3 repetitions,
# saves each program's JSON in the results folder, and prints one summary
# table (bench/summary.py; kernel_ratios.py and dora_ratios.py give the
# per-shape detail from the same files). About 10 minutes on 2 idle cores.
#
#   bench/run.sh [-b build-dir] [-o results-dir] [-t threads] [-m min-time-s] [-r repetitions] [-f filter]
#
# Defaults: build/release (configured Release if missing), bench/results,
# 2 threads, 0.2 s, 3 repetitions, every benchmark.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/release out=bench/results threads=2 min_time=0.2 reps=3 filter=.
while getopts "b:o:t:m:r:f:" opt; do
  case $opt in
    b) build=$OPTARG ;;
    o) out=$OPTARG ;;
    t) threads=$OPTARG ;;
    m) min_time=$OPTARG ;;
    r) reps=$OPTARG ;;
    f) filter=$OPTARG ;;
    *) sed -n '2,12p' "$0"; exit 2 ;;
  esac
done
programs=(bench_kernels bench_dora bench_crossbar bench_network bench_calibration)
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$build" --target "${programs[@]}" >/dev/null
mkdir -p "$out"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >"$out/conditions.txt"
for p in "${programs[@]}"; do
  echo "running $p..." >&2
  OMP_NUM_THREADS=$threads "$build/bench/$p" --benchmark_filter="$filter" --benchmark_min_time="$min_time" \
    --benchmark_repetitions="$reps" --benchmark_report_aggregates_only=true \
    --benchmark_out="$out/$p.json" --benchmark_out_format=json >/dev/null
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/conditions.txt"
python3 bench/summary.py "$out"
echo
echo "($(tr '\n' ' ' <"$out/conditions.txt"); JSON in $out/)"
