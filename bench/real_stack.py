"""The benchmarks' real-stack parts: pipelines started with `run_workflow.py` as a user starts
them, the same six operations by hand with the sky CLI, and what the SkyPilot API server's records
say about the requests a run made.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import sys
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from temporalio.client import Client

from skypilot_temporal.naming import cluster_prefix_for
from testing import ROOT
from testing.local_stack import SKY_CLI, process_env, run_logged

# The local stack's API server keeps its request records and log here (its user is this one).
API_SERVER_STATE = Path.home() / ".sky" / "api_server"
_LOG_TIME = re.compile(r"^[DIWE] (\d\d-\d\d \d\d:\d\d:\d\d\.\d+) ")


@dataclass
class Starter:
    """`run_workflow.py --infra slurm` on `task_queue`, run from `scratch` with the stack's environment."""

    task_queue: str
    scratch: Path

    async def __call__(self, *args: str) -> tuple[float, str]:
        """Start a run with `args` and wait for the starter to exit; its seconds and workflow id.
        RuntimeError if the starter fails (a `--no-wait` start is not waited for)."""
        workflow_id = f"bench-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "run_workflow.py"),
            "--infra",
            "slurm",
            "--task-queue",
            self.task_queue,
            "--workflow-id",
            workflow_id,
            *args,
            env=process_env(),
            cwd=str(self.scratch),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await proc.communicate()
        if proc.returncode != 0 and "--no-wait" not in args:
            raise RuntimeError(f"pipeline {workflow_id} failed: {stderr.decode()[-500:]}")
        return time.monotonic() - started, workflow_id


def hand_run(scratch: Path, log: Path) -> float:
    """The six operations by hand with the sky CLI, in sequence; returns their seconds."""
    env = process_env()
    run_id = f"hand{uuid.uuid4().hex[:4]}"
    pre, train = f"{run_id}-preprocess", f"{run_id}-train"
    envs = ["--env", f"PIPELINE_RUN_ID={run_id}"]
    tasks = scratch / run_id / "tasks"
    seconds = run_logged("git", "clone", "--quiet", str(ROOT), str(scratch / run_id), log=log)
    sky = str(SKY_CLI)
    for command in (
        ["launch", "-y", "-c", pre, "--infra", "slurm", *envs, str(tasks / "data_preprocessing.yaml")],
        ["down", "-y", pre],
        ["launch", "-y", "-c", train, "--infra", "slurm", *envs, str(tasks / "train.yaml")],
        ["exec", train, *envs, str(tasks / "eval.yaml")],
        ["down", "-y", train],
    ):
        seconds += run_logged(sky, *command, log=log, env=env)
    return seconds


async def in_skypilot_requests(client: Client, workflow_id: str) -> tuple[float, float]:
    """A finished run's wall time (from its history), and the part of it covered by its SkyPilot
    requests: what the pipeline would take if orchestration cost nothing."""
    import sky

    description = await client.get_workflow_handle(workflow_id).describe()
    assert description.start_time and description.close_time
    run_seconds = (description.close_time - description.start_time).total_seconds()
    prefix = cluster_prefix_for(workflow_id)
    spans = []
    for cluster in (f"{prefix}-preprocess", f"{prefix}-train"):
        requests = await asyncio.to_thread(sky.api_status, all_status=True, cluster_name=cluster)
        spans += [
            (r.created_at, r.finished_at) for r in requests if r.cluster_name == cluster and r.finished_at
        ]
    spans.sort()
    covered, reach = 0.0, 0.0
    for start, end in spans:
        start = max(start, reach)
        if end > start:
            covered += end - start
            reach = end
    return run_seconds, covered


@dataclass
class RequestTimes:
    count: int = 0
    queued: float = 0.0  # created -> a server worker took it
    total: float = 0.0  # created -> finished


def request_times(since: float, until: float) -> dict[str, RequestTimes]:
    """Per request name, the local API server's requests created between `since` and `until`
    (epoch seconds): how long they waited for a server worker, and how long they took in all.

    The request records have no start time: an executor accepting a request ("Submitted request")
    is in the server's log.
    Requests the server runs without a worker (log streaming) have no queueing."""
    taken: dict[str, float] = {}
    year = datetime.now().year
    for line in (API_SERVER_STATE / "server.log").read_text(errors="replace").splitlines():
        if "Submitted request:" in line and (match := _LOG_TIME.match(line)):
            stamp = datetime.strptime(f"{year}-{match.group(1)}", "%Y-%m-%d %H:%M:%S.%f")
            taken[line.rsplit(" ", 1)[-1]] = stamp.timestamp()
    database = sqlite3.connect(API_SERVER_STATE / "requests.db")
    try:
        rows = database.execute(
            "SELECT request_id, name, created_at, finished_at FROM requests WHERE created_at BETWEEN ? AND ?",
            (since, until),
        ).fetchall()
    finally:
        database.close()
    times: dict[str, RequestTimes] = defaultdict(RequestTimes)
    for request_id, name, created, finished in rows:
        entry = times[name]
        entry.count += 1
        entry.queued += max(0.0, taken.get(request_id, created) - created)
        entry.total += (finished or until) - created
    return dict(times)
