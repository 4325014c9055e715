#!/usr/bin/env bash
# The main job on the shipped defaults: builds rimc (Release) and runs the quickstart.
# Extra arguments go to the example, e.g. tools/demo.sh --batch 128 --threads 1
set -euo pipefail
cd "$(dirname "$0")/.."
tools/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release --target quickstart
exec build/release/examples/quickstart "$@"
