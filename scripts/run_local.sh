#!/usr/bin/env bash
# The main job, from a fresh Debian/Ubuntu machine (as root): create .venv, install the pinned
# requirements, bring up the local stack (Temporal dev server + Web UI, one-node Slurm, SkyPilot
# API server), start a worker, and run the pipeline on this repository's example tasks.
#
#   bash scripts/run_local.sh                  # extra arguments go to run_workflow.py
#   bash scripts/run_local.sh --env EPOCHS=5
#
# The stack and the worker stay up afterwards, so the Web UI (http://localhost:8233) keeps the
# run and `.venv/bin/python run_workflow.py` starts another one. Stop all of it with
# `bash scripts/local_stack.sh down`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/local_stack.sh up --with-worker
export PIPELINE_INFRA=${PIPELINE_INFRA:-slurm}
exec .venv/bin/python run_workflow.py "$@"
