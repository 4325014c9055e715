#!/usr/bin/env bash
# Calibration time against the number of calibration images N (ResNet-20,
# all 22 layers, N = 1 .. 100) and against the network (ResNet-20 at 28x28;
# four layers of ResNet-50 at 32x32 and at 224x224, random weights, N = 10):
# runs bench_calibration's calibrate_resnet20/N and calibrate_resnet50/S/N
# (medians of R repetitions), writes bench/results/scaling.csv, fits
# time = fixed + per-image x N, and plots bench/results/scaling.png with
# gnuplot (installed with apt when missing and running as root).
#
#   bench/scaling.sh [-b build-dir] [-t threads] [-r repetitions] [-o results-dir] [-k]
# -k: keep the last scaling.json (redo only the CSV, fit and plot).
set -euo pipefail
cd "$(dirname "$0")/.."
build=build/release threads=2 reps=3 out=bench/results keep=0
while getopts "b:t:r:o:k" opt; do
  case $opt in
    k) keep=1 ;;
    b) build=$OPTARG ;;
    t) threads=$OPTARG ;;
    r) reps=$OPTARG ;;
    o) out=$OPTARG ;;
    *) sed -n '2,11p' "$0"; exit 2 ;;
  esac
done
if [ ! -f "$build/CMakeCache.txt" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
fi
mkdir -p "$out"
load_before=$(cut -d' ' -f1-3 /proc/loadavg)
if [ "$keep" = 0 ]; then
  cmake --build "$build" --target bench_calibration >/dev/null
  OMP_NUM_THREADS=$threads "$build/bench/bench_calibration" --benchmark_filter='calibrate_resnet(20|50)/' \
    --benchmark_min_time=0.1 --benchmark_repetitions="$reps" --benchmark_report_aggregates_only=true \
    --benchmark_out="$out/scaling.json" --benchmark_out_format=json >/dev/null
fi
load_after=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$out" "$threads" "$reps" "$load_before" "$load_after" <<'PY'
import json, sys, pathlib
out, threads, reps, lb, la = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
rows = []
for b in json.loads((out / "scaling.json").read_text())["benchmarks"]:
    if b.get("aggregate_name", "median") != "median":
        continue
    p = b["run_name"].replace("/real_time", "").split("/")
    net, size, n = (("resnet20", 28, int(p[1])) if p[0] == "calibrate_resnet20" else ("resnet50", int(p[1]), int(p[2])))
    sec = b["real_time"] / {"ns": 1e9, "us": 1e6, "ms": 1e3, "s": 1}[b["time_unit"]]
    rows.append((net, size, int(b["layers"]), n, b["MACs"], sec, 1e3 * sec / (100 * int(b["layers"]))))
rows.sort()
lines = ["network,size,layers,N,forward_MACs,seconds,ms_per_adam_step"]
lines += [f"{r[0]},{r[1]},{r[2]},{r[3]},{r[4]:.6g},{r[5]:.6g},{r[6]:.6g}" for r in rows]
(out / "scaling.csv").write_text("\n".join(lines) + "\n")
r20 = [(r[3], r[5]) for r in rows if r[0] == "resnet20"]
small = [(n, t) for n, t in r20 if n <= 20]  # the working set still fits the caches
n_mean = sum(n for n, _ in small) / len(small)
t_mean = sum(t for _, t in small) / len(small)
slope = sum((n - n_mean) * (t - t_mean) for n, t in small) / sum((n - n_mean) ** 2 for n, _ in small)
fixed = t_mean - slope * n_mean
print(f"calibration time, {threads} threads, median of {reps} (load {lb} before, {la} after)")
print(f"{'network':9} {'size':>4} {'layers':>6} {'N':>4} {'fwd GMAC':>9} {'seconds':>8} {'ms/step':>8}")
for r in rows:
    print(f"{r[0]:9} {r[1]:4} {r[2]:6} {r[3]:4} {r[4] / 1e9:9.3f} {r[5]:8.3f} {r[6]:8.3f}")
print(f"\nResNet-20, N <= 20: time = {fixed:.3f} s + {1e3 * slope:.1f} ms x N (least squares; worst deviation "
      f"{max(abs(t - fixed - slope * n) / t for n, t in small) * 100:.0f}%)")
print("marginal cost per image: " + ", ".join(f"N {a[0]}->{b[0]}: {1e3 * (b[1] - a[1]) / (b[0] - a[0]):.1f} ms"
                                          for a, b in zip(r20, r20[1:])))
(out / "scaling.fit").write_text(f"{fixed} {slope}\n")
PY

if ! command -v gnuplot >/dev/null; then
  if [ "$(id -u)" = 0 ]; then apt-get install -y gnuplot-nox >/dev/null; else echo "scaling.sh: no gnuplot; skipping the plot" >&2; exit 0; fi
fi
read -r fixed slope <"$out/scaling.fit"
gnuplot <<GP
set terminal pngcairo size 1100,450 font ",10"
set output "$out/scaling.png"
set datafile separator ","
set multiplot layout 1,2 title "rimc layer-wise feature-KD calibration ($threads threads, rank 2, 100 Adam steps per layer)"
set logscale xy
set grid
set key top left
set xlabel "calibration images N"
set ylabel "seconds"
set title "ResNet-20 28x28, 22 layers"
plot "$out/scaling.csv" using (strcol(1) eq "resnet20" ? \$4 : 1/0):6 with linespoints pt 7 title "measured", \
     [1:100] $fixed + $slope * x with lines dt 2 title sprintf("%.3f s + %.1f ms x N (fit, N <= 20)", $fixed, 1000 * $slope)
set xlabel "forward multiply-adds per calibrated layer over the N images"
set ylabel "seconds per calibrated layer"
set title "vs network (ResNet-50: 4 layers, N = 10)"
plot "$out/scaling.csv" using (strcol(1) eq "resnet20" ? \$5 / \$3 : 1/0):(\$6 / \$3) with linespoints pt 7 title "ResNet-20 28x28, N = 1..100", \
     "$out/scaling.csv" using (strcol(1) eq "resnet50" && \$2 == 32 ? \$5 / \$3 : 1/0):(\$6 / \$3) with points pt 5 ps 1.5 title "ResNet-50 32x32", \
     "$out/scaling.csv" using (strcol(1) eq "resnet50" && \$2 == 224 ? \$5 / \$3 : 1/0):(\$6 / \$3) with points pt 9 ps 1.5 title "ResNet-50 224x224"
unset multiplot
GP
rm -f "$out/scaling.fit"
echo "wrote $out/scaling.csv and $out/scaling.png"
