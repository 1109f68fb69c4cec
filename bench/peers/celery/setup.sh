#!/usr/bin/env bash
# Installs Celery 5 with Redis support into a virtualenv next to the build output (once).
set -euo pipefail
cd "$(dirname "$0")"
venv="${ATTUNE_BENCH_VENV:-../../../target/bench/celery-venv}"
if [ ! -x "$venv/bin/celery" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'celery[redis]>=5.3,<6' >&2
fi
