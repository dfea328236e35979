"""One activity at a time over the fake SDK, in temporalio's ActivityEnvironment: the example
tasks as activity inputs, and environments for a first attempt or a retry."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio.testing import ActivityEnvironment

from skypilot_temporal.payloads import LaunchInput, TaskSpec
from testing import ROOT

CLUSTER = "wf1-train"


def spec(step: str = "train", **kwargs: Any) -> TaskSpec:
    """The example task of `step`, as the workflow would pass it (job "wf1-<step>")."""
    yaml_name = {"preprocess": "data_preprocessing.yaml"}.get(step, f"{step}.yaml")
    return TaskSpec(
        step=step, job_name=f"wf1-{step}", yaml_text=(ROOT / "tasks" / yaml_name).read_text(), **kwargs
    )


def launch_input(step: str = "train", **kwargs: Any) -> LaunchInput:
    return LaunchInput(cluster_name=CLUSTER, task=spec(step, **kwargs))


def retry_env(
    heartbeat_details: list | None = None, first_scheduled_seconds_ago: float = 0.0
) -> ActivityEnvironment:
    """An activity's second attempt, with what its first attempt heartbeated."""
    env = ActivityEnvironment()
    env.info = dataclasses.replace(
        env.info,
        attempt=2,
        heartbeat_details=heartbeat_details or [],
        scheduled_time=datetime.now(UTC) - timedelta(seconds=first_scheduled_seconds_ago),
    )
    return env


async def run_until(
    env: ActivityEnvironment, coro: tuple[Any, ...], condition: Callable[[], Any], timeout: float = 20
) -> asyncio.Future[Any]:
    """Start the activity, wait for `condition()` to hold, return the still-running task."""
    task = asyncio.ensure_future(env.run(*coro))
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition never held"
        assert not task.done(), f"activity ended early: {task.result()}"
        await asyncio.sleep(0.02)
    return task
