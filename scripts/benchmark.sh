#!/usr/bin/env bash
# Benchmark every data-free method (plus KD-with-data and scratch rows) on the default setting.
#   scripts/benchmark.sh                          # each method's own epochs, seeds 0-2
#   scripts/benchmark.sh budget_s=120 "methods=[kd,dafl]" name=mine   # into outputs/bench/mine
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${VENV:-.venv}/bin/dfkd-bench" "$@"
