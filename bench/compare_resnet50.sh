#!/usr/bin/env bash
# Whole-ResNet-50 calibration at 224x224 (N = 10, rank 4, 100 steps per layer, every conv and the
# fc), rimc next to the PyTorch peer in both formulations (bench/peer/torch_resnet50.py): one run
# of each, back to back, 2 threads, each under /usr/bin/time -v; prints the calibration times, the
# ratios, the summed feature MSE after / before and the peak RSS. The peers draw the weights,
# drift, images and adapter initialisations with rimc's counters (torch_resnet50.py --draws rimc);
# before the runs, rimc_dump --resnet50 writes rimc's chip and the peer's --check must find the
# same one (drifted weights, node ids, lora_A, images), so the MSE ratios compare like for like.
#
#   bench/compare_resnet50.sh [-b build-dir] [-t threads] [-o out-dir]      (~8 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/release threads=2 out=bench/results/compare_resnet50
while getopts "b:t:o:" opt; do
  case $opt in
    b) build=$OPTARG ;;
    t) threads=$OPTARG ;;
    o) out=$OPTARG ;;
    *) sed -n '2,9p' "$0"; exit 2 ;;
  esac
done
# The peer's packages and GNU time, with rimc's own (apt, when missing).
tools/install-deps.sh python3-torch python3-numpy time >/dev/null
cmake --build "$build" --target bench_calibration rimc_dump >/dev/null
mkdir -p "$out"
# The same chip on both sides (about 100 MB of weights in a temporary file).
dump=$(mktemp --suffix=.safetensors)
trap 'rm -f "$dump"' EXIT
"$build/bench/rimc_dump" "$dump" --resnet50 224 >/dev/null
/usr/bin/python3 bench/peer/torch_resnet50.py --size 224 --check "$dump" >"$out/check.log" || {
  cat "$out/check.log" >&2
  exit 1
}
rm -f "$dump"
echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >"$out/conditions.txt"
OMP_WAIT_POLICY=passive OMP_NUM_THREADS=$threads /usr/bin/time -v -o "$out/rimc.time" \
  "$build/bench/bench_calibration" --benchmark_filter='^calibrate_resnet50_whole/224/10/' --benchmark_out="$out/rimc.json" \
  --benchmark_out_format=json >"$out/rimc.log" 2>&1
for f in direct statistics; do
  OMP_NUM_THREADS=$threads /usr/bin/time -v -o "$out/$f.time" /usr/bin/python3 bench/peer/torch_resnet50.py \
    --threads "$threads" --formulation "$f" --csv "$out/$f.csv" >"$out/$f.log" 2>&1
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/conditions.txt"
python3 - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
def rss(p):
    for l in p.read_text().splitlines():
        if "Maximum resident set size" in l:
            return float(l.split(":")[1]) / 1024.0
def csv(p):
    return {k: float(v) for k, v in (l.split(",") for l in p.read_text().split("\n")[1:] if l)}
b = json.loads((out / "rimc.json").read_text())["benchmarks"][0]
rimc_s = b["real_time"] / 1000.0
rows = [("rimc", rimc_s, b["mse_after_over_before"], rss(out / "rimc.time"))]
for f in ("direct", "statistics"):
    c = csv(out / f"{f}.csv")
    rows.append((f"PyTorch, {f}", c["calibration_seconds"], c["mse_after_over_before"], rss(out / f"{f}.time")))
print("ResNet-50 224x224, N = 10, rank 4, 54 layers (" + (out / "conditions.txt").read_text().strip().replace("\n", ", ") + ")\n")
print("| program | calibration (s) | / rimc | feature MSE after / before | peak RSS (MiB) |")
print("| --- | ---: | ---: | ---: | ---: |")
for name, s, m, r in rows:
    print(f"| {name} | {s:.1f} | {s / rimc_s:.1f}x | {m:.3f} | {r:.0f} |")
print(f"\nrimc's layers: {b['statistics_layers']:.0f} on the statistics path, {b['direct_layers']:.0f} direct")
print("peer's " + (out / "check.log").read_text().strip().splitlines()[-1])
PY
