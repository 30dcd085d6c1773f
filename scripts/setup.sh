#!/usr/bin/env bash
# Create .venv and install raycluster with its test extras. Idempotent; safe to re-run.
# torch 2.13.0 (CPU build) goes in first so the project's torch range never pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "raycluster needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c 'import torch' 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e '.[test]' 2>&1 | grep -vE "^WARNING: Location|^\s*$|!!|wheel_obj|^\s+\*+" || true
.venv/bin/python -c 'import raycluster, ray, torch; print(f"raycluster ready: ray {ray.__version__}, torch {torch.__version__}")'
