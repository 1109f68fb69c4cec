#!/usr/bin/env bash
# Runs the Procrastinate side of the benchmark; prints one JSON line with the results.
set -euo pipefail
cd "$(dirname "$0")"
venv="${ATTUNE_BENCH_PG_PEER_VENV:-../../../target/bench/procrastinate-venv}"
exec "$venv/bin/python" bench.py "$@"
