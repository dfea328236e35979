#!/usr/bin/env bash
# The test command: installs what the tests need (apt + venv + pip) and runs lint and the suite.
#
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k cancel  # extra arguments go to pytest
#
# Idempotent: a second run reuses .venv and skips installed packages.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[test %(%H:%M:%S)T] %s\n' -1 "$*"; }

# System packages: git (task checkouts) and venv support for Debian's python3.
missing=()
command -v git >/dev/null 2>&1 || missing+=(git)
if ! python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then missing+=(python3-venv); fi
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

log "pytest"
exec .venv/bin/pytest "$@"
