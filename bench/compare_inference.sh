#!/usr/bin/env bash
# Inference throughput, rimc (bench_network) next to PyTorch eager (bench/peer/torch_inference.py),
# both with 2 threads, run back to back in one go; prints images/s and the ratio.
#   bench/compare_inference.sh [build-dir]     (default build/release; installs python3-torch and python3-torchvision when missing)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/release}
tools/install-deps.sh python3-torch python3-torchvision python3-numpy >/dev/null  # the peer's packages, with rimc's
cmake --build "$build" --target bench_network >/dev/null
out=$(mktemp -d)
OMP_NUM_THREADS=2 "$build/bench/bench_network" --benchmark_repetitions=5 --benchmark_report_aggregates_only=true \
  --benchmark_out="$out/rimc.json" --benchmark_out_format=json >/dev/null
/usr/bin/python3 bench/peer/torch_inference.py --threads 2 > "$out/torch.txt"
python3 - "$out/rimc.json" "$out/torch.txt" <<'PY'
import json, sys
rimc = {}
for b in json.load(open(sys.argv[1]))["benchmarks"]:
    if b.get("aggregate_name") == "median":
        rimc[b["run_name"].replace("/real_time", "")] = b["images/s"]
torch = dict((l.split()[0], float(l.split()[1])) for l in open(sys.argv[2]) if l.strip())
print(f"{'model/batch':24} {'rimc img/s':>12} {'torch img/s':>12} {'ratio':>7}")
for k, t in torch.items():
    r = rimc.get(k, float('nan'))
    print(f"{k:24} {r:12.1f} {t:12.1f} {r / t:7.2f}")
PY
rm -rf "$out"
