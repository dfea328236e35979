"""For the deploy tests: a deploy's new code (this project with one more step in
SkyPilotWorkflow: eval runs a second time, as step "eval-again", on the train cluster before it
goes down), and what the Temporal server says of a worker deployment and a run's version."""

from __future__ import annotations

import shutil
from pathlib import Path

from temporalio.api.workflowservice.v1 import request_response_pb2 as service
from temporalio.client import Client, WorkflowHandle
from temporalio.service import RPCError

from testing import ROOT
from testing.waiting import eventually

EXTRA_STEP = "eval-again"
_CHANGES = (
    (
        'return ["train", "eval", "train-down"]',
        f'return ["train", "eval", "{EXTRA_STEP}", "train-down"]',
    ),
    (
        '                    evaluated = await train.exec(input.eval_yaml, step="eval")\n',
        '                    evaluated = await train.exec(input.eval_yaml, step="eval")\n'
        f'                    await train.exec(input.eval_yaml, step="{EXTRA_STEP}")\n',
    ),
)


def next_workflows_source() -> str:
    """workflows.py as the next version has it."""
    source = (ROOT / "workflows.py").read_text()
    for old, new in _CHANGES:
        assert source.count(old) == 1, f"workflows.py changed: update testing/next_version.py ({old!r})"
        source = source.replace(old, new)
    return source


def copy_of_next_version(into: Path) -> Path:
    """A copy of this project's code at `into` with the next version's workflows.py: what a deploy
    puts on the new workers' hosts."""
    shutil.copytree(
        ROOT,
        into,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", ".state", ".*_cache", ".hypothesis", "__pycache__", "assets"
        ),
    )
    (into / "workflows.py").write_text(next_workflows_source())
    return into


async def current_build(client: Client, deployment: str) -> str:
    """The build id of the deployment's current version ("" when none, or no such deployment)."""
    try:
        described = await client.workflow_service.describe_worker_deployment(
            service.DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=deployment)
        )
    except RPCError:
        return ""
    return described.worker_deployment_info.routing_config.current_deployment_version.build_id


async def wait_for_current(client: Client, deployment: str, other_than: str = "", timeout: float = 60) -> str:
    """The build id of the deployment's current version once it has one other than `other_than`."""

    async def new_current() -> str:
        build = await current_build(client, deployment)
        return build if build != other_than else ""

    return await eventually(
        new_current, f"a new current version of deployment {deployment}", timeout, every=0.1
    )


async def version_of(handle: WorkflowHandle) -> tuple[str, int]:
    """The build id a run is on and its versioning behaviour (a VersioningBehavior value)."""
    info = (await handle.describe()).raw_description.workflow_execution_info.versioning_info
    return info.deployment_version.build_id, info.behavior
