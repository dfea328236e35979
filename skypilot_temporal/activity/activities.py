"""Temporal activities that run SkyPilot tasks: the pipeline's steps, thin over the job layer.

Every activity is a method of `SkyPilotActivities`, which holds the one seam to SkyPilot
(`sky_sdk`, a `sky_sdk.SkyPilotSDK`: the `sky` module in production, a fake in unit tests) and
a bounded thread pool. All blocking SDK calls run in that pool (`_blocking`); the event loop only
heartbeats and waits.

- fetch_tasks checks out the task repository (trust/checkout.py) and checks every task against
  the worker's policy (trust/task_policy.py) before any cluster exists;
- launch_task and exec_task build the task and hand it to the job layer (activity/jobs.py),
  which finds or submits its job and follows it; a failed job becomes a non-retryable
  `ApplicationError` carrying the step's `StepResult`;
- submit_managed_job / follow_managed_job / cancel_managed_job run a step as a SkyPilot managed
  job (managed_jobs.py): the jobs controller relaunches it when its cluster is lost;
- down_cluster tears a cluster down; remove_checkout removes a run's checkout.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import os
import shutil
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from skypilot_temporal.activity.job_log import JobLogSink
from skypilot_temporal.activity.jobs import (
    DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
    DEFAULT_OUTAGE_BUDGET_SECONDS,
    EXIT_CODES,
    EXIT_FAILED,
    JobOutcome,
    SkyPilotJobs,
    cancelling,
)
from skypilot_temporal.activity.managed_jobs import DEFAULT_STATUS_POLL_SECONDS, ManagedJobs
from skypilot_temporal.activity.sdk import RequestId, SkyPilotSDK
from skypilot_temporal.errors import clean_message, masked, refuse
from skypilot_temporal.naming import OWNER_LABEL, owner_token
from skypilot_temporal.operations import metrics
from skypilot_temporal.payloads import (
    CancelManagedJobInput,
    DownInput,
    ExecInput,
    FetchPipelineInput,
    FetchPipelineResult,
    FetchTasksInput,
    FetchTasksResult,
    FollowManagedJobInput,
    JobProgress,
    LaunchInput,
    ManagedJobInput,
    RemoveCheckoutInput,
    StepResult,
    TaskSpec,
)
from skypilot_temporal.pipeline_file.load import PipelineFileError, load_pipeline
from skypilot_temporal.trust.checkout import checkout_repo, mark_used, read_task_file, resolve_inside
from skypilot_temporal.trust.redaction import Redactor, redact_credentials
from skypilot_temporal.trust.task_policy import (
    TaskPolicy,
    check_built_task,
    check_managed_secrets,
    check_secret_names,
    check_task_keys,
    check_volumes,
    confine_local_paths,
    load_task_yaml,
)

T = TypeVar("T")


class SkyPilotActivities:
    """The pipeline's activities. `sky_sdk` is the seam: the `sky` module, or a fake in tests."""

    def __init__(
        self,
        sky_sdk: SkyPilotSDK,
        executor: concurrent.futures.ThreadPoolExecutor,
        checkout_root: Path,
        heartbeat_interval_seconds: float = DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
        environ: Mapping[str, str] | None = None,
        outage_budget_seconds: float = DEFAULT_OUTAGE_BUDGET_SECONDS,
        autodown_idle_minutes: int | None = None,
        policy: TaskPolicy | None = None,
        allow_insecure_git: bool = False,
        managed_status_poll_seconds: float = DEFAULT_STATUS_POLL_SECONDS,
        cancel_executor: concurrent.futures.ThreadPoolExecutor | None = None,
    ) -> None:
        self._sky = sky_sdk
        self._executor = executor
        # A worker gives cancels a pool of their own (None: they share `executor`).
        self._cancel_executor = cancel_executor or executor
        self._checkout_root = checkout_root.resolve()
        self._environ = os.environ if environ is None else environ
        # SkyPilot's own safety net where the infra has it: a cluster idle this long goes down.
        self._autodown_idle_minutes = autodown_idle_minutes
        # The operator's limits on task authors: no workflow input can widen them.
        self._policy = policy or TaskPolicy()
        self._allow_insecure_git = allow_insecure_git
        self._checkout_locks: collections.defaultdict[Path, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )
        self._jobs = SkyPilotJobs(
            sky_sdk,
            self._blocking,
            heartbeat_interval_seconds=heartbeat_interval_seconds,
            outage_budget_seconds=outage_budget_seconds,
        )
        self._managed = ManagedJobs(sky_sdk, self._blocking, self._jobs, managed_status_poll_seconds)

    # -------------------------------------------------------------- step 1: fetch the tasks

    def methods(self) -> list[Callable[..., Any]]:
        """Every activity of this set, as a Worker registers them."""
        return [
            self.fetch_tasks,
            self.fetch_pipeline,
            self.launch_task,
            self.exec_task,
            self.down_cluster,
            self.remove_checkout,
            self.submit_managed_job,
            self.follow_managed_job,
            self.cancel_managed_job,
        ]

    @activity.defn
    async def fetch_tasks(self, input: FetchTasksInput) -> FetchTasksResult:
        """Step 1: check out the tasks and check each against the worker's policy, so a bad or
        hostile task fails the run before any cluster exists."""
        redact = Redactor(self._secret_values(input.secret_names))
        try:
            checkout_dir, sha = await self._fresh_checkout(input)
            yaml_texts = {
                path: read_task_file(checkout_dir, path, input.repo_url, input.ref)
                for path in input.yaml_paths
            }
            for relative, text in yaml_texts.items():
                await self._check_task(input, relative, text)
        except ApplicationError as err:
            raise masked(err, redact) from None
        activity.logger.info("Checked out %s at %s", redact_credentials(input.repo_url), sha)
        return FetchTasksResult(commit_sha=sha, yaml_texts=yaml_texts)

    @activity.defn
    async def fetch_pipeline(self, input: FetchPipelineInput) -> FetchPipelineResult:
        """Step 1 of a pipeline-file run: check out the tasks, read and check the pipeline file
        and every task it names (with each step's env), before any cluster exists."""
        fetch = input.checkout
        redact = Redactor(self._secret_values(fetch.secret_names))
        try:
            checkout_dir, sha = await self._fresh_checkout(fetch)
            text = read_task_file(checkout_dir, input.path, fetch.repo_url, fetch.ref, kind="pipeline file")
            try:  # a file that is large, or expands to many steps, must not hold up the event loop
                graph = await self._blocking(load_pipeline, input.path, text)
            except PipelineFileError as err:
                raise refuse(str(err), "InvalidPipelineFile") from None
            texts: dict[str, str] = {}
            for step in graph.steps:
                try:
                    if step.task not in texts:
                        texts[step.task] = read_task_file(checkout_dir, step.task, fetch.repo_url, fetch.ref)
                    # Metrics are not known yet: a number stands in for each value read from one.
                    env = {**graph.env_of(step, fetch.env_overrides), **dict.fromkeys(step.env_from, "0")}
                    checked = dataclasses.replace(fetch, env_overrides=env)
                    await self._check_task(checked, step.name, texts[step.task], step.document)
                except ApplicationError as err:
                    if not err.non_retryable:
                        raise
                    raise refuse(
                        f"{input.path}: step {step.name!r}: {err.message}", err.type or "InvalidTask"
                    ) from None
        except ApplicationError as err:
            raise masked(err, redact) from None
        activity.logger.info("Checked out %s at %s", redact_credentials(fetch.repo_url), sha)
        return FetchPipelineResult(commit_sha=sha, graph=graph)

    async def _fresh_checkout(self, input: FetchTasksInput) -> tuple[Path, str]:
        check_secret_names(input.secret_names, self._policy)
        checkout_dir = self._checkout_dir(input.checkout_name)
        async with self._checkout_locks[checkout_dir]:
            sha = await self._checkout(input.repo_url, input.ref, checkout_dir, replace=True)
            mark_used(checkout_dir)
        return checkout_dir, sha

    async def _check_task(self, input: FetchTasksInput, step: str, text: str, document: int = 0) -> None:
        """Build the task as a launch would, against the worker's policy (raises if refused)."""
        spec = TaskSpec(
            step=step,
            job_name="validate",
            yaml_text=text,
            env_overrides=input.env_overrides,
            secret_names=input.secret_names,
            checkout_name=input.checkout_name,
            yaml_document=document,
        )
        await self._blocking(self._build_task, spec, "")

    @activity.defn
    async def remove_checkout(self, input: RemoveCheckoutInput) -> None:
        checkout_dir = self._checkout_dir(input.checkout_name)
        await asyncio.to_thread(shutil.rmtree, checkout_dir, True)
        if checkout_dir.parent != self._checkout_root:
            with contextlib.suppress(OSError):  # the workflow's folder, once its last run is gone
                checkout_dir.parent.rmdir()

    # -------------------------------------------------------------- launch, exec, down

    @activity.defn
    async def launch_task(self, input: LaunchInput) -> StepResult:
        owner = owner_token(_workflow_id())

        def launch(task: Any) -> RequestId:
            if input.provision_only:
                task.run = None  # SkyPilot then runs only the task's setup, as a job (if it has one)
            label_owner(task, owner)  # the cluster this launch creates carries it: proof of ownership
            return self._sky.launch(
                task, cluster_name=input.cluster_name, fast=input.reuse_provisioned, **self._autodown()
            )

        return await self._run_task(
            input.cluster_name,
            input.task,
            input.infra,
            launch,
            submit_phase="provisioning",
            expect_job=not input.provision_only,
            cluster_created_by_run=input.cluster_created_by_run,
        )

    @activity.defn
    async def exec_task(self, input: ExecInput) -> StepResult:
        def exec_(task: Any) -> RequestId:
            return self._sky.exec(task, cluster_name=input.cluster_name)

        return await self._run_task(
            input.cluster_name, input.task, "", exec_, cluster_created_by_run=input.cluster_created_by_run
        )

    @activity.defn
    async def down_cluster(self, input: DownInput) -> StepResult:
        """Tear the cluster down. Every error but "no such cluster" is retryable: the workflow
        keeps trying (and says so) until SkyPilot confirms, whatever the cause."""
        progress = JobProgress(phase="tearing down", cluster_name=input.cluster_name)
        sink = self._sink(f"[down {input.cluster_name}]", [], progress)
        what = f"tearing down {input.cluster_name}"
        owner = owner_token(_workflow_id()) if input.check_owner else ""
        # A cancelled teardown is not undone on SkyPilot: the workflow's cleanup runs it again.
        metrics.teardown_attempt_started()
        async with self._jobs.step(progress, what, cancel_skypilot=False, always_retry=True):
            outcome = await self._jobs.tear_down(
                input.cluster_name, input.job_name_prefix, progress, sink, owner
            )
        activity.logger.info("Cluster %s: %s", input.cluster_name, outcome)
        return StepResult(
            step="down", cluster_name=input.cluster_name, job_status=outcome, duration_seconds=_step_seconds()
        )

    # -------------------------------------------------------------- a step as a managed job

    @activity.defn
    async def submit_managed_job(self, input: ManagedJobInput) -> int:
        """Submit the step as a SkyPilot managed job, or find the one already submitted: its id."""
        spec = input.task
        progress = JobProgress(phase="preparing", cluster_name="", job_name=spec.job_name)
        sink = self._sink(f"[{spec.step} managed]", self._secret_values(spec.secret_names), progress)
        what = f"{spec.step} (managed job {spec.job_name})"
        async with self._jobs.step(
            progress, what, redact=sink.redact, cancel_with=self._managed.cancel_submission
        ):
            await self._ensure_checkout(spec)
            task = await self._blocking(self._build_task, spec, input.infra)
            owner = owner_token(_workflow_id())
            label_owner(task, owner)  # the job's records carry it while its cluster is up
            return await self._managed.find_or_submit(task, spec, progress, sink, owner)

    @activity.defn
    async def follow_managed_job(self, input: FollowManagedJobInput) -> StepResult:
        """Follow managed job `job_id` to its end, through any recoveries. A cancel stops
        following only: the workflow's cleanup cancels the job (cancel_managed_job)."""
        spec = input.task
        progress = JobProgress(phase="running", cluster_name="", job_name=spec.job_name, job_id=input.job_id)
        info = activity.info()
        previous = info.heartbeat_details[0] if info.attempt > 1 and info.heartbeat_details else {}
        if isinstance(previous, dict):  # a retry goes on counting where the attempt before was
            progress.job_status = str(previous.get("job_status") or "")
            progress.recoveries = int(previous.get("recoveries") or 0)
        sink = self._sink(
            f"[{spec.step} managed {input.job_id}]", self._secret_values(spec.secret_names), progress
        )
        what = f"{spec.step} (managed job {input.job_id})"
        async with self._jobs.step(progress, what, cancel_skypilot=False, redact=sink.redact):
            state = await self._managed.follow(input.job_id, progress, sink)
        reason = f" ({state.failure_reason})" if state.failure_reason else ""
        exit_code = EXIT_CODES.get(state.status, EXIT_FAILED)
        if sink.task_exit_code is not None and state.status != "CANCELLED":
            exit_code = sink.task_exit_code
        return self._step_result(
            spec,
            "",
            f"{what}: {state.status}{reason}",
            JobOutcome(input.job_id, state.status, exit_code),
            sink,
            recoveries=progress.recoveries,
        )

    @activity.defn
    async def cancel_managed_job(self, input: CancelManagedJobInput) -> str:
        """Cancel the managed job and wait until it ended: its final status."""
        progress = JobProgress(
            phase="cancelling", cluster_name="", job_name=input.job_name, job_id=input.job_id
        )
        what = f"cancelling managed job {input.job_id or input.job_name}"
        async with self._jobs.step(progress, what, cancel_skypilot=False, always_retry=True):
            status = await self._managed.cancel(input.job_id, input.job_name, progress)
        activity.logger.info("Managed job %s (%s): %s", input.job_id or "", input.job_name, status)
        return status

    async def unfinished_managed_jobs(self, name_part: str) -> list[tuple[int, str, float]]:
        """Managed jobs not ended yet whose name contains `name_part`: (id, name, submitted at,
        epoch seconds). Used by the reaper's activity."""
        return [(j.job_id, j.job_name, j.submitted_at) for j in await self._managed.unfinished(name_part)]

    async def cluster_launch_times(self) -> dict[str, float]:
        """Every cluster SkyPilot knows (all users) -> when it was launched (epoch seconds;
        0 when SkyPilot has no time for it yet). Used by the reaper's activity."""
        return await self._jobs.cluster_launch_times()

    # -------------------------------------------------------------- the shared launch/exec helper

    async def _run_task(
        self,
        cluster: str,
        spec: TaskSpec,
        infra: str,
        submit: Callable[[Any], RequestId],
        submit_phase: str = "submitting",
        expect_job: bool = True,
        cluster_created_by_run: str = "",
    ) -> StepResult:
        """Build the task, submit it with `submit` (or re-attach to its job), follow the job."""
        info = activity.info()
        run_id = info.workflow_run_id or ""
        what = f"{spec.step} on {cluster}"
        progress = JobProgress(phase="preparing", cluster_name=cluster, job_name=spec.job_name)
        sink = self._sink(f"[{spec.step} {cluster}]", self._secret_values(spec.secret_names), progress)
        async with self._jobs.step(progress, what, redact=sink.redact):
            await self._ensure_checkout(spec)
            # Parsing may consult cloud catalogs: keep it off the event loop too.
            task = await self._blocking(self._build_task, spec, infra)
            outcome = await self._jobs.run(
                task,
                cluster,
                spec,
                submit,
                progress,
                sink,
                submit_phase,
                expect_job,
                cluster_is_this_runs=bool(run_id) and cluster_created_by_run == run_id,
                owner=owner_token(_workflow_id()),
            )
        failed = f"{what}: job {outcome.job_id} ({spec.job_name}) {outcome.status}"
        result = self._step_result(spec, cluster, failed, outcome, sink)
        if outcome.created_cluster:
            result.cluster_created_by_run = run_id
        return result

    @staticmethod
    def _step_result(
        spec: TaskSpec,
        cluster: str,
        failed: str,
        outcome: JobOutcome,
        sink: JobLogSink,
        recoveries: int = 0,
    ) -> StepResult:
        """The step's result (its time counts every attempt: a re-attached job's whole run); a
        job that did not succeed raises it as a non-retryable error whose message starts with
        `failed`."""
        result = StepResult(
            step=spec.step,
            cluster_name=cluster,
            job_id=outcome.job_id,
            job_status=outcome.status,
            exit_code=outcome.exit_code,
            log_tail=sink.tail(),
            duration_seconds=_step_seconds(),
            metrics=dict(sink.metrics),
            recoveries=recoveries,
        )
        if outcome.status not in ("SUCCEEDED", "UP"):
            raise ApplicationError(
                f"{failed}, exit code {outcome.exit_code}",
                result,
                type=f"Job{outcome.status.title().replace('_', '')}",
                non_retryable=True,
            )
        return result

    def _build_task(self, spec: TaskSpec, infra: str) -> Any:
        """The SkyPilot task of `spec`, checked against the worker's policy before and after
        SkyPilot builds it (blocking: run it in the pool)."""
        what = f"task {spec.step!r}"
        checkout_dir = self._checkout_dir(spec.checkout_name) if spec.checkout_name else None
        text = spec.yaml_text
        if not text:
            if checkout_dir is None or not spec.yaml_path:
                raise refuse(f"{what} has no task file", "InvalidTask")
            text = read_task_file(checkout_dir, spec.yaml_path, spec.repo_url, spec.commit_sha)
        try:
            config = load_task_yaml(text, what, spec.yaml_document)
            check_task_keys(config, what, self._policy)
            check_volumes(config.get("volumes"), what, self._policy)
            check_managed_secrets(config, what, self._policy)
            confine_local_paths(config, what, checkout_dir, self._policy)
        except ApplicationError:
            raise
        except Exception as exc:  # whatever a hostile task makes the checks trip on: never retried
            raise refuse(f"{what} is invalid: {clean_message(exc)}", "InvalidTask") from None
        try:
            task = self._sky.Task.from_yaml_config(
                # SkyPilot hands a managed job a token of the launching user (the worker's service
                # account) unless its task says no: a task author's job must not call the API
                # server as the worker. (A task may only say false: check_task_keys.)
                {**config, "api_server_access": False},
                env_overrides=list(spec.env_overrides.items()) or None,
                secrets_overrides=list(self._secrets_for(spec).items()) or None,
            )
            if infra:
                task.set_resources_override({"infra": infra, "cloud": None, "region": None, "zone": None})
            task.name = spec.job_name
            # Again on what SkyPilot built: it substitutes $VARS into paths after the checks above.
            check_built_task(task, what, checkout_dir, self._policy)
        except ApplicationError:
            raise
        except Exception as exc:
            raise ApplicationError(
                f"{what} is invalid: {clean_message(exc)}", type="InvalidTask", non_retryable=True
            ) from None
        return task

    # -------------------------------------------------------------- plumbing

    async def _blocking(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run a blocking call (an SDK call, building a task) in the bounded pool, or a cancel's
        call in the cancel pool, keeping the activity context. The job layer makes its SDK calls
        through it too."""
        context = contextvars.copy_context()
        executor = self._cancel_executor if cancelling.get() else self._executor
        future = executor.submit(context.run, functools.partial(fn, *args, **kwargs))
        return await asyncio.wrap_future(future)

    async def _ensure_checkout(self, spec: TaskSpec) -> None:
        """A retry on another worker host may lack the run's checkout: recreate it at the SHA."""
        if spec.checkout_name and spec.repo_url:
            checkout_dir = self._checkout_dir(spec.checkout_name)
            async with self._checkout_locks[checkout_dir]:
                if not checkout_dir.is_dir():
                    await self._checkout(spec.repo_url, spec.commit_sha, checkout_dir)
                mark_used(checkout_dir)

    async def _checkout(self, repo_url: str, ref: str, checkout_dir: Path, replace: bool = False) -> str:
        """Check out `ref` of `repo_url` at `checkout_dir`, as the worker's policy allows."""
        return await checkout_repo(
            repo_url,
            ref,
            checkout_dir,
            replace=replace,
            allow_insecure=self._allow_insecure_git,
            local_repo_dirs=self._policy.local_repo_dirs,
            checkout_root=self._checkout_root,
        )

    def _autodown(self) -> dict[str, Any]:
        """sky.launch options for SkyPilot's autodown, on infra that supports it."""
        if self._autodown_idle_minutes is None:
            return {}
        return {"idle_minutes_to_autostop": self._autodown_idle_minutes, "down": True}

    def _checkout_dir(self, checkout_name: str) -> Path:
        return resolve_inside(self._checkout_root, checkout_name, "checkout")

    def _secrets_for(self, spec: TaskSpec) -> dict[str, str]:
        check_secret_names(spec.secret_names, self._policy)
        missing = [name for name in spec.secret_names if name not in self._environ]
        if missing:
            raise ApplicationError(
                f"secret(s) {', '.join(missing)} not set in the worker's environment",
                type="MissingSecret",
                non_retryable=True,
            )
        return {name: self._environ[name] for name in spec.secret_names}

    def _secret_values(self, names: list[str]) -> list[str]:
        return [self._environ.get(name, "") for name in names if name in self._policy.secret_names]

    @staticmethod
    def _sink(prefix: str, secrets: list[str], progress: JobProgress) -> JobLogSink:
        logger = activity.logger
        return JobLogSink(lambda line: logger.info("%s %s", prefix, line), secrets, progress)


def _step_seconds() -> float:
    """How long the current activity has taken since its first attempt was scheduled."""
    scheduled = activity.info().scheduled_time
    if scheduled.tzinfo is None:
        scheduled = scheduled.replace(tzinfo=UTC)
    return round(max(0.0, (datetime.now(UTC) - scheduled).total_seconds()), 3)


def label_owner(task: Any, owner: str) -> None:
    """Put the workflow's OWNER_LABEL on every resources option of `task` (its own labels kept)."""
    task.set_resources(
        type(task.resources)(r.copy(labels={**(r.labels or {}), OWNER_LABEL: owner}) for r in task.resources)
    )


def _workflow_id() -> str:
    """The id of the workflow this activity runs for (its clusters carry its owner token)."""
    workflow_id = activity.info().workflow_id
    if workflow_id is None:
        raise ApplicationError("SkyPilot activities run only from a workflow", non_retryable=True)
    return workflow_id
