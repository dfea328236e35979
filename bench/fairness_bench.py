"""Fairness on a shared task queue: one team's big sweep against another team's single run.

    .venv/bin/python -m bench.fairness_bench     # ~3 min

A dev server with Temporal's fairness switched on (`matching.enableFairness`, one task queue
partition so the order is the server's, not the partitions'), one worker with 4 activity slots,
far fewer than the sweep has steps, and the fake SDK (each provisioning and job 0.3 s). Team A
starts a 50-variant sweep (all variants at once); 2 s later team B starts one six-step pipeline.
Measured side by side on the same server, with and without fairness keys (run_workflow.py's
--fairness-key; its default is the task repository's owner): how long B's first step waited to
start, and B's whole run. Without keys the backlog is first come, first served: B waits behind
A's steps.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.common import Priority

from bench.report import machine_lines, print_table
from skypilot_temporal.payloads import PipelineInput, SweepInput
from skypilot_temporal.testing.fake_sky import FakeSky
from testing.in_process import benchmark_worker, make_task_repo, start_dev_server
from workflows import SkyPilotWorkflow, SweepWorkflow

STEP_SECONDS = 0.3
VARIANTS, ACTIVITY_SLOTS, B_STARTS_AFTER = 50, 4, 2.0
FAIRNESS = [
    "--dynamic-config-value",
    "matching.enableFairness=true",
    "--dynamic-config-value",
    "matching.numTaskqueueReadPartitions=1",
    "--dynamic-config-value",
    "matching.numTaskqueueWritePartitions=1",
]


async def first_step_wait(handle: WorkflowHandle) -> float:
    """Seconds from the run's start until its first activity (fetch-tasks) started."""
    started_at = scheduled = None
    async for event in handle.fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_STARTED:
            started_at = event.event_time.ToDatetime()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED and scheduled is None:
            scheduled = event.event_time.ToDatetime()
    assert started_at and scheduled, "no activity started"
    return (scheduled - started_at).total_seconds()


async def contest(env, repo: Path, with_keys: bool) -> tuple[float, float]:
    """Team A's sweep, then team B's pipeline: B's first-step wait and B's run time."""
    fake = FakeSky(provision_seconds=STEP_SECONDS)
    for step in ("preprocess", "train", "eval"):
        fake.plan(step, seconds=STEP_SECONDS, logs=["METRIC eval_accuracy=0.9"])
    task_queue = f"bench-fair-{uuid.uuid4().hex[:8]}"
    base = PipelineInput(repo_url=str(repo), ref="main", retry_initial_interval_seconds=0.1)
    team_a = Priority(fairness_key="team-a") if with_keys else Priority.default
    team_b = Priority(fairness_key="team-b") if with_keys else Priority.default
    async with benchmark_worker(env, fake, task_queue, threads=64, concurrency=ACTIVITY_SLOTS):
        sweep = await env.client.start_workflow(
            SweepWorkflow.run,
            SweepInput(base, [{"LR": str(n)} for n in range(VARIANTS)], max_parallel=VARIANTS),
            id=f"{task_queue}-a",
            task_queue=task_queue,
            priority=team_a,
        )
        await asyncio.sleep(B_STARTS_AFTER)
        started = time.monotonic()
        single = await env.client.start_workflow(
            SkyPilotWorkflow.run, base, id=f"{task_queue}-b", task_queue=task_queue, priority=team_b
        )
        await single.result()
        b_seconds = time.monotonic() - started
        await sweep.result()
    return await first_step_wait(single), b_seconds


async def main() -> None:
    env = await start_dev_server(extra_args=FAIRNESS)
    try:
        with tempfile.TemporaryDirectory() as scratch:
            repo = make_task_repo(Path(scratch) / "tasks-repo")
            without = await contest(env, repo, with_keys=False)
            with_keys = await contest(env, repo, with_keys=True)
    finally:
        await env.shutdown()
    for line in machine_lines():
        print(line)
    print(
        f"Team A: a {VARIANTS}-variant sweep started first; team B: one six-step pipeline "
        f"{B_STARTS_AFTER:.0f} s later; one worker with {ACTIVITY_SLOTS} activity slots; "
        f"fake SDK, {STEP_SECONDS} s per step."
    )
    print_table(
        ["team B's run", "without fairness keys", "with keys (team-a, team-b)", "with / without"],
        [
            [
                "first step waited",
                f"{without[0]:.1f} s",
                f"{with_keys[0]:.1f} s",
                f"{with_keys[0] / without[0]:.2f}x",
            ],
            [
                "whole run",
                f"{without[1]:.1f} s",
                f"{with_keys[1]:.1f} s",
                f"{with_keys[1] / without[1]:.2f}x",
            ],
        ],
    )


if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    asyncio.run(main())
