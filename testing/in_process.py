"""The example pipelines in this process: a Temporal dev server, a worker over the fake SDK, a
repository of the example tasks (the package's skypilot_temporal.testing.in_process, set up for
this repository's workflows and tasks).

The fast tests (the fixtures in tests/conftest.py), the simulated rows of bench/run.py and
tests/workflows/record_history.py run the real workflow and activities this way.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

from skypilot_temporal.operations import search_attributes
from skypilot_temporal.payloads import PipelineInput, StepTimeouts
from skypilot_temporal.testing import in_process as harness
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.testing.in_process import TEMPORAL_CLI, git, make_git_repo, start_dev_server
from skypilot_temporal.trust.task_policy import TaskPolicy
from testing import ROOT, TASK_REPO_DIRS
from workflows import PIPELINES, SkyPilotWorkflow

__all__ = ["TEMPORAL_CLI", "git", "make_git_repo", "start_dev_server"]

TASK_FILES = ("data_preprocessing.yaml", "train.yaml", "eval.yaml")
# The worker's own environment, where secrets live (never in workflow history).
WORKER_ENVIRON = {"HF_TOKEN": "s3cr3t-value", "TEMPORAL_API_KEY": "worker-own-credential"}
# The secrets this worker's operator allows tasks to receive (NOPE_TOKEN: allowed but not set).
WORKER_POLICY = TaskPolicy(secret_names=frozenset({"HF_TOKEN", "NOPE_TOKEN"}), local_repo_dirs=TASK_REPO_DIRS)
# A real worker's policy: no secret allowed.
REAL_WORKER_POLICY = TaskPolicy(local_repo_dirs=TASK_REPO_DIRS)


def make_task_repo(repo: Path, replaced: Mapping[str, str] | None = None) -> Path:
    """A git repository at `repo` holding this project's example tasks at its root, on branch main;
    `replaced` (file name -> text) stands in for some of them."""
    files = {name: (ROOT / "tasks" / name).read_text() for name in TASK_FILES}
    return make_git_repo(repo, {**files, **(replaced or {})})


@asynccontextmanager
async def benchmark_worker(
    env: WorkflowEnvironment,
    fake: FakeSky,
    task_queue: str,
    threads: int,
    concurrency: int = 100,
    **options: Any,
) -> AsyncIterator[None]:
    """`running_worker` as a benchmark wants it: a real worker's settings (its heartbeat period,
    its own environment instead of WORKER_ENVIRON, no secret allowed), `threads` SDK threads,
    `concurrency` activities and workflow tasks at once, checkouts in a directory of its own."""
    with tempfile.TemporaryDirectory() as checkouts:
        async with running_worker(
            env,
            fake,
            Path(checkouts),
            task_queue,
            heartbeat_seconds=5.0,
            environ=None,
            policy=REAL_WORKER_POLICY,
            threads=threads,
            max_concurrent_activities=concurrency,
            max_concurrent_workflow_tasks=concurrency,
            **options,
        ):
            yield


@asynccontextmanager
async def running_worker(
    env: WorkflowEnvironment,
    fake: FakeSky,
    checkout_root: Path,
    task_queue: str,
    *,
    environ: Mapping[str, str] | None = WORKER_ENVIRON,
    policy: TaskPolicy = WORKER_POLICY,
    client: Client | None = None,
    **options: Any,
) -> AsyncIterator[None]:
    """A worker in this process on `task_queue` running the example pipelines over `fake`.

    The defaults are a test's: WORKER_ENVIRON and WORKER_POLICY (`environ=None` and
    REAL_WORKER_POLICY are a real worker's: this process's environment, no secret allowed).
    `client` (default: the environment's) e.g. brings payload keys of its own; `options` go to
    the package's running_worker."""
    async with harness.running_worker(
        client or env.client,
        fake,
        task_queue,
        workflows=PIPELINES,
        checkout_root=checkout_root,
        environ=environ,
        policy=policy,
        **options,
    ):
        yield


@dataclass
class Pipeline:
    """A fast test's handle: a dev server, the fake SDK, a task repository, a worker's task queue."""

    env: WorkflowEnvironment
    fake: FakeSky
    repo: Path
    task_queue: str

    def input(self, **overrides: Any) -> PipelineInput:
        fields: dict[str, Any] = dict(
            repo_url=str(self.repo),
            ref="main",
            retry_initial_interval_seconds=0.1,
            timeouts=StepTimeouts(heartbeat=5),
        )
        fields.update(overrides)
        return PipelineInput(**fields)

    async def start(self, **overrides: Any) -> WorkflowHandle:
        """Start a run as run_workflow.py does: with its search attributes (the dev server of
        `start_dev_server` registers them)."""
        return await self.env.client.start_workflow(
            SkyPilotWorkflow.run,
            self.input(**overrides),
            id=f"wf-{uuid.uuid4().hex[:8]}",
            task_queue=self.task_queue,
            execution_timeout=timedelta(minutes=2),
            search_attributes=search_attributes.at_start(SkyPilotWorkflow.__name__, str(self.repo)),
        )

    async def run(self, **overrides: Any) -> Any:
        return await (await self.start(**overrides)).result()

    async def fail(self, **overrides: Any) -> ApplicationError | CancelledError:
        """Run a pipeline that must fail; the cause of its failure."""
        try:
            await self.run(**overrides)
        except WorkflowFailureError as err:
            return err.cause
        raise AssertionError("the pipeline succeeded; it was meant to fail")

    def assert_no_cluster_left(self) -> None:
        assert self.fake.clusters == {}, f"leaked: {list(self.fake.clusters)}"
        assert set(self.fake.called("down")) >= self.fake.ever_launched
