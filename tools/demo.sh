#!/usr/bin/env bash
# The main job on the shipped defaults: builds rimc (Release), programs the shipped ResNet-20
# teacher onto RRAM crossbars, applies 20% relative drift and calibrates DoRA adapters from 10
# Fashion-MNIST samples by layer-wise feature distillation; prints the table and writes
# calibration.csv. Extra arguments go to the example, e.g. tools/demo.sh --rho 0.3 --samples 1
set -euo pipefail
cd "$(dirname "$0")/.."
# OpenMP's default active wait spins idle threads; on a machine shared with other work that
# slows every parallel region several-fold (README: "Benchmarks"). The user's setting wins.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
tools/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target calibrate_fashion_mnist
exec build/release/examples/calibrate_fashion_mnist "$@"
