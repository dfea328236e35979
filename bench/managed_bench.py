"""Managed train benchmark: row 12 of the table `python -m bench.run` prints.

    .venv/bin/python -m bench.managed_bench     # row 12 alone, on the local stack (~6 min)

Row 12: a pipeline with `--managed-train` on the local stack. Once the train job runs, its Slurm
allocation is cancelled (`scancel`, what a preemption looks like to SkyPilot); the row is the time
from then until SkyPilot's jobs controller has the job RUNNING again on a new allocation. Beside
it: how long the managed job took from submission to RUNNING the first time, and the whole run.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client

from bench.real_stack import Starter
from skypilot_temporal.naming import cluster_prefix_for
from skypilot_temporal.payloads import PipelineResult
from skypilot_temporal.trust.codec import configured_data_converter
from testing.local_stack import (
    TEMPORAL_ADDRESS,
    local_stack_up,
    managed_job_allocations,
    managed_jobs,
    point_sdk_at_local_stack,
    start_worker_process,
)

TRAIN_EPOCHS = "40"
POLL_SECONDS = 1.0
DEADLINE_SECONDS = 20 * 60
# Starts `run_workflow.py` with these arguments; returns (seconds, workflow id).
StartPipeline = Callable[..., Awaitable[tuple[float, str]]]


async def real_row(start_pipeline: StartPipeline, client: Client, sky: Any) -> dict[str, Any]:
    """Preempt a managed train once; the figures of row 12. A run that does not get there within
    DEADLINE_SECONDS is cancelled (its cleanup cancels the managed job)."""
    _, workflow_id = await start_pipeline("--managed-train", "--env", f"EPOCHS={TRAIN_EPOCHS}", "--no-wait")
    handle = client.get_workflow_handle(workflow_id)
    try:
        return await asyncio.wait_for(_preempt_once(workflow_id, client, sky), DEADLINE_SECONDS)
    except BaseException:
        await handle.cancel()
        raise


async def _preempt_once(workflow_id: str, client: Client, sky: Any) -> dict[str, Any]:
    started = time.monotonic()
    prefix = cluster_prefix_for(workflow_id)

    def running_job() -> Any:
        return next((r for r in managed_jobs(sky, prefix) if r.status.value == "RUNNING"), None)

    submitted_at = None
    while (job := await asyncio.to_thread(running_job)) is None:
        if submitted_at is None and await asyncio.to_thread(managed_jobs, sky, prefix):
            submitted_at = time.monotonic()
        await asyncio.sleep(POLL_SECONDS)
    first_running = time.monotonic() - (submitted_at or started)
    allocations = await asyncio.to_thread(managed_job_allocations, job)
    while not allocations:
        await asyncio.sleep(POLL_SECONDS)
        allocations = await asyncio.to_thread(managed_job_allocations, job)
    await asyncio.sleep(5)
    subprocess.run(["scancel", *allocations], check=True)
    preempted_at = time.monotonic()

    def running_again() -> bool:
        now = managed_job_allocations(job)
        return bool(now) and set(now).isdisjoint(allocations) and running_job() is not None

    while not await asyncio.to_thread(running_again):
        await asyncio.sleep(POLL_SECONDS)
    recovered = time.monotonic() - preempted_at
    result = await client.get_workflow_handle(workflow_id, result_type=PipelineResult).result()
    train = next(s for s in result.steps if s.step == "train")
    return {
        "measure": "real stack: managed train, Slurm allocation cancelled mid-train -> job RUNNING again",
        "recovery_seconds": recovered,
        "first_running_seconds": first_running,
        "run_seconds": time.monotonic() - started,
        "recoveries": train.recoveries,
        "status": train.job_status,
    }


async def main() -> int:
    point_sdk_at_local_stack()
    import sky

    with tempfile.TemporaryDirectory(prefix="bench-managed-") as scratch_dir:
        scratch = Path(scratch_dir)
        local_stack_up(scratch / "stack.log")
        client = await Client.connect(TEMPORAL_ADDRESS, data_converter=configured_data_converter())
        task_queue = f"bench-managed-{uuid.uuid4().hex[:6]}"
        worker = start_worker_process(task_queue, scratch / "worker.log", scratch / "checkouts")

        start_pipeline = Starter(task_queue, scratch)

        try:
            figures = await real_row(start_pipeline, client, sky)
        finally:
            worker.kill()
    print(
        f"row 12: {figures['measure']}: {figures['recovery_seconds']:.0f} s "
        f"(first start {figures['first_running_seconds']:.0f} s, run {figures['run_seconds']:.0f} s, "
        f"train {figures['status']} after {figures['recoveries']} recovery)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
