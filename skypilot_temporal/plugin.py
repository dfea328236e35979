"""`SkyPilotPlugin`: everything a Temporal worker needs to run SkyPilot pipelines, in one object.

    client = await Client.connect(address, plugins=[SkyPilotPlugin(settings)])
    worker = Worker(client, task_queue=settings.task_queue, workflows=[MyPipeline])

It registers the SkyPilot activities (over the SkyPilot client SDK, or a fake of it), the leak
reaper (its workflow, its activity and the Temporal Schedule that starts it), the payload codec
(when keys are configured), the tracing interceptor (when OTLP is configured) and the workflow
sandbox's pass-through of this package. The reaper needs no list of pipeline types: a cluster is
kept while any running workflow of the namespace owns its name (naming.cluster_prefix_for), so
pipelines of other workers and task queues are safe too.

Given to `Client.connect`, the client encrypts payloads and every worker built on it gets the
rest (so keep other teams' workers on a client of their own); given to a `Worker` only, the worker
refuses to start if codec keys are configured but its client would not encrypt (a run's inputs
would reach history in plain text). The client's own data converter stays: the plugin adds the
codec to it (and encoded failure attributes), nothing else.

It also applies the settings a Worker would otherwise lack (`max_concurrent_activities`, the
graceful shutdown time) unless the Worker sets them, keeps URL credentials out of this package's
and Temporal's workflow and activity logs, and never lets the SkyPilot SDK start a local API
server in place of an unreachable one (`SKYPILOT_DISABLE_LOCAL_API_SERVER=1` unless set).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import logging
import os
from collections.abc import Awaitable, Callable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio.converter import DataConverter
from temporalio.plugin import SimplePlugin
from temporalio.service import RPCError
from temporalio.worker import Worker, WorkerConfig, WorkflowRunner
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from skypilot_temporal.activity.activities import SkyPilotActivities
from skypilot_temporal.activity.sdk import SkyPilotSDK, skypilot_sdk
from skypilot_temporal.errors import ConfigError
from skypilot_temporal.operations import deployment, tracing
from skypilot_temporal.operations.deployment import Versioning
from skypilot_temporal.operations.reaper import (
    AutoUpgradingClusterReaperWorkflow,
    ClusterReaperWorkflow,
    ReaperActivities,
    ensure_reaper_schedule,
)
from skypilot_temporal.settings import WorkerSettings
from skypilot_temporal.trust.checkout import prune_checkouts
from skypilot_temporal.trust.codec import configured_data_converter
from skypilot_temporal.trust.redaction import hide_credentials
from skypilot_temporal.workflow.pipeline_file_workflow import PipelineFileWorkflow

PACKAGE = "skypilot_temporal"
log = logging.getLogger(PACKAGE)
PLUGIN_NAME = "skypilot_temporal.SkyPilotPlugin"
# Where a step's log lines go: they may quote a repository or endpoint URL.
LOGGERS = (PACKAGE, "temporalio.activity", "temporalio.workflow")
CHECKOUT_PRUNE_PERIOD_SECONDS = 3600


class SkyPilotPlugin(SimplePlugin):
    """Registers SkyPilot pipelines' activities, the reaper, the generic pipeline-file workflow
    (PipelineFileWorkflow: do not list it again), codec, tracing and sandbox settings.

    `sky`: the SkyPilot client SDK to call (default: the `sky` module; tests pass a FakeSky).
    `environ`: where secrets a task may receive are read (default: this process's environment).
    `activities_class`: a subclass of SkyPilotActivities to register instead (tests).
    On a client, it serves every worker built on that client, each with SDK thread pools of its
    own (one worker per task queue).
    """

    def __init__(
        self,
        settings: WorkerSettings | None = None,
        *,
        sky: SkyPilotSDK | None = None,
        environ: Mapping[str, str] | None = None,
        data_converter: DataConverter | None = None,
        activities_class: type[SkyPilotActivities] = SkyPilotActivities,
        managed_status_poll_seconds: float | None = None,
    ) -> None:
        self.settings = settings or WorkerSettings()
        self._sky = sky
        self._environ = environ
        self._activities_class = activities_class
        self._managed_status_poll_seconds = managed_status_poll_seconds
        self._converter = data_converter or configured_data_converter()
        self._tracing = tracing.otlp_tracing(os.environ)
        # Each worker's SDK thread pools, by task queue; the workers running now.
        self._executors: dict[str, list[concurrent.futures.ThreadPoolExecutor]] = {}
        self._running = 0
        self._versioning: dict[str, Versioning] = {}  # by task queue, for workers this plugin versions
        if sky is None:
            os.environ.setdefault("SKYPILOT_DISABLE_LOCAL_API_SERVER", "1")
        for name in LOGGERS:
            if hide_credentials not in logging.getLogger(name).filters:
                logging.getLogger(name).addFilter(hide_credentials)
        super().__init__(
            PLUGIN_NAME,
            data_converter=self._with_codec if self._converter.payload_codec else None,
            interceptors=[self._tracing[0]] if self._tracing else None,
            workflows=[ClusterReaperWorkflow, PipelineFileWorkflow],
            workflow_runner=_pass_this_package_through,
        )

    @property
    def tracing_endpoint(self) -> str:
        """Where spans go ("": tracing is off)."""
        return tracing.otlp_endpoint(os.environ) if self._tracing else ""

    def _with_codec(self, existing: DataConverter | None) -> DataConverter:
        """The client's converter (its payload converter too), encrypting payloads and failures."""
        return dataclasses.replace(
            existing or DataConverter.default,
            payload_codec=self._converter.payload_codec,
            failure_converter_class=self._converter.failure_converter_class,
        )

    def configure_worker(self, config: WorkerConfig) -> WorkerConfig:
        config = super().configure_worker(config)
        settings = self.settings
        if config.get("max_concurrent_activities") is None and config.get("tuner") is None:
            config["max_concurrent_activities"] = settings.max_concurrent_activities
        if not config.get("graceful_shutdown_timeout"):
            config["graceful_shutdown_timeout"] = timedelta(seconds=settings.shutdown_grace_seconds)
        client = config["client"]
        if self._converter.payload_codec is not None and client.data_converter.payload_codec is None:
            raise ConfigError(
                "payload codec keys are configured but this worker's client does not encrypt: "
                "pass SkyPilotPlugin to Client.connect (plugins=[...]), not only to Worker"
            )
        versioning = settings.versioning(config.get("workflows", []), config["task_queue"])
        if versioning and config.get("deployment_config") is None:
            config["deployment_config"] = versioning.worker_config()
            self._versioning[config["task_queue"]] = versioning
        deployment_config = config.get("deployment_config")
        if deployment_config is not None and deployment_config.use_worker_versioning:
            config["workflows"] = [
                AutoUpgradingClusterReaperWorkflow if workflow is ClusterReaperWorkflow else workflow
                for workflow in config.get("workflows", [])
            ]
        activities = self._new_activities(config["task_queue"], config.get("max_concurrent_activities"))
        reaper = ReaperActivities(activities, client)
        config["activities"] = [
            *config.get("activities", []),
            *activities.methods(),
            reaper.find_orphan_clusters,
        ]
        # Heartbeats reach Temporal this often, so a cancel reaches a running step this fast.
        heartbeat = timedelta(seconds=self.settings.heartbeat_interval_seconds)
        config["max_heartbeat_throttle_interval"] = heartbeat
        config["default_heartbeat_throttle_interval"] = heartbeat
        return config

    async def run_worker(self, worker: Worker, next: Callable[[Worker], Awaitable[None]]) -> None:
        settings = self.settings
        await self._schedule_reaper(worker)
        pruning = asyncio.create_task(
            _prune_checkouts_forever(
                settings.checkout_root.expanduser(), settings.checkout_ttl_hours * 3600.0
            )
        )
        versioning = self._versioning.get(worker.task_queue)
        promoting = asyncio.create_task(
            deployment.make_current_if_newer(worker.client, versioning) if versioning else asyncio.sleep(0)
        )
        self._running += 1
        try:
            await next(worker)
        finally:
            self._running -= 1
            pruning.cancel()
            promoting.cancel()
            # Threads still following jobs must not hold the worker: the jobs keep running on
            # SkyPilot, and the next attempt re-attaches to them.
            for executor in self._executors.pop(worker.task_queue, []):
                executor.shutdown(wait=False, cancel_futures=True)
            if self._tracing and self._running == 0:
                self._tracing[1].shutdown()  # sends the last spans

    def _new_activities(self, task_queue: str, max_concurrent_activities: int | None) -> SkyPilotActivities:
        settings = self.settings
        executor = concurrent.futures.ThreadPoolExecutor(
            settings.sdk_thread_count, thread_name_prefix="skypilot-sdk"
        )
        # A cancelled step's SkyPilot cancel, never queued behind the steps that fill `executor`:
        # an activity makes its cancel's calls one at a time, so this many threads always suffice.
        cancel_executor = concurrent.futures.ThreadPoolExecutor(
            max_concurrent_activities or settings.max_concurrent_activities,
            thread_name_prefix="skypilot-cancel",
        )
        self._executors[task_queue] = [executor, cancel_executor]
        options: dict[str, Any] = {}
        if self._managed_status_poll_seconds is not None:
            options["managed_status_poll_seconds"] = self._managed_status_poll_seconds
        return self._activities_class(
            self._sky or skypilot_sdk(),
            executor,
            cancel_executor=cancel_executor,
            checkout_root=settings.checkout_root.expanduser(),
            heartbeat_interval_seconds=settings.heartbeat_interval_seconds,
            environ=self._environ,
            outage_budget_seconds=settings.skypilot_outage_seconds,
            autodown_idle_minutes=settings.autodown_idle_minutes or None,
            policy=settings.policy,
            allow_insecure_git=settings.allow_insecure_git,
            **options,
        )

    async def _schedule_reaper(self, worker: Worker) -> None:
        period = self.settings.reaper_period_seconds
        if period <= 0:
            log.warning("REAPER_PERIOD_SECONDS=0: no cluster reaper (terminated runs may leak clusters)")
            return
        task_queue = worker.task_queue
        try:
            schedule_id = await ensure_reaper_schedule(
                worker.client,
                task_queue,
                timedelta(seconds=period),
                timedelta(seconds=self.settings.reaper_grace_seconds),
            )
        except RPCError as err:
            log.warning("Cluster reaper NOT scheduled (%s): terminated runs may leak clusters", err.message)
            return
        log.info("Cluster reaper: schedule %s, every %d s", schedule_id, period)


def _pass_this_package_through(runner: WorkflowRunner | None) -> WorkflowRunner:
    """Workflow code may import this package at its top: the sandbox shares it, not re-imports it."""
    runner = runner or SandboxedWorkflowRunner()
    if not isinstance(runner, SandboxedWorkflowRunner):
        return runner
    return dataclasses.replace(runner, restrictions=runner.restrictions.with_passthrough_modules(PACKAGE))


async def _prune_checkouts_forever(checkout_root: Path, max_age_seconds: float) -> None:
    """Keep this host's checkout cache bounded: now, then every hour."""
    while True:
        removed = await asyncio.to_thread(prune_checkouts, checkout_root, max_age_seconds)
        if removed:
            log.info("Removed %d checkouts unused for %.0f h", len(removed), max_age_seconds / 3600)
        await asyncio.sleep(CHECKOUT_PRUNE_PERIOD_SECONDS)
