#!/usr/bin/env bash
# Reproduces the paper's figures on Fashion-MNIST: builds rimc (Release), runs
# every sweep of examples/calibration_sweeps.cpp on the full 10k test set and
# renders the PNGs with gnuplot (installed when missing). Results land in
# examples/results/ (CSV per sweep, a summary CSV with mean/std/min/max over
# the drift seeds, and rho.png, time.png, samples.png).
#
#   tools/sweeps.sh                  # every sweep: hours (rho, time, samples took ~1 h each here)
#   tools/sweeps.sh rho samples      # only these (rho, time, samples, bp-tune, resnet50)
#   SEEDS=5 THREADS=2 OUT=dir tools/sweeps.sh
#   RANKS=2 tools/sweeps.sh rho      # on 2 MPI ranks (threads per rank: cores / ranks; README, "On a cluster")
#   EXTRA="--resume" tools/sweeps.sh rho   # continue a killed sweep (any flags of calibration_sweeps)
#   tools/sweeps.sh plot             # only re-render the PNGs from the CSVs
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh gnuplot-nox
# Spinning OpenMP threads make every barrier wait for descheduled ones when the cores are shared.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
out=${OUT:-examples/results}
sweeps=("$@")
[ ${#sweeps[@]} -eq 0 ] && sweeps=(resnet50 bp-tune rho time samples)
launch=()
threads=(--threads "${THREADS:-2}")
if [ "${RANKS:-1}" -gt 1 ]; then
  launch=(mpiexec -n "$RANKS" --bind-to none -x OMP_WAIT_POLICY)
  [ "$(id -u)" -eq 0 ] && launch+=(--allow-run-as-root)
  threads=()
  [ -n "${THREADS:-}" ] && threads=(--threads "$THREADS")
fi
if [ "${sweeps[*]}" != plot ]; then
  cmake --preset release >/dev/null
  cmake --build --preset release --target calibration_sweeps
  for s in "${sweeps[@]}"; do
    seeds=${SEEDS:-5}
    [ "$s" = bp-tune ] && seeds=${SEEDS:-3}  # 36 backprop settings per seed
    echo "== sweep $s ($seeds seeds) ==" >&2
    # shellcheck disable=SC2086
    "${launch[@]}" build/release/examples/calibration_sweeps --sweep "$s" --seeds "$seeds" "${threads[@]}" --out "$out" ${EXTRA:-}
  done
fi
gnuplot -e "dir='$out'" tools/plot_sweeps.gp
echo "plots: $out/rho.png $out/time.png $out/samples.png" >&2
