"""End-to-end fixtures: the real local stack (scripts/local_stack.sh up), real worker processes.

These tests need the stack: Temporal on 127.0.0.1:7233, the SkyPilot API server on
127.0.0.1:46580 with Slurm enabled. scripts/test.sh brings it up and sets E2E=1; without E2E=1
they are skipped (for a quick `pytest tests/` on a machine without the stack); with E2E=1 a
missing stack is a failure, never a skip. The helpers behind the fixtures are in
testing.local_stack.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from temporalio.client import Client

from skypilot_temporal.trust.codec import configured_data_converter
from testing import ROOT
from testing.local_stack import (
    SKY_API,
    TEMPORAL_ADDRESS,
    Stack,
    WorkerProcess,
    point_sdk_at_local_stack,
    start_worker_process,
)

point_sdk_at_local_stack()  # this test process's own SDK calls


def pytest_collection_modifyitems(config, items):
    if os.environ.get("E2E") == "1":
        return
    skip = pytest.mark.skip(reason="needs the local stack: run scripts/test.sh (sets E2E=1)")
    for item in items:
        if "e2e" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="module")
def worker(tmp_path_factory) -> Iterator[tuple[str, WorkerProcess]]:
    """One worker process on a task queue of its own, shared by a test module."""
    task_queue = f"e2e-{uuid.uuid4().hex[:8]}"
    tmp = tmp_path_factory.mktemp("worker")
    process = start_worker_process(task_queue, tmp / "worker.log", tmp / "checkouts")
    yield task_queue, process
    process.kill(signal.SIGTERM)


@pytest.fixture
async def stack(temporal, sky_sdk, worker, tmp_path) -> AsyncIterator[Stack]:
    task_queue, _ = worker
    yield Stack(temporal, sky_sdk, task_queue, tmp_path)


@dataclass
class Pictures:
    """One run of the screenshot script (`python -m scripts.screenshots`): its exit, output,
    pictures, and the workflow ids of its runs (succeeded, failed, diamond)."""

    returncode: int
    output: str
    out: Path
    runs: dict[str, str]


@pytest.fixture(scope="session")
def pictures(temporal, sky_sdk, tmp_path_factory) -> Iterator[Pictures]:
    """The screenshot script, run once: its real runs are also the ones the Web UI tests read
    (the same runs twice would cost CI minutes for nothing). The script's worker ends with it;
    one on its task queue stays, as a user's would, to answer the runs' queries and details."""
    out = tmp_path_factory.mktemp("pictures")
    record, task_queue = out.parent / "runs.json", f"shots-{uuid.uuid4().hex[:6]}"
    command = [sys.executable, "-m", "scripts.screenshots", "--out", str(out), "--record", str(record)]
    script = subprocess.Popen(
        [*command, "--task-queue", task_queue],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = script.communicate(timeout=1200)
    except subprocess.TimeoutExpired:
        # Ctrl-C, as a user would: the script cancels its runs and waits for their cleanup.
        script.send_signal(signal.SIGINT)
        try:
            output, _ = script.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            script.kill()
            output, _ = script.communicate()
        output += "\n(the screenshot script was stopped after 20 min)"
    runs = json.loads(record.read_text()) if record.exists() else {}
    worker = start_worker_process(task_queue, out.parent / "worker.log", out.parent / "checkouts")
    yield Pictures(script.returncode, output, out, runs)
    worker.kill(signal.SIGTERM)
