#!/usr/bin/env bash
# One command: set up, start a local multi-node Ray cluster with the raycluster runtime, run three
# training jobs (CNN, transformer, LSTM) at once with different priorities, show them finish with
# checkpoints, and stop the cluster. Extra arguments go to `raycluster demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export RAYCLUSTER_STATE_DIR=${RAYCLUSTER_STATE_DIR:-$PWD/.state}
exec .venv/bin/raycluster demo "$@"
