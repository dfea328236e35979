#!/usr/bin/env bash
# The test command: installs everything the tests need (apt, .venv, pinned pip packages), brings
# up the local stack (Temporal dev server, one-node Slurm, SkyPilot API server), and runs lint,
# the fast suite and the end-to-end suite against the real stack.
#
#   bash scripts/test.sh            # everything (what CI runs)
#   bash scripts/test.sh -k cancel  # extra arguments go to pytest
#   E2E=0 bash scripts/test.sh      # fast suite only: no stack, e2e tests skipped
#
# A stack this command brought up is brought down again at the end; one that was already up
# (scripts/local_stack.sh up, scripts/run_local.sh) is left running.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test %(%H:%M:%S)T] %s\n' -1 "$*"; }

# From apt: git (task checkouts), venv support for Debian's python3, and for the end-to-end
# suite's Web UI tests a real browser (chromium).
E2E=${E2E:-1}
missing=()
command -v git >/dev/null 2>&1 || missing+=(git)
python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || missing+=(python3-venv)
if [ "$E2E" = 1 ] && ! command -v chromium >/dev/null 2>&1; then missing+=(chromium); fi
if [ ${#missing[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || { echo "test.sh: need ${missing[*]}: run as root or install them" >&2; exit 1; }
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

bash scripts/install.sh

log "ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check . >/dev/null || { .venv/bin/ruff format --diff . | head -50; exit 1; }
log "mypy"
.venv/bin/mypy

if [ "$E2E" = 1 ]; then
  if [ -s .state/started ]; then
    log "using the local stack that is already up"
  else
    trap 'bash scripts/local_stack.sh down > .state/stack-down.log 2>&1 || true' EXIT
  fi
  log "local stack up"
  bash scripts/local_stack.sh up
fi

log "pytest"
# The slowest tests first in the report: where CI's time goes.
E2E=$E2E .venv/bin/pytest --durations=20 "$@"
