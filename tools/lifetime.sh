#!/usr/bin/env bash
# The lifetime study (examples/lifetime.cpp): builds rimc (Release), follows
# programmed chips from 1 s to 10 years under the CMO-ReRAM, PCM, NeuRRAM and
# relative-drift models with every recovery method, on the full 10k test set,
# and renders examples/results/lifetime.png with gnuplot (installed when
# missing). Results: lifetime.csv (one row per chip, time and method),
# lifetime_summary.csv (mean/std/min/max over the chips, field samples, SRAM
# bytes, recalibrations and their energy and latency), lifetime_offline.csv
# (what the offline preparation took and chose).
#
#   tools/lifetime.sh                       # the default study in one process (2 threads)
#   tools/lifetime.sh --presets cmo --chips 2   # any flags of examples/lifetime (--help lists them)
#   OUT=dir tools/lifetime.sh               # elsewhere
#   RANKS=2 tools/lifetime.sh               # on 2 MPI ranks x 1 thread, as the README's run time was measured
#                                           # (README, "On a cluster"); --resume continues a killed run
#   tools/lifetime.sh plot                  # only re-render the PNG from the CSVs
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh gnuplot-nox
# Spinning OpenMP threads make every barrier wait for descheduled ones when the cores are shared.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-passive}
out=${OUT:-examples/results}
if [ "${1:-}" != plot ]; then
  cmake --preset release >/dev/null
  cmake --build --preset release --target lifetime
  # Calibrated adapters are evaluated merged (one kernel per layer on W0 + the adapter's update): the
  # same rows as the factorised evaluation (CTest compares a small run of each) in about 30% less time.
  launch=()
  if [ "${RANKS:-1}" -gt 1 ]; then
    launch=(mpiexec -n "$RANKS" --bind-to none -x OMP_WAIT_POLICY)
    [ "$(id -u)" -eq 0 ] && launch+=(--allow-run-as-root)
  fi
  "${launch[@]}" build/release/examples/lifetime --out "$out" --inference merged "$@"
fi
gnuplot -e "dir='$out'" tools/plot_lifetime.gp
echo "plot: $out/lifetime.png" >&2
