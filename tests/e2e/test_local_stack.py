"""scripts/local_stack.sh: idempotent, stops only what it started, clear one-line refusals."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from testing import ROOT

pytestmark = pytest.mark.e2e
SCRIPT = str(ROOT / "scripts" / "local_stack.sh")


def local_stack(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", SCRIPT, *args], capture_output=True, text=True, timeout=600, env={**os.environ, **env}
    )


def running_pids() -> dict[str, str]:
    out = local_stack("status").stdout
    return {line.split()[1]: line.split()[2] for line in out.splitlines() if line.startswith("running")}


def test_up_again_is_idempotent_and_restarts_nothing():
    before = running_pids()
    result = local_stack("up")
    assert result.returncode == 0, result.stderr
    assert "temporal: running" in result.stdout and "skypilot: running" in result.stdout
    assert running_pids() == before


def session_processes(sid: str) -> list[str]:
    out = subprocess.run(["ps", "-o", "stat=,pid=", "-s", sid], capture_output=True, text=True).stdout
    return [line.split()[1] for line in out.splitlines() if not line.strip().startswith("Z")]


def test_up_right_after_a_kill_starts_the_component_again_at_once():
    """A killed daemon nobody reaped is a zombie that still answers `kill -0`: it counts as dead."""
    codec_pid = running_pids()["codec"].removeprefix("pid=")
    os.kill(int(codec_pid), signal.SIGKILL)
    result = local_stack("up")
    assert result.returncode == 0, result.stderr
    assert "codec: starting" in result.stdout and "does not answer" not in result.stdout, result.stdout
    assert running_pids()["codec"] != f"pid={codec_pid}"


def test_up_restarts_a_component_that_runs_but_does_not_answer():
    """Liveness is what the component answers, not its pid: a hung codec server is replaced."""
    codec_pid = running_pids()["codec"].removeprefix("pid=")
    os.kill(int(codec_pid), signal.SIGSTOP)
    result = local_stack("up")
    assert result.returncode == 0, result.stderr
    assert f"codec: pid {codec_pid} does not answer" in result.stdout, result.stdout
    assert running_pids()["codec"] != f"pid={codec_pid}" and session_processes(codec_pid) == []


def test_up_recovers_from_a_killed_api_server_whose_children_hold_its_ports():
    """SIGKILL of the API server alone leaves its executors running (one holds a port of its
    own): `up` stops what is left of the server it started, then starts a new one."""
    server_pid = running_pids()["skypilot"].removeprefix("pid=")
    assert len(session_processes(server_pid)) > 1
    os.kill(int(server_pid), signal.SIGKILL)
    result = local_stack("up")
    assert result.returncode == 0, result.stderr
    assert "skypilot: starting API server" in result.stdout, result.stdout
    assert session_processes(server_pid) == [], "processes of the killed server are left"
    assert "skypilot: running" in local_stack("up").stdout


def test_up_again_does_not_wait_for_running_clusters():
    """A cluster's Slurm job holds memory; the health check must not queue behind it."""
    holder = subprocess.run(
        ["sbatch", "--parsable", "--output=/dev/null", "-N1", "-n1", "--mem=1G", "--wrap", "sleep 300"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        subprocess.run(
            ["bash", "-c", f"until squeue -h -j {holder} -t R | grep -q .; do sleep 0.5; done"], timeout=60
        )
        result = subprocess.run(["bash", SCRIPT, "up"], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr
    finally:
        subprocess.run(["scancel", holder], check=False)


def test_down_stops_only_what_that_state_started(tmp_path: Path):
    before = running_pids()
    result = local_stack("down", STACK_STATE_DIR=str(tmp_path))
    assert result.returncode == 0 and "nothing was started by this script" in result.stdout
    assert running_pids() == before


def refusal(result: subprocess.CompletedProcess, *expected: str) -> None:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("local_stack.sh: error: "), result.stderr
    for text in expected:
        assert text in lines[-1], result.stderr


def test_refuses_a_taken_port_naming_it(tmp_path: Path):
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = local_stack("up", STACK_STATE_DIR=str(tmp_path), TEMPORAL_PORT=str(port))
    refusal(result, f"port {port} (for the Temporal server) is taken")


def test_refuses_a_non_debian_system(tmp_path: Path):
    fake = tmp_path / "os-release"
    fake.write_text('ID=fedora\nPRETTY_NAME="Fedora Linux 40"\n')
    refusal(local_stack("up", OS_RELEASE_FILE=str(fake)), "needs Debian or Ubuntu", "Fedora Linux 40")


def test_refuses_to_run_as_a_normal_user():
    result = subprocess.run(
        ["su", "-s", "/bin/bash", "nobody", "-c", f"bash {SCRIPT} up"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    refusal(result, "must run as root")
