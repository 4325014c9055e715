#!/usr/bin/env bash
# The sweep runner's scaling on this machine (README, "On a cluster"): one rho sweep of
# calibration_sweeps (31 items: rho 0.1 and 0.3 at g_min = 0, 0.2 at g_min = g_max / 10, chips 1-2,
# every method, the full 10k test set) run three times, one after the other:
#   serial-2t   1 process x 2 threads   (the serial default on 2 cores)
#   serial-1t   1 process x 1 thread
#   mpi-2x1t    mpiexec -n 2, 1 thread per rank
# then tools/sweep_report.py prints the wall times, the speed-ups, the per-item cost distribution,
# checks that mpi-2x1t's CSVs equal serial-1t's (same threads per process, so bitwise the same
# calibrations), and projects a 100-chip rho and samples study onto 4 and 32 nodes.
#
#   tools/sweep_scaling.sh                      # ~10 min on 2 cores
#   OUT=dir EXTRA="--test-images 2000" tools/sweep_scaling.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
export OMP_WAIT_POLICY=passive
cmake --preset release >/dev/null
cmake --build --preset release --target calibration_sweeps
bin=build/release/examples/calibration_sweeps
out=${OUT:-/tmp/rimc_sweep_scaling}
rm -rf "$out"
mkdir -p "$out"
# shellcheck disable=SC2206
args=(--sweep rho --seeds 2 --rhos 0.1,0.3 --realistic-rhos 0.2 ${EXTRA:-})
mpi=(mpiexec -n 2 --bind-to none --oversubscribe)
[ "$(id -u)" -eq 0 ] && mpi+=(--allow-run-as-root)
run() {  # name, command...
  local name=$1
  shift
  local t0 t1
  t0=$(date +%s%N)
  "$@" "${args[@]}" --out "$out/$name" 2>"$out/$name.log"
  t1=$(date +%s%N)
  echo "$name $(((t1 - t0) / 1000000))" >>"$out/wall_ms.txt"
  echo "$name: $(((t1 - t0) / 1000000)) ms" >&2
}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$out/load.txt" >&2
run serial-2t "$bin" --threads 2
run serial-1t "$bin" --threads 1
run mpi-2x1t "${mpi[@]}" "$bin" --threads 1
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$out/load.txt" >&2
python3 tools/compare_sweeps.py "$out/serial-1t" "$out/mpi-2x1t" rho
python3 tools/sweep_report.py "$out"
