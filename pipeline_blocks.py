"""Workflow-side building blocks: the safe mechanics of a pipeline run, written once.

A pipeline workflow holds one `Pipeline` and composes its steps with it:

    async with self.pipeline.running():                      # on exit: cleanup, failure report
        await self.pipeline.fetch_tasks(train_yaml, eval_yaml)
        async with self.pipeline.cluster("train") as train:  # torn down on exit, whatever happens
            trained = await train.launch("train", train_yaml)
            evaluated = await train.exec("eval", eval_yaml)

What every step gets without the workflow writing it: the progress query (`progress()`), the Web
UI's current details and activity summaries, retries that re-attach to the step's SkyPilot job,
the SkyPilot side cancelled when the run is cancelled, and a failure that names the step, its
cluster and job, with the job's last log lines.

Teardown: a cluster block tears its cluster down when it ends: as the step "<role>-down" when
the block succeeded, as cleanup otherwise. `running()` then tears down any cluster still up
(one launched in the background, a teardown a cancel interrupted), retrying until SkyPilot
confirms; a cancel that arrives during cleanup does not stop it. (Terminate, reset and an
execution timeout skip all this: the cluster reaper in reaper.py and SkyPilot's autodown do it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities import SkyPilotActivities
    from redaction import redact_url_credentials
    from shared import (
        STATUS_MARKS,
        DownInput,
        ExecInput,
        FetchTasksInput,
        LaunchInput,
        PipelineInput,
        PipelineProgress,
        RemoveCheckoutInput,
        RunTasks,
        StepProgress,
        StepResult,
        TaskSpec,
        VariantProgress,
        cluster_prefix_for,
        input_problems,
        job_name_for,
        legacy_cluster_prefix_for,
    )

T = TypeVar("T")
FETCH_TASKS = "fetch-tasks"
# Runs started before this patch keep their old cluster and job names (see Pipeline.__init__).
RUN_SCOPED_NAMES = "run-scoped-cluster-and-job-names"
# Teardown: attempts per round, then the run reports it is stuck and tries again after a pause.
TEARDOWN_ATTEMPTS_PER_ROUND = 4
TEARDOWN_MAX_PAUSE = timedelta(minutes=5)


class Pipeline:
    """One run's clusters, steps and progress. Create it in the workflow's `@workflow.init`.

    `plan` lists the steps the progress query shows as pending from the start, in order:
    "fetch-tasks", "launch STEP [on ROLE]", "exec STEP on ROLE", "provision ROLE", "down ROLE".
    A step not in the plan shows once it starts.
    """

    def __init__(self, input: PipelineInput, plan: Sequence[str] = ()) -> None:
        self.input = input
        info = workflow.info()
        self._run_scoped_names = workflow.patched(RUN_SCOPED_NAMES)
        if self._run_scoped_names:
            # One workflow id, one prefix: Temporal refuses a second running workflow with the id.
            self.prefix = cluster_prefix_for(info.workflow_id)
        else:  # a run started by an older worker: keep the names its clusters and jobs have
            self.prefix = input.cluster_prefix or legacy_cluster_prefix_for(info.workflow_id)
        self.tasks = RunTasks(commit_sha="", yaml_texts={}, checkout_name=f"{self.prefix}/{info.run_id}")
        self.owns_checkout = True
        self.status = "running"
        self.variants: list[VariantProgress] = []
        self.clusters_up: list[str] = []
        self.release_requested = False
        self._steps: dict[str, StepProgress] = {}
        self._background: list[asyncio.Task[Any]] = []
        self._teardowns: list[asyncio.Task[Any]] = []
        self._stopped_by: BaseException | None = None
        for entry in plan:
            self._plan_step(entry)

    # ------------------------------------------------------------------ what a workflow composes

    def cluster(self, role: str, down_in_background: bool = False) -> Cluster:
        """The run's cluster for `role`, named "<prefix>-<role>": launched by its first step.
        `down_in_background`: when its block succeeds, the next steps start while it goes down."""
        return Cluster(self, role, down_in_background)

    async def fetch_tasks(self, *yaml_paths: str) -> RunTasks:
        """Step 1: check out the task repository at the ref, read and check the task YAMLs."""
        input = self.input
        async with self.step(FETCH_TASKS, self._fetch_summary()) as progress:
            tasks = await workflow.execute_activity_method(
                SkyPilotActivities.fetch_tasks,
                FetchTasksInput(
                    repo_url=input.repo_url,
                    ref=input.ref,
                    yaml_paths=list(yaml_paths),
                    checkout_name=self.tasks.checkout_name,
                    env_overrides=input.env_overrides,
                    secret_names=input.secret_names,
                ),
                start_to_close_timeout=timedelta(seconds=input.timeouts.fetch_tasks),
                schedule_to_close_timeout=timedelta(seconds=input.timeouts.fetch_tasks),
                retry_policy=self.retry_policy(maximum_attempts=5),
                summary=progress.summary,
            )
        self.tasks.commit_sha, self.tasks.yaml_texts = tasks.commit_sha, tasks.yaml_texts
        return self.tasks

    def use_tasks(self, tasks: RunTasks) -> None:
        """Run the tasks another run fetched (a sweep's variants): its checkout stays its own."""
        self.tasks, self.owns_checkout = tasks, False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Around the whole run: refuse bad input; on exit tear down every cluster still up and
        remove the checkout, shielded from cancellation; fail with the failed step's story."""
        self._refuse_bad_input()
        outcome = "failed"
        try:
            yield
            outcome = "succeeded"
        except asyncio.CancelledError:
            outcome = "cancelled"
            raise
        except ActivityError as err:
            if is_cancelled_exception(err):
                outcome = "cancelled"
                raise asyncio.CancelledError() from err
            raise self._step_failure(err) from err
        finally:
            await self.shielded_from_cancel(functools.partial(self._clean_up, outcome))

    def progress(self) -> PipelineProgress:
        return PipelineProgress(
            status=self.status,
            commit_sha=self.tasks.commit_sha,
            steps=list(self._steps.values()),
            clusters_up=list(self.clusters_up),
            variants=list(self.variants),
        )

    def release_clusters(self) -> None:
        """Tear down the clusters a failed run kept for debugging, now."""
        self.release_requested = True

    # ------------------------------------------------------------------ for new kinds of step

    @contextlib.asynccontextmanager
    async def step(self, name: str, summary: str = "", cluster: str = "") -> AsyncIterator[StepProgress]:
        """Keep the progress query and the Web UI's current details in step with step `name`."""
        step = self._steps.get(name) or self._add_step(name, summary or name, cluster)
        step.status = "running"
        self.update_details()
        started = workflow.now()
        try:
            yield step
            step.status = "succeeded"
        except BaseException as err:
            # Stopped because background work failed (that work's step shows the failure).
            stopped = err is self._stopped_by
            step.status = "cancelled" if stopped or _is_cancellation(err) else "failed"
            step.error = str(err.cause if isinstance(err, ActivityError) and err.cause else err)
            failed_job = _failed_job(err)
            if failed_job:
                step.job_id, step.job_status = failed_job
            raise
        finally:
            step.duration_seconds = round((workflow.now() - started).total_seconds(), 3)
            self.update_details()

    def background(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `work` alongside the next steps: its failure stops the step running then and
        fails the run; the run's cleanup cancels it if it is still going."""
        task = asyncio.create_task(work)
        self._background.append(task)
        return task

    def teardown_in_background(self, cluster: Cluster) -> None:
        """Tear `cluster` down alongside the next steps (shielded); the run's cleanup waits for it."""
        self._teardowns.append(asyncio.create_task(self.shielded_from_cancel(cluster.down)))

    async def job_step(self, work: Awaitable[T]) -> T:
        """Await a step's activity; if background work fails first, stop it and fail with that."""
        watched = [t for t in self._background if not t.done() or _failure(t) is not None]
        if not watched:
            return await work
        main = asyncio.ensure_future(work)
        try:
            await workflow.wait([main, *watched], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # a cancel of the run: waiting does not pass it on to `main`
            main.cancel()
            await asyncio.gather(main, return_exceptions=True)
            raise
        failure = next((_failure(t) for t in watched if _failure(t) is not None), None)
        if not main.done() and failure is not None:
            main.cancel()
            await asyncio.gather(main, return_exceptions=True)
            self._stopped_by = failure
            raise failure
        return await main

    def task_spec(self, step: str, yaml_path: str) -> TaskSpec:
        return TaskSpec(
            step=step,
            job_name=self.job_name(step),
            yaml_text=self.tasks.yaml_texts[yaml_path],
            # Tasks keep their files apart per run with PIPELINE_RUN_ID.
            env_overrides={"PIPELINE_RUN_ID": self.prefix, **self.input.env_overrides},
            secret_names=self.input.secret_names,
            checkout_name=self.tasks.checkout_name,
            repo_url=self.input.repo_url,
            commit_sha=self.tasks.commit_sha,
        )

    def job_options(self, step: str, summary: str, timeout_step: str = "") -> dict[str, Any]:
        """Activity options of a step that runs a SkyPilot job (timeouts by step name)."""
        timeouts = self.input.timeouts
        timeout = getattr(timeouts, timeout_step or step, None) or timeouts.train
        return dict(
            start_to_close_timeout=timedelta(seconds=timeout),
            schedule_to_close_timeout=timedelta(seconds=timeout),
            heartbeat_timeout=timedelta(seconds=timeouts.heartbeat),
            # Attempts end by time (the step's timeout above), not by count: a worker lost
            # mid-step is not the step's failure, and each attempt re-attaches to the job.
            # Errors that cannot get better are non-retryable where they are raised.
            retry_policy=self.retry_policy(maximum_attempts=0),
            # Let the activity cancel the SkyPilot request/job before the run moves on.
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=summary,
        )

    def retry_policy(self, maximum_attempts: int) -> RetryPolicy:
        return RetryPolicy(
            initial_interval=self._retry_interval(),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(minutes=2),
            maximum_attempts=maximum_attempts,
        )

    def job_name(self, step: str) -> str:
        if self._run_scoped_names:
            return job_name_for(self.prefix, workflow.info().run_id, step)
        return f"{self.prefix}-{step}"

    async def shielded_from_cancel(self, cleanup: Callable[[], Awaitable[T]]) -> T:
        """Run `cleanup` to the end even if the run is cancelled while it runs.

        A cancel that arrives during cleanup (say, while a teardown waits out an API server
        outage) would otherwise abort the teardown and leave the cluster up. It still ends a
        keep-clusters-for-debugging wait.
        """
        task = asyncio.ensure_future(cleanup())
        while True:
            try:
                return await asyncio.shield(task)
            except asyncio.CancelledError:
                if task.done():
                    return task.result()
                self.release_requested = True
                workflow.logger.info("Cancel requested during cleanup: the cleanup carries on")

    # ------------------------------------------------------------------ teardown and cleanup

    async def down(self, cluster: str, step: str | None = None) -> None:
        """Tear `cluster` down: as pipeline step `step`, or as cleanup when `step` is None.

        Never gives up (a leaked cluster costs more than a stuck workflow): after each round of
        attempts the step shows as `retrying` with the error, and a warning is logged.
        """
        if step is None:  # shown in the progress query and the Web UI after the pipeline's steps
            step = f"cleanup {cluster}"
            self._steps[step] = StepProgress("cleanup", f"cleanup: down {cluster}", cluster_name=cluster)
        async with self.step(step, f"down {cluster}", cluster) as progress:
            for attempt_round in itertools.count(1):
                try:
                    await workflow.execute_activity_method(
                        SkyPilotActivities.down_cluster,
                        DownInput(cluster_name=cluster, job_name_prefix=self.job_name("")),
                        start_to_close_timeout=timedelta(seconds=self.input.timeouts.teardown),
                        heartbeat_timeout=timedelta(seconds=self.input.timeouts.heartbeat),
                        retry_policy=self.retry_policy(maximum_attempts=TEARDOWN_ATTEMPTS_PER_ROUND),
                        cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                        summary=progress.summary,
                    )
                    break
                except ActivityError as err:
                    if is_cancelled_exception(err):
                        raise
                    progress.status = "retrying"
                    progress.error = (
                        f"teardown of {cluster} failed {attempt_round * TEARDOWN_ATTEMPTS_PER_ROUND} times, "
                        f"still trying: {err.cause or err}"
                    )
                    workflow.logger.warning("%s", progress.error)
                    self.update_details()
                    pause = self._retry_interval() * 2**attempt_round
                    await workflow.sleep(min(pause, TEARDOWN_MAX_PAUSE))
            progress.error = ""
        if cluster in self.clusters_up:
            self.clusters_up.remove(cluster)

    async def clean_up_cluster(self, cluster: str, failed: bool) -> None:
        """A cluster block ended by an error or a cancel: tear its cluster down now (unless the
        run keeps a failed run's clusters for debugging: its cleanup does that, then this)."""
        if cluster not in self.clusters_up or (failed and self.input.keep_clusters_on_failure):
            return
        self.status = "cleaning up"
        await self.down(cluster)

    async def _clean_up(self, outcome: str) -> None:
        """Tear down every cluster still up, whatever ended the run; then drop the checkout."""
        self.status = "cleaning up"
        self.update_details()
        for task in self._background:
            task.cancel()  # e.g. a provisioning still going: cancelled on SkyPilot too
        await asyncio.gather(*self._background, *self._teardowns, return_exceptions=True)
        if outcome == "failed" and self.input.keep_clusters_on_failure and self.clusters_up:
            await self._keep_clusters_for_debugging()
        await asyncio.gather(*(self.down(cluster) for cluster in list(self.clusters_up)))
        if self.owns_checkout:
            try:
                await workflow.execute_activity_method(
                    SkyPilotActivities.remove_checkout,
                    RemoveCheckoutInput(self.tasks.checkout_name),
                    start_to_close_timeout=timedelta(minutes=5),
                    retry_policy=self.retry_policy(maximum_attempts=3),
                    summary="cleanup: remove checkout",
                )
            except ActivityError as err:
                workflow.logger.warning("Could not remove checkout %s: %s", self.tasks.checkout_name, err)
        self.status = outcome
        self.update_details()

    async def _keep_clusters_for_debugging(self) -> None:
        """Leave a failed run's clusters up for a while, the run still open (so the reaper
        leaves them alone), until the `release_clusters` signal, a cancel, or the time is up."""
        minutes = self.input.keep_clusters_minutes
        until = workflow.now() + timedelta(minutes=minutes)
        self.status = f"failed: clusters kept for debugging until {until:%Y-%m-%d %H:%M} UTC"
        workflow.logger.warning(
            "keep_clusters_on_failure: %s stay up for %d min (signal release_clusters to tear down now)",
            ", ".join(self.clusters_up),
            minutes,
        )
        self.update_details()
        with contextlib.suppress(asyncio.TimeoutError):
            await workflow.wait_condition(lambda: self.release_requested, timeout=timedelta(minutes=minutes))
        self.status = "cleaning up"

    # ------------------------------------------------------------------ failures and details

    def _step_failure(self, err: ActivityError) -> ApplicationError:
        """The run's failure: names the step, cluster and job; carries the job's log tail."""
        step = next((s for s in self._steps.values() if s.status == "failed"), None)
        where = f"step '{step.name}'" if step else "a step"
        if step and step.cluster_name:
            where += f" on cluster {step.cluster_name}"
        cause = err.cause
        if isinstance(cause, TimeoutError):
            return ApplicationError(
                f"{where} timed out ({cause.type.name if cause.type else ''})",
                type="StepTimedOut",
                non_retryable=True,
            )
        if isinstance(cause, ApplicationError):
            details = list(cause.details)
            tail = details[0].get("log_tail", "") if details and isinstance(details[0], dict) else ""
            said_already = f"{step.name} on {step.cluster_name}: " if step else ""
            message = f"{where} failed: {cause.message.removeprefix(said_already)}"
            if tail:
                message += "\nlast log lines:\n" + "\n".join(tail.splitlines()[-10:])
            return ApplicationError(message, *details, type=cause.type, non_retryable=True)
        return ApplicationError(f"{where} failed: {err.cause or err}", type="StepFailed", non_retryable=True)

    def _refuse_bad_input(self) -> None:
        problems = input_problems(self.input)
        if self.input.cluster_prefix and self._run_scoped_names:
            problems.append(
                "cluster_prefix is not an input any more: the prefix comes from the workflow id "
                "(run_workflow.py --cluster-prefix NAME starts workflow skypilot-NAME)"
            )
        if problems:
            raise ApplicationError(
                "invalid pipeline input: " + "; ".join(problems), type="InvalidInput", non_retryable=True
            )

    def update_details(self) -> None:
        lines = [f"**{self.status}** — commit `{self.tasks.commit_sha[:12] or '?'}`", ""]
        for step in self._steps.values():
            job = f" — job {step.job_id}" if step.job_id is not None else ""
            took = f" ({step.duration_seconds:.0f}s)" if step.duration_seconds is not None else ""
            lines.append(f"{STATUS_MARKS.get(step.status, '')} {step.summary}{job}{took}")
            if step.status == "retrying":
                lines.append(f"  **retrying**: {step.error[:300]}")
        if self.variants:
            lines += ["", "variants:"]
            for variant in self.variants:
                metrics = ", ".join(f"{k}={v:g}" for k, v in variant.metrics.items())
                params = " ".join(f"{k}={v}" for k, v in variant.params.items())
                lines.append(
                    f"{STATUS_MARKS.get(variant.status, '')} {variant.variant_id} {params} {metrics}"
                )
        if self.clusters_up:
            lines += ["", "clusters up: " + ", ".join(self.clusters_up)]
        workflow.set_current_details("\n".join(lines))

    def _plan_step(self, entry: str) -> None:
        match entry.split():
            case [verb] if verb == FETCH_TASKS:
                self._add_step(FETCH_TASKS, self._fetch_summary())
            case ["launch" | "exec" as verb, step] | ["launch" | "exec" as verb, step, "on", _]:
                cluster = f"{self.prefix}-{entry.split()[-1]}"
                self._add_step(step, f"{verb} {step} on {cluster}", cluster)
            case ["provision" | "down" as verb, role]:
                cluster = f"{self.prefix}-{role}"
                self._add_step(f"{role}-{verb}", f"{verb} {cluster}", cluster)
            case _:
                raise ValueError(f"plan entry {entry!r}: use fetch-tasks, launch, exec, provision or down")

    def _add_step(self, name: str, summary: str, cluster: str = "") -> StepProgress:
        self._steps[name] = StepProgress(name, summary, cluster_name=cluster)
        return self._steps[name]

    def _fetch_summary(self) -> str:
        return f"fetch tasks from {redact_url_credentials(self.input.repo_url)}@{self.input.ref}"

    def _retry_interval(self) -> timedelta:
        return timedelta(seconds=self.input.retry_initial_interval_seconds)


class Cluster:
    """A cluster of the run, as an async context manager: `async with pipeline.cluster("train")
    as train:` tears it down when the block ends, whatever ends it (shielded from a cancel)."""

    def __init__(self, pipeline: Pipeline, role: str, down_in_background: bool = False) -> None:
        self.pipeline = pipeline
        self.role = role
        self.name = f"{pipeline.prefix}-{role}"
        self.down_in_background = down_in_background
        self._provisioning: asyncio.Task[None] | None = None

    async def launch(self, step: str, yaml_path: str) -> StepResult:
        """Launch the task at `yaml_path` on this cluster (bringing it up): step `step`."""
        if self._provisioning:
            await self._provisioning
        return await self._run_job(
            step,
            f"launch {step} on {self.name}",
            SkyPilotActivities.launch_task,
            LaunchInput(
                self.name,
                self.pipeline.task_spec(step, yaml_path),
                infra=self.pipeline.input.infra,
                reuse_provisioned=self._provisioning is not None,
            ),
        )

    async def exec(self, step: str, yaml_path: str) -> StepResult:
        """Run the task at `yaml_path` on this (launched) cluster with `sky exec`: step `step`."""
        return await self._run_job(
            step,
            f"exec {step} on {self.name}",
            SkyPilotActivities.exec_task,
            ExecInput(self.name, self.pipeline.task_spec(step, yaml_path)),
        )

    def provision(self, yaml_path: str) -> None:
        """Bring this cluster up for the task at `yaml_path` (and run its setup) in the
        background, while the run goes on; the task's `launch` then reuses the cluster."""
        self._provisioning = self.pipeline.background(self._provision(yaml_path))

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        pipeline = self.pipeline
        if exc is not None:
            failed = not _is_cancellation(exc)
            await pipeline.shielded_from_cancel(lambda: pipeline.clean_up_cluster(self.name, failed))
        elif self.down_in_background:
            pipeline.teardown_in_background(self)
        else:
            await self.down()

    async def down(self) -> None:
        """Tear this cluster down now, as the step "<role>-down"."""
        await self.pipeline.down(self.name, step=f"{self.role}-down")

    async def _provision(self, yaml_path: str) -> None:
        step = f"{self.role}-provision"
        self._up()
        async with self.pipeline.step(step, f"provision {self.name}", self.name) as progress:
            await workflow.execute_activity_method(
                SkyPilotActivities.launch_task,
                LaunchInput(
                    self.name,
                    self.pipeline.task_spec(step, yaml_path),
                    self.pipeline.input.infra,
                    provision_only=True,
                ),
                **self.pipeline.job_options(step, progress.summary, timeout_step=self.role),
            )

    async def _run_job(self, step: str, summary: str, activity: Any, arg: Any) -> StepResult:
        pipeline = self.pipeline
        if activity is SkyPilotActivities.launch_task:
            self._up()  # before launching: a failed launch can leave the cluster INIT
        async with pipeline.step(step, summary, self.name) as progress:
            result: StepResult = await pipeline.job_step(
                workflow.execute_activity_method(
                    activity, arg, **pipeline.job_options(step, progress.summary)
                ),
            )
            progress.job_id, progress.job_status = result.job_id, result.job_status
        return result

    def _up(self) -> None:
        if self.name not in self.pipeline.clusters_up:
            self.pipeline.clusters_up.append(self.name)


class PipelineHandlers:
    """The progress query and the release signal, for any workflow with a `pipeline`."""

    pipeline: Pipeline

    @workflow.query
    def progress(self) -> PipelineProgress:
        return self.pipeline.progress()

    @workflow.signal
    def release_clusters(self) -> None:
        """Tear down the clusters a failed run kept for debugging, now."""
        self.pipeline.release_clusters()


def _failed_job(err: BaseException) -> tuple[int, str] | None:
    """The job id and status a failed job step's error carries (its StepResult), if any."""
    cause = err.cause if isinstance(err, ActivityError) else None
    details = list(cause.details) if isinstance(cause, ApplicationError) else []
    result = details[0] if details and isinstance(details[0], dict) else {}
    if isinstance(result.get("job_id"), int):
        return result["job_id"], str(result.get("job_status", ""))
    return None


def _failure(task: asyncio.Task[Any]) -> BaseException | None:
    """What `task` failed with (None while it runs, or when it succeeded or was cancelled)."""
    return task.exception() if task.done() and not task.cancelled() else None


def _is_cancellation(err: BaseException) -> bool:
    return isinstance(err, asyncio.CancelledError) or (
        isinstance(err, ActivityError) and is_cancelled_exception(err)
    )
