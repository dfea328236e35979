"""Temporal's own floor, measured beside our rows: a workflow that only chains no-op activities.

Row 1 compares a pipeline's overhead per step with this chain's time per step, on the same dev
server and machine in the same run, so the ratio holds where absolute milliseconds do not.
"""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker


@activity.defn
async def no_op() -> None:
    return None


@workflow.defn
class NoOpChain:
    @workflow.run
    async def run(self, activities: int) -> None:
        for _ in range(activities):
            await workflow.execute_activity(no_op, start_to_close_timeout=timedelta(seconds=30))


async def no_op_chain_seconds(env: WorkflowEnvironment, activities: int) -> float:
    """Wall time of one chain of `activities` no-op activities, on a fresh worker (as each
    pipeline of row 1 runs on one)."""
    return (await no_op_chain(env, activities))[0]


async def no_op_chain(env: WorkflowEnvironment, activities: int) -> tuple[float, WorkflowHistory]:
    """`no_op_chain_seconds` and the chain's history (where its time goes)."""
    task_queue = f"floor-{uuid.uuid4().hex[:8]}"
    async with Worker(env.client, task_queue=task_queue, workflows=[NoOpChain], activities=[no_op]):
        started = time.monotonic()
        handle = await env.client.start_workflow(
            NoOpChain.run, activities, id=f"floor-{uuid.uuid4().hex[:10]}", task_queue=task_queue
        )
        await handle.result()
        return time.monotonic() - started, await handle.fetch_history()
