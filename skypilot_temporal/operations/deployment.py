"""Worker versioning: each worker joins a Temporal Worker Deployment with a build id, so a deploy
never changes the code under a run in flight (docs/deploying-and-operating.md).

A pipeline run is PINNED to the version it started on: it finishes on that version's workers, so
new workflow code needs no `workflow.patched` branch. The reaper is AUTO_UPGRADE: its runs are a
few seconds long and hold no state worth keeping. The build id defaults to a hash of the code the
worker runs (this package and the modules of its workflows), so a deploy that changes that code
makes a new version and a restart of the same code joins the same one.

A version receives no work until it is the deployment's current one. With `make_current="auto"` a
worker makes its own version current when the deployment has none yet, or when its version is
newer than the current one and has never been current (so a deploy is "start the new workers";
an old worker restarted while its runs drain, or a new one restarted after a rollback, does not
take the deployment back). With "never" an operator does it:
`temporal worker deployment set-current-version`.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from temporalio.api.deployment.v1 import message_pb2 as deployment_messages
from temporalio.api.workflowservice.v1 import request_response_pb2 as service
from temporalio.client import Client
from temporalio.common import VersioningBehavior, WorkerDeploymentVersion
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import WorkerDeploymentConfig

from skypilot_temporal.errors import ConfigError

log = logging.getLogger("skypilot_temporal")
VersionSummary = deployment_messages.WorkerDeploymentInfo.WorkerDeploymentVersionSummary
MAKE_CURRENT_CHOICES = ("auto", "never")
# Temporal refuses dots and colons (it joins them as "<deployment>:<build id>", once with a dot)
# and names starting with "__" (its own).
_NAME = re.compile(r"(?!__)[A-Za-z0-9_\-/@+=]{1,200}")
_PACKAGE_DIR = Path(__file__).resolve().parent.parent
# Answers meaning "ask again shortly": the version or deployment is still being added, the
# deployment is busy with other workers' requests, or another worker changed it first.
_NOT_YET = frozenset(
    {
        RPCStatusCode.NOT_FOUND,
        RPCStatusCode.RESOURCE_EXHAUSTED,
        RPCStatusCode.FAILED_PRECONDITION,
        RPCStatusCode.ABORTED,
        RPCStatusCode.UNAVAILABLE,
    }
)
# How long a new version may take to appear in its deployment after the worker starts polling.
REGISTRATION_SECONDS = 60.0


@dataclass(frozen=True)
class Versioning:
    """Which deployment a worker joins, as which build, and whether it makes itself current."""

    deployment_name: str
    build_id: str
    make_current: str = "auto"

    def __post_init__(self) -> None:
        check_settings(self.deployment_name, self.build_id, self.make_current)

    def worker_config(self) -> WorkerDeploymentConfig:
        return WorkerDeploymentConfig(
            version=WorkerDeploymentVersion(self.deployment_name, self.build_id),
            use_worker_versioning=True,
            # Every workflow not declaring its own (the reaper: AUTO_UPGRADE) stays on its version.
            default_versioning_behavior=VersioningBehavior.PINNED,
        )


def check_settings(deployment_name: str, build_id: str, make_current: str) -> None:
    """Raise ConfigError naming a bad setting ("" for a name: its default, not checked here)."""
    for setting, value in (("WORKER_DEPLOYMENT_NAME", deployment_name), ("WORKER_BUILD_ID", build_id)):
        if value and not _NAME.fullmatch(value):
            raise ConfigError(
                f"{setting} {value!r}: use 1-200 letters, digits and _-/@+= (no dots or colons, "
                "not starting with __)"
            )
    if make_current not in MAKE_CURRENT_CHOICES:
        raise ConfigError(f"WORKER_MAKE_CURRENT must be auto or never, got {make_current!r}")


def deployment_name_for(task_queue: str) -> str:
    """The default deployment: one per task queue, named after it (in the characters allowed)."""
    return re.sub(r"[^A-Za-z0-9_\-/@+=]", "-", task_queue).lstrip("_")[:200] or "skypilot"


def code_build_id(workflows: Iterable[type]) -> str:
    """A hash of this package's source and of the files defining `workflows`: what a deploy of
    new workflow code changes, and a restart of the same code does not."""
    files = sorted(_PACKAGE_DIR.rglob("*.py"))
    files += sorted({Path(path).resolve() for path in map(inspect.getsourcefile, workflows) if path})
    digest = hashlib.sha256()
    for path in dict.fromkeys(files):
        relative = path.relative_to(_PACKAGE_DIR) if path.is_relative_to(_PACKAGE_DIR) else Path(path.name)
        digest.update(str(relative).encode() + b"\0" + path.read_bytes() + b"\0")
    return "code-" + digest.hexdigest()[:12]


async def make_current_if_newer(client: Client, versioning: Versioning) -> None:
    """Make this worker's version the deployment's current one if it has none or an older one;
    say in one line what happened. Never raises: a worker that cannot do it still runs its
    version's pinned runs."""
    name, build_id = versioning.deployment_name, versioning.build_id
    command = f"temporal worker deployment set-current-version --deployment-name {name} --build-id {build_id}"
    answers: list[RPCError] = []  # the server's refusals, the last one is the reason given up
    try:
        async with asyncio.timeout(REGISTRATION_SECONDS):
            was = await _make_current(client, versioning, command, answers)
    except Exception as err:
        if isinstance(err, TimeoutError):
            reason = answers[-1].message if answers else "the server did not add it in time"
        else:
            reason = err.message if isinstance(err, RPCError) else str(err)
        log.warning(
            "Worker deployment %s: could not make build %s current (%s); make it current: %s",
            name,
            build_id,
            reason,
            command,
        )
        return
    if was is not None:
        log.info(
            "Worker deployment %s: build %s is now current (was %s): new runs start on it, runs in "
            "flight stay on their own version",
            name,
            build_id,
            was or "none",
        )


async def _make_current(
    client: Client, versioning: Versioning, command: str, answers: list[RPCError]
) -> str | None:
    """The build that was current before this one was made current (None: it was not made
    current, and why is logged). Retries while the server is still adding the version."""
    name, build_id = versioning.deployment_name, versioning.build_id
    pause = 0.2
    while True:
        await asyncio.sleep(pause)
        pause = min(pause * 2, 2.0)
        try:
            deployment = await client.workflow_service.describe_worker_deployment(
                service.DescribeWorkerDeploymentRequest(namespace=client.namespace, deployment_name=name)
            )
        except RPCError as err:
            if err.status in _NOT_YET:
                answers.append(err)
                continue
            raise
        info = deployment.worker_deployment_info
        versions = {s.deployment_version.build_id: s for s in info.version_summaries}
        if build_id not in versions:
            continue  # the server adds a version once its workers poll
        current = info.routing_config.current_deployment_version.build_id
        if current == build_id:
            log.info("Worker deployment %s: build %s is current", name, build_id)
            return None
        if why := _why_not_current(versioning, versions[build_id], versions.get(current)):
            log.warning(
                "Worker deployment %s: build %s is NOT current (current: %s, %s); this worker runs only "
                "the runs pinned to it until an operator makes it current: %s",
                name,
                build_id,
                current or "none",
                why,
                command,
            )
            return None
        try:
            await client.workflow_service.set_worker_deployment_current_version(
                service.SetWorkerDeploymentCurrentVersionRequest(
                    namespace=client.namespace,
                    deployment_name=name,
                    build_id=build_id,
                    conflict_token=deployment.conflict_token,
                    identity=client.identity,
                )
            )
        except RPCError as err:
            if err.status in _NOT_YET:
                answers.append(err)
                continue  # e.g. another worker changed it first: look again
            raise
        return current


def _why_not_current(versioning: Versioning, ours: VersionSummary, current: VersionSummary | None) -> str:
    """Why this worker leaves its version as it is ("": it makes it current)."""
    if versioning.make_current == "never":
        return "WORKER_MAKE_CURRENT=never"
    if ours.HasField("first_activation_time"):
        return "this build was current before: an operator moved away from it"
    if current is not None and current.create_time.ToNanoseconds() > ours.create_time.ToNanoseconds():
        return "it is newer"
    return ""
