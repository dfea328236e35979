"""A managed train on the real stack, preempted: the test kills the job's Slurm allocation
mid-train (`scancel`), SkyPilot's jobs controller relaunches it, and the run completes."""

from __future__ import annotations

import asyncio
import subprocess
import time
import uuid

import pytest
from sky.jobs.constants import MANAGED_JOB_TOKEN_NAME_PREFIX

from e2e.test_pipeline_e2e import DATA_DIR, result_of, status_of
from e2e.test_web_ui import open_run
from scripts.skypilot_tokens import admin_session, password_file, token_names
from skypilot_temporal.naming import cluster_prefix_for
from testing.browser import browser_page, wait_for_user_metadata
from testing.local_stack import SKY_API, Stack, managed_job_allocations, managed_jobs, slurm_allocations
from testing.waiting import eventually

pytestmark = pytest.mark.e2e


async def test_a_preempted_managed_train_recovers_and_the_run_completes(stack: Stack):
    workflow_id = f"e2e-managed-{uuid.uuid4().hex[:6]}"
    prefix = cluster_prefix_for(workflow_id)
    run = asyncio.ensure_future(
        stack.start_pipeline("--managed-train", "--env", "EPOCHS=40", workflow_id=workflow_id)
    )

    def train_running():
        jobs = [r for r in managed_jobs(stack.sky, prefix) if r.status.value == "RUNNING"]
        allocations = managed_job_allocations(jobs[0]) if jobs else {}
        return (jobs[0], allocations) if allocations else None

    job, first_allocations = await eventually(
        lambda: asyncio.to_thread(train_running), "the managed train job to run", 600, every=2
    )
    # The API server (service accounts on) gives a managed job a token of its launcher unless the
    # task opts out: the worker's tasks do, so no token acts as the worker inside the job.
    admin = admin_session(password_file().read_text().strip())
    job_tokens = [
        n for n in token_names(admin, SKY_API) if n.startswith(MANAGED_JOB_TOKEN_NAME_PREFIX + prefix)
    ]
    assert job_tokens == [], job_tokens
    await asyncio.sleep(8)  # a few epochs in
    subprocess.run(["scancel", *first_allocations], check=True)
    preempted_at = time.monotonic()

    def relaunched():
        again = managed_job_allocations(job)
        running = [r for r in managed_jobs(stack.sky, prefix) if r.job_id == job.job_id]
        return (
            again
            if again and set(again).isdisjoint(first_allocations) and running[0].status.value == "RUNNING"
            else None
        )

    await eventually(
        lambda: asyncio.to_thread(relaunched),
        "SkyPilot to relaunch the train job on a new allocation",
        600,
        every=2,
    )
    recovery_seconds = time.monotonic() - preempted_at
    rc, stdout, stderr, _ = await run

    assert rc == 0, stderr
    assert await status_of(stack.temporal, workflow_id) == "COMPLETED"
    result = await result_of(stack.temporal, workflow_id)
    steps = {s["step"]: s for s in result["steps"]}
    assert (steps["train"]["job_id"], steps["train"]["job_status"]) == (job.job_id, "SUCCEEDED")
    assert steps["train"]["recoveries"] == 1, steps["train"]
    assert steps["eval"]["job_status"] == "SUCCEEDED" and steps["eval"]["cluster_name"] == f"{prefix}-eval"
    assert "eval_accuracy" in steps["eval"]["metrics"]  # eval found the model the recovered job wrote
    assert (DATA_DIR / prefix / "model" / "weights.txt").exists()
    assert "1 recovery" in stdout, stdout
    print(f"train relaunched and RUNNING again {recovery_seconds:.0f} s after its allocation was cancelled")

    # The Web UI's current details show the managed job, its status and its recovery.
    async with browser_page() as page:
        await open_run(page, stack.temporal, workflow_id, tab="user-metadata")
        await wait_for_user_metadata(
            page, f"managed job train — managed job {job.job_id} SUCCEEDED, 1 recovery"
        )

    # Nothing left: no cluster, no Slurm allocation, no managed job still going.
    assert stack.clusters(prefix) == []
    assert managed_job_allocations(job) == {} and slurm_allocations(prefix) == {}
    assert [r.status.value for r in managed_jobs(stack.sky, prefix)] == ["SUCCEEDED"]
