"""The real local stack (scripts/local_stack.sh): Temporal dev server, SkyPilot API server, Slurm.

Its addresses, bringing it up, the environment of the processes pointed at it, `run_worker.py`
processes started as a user starts them, and `Stack`, an end-to-end test's handle on it. Used by
tests/e2e/, the real-stack rows of bench/run.py, bench/chaos_soak.py and scripts/screenshots.py.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client

from testing import ROOT, TASK_REPO_DIRS, VENV_BIN

# Where local_stack.sh serves them; E2E_TEMPORAL_ADDRESS / E2E_SKYPILOT_API point elsewhere.
TEMPORAL_ADDRESS = os.environ.get("E2E_TEMPORAL_ADDRESS", "127.0.0.1:7233")
SKY_API = os.environ.get("E2E_SKYPILOT_API", "http://127.0.0.1:46580")
SKY_CLI = VENV_BIN / "sky"
LOCAL_STACK_SH = ROOT / "scripts" / "local_stack.sh"
WORKER_STARTED = "Worker started"  # run_worker.py logs this once it polls its task queue


def point_sdk_at_local_stack() -> None:
    """This process's own SkyPilot SDK calls go to the stack's API server, never to one they start."""
    os.environ.update(SKYPILOT_API_SERVER_ENDPOINT=SKY_API, SKYPILOT_DISABLE_LOCAL_API_SERVER="1")


def stack_env(**extra: str) -> dict[str, str]:
    """A user's environment pointed at the local stack: this process's, without a .env file or
    any TEMPORAL_/PIPELINE_/WORKER_ setting, with the stack's addresses; then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "PIPELINE_", "WORKER_"))}
    env.update(
        ENV_FILE=os.devnull,
        TEMPORAL_ADDRESS=TEMPORAL_ADDRESS,
        SKYPILOT_API_SERVER_ENDPOINT=SKY_API,
        SKYPILOT_DISABLE_LOCAL_API_SERVER="1",
    )
    env.update(extra)
    return env


def process_env(**extra: str) -> dict[str, str]:
    """`stack_env` for the processes a test, a benchmark or the screenshot script starts: none of
    this process's REAPER_/AUTODOWN_ settings either; then `extra`.

    A worker started with it leaves no reaper schedule behind on the shared dev server (the
    reaper's own test turns it on), and asks for no autodown: as on the local stack, autodown adds
    ~20 s to every launch here, and the reaper covers leaks. Nor does it serve metrics (several
    workers run at once; a test that reads them gives its worker an address of its own). Its
    local repositories: this project's, and those tests and benchmarks make in the temp dir."""
    env = {k: v for k, v in stack_env().items() if not k.startswith(("REAPER_", "AUTODOWN_"))}
    env.update(REAPER_PERIOD_SECONDS="0", AUTODOWN_IDLE_MINUTES="0", WORKER_METRICS_ADDRESS="off")
    env.update(WORKER_ALLOWED_LOCAL_REPOS=",".join([str(ROOT), *map(str, TASK_REPO_DIRS)]))
    env.update(extra)
    return env


def run_logged(*command: str, log: Path, env: dict[str, str] | None = None, check: bool = True) -> float:
    """Run `command` in the repository, its output appended to `log`; return its seconds.

    A file, never a pipe: the daemons local_stack.sh starts inherit it. RuntimeError if the
    command fails and `check`."""
    started = time.monotonic()
    with log.open("a") as out:
        out.write(f"$ {' '.join(command)}\n")
        out.flush()
        result = subprocess.run(
            command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=ROOT
        )
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (rc {result.returncode}); see {log}")
    return time.monotonic() - started


def local_stack_up(log: Path) -> float:
    """`local_stack.sh up` (idempotent: what runs already is left alone); its output goes to `log`."""
    return run_logged("bash", str(LOCAL_STACK_SH), "up", log=log)


@dataclass
class WorkerProcess:
    """A `python run_worker.py` process and its log file."""

    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)

    def polling(self) -> bool:
        """It has reported that it polls its task queue."""
        return WORKER_STARTED in self.log()


def spawn_worker_process(
    log_path: Path, env: dict[str, str], code: Path = ROOT, own_session: bool = False
) -> WorkerProcess:
    """`python run_worker.py` of the tree `code`, in `env`, its output in `log_path`; returns at
    once. `own_session`: a Ctrl-C of the caller does not reach it (the caller stops it)."""
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, str(code / "run_worker.py")],
            cwd=code,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=own_session,
        )
    return WorkerProcess(proc, log_path)


def start_worker_process(
    task_queue: str, log_path: Path, checkout_root: Path | None = None, code: Path = ROOT, **env: str
) -> WorkerProcess:
    """`python run_worker.py` of the tree `code` as a user starts it, in `process_env(**env)`,
    polling `task_queue` (checkouts under `checkout_root`, else the worker's default); returns once
    it reports it is polling. RuntimeError, with its log, if it has not within 90 s."""
    if checkout_root is not None:
        env = {"WORKER_CHECKOUT_ROOT": str(checkout_root), **env}
    worker = spawn_worker_process(log_path, process_env(TEMPORAL_TASK_QUEUE=task_queue, **env), code)
    deadline = time.monotonic() + 90
    while not worker.polling():
        if worker.proc.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            raise RuntimeError(f"the worker did not start (log {log_path}):\n{worker.log()}")
        time.sleep(0.2)
    return worker


@dataclass
class Stack:
    """An end-to-end test's handle on the local stack: a Temporal client, the SkyPilot SDK, and the
    task queue of a worker process."""

    temporal: Client
    sky: Any
    task_queue: str
    tmp: Path

    async def start_pipeline(
        self, *args: str, workflow_id: str = "", wait: bool = True
    ) -> tuple[int, str, str, str]:
        """Run `python run_workflow.py` as a user would; returns (rc, stdout, stderr, workflow id)."""
        workflow_id = workflow_id or f"e2e-{uuid.uuid4().hex[:8]}"
        command = [
            sys.executable,
            str(ROOT / "run_workflow.py"),
            "--workflow-id",
            workflow_id,
            "--infra",
            "slurm",
            "--task-queue",
            self.task_queue,
            *args,
        ]
        if not wait:
            command.append("--no-wait")
        proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=str(self.tmp),
            env=process_env(),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        stdout, stderr = await asyncio.wait_for(proc.communicate(), 900)
        return proc.returncode, stdout.decode(), stderr.decode(), workflow_id

    def clusters(self, prefix: str) -> list[str]:
        """What SkyPilot reports: cluster names starting with `prefix` (any status)."""
        records = self.sky.get(self.sky.status(all_users=True))
        return [
            r.name if hasattr(r, "name") else r["name"]
            for r in records
            if (r.name if hasattr(r, "name") else r["name"]).startswith(prefix)
        ]

    def job_statuses(self, cluster: str) -> dict[str, str]:
        """`sky queue` for a cluster: step -> status ({} when the cluster is gone). Job names are
        "<prefix>-<run token>-<step>" (shared.job_name_for)."""
        try:
            records = self.sky.get(self.sky.queue(cluster, all_users=True))
        except Exception:
            return {}
        return {r.job_name.rsplit("-", 1)[-1]: r.status.value for r in records}

    def requests_on(self, cluster: str) -> list:
        """The API server's record of every request on `cluster`, finished ones included."""
        return [
            r for r in self.sky.api_status(all_status=True, cluster_name=cluster) if r.cluster_name == cluster
        ]


def slurm_allocations(name_prefix: str) -> dict[str, str]:
    """The local Slurm's allocations whose job name starts with `name_prefix`: id -> state.
    (A SkyPilot cluster on Slurm is one allocation named after the cluster.)"""
    out = subprocess.run(
        ["squeue", "-h", "-o", "%i %j %T"], capture_output=True, text=True, check=True
    ).stdout
    rows = (line.split() for line in out.splitlines())
    return {job_id: state for job_id, name, state in rows if name.startswith(name_prefix)}


def managed_job_allocations(job: Any) -> dict[str, str]:
    """The Slurm allocations of managed job `job` (a queue record): its cluster is named from a
    shortened job name and the job id (sky.jobs.utils.generate_managed_job_cluster_name)."""
    from sky.jobs.utils import generate_managed_job_cluster_name

    return slurm_allocations(generate_managed_job_cluster_name(job.job_name, job.job_id) + "-")


def managed_jobs(sky: Any, name_part: str) -> list[Any]:
    """SkyPilot's managed jobs (all users) whose name contains `name_part`."""
    records, *_ = sky.get(sky.jobs.queue_v2(refresh=False, all_users=True, name_match=name_part))
    return records
