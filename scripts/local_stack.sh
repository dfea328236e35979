#!/usr/bin/env bash
# The embedded local stack: everything the pipeline needs on ONE Debian/Ubuntu machine, as root,
# with no cloud account and no internet beyond the package registries.
#
#   scripts/local_stack.sh up       # install (idempotent) and start what is not running yet
#   scripts/local_stack.sh up --with-worker   # ... and a worker (run_worker.py) in the background
#   scripts/local_stack.sh status   # what runs, and whether this script started it
#   scripts/local_stack.sh down     # stop what this script started (by pid), nothing else
#
# Components (all on loopback except Slurm's own daemons, which cannot bind to one address):
#   temporal   Temporal dev server, gRPC 127.0.0.1:7233, Web UI http://localhost:8233,
#              database .state/temporal.db (runs survive restarts)
#   slurm      one-node Slurm (munged, slurmctld, slurmd) whose node is this machine
#   sshd       sshd on 127.0.0.1:2222 for user skyslurm: SkyPilot reaches Slurm over SSH
#   skypilot   SkyPilot API server on 127.0.0.1:46580 with the Slurm infra enabled, and the
#              managed-jobs controller inside it (config: .state/skypilot-server-config.yaml)
#   codec      the codec server (python -m skypilot_temporal codec-server) on 127.0.0.1:8081: decrypts payloads for the Web UI (the dev
#              server's --ui-codec-endpoint); the key is ~/.config/skypilot-temporal/codec.keys,
#              created here if no key is configured, and found there by the worker and starter
#   worker     run_worker.py, when started by scripts/run_local.sh (stopped by `down`)
#
# SkyPilot's node-side setup downloads uv from astral.sh and CPython from GitHub; neither is
# reachable here, so the node gets uv from PyPI and the system python3 (see offline_shims).
#
# Knobs: STACK_STATE_DIR [.state], TEMPORAL_PORT [7233], TEMPORAL_UI_PORT [8233],
#        SKY_API_PORT [46580], CODEC_SERVER_PORT [8081], SKY_SLURM_SSH_PORT [2222], SKY_SLURM_USER [skyslurm],
#        SKY_SLURM_CPUS [8], SKY_SLURM_MEM_MB [16000], OS_RELEASE_FILE [/etc/os-release].
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=$REPO/.venv
STATE=${STACK_STATE_DIR:-$REPO/.state}
TEMPORAL_PORT=${TEMPORAL_PORT:-7233}
TEMPORAL_UI_PORT=${TEMPORAL_UI_PORT:-8233}
SKY_API_PORT=${SKY_API_PORT:-46580}
CODEC_PORT=${CODEC_SERVER_PORT:-8081}
CODEC_KEY_FILE=$HOME/.config/skypilot-temporal/codec.keys
SSH_PORT=${SKY_SLURM_SSH_PORT:-2222}
SUSER=${SKY_SLURM_USER:-skyslurm}
SLURM_CLUSTER=localcluster
NODE_CPUS=${SKY_SLURM_CPUS:-8}
NODE_MEM_MB=${SKY_SLURM_MEM_MB:-16000}
UV_VERSION=0.13.9
NODE_PYTHON=/usr/bin/python3

SSH_KEY=/root/.ssh/sky-slurm-key
SSHD_CONF=/etc/ssh/sky-slurm-sshd_config
SSHD_PID=/run/sshd-sky-slurm.pid
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
TEMPORAL_PID=$STATE/temporal.pid
SKY_API_PID=$STATE/skypilot-api.pid
SKY_SERVER_CONFIG=$STATE/skypilot-server-config.yaml
# The API server checks who calls: its admin's basic-auth password, and the service account the
# stack's worker uses (its token: a secret, mode 0600). The password lives beside the server's
# database (~/.sky), which creates the admin once: a fresh $STATE beside an older ~/.sky keeps both.
SKY_ADMIN_PASSWORD_FILE=$HOME/.sky/local-stack-admin.password
SKY_WORKER_ACCOUNT=temporal-workers
SKY_WORKER_TOKEN_FILE=$STATE/skypilot-worker.token
WORKER_PID=$STATE/worker.pid
CODEC_PID=$STATE/codec.pid
# One line per daemon this script started: "<name> <pidfile>". `down` stops exactly these.
STARTED=$STATE/started

log() { printf '[local_stack %(%H:%M:%S)T] %s\n' -1 "$*"; }
die() { printf 'local_stack.sh: error: %s\n' "$*" >&2; exit 1; }
# A process that exists and is not a zombie (a killed daemon nobody reaped still answers kill -0).
alive() {
  local pid; [ -s "$1" ] && pid=$(cat "$1" 2>/dev/null) || return 1
  kill -0 "$pid" 2>/dev/null && [ "$(ps -o stat= -p "$pid" 2>/dev/null | cut -c1)" != Z ]
}
started_by_us() { [ -f "$STARTED" ] && grep -q "^$1 " "$STARTED"; }
mark_started() { mkdir -p "$STATE"; grep -v "^$1 " "$STARTED" 2>/dev/null > "$STARTED.tmp" || true; echo "$1 $2" >> "$STARTED.tmp"; mv "$STARTED.tmp" "$STARTED"; }
port_owner() { ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'users:((.*))' | head -1 || true; }
port_pid() { ss -Hltnp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2 || true; }
running_or_reused() {  # running_or_reused NAME PIDFILE PORT HEALTHCHECK: already up (ours or someone's)?
  local name=$1 pidfile=$2 port=$3 health=$4 patience=20
  [ "$name" = skypilot ] && patience=90  # a busy API server on 2 cores can miss /api/health a while
  if alive "$pidfile"; then
    # Ours, judged by what it answers: it may still be starting, or hung after a crash of a child.
    local until=$((SECONDS + patience))
    while [ "$SECONDS" -lt "$until" ]; do
      "$health" && { log "$name: running (pid $(cat "$pidfile"))"; return 0; }
      sleep 0.5
    done
    log "$name: pid $(cat "$pidfile") does not answer for ${patience}s: stopping it and what it started"
  fi
  if started_by_us "$name"; then stop_session "$name" "$pidfile"; fi  # what a crashed one left behind
  if "$health"; then log "$name: using the one already on 127.0.0.1:$port (not started here, left alone)"; return 0; fi
  return 1
}
# The processes of the session a daemon of ours leads (each is started as a session leader) that
# run that daemon's program: a crashed API server leaves its executors holding ports. A pidfile
# that outlived a reboot may name someone else's session: only our program's processes are taken.
session_pids() {  # session_pids NAME SID
  local name=$1 sid=$2 pid
  [ -n "$sid" ] && [ "$sid" -gt 1 ] 2>/dev/null || return 0
  for pid in $(ps -o pid= -s "$sid" 2>/dev/null); do
    case "$name:$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null)" in
      "temporal:$VENV/bin/temporal "*|"codec:$VENV/bin/python -m skypilot_temporal codec-server"*|"worker:$VENV/bin/python run_worker.py"*) echo "$pid" ;;
      "skypilot:$VENV/bin/python"*|skypilot:SkyPilot:*) echo "$pid" ;;
    esac
  done
}
stop_session() {  # stop_session NAME PIDFILE: the daemon and every process left in its session
  local name=$1 pidfile=$2 sid pids
  sid=$(cat "$pidfile" 2>/dev/null || true)
  pids=$(session_pids "$name" "$sid")
  [ -n "$pids" ] || return 0
  log "$name: stopping pid(s) $(echo $pids)"
  kill $pids 2>/dev/null || true
  for _ in $(seq 100); do [ -n "$(session_pids "$name" "$sid")" ] || return 0; sleep 0.1; done
  pids=$(session_pids "$name" "$sid")
  [ -z "$pids" ] || { log "$name: still running, SIGKILL"; kill -9 $pids 2>/dev/null || true; }
  for _ in $(seq 50); do [ -n "$(session_pids "$name" "$sid")" ] || return 0; sleep 0.1; done
}
wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
  local seconds=$1 what=$2; shift 2
  for _ in $(seq $((seconds * 5))); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  die "$what did not come up within ${seconds}s"
}

# ------------------------------------------------------------------------------ preflight
preflight() {
  [ "$(id -u)" = 0 ] || die "must run as root (it installs Slurm and starts system daemons)"
  local os_release=${OS_RELEASE_FILE:-/etc/os-release}
  # shellcheck disable=SC1090
  . "$os_release" 2>/dev/null || die "cannot read $os_release: need Debian or Ubuntu"
  case " ${ID:-} ${ID_LIKE:-} " in
    *" debian "*|*" ubuntu "*) ;;
    *) die "needs Debian or Ubuntu (apt-get); this is ${PRETTY_NAME:-unknown}" ;;
  esac
  command -v apt-get >/dev/null || die "apt-get not found"
}

check_port_free() {  # check_port_free PORT PIDFILE WHAT: ok if free or held by our own pid
  local port=$1 pidfile=$2 what=$3 owner
  owner=$(port_owner "$port")
  [ -z "$owner" ] && return 0
  if alive "$pidfile" && [ "$(port_pid "$port")" = "$(cat "$pidfile")" ]; then return 0; fi
  die "port $port (for $what) is taken by $owner: stop it, or set the port knob (see the script header)"
}

install_packages() {
  local need=() p
  for p in slurmctld slurmd slurm-client munge openssh-server openssh-client rsync curl git iproute2 python3-venv; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 "${need[@]}" >/dev/null
  fi
  bash "$REPO/scripts/install.sh"
}

# ------------------------------------------------------------------------------ temporal
temporal_healthy() {
  timeout 10 "$VENV/bin/temporal" operator cluster health --address "127.0.0.1:$TEMPORAL_PORT" >/dev/null 2>&1 \
    && curl -fsS -m 5 -o /dev/null "http://127.0.0.1:$TEMPORAL_UI_PORT/"
}

start_temporal() {
  running_or_reused temporal "$TEMPORAL_PID" "$TEMPORAL_PORT" temporal_healthy && return
  check_port_free "$TEMPORAL_PORT" "$TEMPORAL_PID" "the Temporal server"
  check_port_free "$TEMPORAL_UI_PORT" "$TEMPORAL_PID" "the Temporal Web UI"
  mkdir -p "$STATE"
  log "temporal: starting dev server on 127.0.0.1:$TEMPORAL_PORT, UI on :$TEMPORAL_UI_PORT"
  setsid "$VENV/bin/temporal" server start-dev --ip 127.0.0.1 --port "$TEMPORAL_PORT" \
    --ui-port "$TEMPORAL_UI_PORT" --db-filename "$STATE/temporal.db" --log-level warn \
    --ui-codec-endpoint "http://127.0.0.1:$CODEC_PORT" \
    </dev/null >>"$STATE/temporal.log" 2>&1 &
  echo $! > "$TEMPORAL_PID"
  mark_started temporal "$TEMPORAL_PID"
  wait_for 60 "Temporal dev server" "$VENV/bin/temporal" operator cluster health --address "127.0.0.1:$TEMPORAL_PORT"
  wait_for 30 "Temporal Web UI" curl -fsS -o /dev/null "http://127.0.0.1:$TEMPORAL_UI_PORT/"
}

# The search attributes runs keep current (skypilot_temporal/operations/search_attributes.py), registered once per namespace.
register_search_attributes() {
  local listed name names
  names=$(cd "$REPO" && "$VENV/bin/python" -c \
    'from skypilot_temporal.operations.search_attributes import ALL_KEYS; print(" ".join(k.name for k in ALL_KEYS))')
  listed=$("$VENV/bin/temporal" operator search-attribute list --address "127.0.0.1:$TEMPORAL_PORT" 2>/dev/null) \
    || listed=""
  for name in $names; do
    grep -qw "$name" <<<"$listed" && continue
    log "temporal: registering search attribute $name (Keyword)"
    "$VENV/bin/temporal" operator search-attribute create --name "$name" --type Keyword \
      --address "127.0.0.1:$TEMPORAL_PORT" >/dev/null 2>&1 \
      || "$VENV/bin/temporal" operator search-attribute list --address "127.0.0.1:$TEMPORAL_PORT" \
        | grep -qw "$name" \
      || { log "temporal: could not register search attribute $name"; exit 1; }
  done
}

# ------------------------------------------------------------------------------ slurm
start_daemon() {  # start_daemon NAME PIDFILE COMMAND...
  local name=$1 pidfile=$2; shift 2
  if alive "$pidfile"; then return; fi
  log "$name: starting"
  "$@"
  wait_for 20 "$name" alive "$pidfile"
  mark_started "$name" "$pidfile"
}

start_slurm() {
  [ -s /etc/munge/munge.key ] || { log "munge: creating key"; mungekey --create --force; }
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 755 /run/munge
  start_daemon munged "$MUNGE_PID" su -s /bin/sh munge -c /usr/sbin/munged
  munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"

  local host; host=$(hostname -s)
  install -d /etc/slurm /var/lib/slurm/slurmd /var/lib/slurm/slurmctld /var/log/slurm
  cat > /etc/slurm/slurm.conf.new <<EOF
# One-node Slurm for SkyPilot (written by scripts/local_stack.sh).
ClusterName=$SLURM_CLUSTER
SlurmctldHost=$host(127.0.0.1)
AuthType=auth/munge
CryptoType=crypto/munge
MpiDefault=none
# No cgroups needed: track job processes by parent pid.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
SlurmUser=root
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmdSpoolDir=/var/lib/slurm/slurmd
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# Advertise more CPUs than the machine has, so several SkyPilot clusters (Slurm jobs) fit.
SlurmdParameters=config_overrides
KillWait=5
InactiveLimit=0
MinJobAge=300
NodeName=$host NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$NODE_MEM_MB State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE DefaultTime=30-00:00:00 State=UP
EOF
  if ! cmp -s /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf; then
    mv /etc/slurm/slurm.conf.new /etc/slurm/slurm.conf
    if alive "$CTLD_PID" || alive "$SLURMD_PID"; then
      log "slurm: configuration changed, restarting slurmctld and slurmd"
      local f; for f in "$SLURMD_PID" "$CTLD_PID"; do alive "$f" && kill "$(cat "$f")"; done
      for _ in $(seq 100); do alive "$CTLD_PID" || alive "$SLURMD_PID" || break; sleep 0.1; done
    fi
  else
    rm -f /etc/slurm/slurm.conf.new
  fi
  start_daemon slurmctld "$CTLD_PID" /usr/sbin/slurmctld
  start_daemon slurmd "$SLURMD_PID" /usr/sbin/slurmd
  local state=""
  for _ in $(seq 60); do
    state=$(sinfo -h -n "$host" -o %T 2>/dev/null || true)
    case "$state" in idle*|mixed*|allocated*) break ;; down*|drain*) scontrol update NodeName="$host" State=RESUME || true ;; esac
    sleep 0.5
  done
  case "$state" in idle*|mixed*|allocated*) ;; *) die "slurm node not ready (state: ${state:-none}); see /var/log/slurm/slurmctld.log" ;; esac
  # An explicit --mem: without one, CR_CPU_Memory gives a job the whole node's memory, so the
  # check would queue behind every running cluster; --immediate: never wait for a free node.
  srun -N1 -n1 --mem=16M --immediate=120 true \
    || die "srun does not work (or the node stayed full for 2 min); see /var/log/slurm/slurmd.log"
  log "slurm: $(sinfo -h -o '%P %a %D %T %N')"
}

# ------------------------------------------------------------------------------ sshd + user
start_sshd() {
  id "$SUSER" >/dev/null 2>&1 || { log "sshd: creating user $SUSER"; useradd -m -s /bin/bash "$SUSER"; }
  local home; home=$(getent passwd "$SUSER" | cut -d: -f6)
  install -d -m 700 /root/.ssh
  [ -f "$SSH_KEY" ] || ssh-keygen -q -t ed25519 -N '' -f "$SSH_KEY" -C sky-slurm-local
  install -d -m 700 -o "$SUSER" -g "$SUSER" "$home/.ssh"
  touch "$home/.ssh/authorized_keys"
  grep -qF "$(cut -d' ' -f2 "$SSH_KEY.pub")" "$home/.ssh/authorized_keys" || cat "$SSH_KEY.pub" >> "$home/.ssh/authorized_keys"
  chown "$SUSER:$SUSER" "$home/.ssh/authorized_keys" && chmod 600 "$home/.ssh/authorized_keys"
  ls /etc/ssh/ssh_host_*_key >/dev/null 2>&1 || ssh-keygen -A
  cat > "$SSHD_CONF" <<EOF
# sshd for SkyPilot -> local Slurm (written by scripts/local_stack.sh). Loopback only.
Port $SSH_PORT
ListenAddress 127.0.0.1
HostKey /etc/ssh/ssh_host_ed25519_key
PidFile $SSHD_PID
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers $SUSER
UsePAM yes
# SkyPilot opens many parallel SSH sessions.
MaxStartups 100:30:200
MaxSessions 100
Subsystem sftp /usr/lib/openssh/sftp-server
EOF
  install -d -m 755 /run/sshd
  /usr/sbin/sshd -t -f "$SSHD_CONF"
  if ! alive "$SSHD_PID"; then check_port_free "$SSH_PORT" "$SSHD_PID" "sshd"; fi
  start_daemon sshd "$SSHD_PID" /usr/sbin/sshd -f "$SSHD_CONF"

  install -d -m 700 /root/.slurm
  cat > /root/.slurm/config <<EOF
# SkyPilot Slurm clusters (SSH config format; Host = SkyPilot region). Written by local_stack.sh.
Host $SLURM_CLUSTER
    HostName 127.0.0.1
    Port $SSH_PORT
    User $SUSER
    IdentityFile $SSH_KEY
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
EOF
  chmod 600 /root/.slurm/config
}

node_ssh() {
  ssh -i "$SSH_KEY" -p "$SSH_PORT" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR "$SUSER@127.0.0.1" "$@"
}

# SkyPilot's runtime setup on a Slurm node runs, in a login shell of $SUSER:
#   ~/.local/bin/uv -V || curl -LsSf https://astral.sh/uv/install.sh | sh    (no internet here)
#   uv venv --seed ... --python 3.10                                          (downloads CPython)
#   uv pip install skypilot[slurm,remote]                                     (PyPI: works)
# So: a `curl` shim that serves the uv installer locally, uv itself from its PyPI wheel, and a
# uv wrapper that maps `--python 3.10` to the system python3. PATH and env come from ~/.profile.
offline_shims() {
  local home shim; home=$(getent passwd "$SUSER" | cut -d: -f6); shim=$home/sky-offline
  install -d "$shim/bin" "$shim/libexec"
  if ! "$shim/libexec/uv-bin" --version 2>/dev/null | grep -q " $UV_VERSION"; then
    log "node: fetching uv $UV_VERSION from PyPI"
    local tmp; tmp=$(mktemp -d)
    "$VENV/bin/pip" download -q --no-deps --only-binary=:all: -d "$tmp" "uv==$UV_VERSION" 2>/dev/null
    "$VENV/bin/python" - "$tmp" "$shim/libexec" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(glob.glob(os.path.join(tmp, "uv-*.whl"))[0]) as wheel:
    for name in wheel.namelist():
        base = os.path.basename(name)
        if ".data/scripts/" in name and base in ("uv", "uvx"):
            out = os.path.join(dest, base + "-bin")
            with open(out, "wb") as f:
                f.write(wheel.read(name))
            os.chmod(out, 0o755)
PY
    rm -rf "$tmp"
  fi
  cat > "$shim/bin/curl" <<EOF
#!/bin/bash
# Serve the uv installer locally; everything else goes to the real curl.
for a in "\$@"; do case "\$a" in *astral.sh/uv/install.sh*) exec cat "$shim/uv-install.sh" ;; esac; done
exec /usr/bin/curl "\$@"
EOF
  cat > "$shim/uv-install.sh" <<EOF
#!/bin/sh
# Stand-in for https://astral.sh/uv/install.sh: link the uv from PyPI.
set -e
d="\${UV_INSTALL_DIR:-\$HOME/.local/bin}"
mkdir -p "\$d"
ln -sf "$shim/libexec/uv" "\$d/uv"
ln -sf "$shim/libexec/uvx-bin" "\$d/uvx"
EOF
  cat > "$shim/libexec/uv" <<EOF
#!/bin/bash
# SkyPilot asks for '--python 3.10' (a CPython download): use the system python3 instead.
args=(); map_next=0
for a in "\$@"; do
  if [ "\$map_next" = 1 ]; then [ "\$a" = "3.10" ] && a="$NODE_PYTHON"; map_next=0
  elif [ "\$a" = "--python" ] || [ "\$a" = "-p" ]; then map_next=1
  elif [ "\$a" = "--python=3.10" ]; then a="--python=$NODE_PYTHON"
  fi
  args+=("\$a")
done
exec "$shim/libexec/uv-bin" "\${args[@]}"
EOF
  chmod 755 "$shim/bin/curl" "$shim/uv-install.sh" "$shim/libexec/uv"
  chown -R "$SUSER:$SUSER" "$shim"
  local profile=$home/.profile
  touch "$profile"
  sed -i '/# >>> sky-offline >>>/,/# <<< sky-offline <<</d' "$profile"
  cat >> "$profile" <<EOF
# >>> sky-offline >>>
export PATH="$shim/bin:\$PATH"
export UV_PYTHON_DOWNLOADS=never
# PyPI may sit behind a TLS-intercepting proxy: let uv trust the system CA bundle.
export SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
# <<< sky-offline <<<
EOF
  chown "$SUSER:$SUSER" "$profile"
  wait_for 10 "ssh to $SUSER@127.0.0.1:$SSH_PORT" node_ssh true
  node_ssh "bash --login -c 'sinfo -h >/dev/null && srun -N1 -n1 --mem=16M --immediate=120 true'" >/dev/null \
    || die "ssh to $SUSER@127.0.0.1:$SSH_PORT works but Slurm does not answer there"

  local sky_version stamp=$home/.sky-offline-warm
  sky_version=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("skypilot"))')
  if [ "$(cat "$stamp" 2>/dev/null)" != "$sky_version" ]; then
    log "node: warming the uv cache with skypilot[slurm,remote]==$sky_version"
    if node_ssh "bash --login -c 'export UV_CACHE_DIR=/tmp/uv_cache_\$(id -u); d=\$(mktemp -d); \
        $shim/libexec/uv venv -q \$d/v --python 3.10 && VIRTUAL_ENV=\$d/v $shim/libexec/uv pip install -q \
        \"skypilot[slurm,remote]==$sky_version\"; rc=\$?; rm -rf \$d; exit \$rc'"; then
      echo "$sky_version" > "$stamp"
    else
      log "node: WARNING: warming the uv cache failed; the first launch will fetch from PyPI"
    fi
  fi
}

# ------------------------------------------------------------------------------ skypilot
sky_api_healthy() { curl -fsS -m 5 "http://127.0.0.1:$SKY_API_PORT/api/health" >/dev/null 2>&1; }

write_skypilot_server_config() {
  cat > "$SKY_SERVER_CONFIG" <<'EOF2'
# Written by scripts/local_stack.sh for the API server it starts (SKYPILOT_GLOBAL_CONFIG).
jobs:
  controller:
    consolidation_mode: true
EOF2
}

start_skypilot() {
  if running_or_reused skypilot "$SKY_API_PID" "$SKY_API_PORT" sky_api_healthy; then
    :
  else
    check_port_free "$SKY_API_PORT" "$SKY_API_PID" "the SkyPilot API server"
    log "skypilot: starting API server on 127.0.0.1:$SKY_API_PORT"
    # A caller's SKYPILOT_DISABLE_LOCAL_API_SERVER / remote endpoint must not stop this start.
    write_skypilot_server_config
    # Managed jobs: the jobs controller runs inside this API server (Slurm cannot host a
    # controller cluster), and its network check asks this server instead of public IPs
    # (scripts/skypilot_server/sitecustomize.py; only this server's processes load it).
    # Authentication: basic auth for people (the admin below), service-account tokens for
    # workers. SkyPilot trusts a caller on 127.0.0.1 that sends no credentials; a token sent is
    # always checked, and a server other hosts reach checks everyone.
    ensure_admin_password
    local admin_hash
    admin_hash=$("$VENV/bin/python" -c 'import sys; from passlib.hash import sha512_crypt; print(sha512_crypt.using(rounds=5000).hash(sys.stdin.read().strip()))' < "$SKY_ADMIN_PASSWORD_FILE")
    env -u SKYPILOT_DISABLE_LOCAL_API_SERVER -u SKYPILOT_API_SERVER_ENDPOINT \
      ENABLE_SERVICE_ACCOUNTS=true SKYPILOT_INITIAL_BASIC_AUTH="admin:$admin_hash" \
      SKYPILOT_GLOBAL_CONFIG="$SKY_SERVER_CONFIG" \
      PYTHONPATH="$REPO/scripts/skypilot_server${PYTHONPATH:+:$PYTHONPATH}" \
      SKYPILOT_STACK_NETWORK_CHECK_URL="http://127.0.0.1:$SKY_API_PORT/api/health" \
      SKYPILOT_API_SERVER_LOCAL_PORT=$SKY_API_PORT "$VENV/bin/sky" api start --host 127.0.0.1 --enable-basic-auth \
      >"$STATE/skypilot-api-start.log" 2>&1 || { cat "$STATE/skypilot-api-start.log" >&2; die "sky api start failed"; }
    port_pid "$SKY_API_PORT" > "$SKY_API_PID"
    mark_started skypilot "$SKY_API_PID"
  fi
  # Never pipe `sky` into something that may close early (grep -q, head): the SDK treats a
  # broken pipe as a transient error and retries forever. Capture, then inspect.
  local out
  # Bounded: a just-restarted API server has been seen to leave `sky check` hanging.
  out=$(SKYPILOT_API_SERVER_ENDPOINT="http://127.0.0.1:$SKY_API_PORT" timeout 300 "$VENV/bin/sky" check slurm 2>&1 \
        | sed 's/\x1b\[[0-9;]*m//g') || true
  case "$out" in
    *"Slurm: enabled"*) log "skypilot: Slurm infra enabled ($SLURM_CLUSTER)" ;;
    *) printf '%s\n' "$out" >&2; die "sky check slurm did not enable Slurm" ;;
  esac
}

ensure_admin_password() {
  [ -s "$SKY_ADMIN_PASSWORD_FILE" ] && return
  mkdir -p "$(dirname "$SKY_ADMIN_PASSWORD_FILE")"
  # Where an earlier version of this script kept it: ~/.sky's admin was created with that one.
  if [ -s "$STATE/skypilot-admin.password" ]; then mv "$STATE/skypilot-admin.password" "$SKY_ADMIN_PASSWORD_FILE"; return; fi
  (umask 077 && "$VENV/bin/python" -c 'import secrets; print(secrets.token_urlsafe(24))' > "$SKY_ADMIN_PASSWORD_FILE")
}

# The HTTP status of the API server's health check with the worker's token (000: no answer).
sky_token_status() {
  local code
  for _ in 1 2 3 4 5 6; do
    code=$(curl -sS -m 10 -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $(cat "$SKY_WORKER_TOKEN_FILE")" \
      "http://127.0.0.1:$SKY_API_PORT/api/health" 2>/dev/null) || true
    [ "$code" != 000 ] && break
    sleep 5
  done
  echo "${code:-000}"
}

# The service account the stack's worker (and its reaper) calls the API server as.
ensure_worker_token() {
  local health
  health=$(curl -fsS -m 30 "http://127.0.0.1:$SKY_API_PORT/api/health" 2>/dev/null) || die "the SkyPilot API server does not answer its health check"
  case "$health" in
    *'"service_account_token_enabled":true'*|*'"service_account_token_enabled": true'*) ;;
    *) log "skypilot: WARNING: this API server (started earlier) has no authentication; 'down' then 'up' to turn it on"; return ;;
  esac
  if [ -s "$SKY_WORKER_TOKEN_FILE" ]; then
    case $(sky_token_status) in
      200) log "skypilot: worker service account $SKY_WORKER_ACCOUNT (token in $SKY_WORKER_TOKEN_FILE)"; return ;;
      401|403) log "skypilot: the worker's token is refused: issuing a new one" ;;
      *) die "the SkyPilot API server does not answer with the worker's token" ;;
    esac
  fi
  cd "$REPO"
  SKYPILOT_ADMIN_PASSWORD_FILE=$SKY_ADMIN_PASSWORD_FILE "$VENV/bin/python" -m scripts.skypilot_tokens issue \
    "$SKY_WORKER_ACCOUNT" --out "$SKY_WORKER_TOKEN_FILE" --api "http://127.0.0.1:$SKY_API_PORT" >/dev/null \
    || die "could not issue the worker's service-account token (if $SKY_ADMIN_PASSWORD_FILE was lost, ~/.sky's admin has another password: 'down', remove ~/.sky/ and 'up')"
  [ "$(sky_token_status)" = 200 ] || die "the API server refuses the token it just issued"
  log "skypilot: worker service account $SKY_WORKER_ACCOUNT (token in $SKY_WORKER_TOKEN_FILE)"
}

# ------------------------------------------------------------------------------ payload codec
ensure_codec_key() {
  if [ -n "${PAYLOAD_CODEC_KEYS:-}${PAYLOAD_CODEC_KEY_FILE:-}" ]; then log "codec: using the key in your PAYLOAD_CODEC_* setting"; return; fi
  if [ -s "$CODEC_KEY_FILE" ]; then log "codec: payloads encrypted with the key in $CODEC_KEY_FILE"; return; fi
  mkdir -p "$(dirname "$CODEC_KEY_FILE")"
  (umask 077 && "$VENV/bin/python" -m skypilot_temporal new-key > "$CODEC_KEY_FILE.tmp" && mv "$CODEC_KEY_FILE.tmp" "$CODEC_KEY_FILE")
  log "codec: created $CODEC_KEY_FILE (payloads encrypted; worker and starter on this machine find it)"
}

codec_healthy() {
  curl -fsS -m 3 -o /dev/null -X POST -H 'Content-Type: application/json' -d '{"payloads":[]}' \
    "http://127.0.0.1:$CODEC_PORT/decode"
}

start_codec_server() {
  running_or_reused codec "$CODEC_PID" "$CODEC_PORT" codec_healthy && return
  check_port_free "$CODEC_PORT" "$CODEC_PID" "the codec server"
  log "codec: starting the codec server on 127.0.0.1:$CODEC_PORT (the Web UI decodes through it)"
  cd "$REPO"
  CODEC_SERVER_HOST=127.0.0.1 CODEC_SERVER_PORT=$CODEC_PORT \
    CODEC_SERVER_CORS_ORIGINS=${CODEC_SERVER_CORS_ORIGINS:-http://localhost:$TEMPORAL_UI_PORT,http://127.0.0.1:$TEMPORAL_UI_PORT} \
    setsid "$VENV/bin/python" -m skypilot_temporal codec-server </dev/null >>"$STATE/codec.log" 2>&1 &
  echo $! > "$CODEC_PID"
  mark_started codec "$CODEC_PID"
  wait_for 60 "the codec server" codec_healthy
}

# ------------------------------------------------------------------------------ worker
start_worker() {
  if alive "$WORKER_PID"; then log "worker: running (pid $(cat "$WORKER_PID"))"; return; fi
  if started_by_us worker; then stop_session worker "$WORKER_PID"; fi
  log "worker: starting run_worker.py (log: $STATE/worker.log, rotated at 50 MB)"
  : > "$STATE/worker.log"
  cd "$REPO"
  # The log file rotates (WORKER_LOG_FILE); worker.out only catches what happens before logging.
  # SkyPilot's autodown costs ~20 s per launch on this Slurm; the cluster reaper protects it.
  local token=${SKYPILOT_SERVICE_ACCOUNT_TOKEN:-}
  [ -z "$token" ] && [ -s "$SKY_WORKER_TOKEN_FILE" ] && token=$(cat "$SKY_WORKER_TOKEN_FILE")
  SKYPILOT_API_SERVER_ENDPOINT=${SKYPILOT_API_SERVER_ENDPOINT:-http://127.0.0.1:$SKY_API_PORT} \
    TEMPORAL_ADDRESS=${TEMPORAL_ADDRESS:-127.0.0.1:$TEMPORAL_PORT} \
    WORKER_LOG_FILE=${WORKER_LOG_FILE:-$STATE/worker.log} \
    AUTODOWN_IDLE_MINUTES=${AUTODOWN_IDLE_MINUTES:-0} \
    env ${token:+"SKYPILOT_SERVICE_ACCOUNT_TOKEN=$token"} setsid "$VENV/bin/python" run_worker.py </dev/null >"$STATE/worker.out" 2>&1 &
  echo $! > "$WORKER_PID"
  mark_started worker "$WORKER_PID"
  for _ in $(seq 300); do
    grep -q "Worker started" "$STATE/worker.log" && return 0
    alive "$WORKER_PID" || { tail -5 "$STATE/worker.log" "$STATE/worker.out" >&2; die "the worker exited"; }
    sleep 0.2
  done
  tail -5 "$STATE/worker.log" "$STATE/worker.out" >&2
  die "the worker did not start within 60s"
}

# ------------------------------------------------------------------------------ down / status
stop_pidfile() {  # stop_pidfile NAME PIDFILE
  local name=$1 pidfile=$2
  if [ "$name" = skypilot ] && alive "$pidfile"; then
    # The API server runs worker processes of its own: let SkyPilot stop them first.
    log "skypilot: sky api stop"
    SKYPILOT_API_SERVER_LOCAL_PORT=$SKY_API_PORT "$VENV/bin/sky" api stop >/dev/null 2>&1 || true
  fi
  case "$name" in
    # Session leaders this script started: stop whatever is left of each session too.
    temporal|codec|worker|skypilot) stop_session "$name" "$pidfile" ;;
    *)
      alive "$pidfile" || return 0
      local pid; pid=$(cat "$pidfile")
      log "$name: stopping pid $pid"
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 100); do alive "$pidfile" || break; sleep 0.1; done
      alive "$pidfile" && { log "$name: still running, SIGKILL"; kill -9 "$pid" 2>/dev/null || true; }
      ;;
  esac
  return 0
}

stack_down() {
  [ -f "$STARTED" ] || { log "nothing was started by this script"; return; }
  # Reverse order of start: worker and API server before Slurm and sshd.
  local name pidfile
  tac "$STARTED" | while read -r name pidfile; do stop_pidfile "$name" "$pidfile"; done
  # SkyPilot's SSH ControlMaster connections to sshd would otherwise linger for minutes.
  for s in /tmp/sky_ssh_*/*/*; do [ -S "$s" ] && ssh -o ControlPath="$s" -O exit localhost >/dev/null 2>&1 || true; done
  rm -f "$STARTED"
}

show_status() {
  local name pidfile who
  for entry in worker:$WORKER_PID codec:$CODEC_PID temporal:$TEMPORAL_PID skypilot:$SKY_API_PID munged:$MUNGE_PID \
               slurmctld:$CTLD_PID slurmd:$SLURMD_PID sshd:$SSHD_PID; do
    name=${entry%%:*}; pidfile=${entry#*:}
    who=" (not started by local_stack.sh)"; started_by_us "$name" && who=" (started by local_stack.sh)"
    if alive "$pidfile"; then echo "running  $name pid=$(cat "$pidfile")$who"
    elif [ "$name" = temporal ] && temporal_healthy; then echo "running  temporal on :$TEMPORAL_PORT$who"
    elif [ "$name" = skypilot ] && sky_api_healthy; then echo "running  skypilot on :$SKY_API_PORT$who"
    else echo "stopped  $name"; fi
  done
  echo "Temporal 127.0.0.1:$TEMPORAL_PORT, Web UI http://localhost:$TEMPORAL_UI_PORT, SkyPilot API http://127.0.0.1:$SKY_API_PORT, codec server http://127.0.0.1:$CODEC_PORT"
}

case "${1:-}" in
  up)
    [ "${2:-}" = "" ] || [ "${2:-}" = "--with-worker" ] || { echo "usage: $0 up [--with-worker]" >&2; exit 2; }
    preflight
    mkdir -p "$STATE"
    install_packages
    ensure_codec_key
    start_codec_server
    start_temporal
    register_search_attributes
    start_slurm
    start_sshd
    offline_shims
    start_skypilot
    ensure_worker_token
    [ "${2:-}" = "--with-worker" ] && start_worker
    log "stack up: Temporal 127.0.0.1:$TEMPORAL_PORT (UI http://localhost:$TEMPORAL_UI_PORT), SkyPilot API http://127.0.0.1:$SKY_API_PORT, Slurm $SLURM_CLUSTER"
    ;;
  down) stack_down ;;
  status) show_status ;;
  *) echo "usage: $0 up [--with-worker] | down | status" >&2; exit 2 ;;
esac
