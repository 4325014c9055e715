#!/usr/bin/env bash
# The whole main job, rimc next to PyTorch: runs rimc's demo
# (examples/calibrate_fashion_mnist --no-backprop), the PyTorch peer
# (bench/peer/torch_calibrate.py, the textbook formulation: the convolutions
# every step) and the stronger peer (the same script with --formulation
# statistics: rimc's per-layer statistics maths written in PyTorch) and rimc's
# demo again with --inference merged (the calibrated adapters evaluated as one
# conv per layer on the merged weights) back to back, rotating which goes
# first, R times, all with 2 threads, each under
# /usr/bin/time -v; prints per phase (deploy + drift, feature-KD calibration,
# evaluation of the 10k test images) the median wall times, the ratios to rimc,
# the accuracies and the peak RSS.
#
#   bench/compare.sh [-r R] [-b build-dir] [-t threads] [-i tier] [-o out-dir] [-- extra demo/peer options]
#
# Defaults: R = 3, build/release (configured Release if missing), 2 threads,
# the machine's best ISA, bench/results/compare. -i avx2 runs both as on a
# CPU without AVX-512: rimc with RIMC_MAX_ISA=avx2, oneDNN (rimc's and
# PyTorch's) with ONEDNN_MAX_CPU_ISA=AVX2, PyTorch's own kernels with
# ATEN_CPU_CAPABILITY=avx2; -i scalar: rimc's portable tier, oneDNN at SSE4.1,
# ATEN_CPU_CAPABILITY=default. Needs python3-torch, python3-numpy and GNU
# time (tools/install-deps.sh installs them with apt when missing).
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3 build=build/release threads=2 out=bench/results/compare tier=native
while getopts "r:b:t:i:o:" opt; do
  case $opt in
    r) reps=$OPTARG ;;
    b) build=$OPTARG ;;
    t) threads=$OPTARG ;;
    i) tier=$OPTARG ;;
    o) out=$OPTARG ;;
    *) sed -n '2,18p' "$0"; exit 2 ;;
  esac
done
case $tier in
  native) isa_env=() ;;
  avx512) isa_env=(RIMC_MAX_ISA=avx512 ONEDNN_MAX_CPU_ISA=AVX512_CORE ATEN_CPU_CAPABILITY=avx512) ;;
  avx2) isa_env=(RIMC_MAX_ISA=avx2 ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2) ;;
  scalar) isa_env=(RIMC_MAX_ISA=scalar ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default) ;;
  *) echo "compare.sh: -i must be avx512, avx2 or scalar, got '$tier'" >&2; exit 2 ;;
esac
shift $((OPTIND - 1))
extra=("$@")
# rimc runs as tools/demo.sh runs it (OMP_WAIT_POLICY=passive unless set); the
# peer keeps the caller's setting (GOMP's default when unset): passive waiting
# slows PyTorch's many short parallel regions (its calibration took 6.6 s
# passive against 3.7 s by default in one pair of runs here).
rimc_wait=${OMP_WAIT_POLICY:-passive}

# The peer's packages and GNU time, with rimc's own (apt, when missing).
tools/install-deps.sh python3-torch python3-numpy time >/dev/null
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
cmake --build "$build" --target calibrate_fashion_mnist >/dev/null
demo="$build/examples/calibrate_fashion_mnist"
mkdir -p "$out"
rm -f "$out"/rimc.*.csv "$out"/merged.*.csv "$out"/peer.*.csv "$out"/stats.*.csv "$out"/*.time "$out"/*.log

run_rimc() {  # repetition, name (rimc or merged), demo options...
  local i=$1 name=$2
  shift 2
  env "${isa_env[@]}" OMP_WAIT_POLICY="$rimc_wait" OMP_NUM_THREADS=$threads /usr/bin/time -v -o "$out/$name.$i.time" \
    "$demo" --no-backprop --layers --threads "$threads" --csv "$out/$name.$i.csv" "$@" "${extra[@]}" >"$out/$name.$i.log" 2>&1
}
run_peer() {  # repetition, name (peer or stats), peer options...
  local i=$1 name=$2
  shift 2
  env "${isa_env[@]}" OMP_NUM_THREADS=$threads /usr/bin/time -v -o "$out/$name.$i.time" \
    /usr/bin/python3 bench/peer/torch_calibrate.py --threads "$threads" --csv "$out/$name.$i.csv" --layers "$@" "${extra[@]}" \
    >"$out/$name.$i.log" 2>&1
}
run() {  # repetition, program
  case $2 in
    rimc) run_rimc "$1" rimc ;;
    merged) run_rimc "$1" merged --inference merged ;;
    peer) run_peer "$1" peer ;;
    stats) run_peer "$1" stats --formulation statistics ;;
  esac
}
echo "ISA: ${tier}${isa_env:+ (${isa_env[*]})}, OMP_WAIT_POLICY rimc ${rimc_wait} peer ${OMP_WAIT_POLICY:-unset}, load before: $(cut -d' ' -f1-3 /proc/loadavg)" >"$out/conditions.txt"
for i in $(seq 1 "$reps"); do
  case $((i % 3)) in
    1) order=(rimc peer stats merged) ;;
    2) order=(peer stats merged rimc) ;;
    0) order=(stats merged rimc peer) ;;
  esac
  for p in "${order[@]}"; do run "$i" "$p"; done
  echo "repetition $i of $reps done" >&2
done
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" >>"$out/conditions.txt"

python3 - "$out" "$reps" "$threads" <<'PY'
import statistics, sys, pathlib
out, reps, threads = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]

def csv(p):
    return {k: float(v) for k, v in (l.split(",") for l in p.read_text().split("\n")[1:] if l)}

def rss_mib(p):
    for l in p.read_text().splitlines():
        if "Maximum resident set size" in l:
            return float(l.split(":")[1]) / 1024.0
    return float("nan")

progs = ("rimc", "peer", "stats")
runs = {s: [csv(out / f"{s}.{i}.csv") for i in range(1, reps + 1)] for s in progs + ("merged",)}
rss = {s: [rss_mib(out / f"{s}.{i}.time") for i in range(1, reps + 1)] for s in progs + ("merged",)}
med = lambda s, k: statistics.median(r[k] for r in runs[s])
print(f"ResNet-20 Fashion-MNIST main job, {threads} threads, median of {reps} rotating runs ({(out / 'conditions.txt').read_text().strip().replace(chr(10), ', ')})")
print("PyTorch: the textbook peer (convolutions every step); PyTorch statistics: the same script with rimc's statistics maths\n")
print(f"| {'phase':38} | {'rimc':>9} | {'PyTorch':>9} | {'/ rimc':>8} | {'PyTorch statistics':>18} | {'/ rimc':>8} |")
print(f"| {'-' * 38} | {'-' * 9}:| {'-' * 9}:| {'-' * 8}:| {'-' * 18}:| {'-' * 8}:|")
for label, k in (("deploy + drift (s)", "deploy_drift_seconds"), ("feature-KD calibration, 22 layers (s)", "calibration_seconds"),
                 ("evaluation of the test images (s)", "evaluation_seconds")):
    a, b, c = med("rimc", k), med("peer", k), med("stats", k)
    print(f"| {label:38} | {a:9.3f} | {b:9.3f} | {b / a:7.1f}x | {c:18.3f} | {c / a:7.1f}x |")
m, a, b = med("merged", "evaluation_seconds"), med("rimc", "evaluation_seconds"), med("peer", "evaluation_seconds")
print(f"| {'evaluation, rimc merged inference (s)':38} | {m:9.3f} | {b:9.3f} | {b / m:7.1f}x | {'':18} | {'':8} |")
a, b, c = (statistics.median(rss[s]) for s in progs)
print(f"| {'peak RSS (MiB, /usr/bin/time -v)':38} | {a:9.0f} | {b:9.0f} | {b / a:7.2f}x | {c:18.0f} | {c / a:7.2f}x |")
for label, k in (("drifted top-1 (%)", "drifted_top1"), ("calibrated top-1 (%)", "calibrated_top1")):
    a, b, c = 100 * med("rimc", k), 100 * med("peer", k), 100 * med("stats", k)
    print(f"| {label:38} | {a:9.2f} | {b:9.2f} | {b - a:+5.2f} pp | {c:18.2f} | {c - a:+5.2f} pp |")
a = med("rimc", "evaluation_seconds")
print(f"\nrimc --inference merged: evaluation {m:.3f} s against {a:.3f} s factorised ({a / m:.2f}x), "
      f"calibrated top-1 {100 * med('merged', 'calibrated_top1'):.2f}% against {100 * med('rimc', 'calibrated_top1'):.2f}%, "
      f"peak RSS {statistics.median(rss['merged']):.0f} MiB")
print("\nper run (s): " + "; ".join(f"{s} " + ", ".join(f"{r['calibration_seconds']:.3f}" for r in runs[s]) + " calibration"
                                   for s in progs))

# Feature MSE after calibration, per layer: rimc's demo against each peer (first repetition's logs).
import re
def layer_mse(log):
    pat = re.compile(r"\[\s*\d+/\d+\] (\S+)\s+feature MSE (\S+) -> (\S+)")
    return {m.group(1): float(m.group(3)) for m in map(pat.search, log.read_text().splitlines()) if m}
mine = layer_mse(out / "rimc.1.log")
for s, label in (("peer", "PyTorch"), ("stats", "PyTorch statistics")):
    theirs = layer_mse(out / f"{s}.1.log")
    worst = max((abs(theirs[n] - v) / v, n) for n, v in mine.items() if n in theirs)
    print(f"feature MSE after calibration, {label} vs rimc: {len(theirs)} layers, largest relative difference "
          f"{100 * worst[0]:.2f}% ({worst[1]}); sum {sum(theirs.values()):.5g} vs {sum(mine.values()):.5g}")
PY
