#!/usr/bin/env bash
# Runs the Celery side of the benchmark; prints one JSON line with the results.
set -euo pipefail
cd "$(dirname "$0")"
venv="${ATTUNE_BENCH_VENV:-../../../target/bench/celery-venv}"
exec "$venv/bin/python" bench.py "$@"
