"""The leak safety net: tear down clusters whose run is gone.

A workflow's `finally:` tears its clusters down on success, failure and cancel, but terminate,
reset and a workflow execution timeout skip it. `ClusterReaperWorkflow`, started every
REAPER_PERIOD_SECONDS by a Temporal Schedule that each worker sets up (idempotently), finds
clusters this project launched (named "skypilot-...", see naming.CLUSTER_MARKER) whose owning
workflow is not running, and tears them down with the pipeline's own `down_cluster` activity.
Managed jobs ("skypilot-..." too) whose run is gone are cancelled (`cancel_managed_job`): the
jobs controller then removes their clusters.
It needs no running pipeline workflow and no state of its own: SkyPilot and Temporal's
visibility are the state.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client, ScheduleActionStartWorkflow
from temporalio.common import RetryPolicy, VersioningBehavior

with workflow.unsafe.imports_passed_through():
    from skypilot_temporal.activity.activities import SkyPilotActivities
    from skypilot_temporal.naming import (
        CLUSTER_MARKER,
        cluster_prefix_for,
        cluster_prefix_v1_for,
    )
    from skypilot_temporal.operations import metrics
    from skypilot_temporal.operations.schedules import ScheduleRequest, create_or_update
    from skypilot_temporal.payloads import CancelManagedJobInput, DownInput, ReaperInput, ReaperResult


# Reaper runs started before it also cancelled orphaned managed jobs replay without doing so.
REAPER_CANCELS_MANAGED_JOBS = "reaper-cancels-managed-jobs"


def reaper_schedule_id(task_queue: str) -> str:
    return f"skypilot-cluster-reaper-{task_queue}"


# A cluster is kept while any running workflow's id maps to its prefix: pipelines of every
# worker, task queue and type (a platform's own included), with no list of types to keep current.
RUNNING_WORKFLOWS_QUERY = "ExecutionStatus = 'Running'"


def live_prefixes(running_workflow_ids: Iterable[str]) -> set[str]:
    """The cluster-name prefixes the running workflows may own (runs started before the
    injective prefixes keep their old one)."""
    return {
        prefix_for(workflow_id)
        for workflow_id in running_workflow_ids
        for prefix_for in (cluster_prefix_for, cluster_prefix_v1_for)
    }


def cluster_owners(name: str) -> list[str]:
    """The prefix of the run that owns cluster "<prefix>-<role>" (a role has no "-")."""
    return [name.rsplit("-", 1)[0]]


_RUN_TOKEN = re.compile(r"-[0-9a-f]{8}-")


def managed_job_owners(name: str) -> list[str]:
    """Who may own managed job "<prefix>-<run token>-<step>": the part before each "-<8 hex>-" in
    the name (a step may have "-" in it, and a prefix may end in 8 hex), and for a job named before
    run tokens ("<prefix>-<step>") its cluster-style owner. Kept when one of them is running."""
    # Every position, not finditer's: in "-0d3928e8-1a2b3c4d-" the two tokens share a "-".
    tokens = [i for i in range(len(name)) if _RUN_TOKEN.match(name, i)]
    return [name[:i] for i in tokens] + cluster_owners(name)


def orphans(
    ages: dict[str, float],
    live: set[str],
    grace_seconds: float,
    owners: Callable[[str], list[str]] = cluster_owners,
) -> tuple[list[str], list[str]]:
    """Split marked clusters or managed jobs (name -> age in seconds) into (orphans, kept): an
    orphan's exact owner (one of `owners` of its name) is not among the `live` prefixes."""
    reap: list[str] = []
    keep: list[str] = []
    for name, age in sorted(ages.items()):
        owned = any(owner in live for owner in owners(name))
        (keep if owned or age < grace_seconds else reap).append(name)
    return reap, keep


class ReaperActivities:
    def __init__(self, skypilot: SkyPilotActivities, client: Client) -> None:
        self._skypilot = skypilot
        self._client = client

    @activity.defn
    async def find_orphan_clusters(self, input: ReaperInput) -> ReaperResult:
        """Marked clusters whose owning workflow is not running (closed, or never known)."""
        now = time.time()
        clusters = {
            name: now - launched_at
            for name, launched_at in (await self._skypilot.cluster_launch_times()).items()
            if name.startswith(CLUSTER_MARKER)
        }
        # Managed jobs (their clusters belong to SkyPilot's jobs controller, not to `sky status`):
        # cancelled when their run is gone, the controller then removes their clusters.
        jobs = await self._skypilot.unfinished_managed_jobs(CLUSTER_MARKER)
        job_ages = {
            name: now - submitted_at for _, name, submitted_at in jobs if name.startswith(CLUSTER_MARKER)
        }
        if not clusters and not job_ages:
            return ReaperResult(reaped=[], kept=[])
        # Listed after the clusters: a run that starts in between is covered by the grace period.
        live = live_prefixes(await self._running_workflow_ids())
        reap, keep = orphans(clusters, live, input.grace_seconds)
        orphan_jobs, _ = orphans(job_ages, live, input.grace_seconds, managed_job_owners)
        cancel = sorted(job_id for job_id, name, _ in jobs if name in orphan_jobs)
        return ReaperResult(reaped=reap, kept=keep, cancelled_jobs=cancel)

    async def _running_workflow_ids(self) -> list[str]:
        """Every running workflow of the namespace (a shared one may hold many: a heartbeat per
        page keeps a long listing alive)."""
        ids: list[str] = []
        async for execution in self._client.list_workflows(RUNNING_WORKFLOWS_QUERY, page_size=1000):
            ids.append(execution.id)
            if len(ids) % 1000 == 0:
                activity.heartbeat(len(ids))
        return ids


@workflow.defn
class ClusterReaperWorkflow:
    @workflow.run
    async def run(self, input: ReaperInput) -> ReaperResult:
        found = await workflow.execute_activity_method(
            ReaperActivities.find_orphan_clusters,
            input,
            start_to_close_timeout=timedelta(minutes=10),
            heartbeat_timeout=timedelta(minutes=1),
            retry_policy=RetryPolicy(maximum_attempts=3),
            summary="find clusters whose run is gone",
        )
        patched = bool(found.cancelled_jobs) and workflow.patched(REAPER_CANCELS_MANAGED_JOBS)
        to_cancel = found.cancelled_jobs if patched else []
        *results, cancels = await asyncio.gather(
            *(self._down(name) for name in found.reaped),
            asyncio.gather(*(self._cancel_job(job_id) for job_id in to_cancel), return_exceptions=True),
            return_exceptions=True,
        )
        # The inner gather returns its exceptions, so it returned a list.
        cancel_errors = cancels if isinstance(cancels, list) else [cancels] * len(to_cancel)
        found.cancelled_jobs = [
            job_id for job_id, error in zip(to_cancel, cancel_errors, strict=True) if error is None
        ]
        if found.cancelled_jobs:
            workflow.logger.warning(
                "Reaper cancelled managed jobs whose run is gone: %s", found.cancelled_jobs
            )
        reaped = [name for name, result in zip(found.reaped, results, strict=True) if result is None]
        for name, result in zip(found.reaped, results, strict=True):
            if result is not None:
                workflow.logger.warning(
                    "Reaper could not tear down %s (next period retries): %s", name, result
                )
        if reaped:
            workflow.logger.warning("Reaper tore down clusters whose run is gone: %s", ", ".join(reaped))
        metrics.reaped(len(reaped), len(found.cancelled_jobs))
        return ReaperResult(reaped=reaped, kept=found.kept, cancelled_jobs=found.cancelled_jobs)

    async def _cancel_job(self, job_id: int) -> None:
        await workflow.execute_activity_method(
            SkyPilotActivities.cancel_managed_job,
            CancelManagedJobInput(job_id, job_name=""),
            start_to_close_timeout=timedelta(minutes=15),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(maximum_attempts=3),
            summary=f"reaper: cancel managed job {job_id}",
        )

    async def _down(self, cluster: str) -> None:
        await workflow.execute_activity_method(
            SkyPilotActivities.down_cluster,
            # The owner is gone: any of its launches still in flight on the cluster goes too.
            DownInput(cluster_name=cluster, job_name_prefix=CLUSTER_MARKER),
            start_to_close_timeout=timedelta(minutes=15),
            heartbeat_timeout=timedelta(seconds=60),
            retry_policy=RetryPolicy(maximum_attempts=3),
            summary=f"reaper: down {cluster}",
        )


# On a versioned worker (pipelines are pinned): a reaper run is seconds long and keeps no state,
# so it may move to a new version mid-run. Temporal refuses a behaviour on an unversioned worker:
# the plugin registers this one only on a versioned worker.
@workflow.defn(name="ClusterReaperWorkflow", versioning_behavior=VersioningBehavior.AUTO_UPGRADE)
class AutoUpgradingClusterReaperWorkflow(ClusterReaperWorkflow):
    @workflow.run
    async def run(self, input: ReaperInput) -> ReaperResult:
        return await super().run(input)


async def ensure_reaper_schedule(client: Client, task_queue: str, period: timedelta, grace: timedelta) -> str:
    """Create the reaper's schedule for `task_queue`, or bring an existing one up to date (an
    operator's pause stays)."""
    schedule_id = reaper_schedule_id(task_queue)
    action = ScheduleActionStartWorkflow(
        ClusterReaperWorkflow.run,
        ReaperInput(grace_seconds=int(grace.total_seconds())),
        id=f"skypilot-cluster-reaper-{task_queue}",
        task_queue=task_queue,
        execution_timeout=max(period, timedelta(minutes=30)),
    )
    await create_or_update(client, ScheduleRequest(schedule_id, every=period), action)
    return schedule_id
