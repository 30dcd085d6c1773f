#!/usr/bin/env bash
# Create .venv and install raycluster with its test extras. Idempotent; safe to re-run.
# torch 2.13.0 (CPU build) goes in first so the project's torch range never pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "raycluster needs Python >= 3.11")'
[ -x .venv/bin/python ] || "$PY" -m venv .venv
log=$(mktemp)
trap 'rm -f "$log"' EXIT
step() {  # run quietly; show the log only when it fails
  if ! "$@" >"$log" 2>&1; then echo "setup failed: $*" >&2; tail -40 "$log" >&2; exit 1; fi
}
say() { echo "setup: $*" >&2; }
say "pip (in .venv)"
step .venv/bin/python -m pip install --upgrade pip
if ! .venv/bin/python -c 'import torch' 2>/dev/null; then
  say "torch 2.13.0, CPU build (the first time: a minute or two)"
  step .venv/bin/python -m pip install torch==2.13.0
fi
say "raycluster and its dependencies: ray[default,serve], pydantic, asyncssh, ... (pip install -e '.[test]')"
step .venv/bin/python -m pip install -e '.[test]'
# NVML comes from nvidia-ml-py (`import pynvml`); the deprecated `pynvml` shim package, if an older
# install left it, shadows it and prints a FutureWarning into every rank log
step .venv/bin/python -m pip uninstall -y pynvml
.venv/bin/python -W ignore -c 'import raycluster, ray, torch; print(f"raycluster ready: ray {ray.__version__}, torch {torch.__version__}")'
# Prometheus and promtool (Debian's package, unpacked into .tools/ without installing or starting a
# service): the tests check the alert rules with promtool and run a real Prometheus on loopback
if [ ! -x .tools/prometheus/usr/bin/promtool ]; then
  say "Prometheus and promtool into .tools/ (for the tests)"
  dl=$(mktemp -d)
  ( cd "$dl" && step apt-get download prometheus )
  mkdir -p .tools/prometheus && step dpkg-deb -x "$dl"/prometheus_*.deb .tools/prometheus
  rm -rf "$dl"
fi
.tools/prometheus/usr/bin/promtool --version 2>&1 | head -1

