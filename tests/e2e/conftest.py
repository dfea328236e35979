"""End-to-end fixtures: the real local stack (scripts/local_stack.sh up), real worker processes.

These tests need the stack: Temporal on 127.0.0.1:7233, the SkyPilot API server on
127.0.0.1:46580 with Slurm enabled. scripts/test.sh brings it up and sets E2E=1; without E2E=1
they are skipped (for a quick `pytest tests/` on a machine without the stack); with E2E=1 a
missing stack is a failure, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.client import Client

from codec import configured_data_converter

ROOT = Path(__file__).resolve().parents[2]
TEMPORAL_ADDRESS = os.environ.get("E2E_TEMPORAL_ADDRESS", "127.0.0.1:7233")
SKY_API = os.environ.get("E2E_SKYPILOT_API", "http://127.0.0.1:46580")
os.environ["SKYPILOT_API_SERVER_ENDPOINT"] = SKY_API  # this test process's own SDK calls
os.environ["SKYPILOT_DISABLE_LOCAL_API_SERVER"] = "1"
DATA_DIR = Path("/tmp/skypilot-pipeline-data")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("E2E") == "1":
        return
    skip = pytest.mark.skip(reason="needs the local stack: run scripts/test.sh (sets E2E=1)")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


def process_env(**extra: str) -> dict[str, str]:
    """A user's environment: no .env, the stack's addresses, nothing from the test runner."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("TEMPORAL_", "PIPELINE_", "WORKER_", "REAPER_", "AUTODOWN_"))
    }
    env.update(ENV_FILE=os.devnull, TEMPORAL_ADDRESS=TEMPORAL_ADDRESS, SKYPILOT_API_SERVER_ENDPOINT=SKY_API)
    # Test workers leave no reaper schedule behind on the shared dev server; the reaper's own
    # test turns it on.
    env.update(REAPER_PERIOD_SECONDS="0")
    # As on the local stack: autodown adds ~20 s to every launch here, the reaper covers leaks.
    env.update(AUTODOWN_IDLE_MINUTES="0")
    env.update(extra)
    return env


@dataclass
class WorkerProcess:
    proc: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)


def start_worker(task_queue: str, log_path: Path, checkout_root: Path, **env: str) -> WorkerProcess:
    """`python run_worker.py`, as a user starts it; returns once it reports it is polling."""
    log_file = log_path.open("w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "run_worker.py")],
        cwd=ROOT,
        env=process_env(TEMPORAL_TASK_QUEUE=task_queue, WORKER_CHECKOUT_ROOT=str(checkout_root), **env),
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
    )
    worker = WorkerProcess(proc, log_path)
    deadline = time.monotonic() + 90
    while "Worker started" not in worker.log():
        if proc.poll() is not None or time.monotonic() > deadline:
            worker.kill()
            raise AssertionError(f"worker did not start:\n{worker.log()}")
        time.sleep(0.2)
    return worker


@pytest.fixture(scope="session")
async def temporal() -> Client:
    try:
        return await Client.connect(TEMPORAL_ADDRESS, data_converter=configured_data_converter())
    except Exception as err:
        pytest.fail(
            f"the local stack is not up (Temporal at {TEMPORAL_ADDRESS}: {err}); "
            "run scripts/local_stack.sh up"
        )


@pytest.fixture(scope="session")
def sky_sdk():
    import sky

    try:
        sky.api_info()
    except Exception as err:
        pytest.fail(f"the local stack is not up (SkyPilot API server at {SKY_API}: {err})")
    return sky


@dataclass
class Stack:
    temporal: Client
    sky: object
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


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Iterator[tuple[str, WorkerProcess]]:
    """One worker process on a task queue of its own, shared by a test module."""
    task_queue = f"e2e-{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("worker")
    process = start_worker(task_queue, tmp / "worker.log", tmp / "checkouts")
    yield task_queue, process
    process.kill(signal.SIGTERM)


@pytest.fixture
async def stack(temporal, sky_sdk, worker, tmp_path) -> AsyncIterator[Stack]:
    task_queue, _ = worker
    yield Stack(temporal, sky_sdk, task_queue, tmp_path)
