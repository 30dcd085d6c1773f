#!/usr/bin/env bash
# One command: set up and run the whole test suite (unit + integration on real local Ray clusters).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# two pytest workers (pytest-xdist): a module's tests run on one worker, one after another, and the
# modules sharing one cluster on one worker (tests/cluster/conftest.py); RAYCLUSTER_TEST_WORKERS=0
# runs everything in this process
exec .venv/bin/python -m pytest -q -ra --durations=30 -n "${RAYCLUSTER_TEST_WORKERS:-2}" --dist loadgroup "$@"
