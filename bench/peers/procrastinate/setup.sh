#!/usr/bin/env bash
# Installs Procrastinate 3 (a PostgreSQL job queue for Python) into a virtualenv next to the build
# output (once).
set -euo pipefail
cd "$(dirname "$0")"
venv="${ATTUNE_BENCH_PG_PEER_VENV:-../../../target/bench/procrastinate-venv}"
if [ ! -x "$venv/bin/procrastinate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'procrastinate>=3,<4' 'psycopg[binary]>=3.1,<4' >&2
fi
