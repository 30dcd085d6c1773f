#!/usr/bin/env bash
# One command: set up and run the whole test suite (unit + integration on real local Ray clusters).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q -ra --durations=30 "$@"
