"""SkyPilotWorkflow: a six-step ML pipeline whose steps are SkyPilot tasks.

    1. fetch the tasks      clone the task repository, read and validate the three task YAMLs
    2. preprocess           launch the preprocess cluster, run data_preprocessing.yaml
    3. preprocess-down      tear the preprocess cluster down
    4. train                launch the train cluster, run train.yaml
    5. eval                 run eval.yaml on the train cluster with exec
    6. train-down           tear the train cluster down

Whatever happens (a step fails, times out, or the run is cancelled) the `finally:` in `run`
tears down every cluster this run launched, retrying until SkyPilot confirms; a cancel that
arrives during that cleanup does not stop it. (Terminate, reset and an execution timeout skip
`finally:`; the cluster reaper in reaper.py and SkyPilot's autodown catch those clusters.)
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from activities import SkyPilotActivities
    from redaction import redact_url_credentials
    from shared import (
        DownInput,
        ExecInput,
        FetchTasksInput,
        LaunchInput,
        PipelineInput,
        PipelineProgress,
        PipelineResult,
        RemoveCheckoutInput,
        StepProgress,
        StepResult,
        TaskSpec,
        cluster_prefix_for,
        input_problems,
        job_name_for,
        legacy_cluster_prefix_for,
    )

T = TypeVar("T")
# Runs started before this patch keep their old cluster and job names (see __init__).
RUN_SCOPED_NAMES = "run-scoped-cluster-and-job-names"
# Teardown: attempts per round, then the run reports it is stuck and tries again after a pause.
TEARDOWN_ATTEMPTS_PER_ROUND = 4
TEARDOWN_MAX_PAUSE = timedelta(minutes=5)


@workflow.defn
class SkyPilotWorkflow:
    @workflow.init
    def __init__(self, input: PipelineInput) -> None:
        self._input = input
        info = workflow.info()
        self._run_scoped_names = workflow.patched(RUN_SCOPED_NAMES)
        if self._run_scoped_names:
            # One workflow id, one prefix: Temporal refuses a second running workflow with the id.
            self._prefix = cluster_prefix_for(info.workflow_id)
        else:  # a run started by an older worker: keep the names its clusters and jobs have
            self._prefix = input.cluster_prefix or legacy_cluster_prefix_for(info.workflow_id)
        self._job_name_prefix = self._job_name("")
        self._preprocess_cluster = f"{self._prefix}-preprocess"
        self._train_cluster = f"{self._prefix}-train"
        self._checkout_name = f"{self._prefix}/{workflow.info().run_id}"
        self._clusters_up: list[str] = []
        self._commit_sha = ""
        self._yaml_texts: dict[str, str] = {}
        self._status = "running"
        self._provisioning: asyncio.Task[None] | None = None
        self._release_clusters = False
        self._steps = {
            "fetch-tasks": StepProgress(
                "fetch-tasks", f"fetch tasks from {redact_url_credentials(input.repo_url)}@{input.ref}"
            ),
            "preprocess": StepProgress(
                "preprocess",
                f"launch preprocess on {self._preprocess_cluster}",
                cluster_name=self._preprocess_cluster,
            ),
            "preprocess-down": StepProgress(
                "preprocess-down", f"down {self._preprocess_cluster}", cluster_name=self._preprocess_cluster
            ),
            **(
                {
                    "train-provision": StepProgress(
                        "train-provision",
                        f"provision {self._train_cluster}",
                        cluster_name=self._train_cluster,
                    )
                }
                if input.overlap_provisioning
                else {}
            ),
            "train": StepProgress(
                "train", f"launch train on {self._train_cluster}", cluster_name=self._train_cluster
            ),
            "eval": StepProgress(
                "eval", f"exec eval on {self._train_cluster}", cluster_name=self._train_cluster
            ),
            "train-down": StepProgress(
                "train-down", f"down {self._train_cluster}", cluster_name=self._train_cluster
            ),
        }

    @workflow.run
    async def run(self, input: PipelineInput) -> PipelineResult:
        self._validate(input)
        outcome = "failed"
        try:
            await self._fetch_tasks()
            if input.overlap_provisioning:
                self._provisioning = asyncio.create_task(
                    self._provision(self._train_cluster, input.train_yaml)
                )
            preprocess = await self._unless_fails_first(
                self._launch("preprocess", self._preprocess_cluster, input.preprocess_yaml),
                self._provisioning,
            )
            if self._provisioning:
                train = await self._train_while_preprocess_goes_down(self._provisioning)
            else:
                await self._down(self._preprocess_cluster, step="preprocess-down")
                train = await self._launch("train", self._train_cluster, input.train_yaml)
            evaluation = await self._exec("eval", self._train_cluster, input.eval_yaml)
            await self._down(self._train_cluster, step="train-down")
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
            await self._shielded_from_cancel(functools.partial(self._clean_up, outcome))
        return PipelineResult(
            redact_url_credentials(input.repo_url), self._commit_sha, steps=[preprocess, train, evaluation]
        )

    @workflow.query
    def progress(self) -> PipelineProgress:
        return PipelineProgress(
            status=self._status,
            commit_sha=self._commit_sha,
            steps=list(self._steps.values()),
            clusters_up=list(self._clusters_up),
        )

    # ------------------------------------------------------------------ the steps

    async def _fetch_tasks(self) -> None:
        input = self._input
        async with self._tracking("fetch-tasks"):
            tasks = await workflow.execute_activity_method(
                SkyPilotActivities.fetch_tasks,
                FetchTasksInput(
                    repo_url=input.repo_url,
                    ref=input.ref,
                    yaml_paths=[input.preprocess_yaml, input.train_yaml, input.eval_yaml],
                    checkout_name=self._checkout_name,
                    env_overrides=input.env_overrides,
                    secret_names=input.secret_names,
                ),
                start_to_close_timeout=timedelta(seconds=input.timeouts.fetch_tasks),
                schedule_to_close_timeout=timedelta(seconds=input.timeouts.fetch_tasks),
                retry_policy=self._retry_policy(maximum_attempts=5),
                summary=self._steps["fetch-tasks"].summary,
            )
        self._commit_sha, self._yaml_texts = tasks.commit_sha, tasks.yaml_texts

    async def _provision(self, cluster: str, yaml_path: str) -> None:
        """Bring `cluster` up and run the task's setup there; the task's launch then reuses it."""
        self._clusters_up.append(cluster)
        async with self._tracking("train-provision"):
            await workflow.execute_activity_method(
                SkyPilotActivities.launch_task,
                LaunchInput(
                    cluster,
                    self._task_spec("train-provision", yaml_path),
                    self._input.infra,
                    provision_only=True,
                ),
                **self._job_activity_options("train", summary=self._steps["train-provision"].summary),
            )

    async def _train_while_preprocess_goes_down(self, provisioning: asyncio.Task[None]) -> StepResult:
        """Overlapped provisioning: train on the early cluster while preprocess is torn down."""
        preprocess_down = asyncio.create_task(self._down(self._preprocess_cluster, step="preprocess-down"))
        try:
            await provisioning
            return await self._launch(
                "train", self._train_cluster, self._input.train_yaml, reuse_provisioned=True
            )
        finally:
            await preprocess_down

    async def _launch(
        self, step: str, cluster: str, yaml_path: str, reuse_provisioned: bool = False
    ) -> StepResult:
        if cluster not in self._clusters_up:  # before launching: a failed launch can leave it INIT
            self._clusters_up.append(cluster)
        async with self._tracking(step) as progress:
            result = await workflow.execute_activity_method(
                SkyPilotActivities.launch_task,
                LaunchInput(
                    cluster,
                    self._task_spec(step, yaml_path),
                    infra=self._input.infra,
                    reuse_provisioned=reuse_provisioned,
                ),
                **self._job_activity_options(step),
            )
            progress.job_id, progress.job_status = result.job_id, result.job_status
        return result

    async def _exec(self, step: str, cluster: str, yaml_path: str) -> StepResult:
        async with self._tracking(step) as progress:
            result = await workflow.execute_activity_method(
                SkyPilotActivities.exec_task,
                ExecInput(cluster, self._task_spec(step, yaml_path)),
                **self._job_activity_options(step),
            )
            progress.job_id, progress.job_status = result.job_id, result.job_status
        return result

    async def _down(self, cluster: str, step: str | None = None) -> None:
        """Tear `cluster` down: as pipeline step `step`, or as cleanup when `step` is None.

        Never gives up (a leaked cluster costs more than a stuck workflow): after each round of
        attempts the step shows as `retrying` with the error, and a warning is logged.
        """
        if step is None:  # shown in the progress query and the Web UI after the six steps
            step = f"cleanup {cluster}"
            self._steps[step] = StepProgress("cleanup", f"cleanup: down {cluster}", cluster_name=cluster)
        async with self._tracking(step) as progress:
            for attempt_round in itertools.count(1):
                try:
                    await workflow.execute_activity_method(
                        SkyPilotActivities.down_cluster,
                        DownInput(cluster_name=cluster, job_name_prefix=self._job_name_prefix),
                        start_to_close_timeout=timedelta(seconds=self._input.timeouts.teardown),
                        heartbeat_timeout=timedelta(seconds=self._input.timeouts.heartbeat),
                        retry_policy=self._retry_policy(maximum_attempts=TEARDOWN_ATTEMPTS_PER_ROUND),
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
                    self._update_details()
                    pause = self._retry_interval() * 2**attempt_round
                    await workflow.sleep(min(pause, TEARDOWN_MAX_PAUSE))
            progress.error = ""
        if cluster in self._clusters_up:
            self._clusters_up.remove(cluster)

    # ------------------------------------------------------------------ cleanup and failures

    async def _clean_up(self, outcome: str) -> None:
        """Tear down every cluster still up, whatever ended the run; then drop the checkout."""
        self._status = "cleaning up"
        self._update_details()
        if self._provisioning and not self._provisioning.done():
            self._provisioning.cancel()  # cancels the launch request on SkyPilot
        if self._provisioning:
            await asyncio.gather(self._provisioning, return_exceptions=True)
        if outcome == "failed" and self._input.keep_clusters_on_failure and self._clusters_up:
            await self._keep_clusters_for_debugging()
        await asyncio.gather(*(self._down(cluster) for cluster in list(self._clusters_up)))
        try:
            await workflow.execute_activity_method(
                SkyPilotActivities.remove_checkout,
                RemoveCheckoutInput(self._checkout_name),
                start_to_close_timeout=timedelta(minutes=5),
                retry_policy=self._retry_policy(maximum_attempts=3),
                summary="cleanup: remove checkout",
            )
        except ActivityError as err:
            workflow.logger.warning("Could not remove checkout %s: %s", self._checkout_name, err)
        self._status = outcome
        self._update_details()

    async def _keep_clusters_for_debugging(self) -> None:
        """Leave a failed run's clusters up for a while, the run still open (so the reaper
        leaves them alone), until the `release_clusters` signal, a cancel, or the time is up."""
        minutes = self._input.keep_clusters_minutes
        until = workflow.now() + timedelta(minutes=minutes)
        self._status = f"failed: clusters kept for debugging until {until:%Y-%m-%d %H:%M} UTC"
        workflow.logger.warning(
            "keep_clusters_on_failure: %s stay up for %d min (signal release_clusters to tear down now)",
            ", ".join(self._clusters_up),
            minutes,
        )
        self._update_details()
        with contextlib.suppress(asyncio.TimeoutError):
            await workflow.wait_condition(lambda: self._release_clusters, timeout=timedelta(minutes=minutes))
        self._status = "cleaning up"

    @workflow.signal
    def release_clusters(self) -> None:
        """Tear down the clusters a failed run kept for debugging, now."""
        self._release_clusters = True

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

    # ------------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def _tracking(self, name: str) -> AsyncIterator[StepProgress]:
        """Keep the progress query and the Web UI's current details in step with step `name`."""
        step = self._steps[name]
        step.status = "running"
        self._update_details()
        started = workflow.now()
        try:
            yield step
            step.status = "succeeded"
        except BaseException as err:
            step.status = "cancelled" if _is_cancellation(err) else "failed"
            step.error = str(err.cause if isinstance(err, ActivityError) and err.cause else err)
            failed_job = _failed_job(err)
            if failed_job:
                step.job_id, step.job_status = failed_job
            raise
        finally:
            step.duration_seconds = round((workflow.now() - started).total_seconds(), 3)
            self._update_details()

    def _task_spec(self, step: str, yaml_path: str) -> TaskSpec:
        return TaskSpec(
            step=step,
            job_name=self._job_name(step),
            yaml_text=self._yaml_texts[yaml_path],
            # Tasks keep their files apart per run with PIPELINE_RUN_ID.
            env_overrides={"PIPELINE_RUN_ID": self._prefix, **self._input.env_overrides},
            secret_names=self._input.secret_names,
            checkout_name=self._checkout_name,
            repo_url=self._input.repo_url,
            commit_sha=self._commit_sha,
        )

    def _job_activity_options(self, step: str, summary: str = "") -> dict[str, Any]:
        timeout = getattr(self._input.timeouts, step)
        return dict(
            start_to_close_timeout=timedelta(seconds=timeout),
            schedule_to_close_timeout=timedelta(seconds=timeout),
            heartbeat_timeout=timedelta(seconds=self._input.timeouts.heartbeat),
            # Attempts end by time (the step's timeout above), not by count: a worker lost
            # mid-step is not the step's failure, and each attempt re-attaches to the job.
            # Errors that cannot get better are non-retryable where they are raised.
            retry_policy=self._retry_policy(maximum_attempts=0),
            # Let the activity cancel the SkyPilot request/job before the run moves on.
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=summary or self._steps[step].summary,
        )

    async def _shielded_from_cancel(self, cleanup: Callable[[], Awaitable[None]]) -> None:
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
                self._release_clusters = True
                workflow.logger.info("Cancel requested during cleanup: the cleanup carries on")

    async def _unless_fails_first(
        self, step: Coroutine[Any, Any, T], alongside: asyncio.Task[None] | None
    ) -> T:
        """Await `step`; if `alongside` (the overlapped provisioning) fails first, stop `step`
        and fail the run with that error at once."""
        if alongside is None:
            return await step
        main = asyncio.ensure_future(step)
        try:
            await workflow.wait([main, alongside], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:  # a cancel of the run: waiting does not pass it on to `step`
            main.cancel()
            await asyncio.gather(main, return_exceptions=True)
            raise
        if not main.done() and alongside.done() and alongside.exception() is not None:
            main.cancel()
            await asyncio.gather(main, return_exceptions=True)
            raise alongside.exception()  # type: ignore[misc]
        return await main

    def _job_name(self, step: str) -> str:
        if self._run_scoped_names:
            return job_name_for(self._prefix, workflow.info().run_id, step)
        return f"{self._prefix}-{step}"

    def _retry_interval(self) -> timedelta:
        return timedelta(seconds=self._input.retry_initial_interval_seconds)

    def _retry_policy(self, maximum_attempts: int) -> RetryPolicy:
        return RetryPolicy(
            initial_interval=self._retry_interval(),
            backoff_coefficient=2.0,
            maximum_interval=timedelta(minutes=2),
            maximum_attempts=maximum_attempts,
        )

    def _validate(self, input: PipelineInput) -> None:
        problems = input_problems(input)
        if input.cluster_prefix and self._run_scoped_names:
            problems.append(
                "cluster_prefix is not an input any more: the prefix comes from the workflow id "
                "(run_workflow.py --cluster-prefix NAME starts workflow skypilot-NAME)"
            )
        if problems:
            raise ApplicationError(
                "invalid pipeline input: " + "; ".join(problems), type="InvalidInput", non_retryable=True
            )

    def _update_details(self) -> None:
        # Plain symbols, not emoji: they render in any font (a browser without an emoji font
        # shows emoji as empty boxes).
        icons = {
            "pending": "○",
            "running": "▶",
            "retrying": "↻",
            "succeeded": "✓",
            "failed": "✗",
            "cancelled": "⊘",
        }
        lines = [f"**{self._status}** — commit `{self._commit_sha[:12] or '?'}`", ""]
        for step in self._steps.values():
            job = f" — job {step.job_id}" if step.job_id is not None else ""
            took = f" ({step.duration_seconds:.0f}s)" if step.duration_seconds is not None else ""
            lines.append(f"{icons.get(step.status, '')} {step.summary}{job}{took}")
            if step.status == "retrying":
                lines.append(f"  **retrying**: {step.error[:300]}")
        if self._clusters_up:
            lines += ["", "clusters up: " + ", ".join(self._clusters_up)]
        workflow.set_current_details("\n".join(lines))


def _failed_job(err: BaseException) -> tuple[int, str] | None:
    """The job id and status a failed job step's error carries (its StepResult), if any."""
    cause = err.cause if isinstance(err, ActivityError) else None
    details = list(cause.details) if isinstance(cause, ApplicationError) else []
    result = details[0] if details and isinstance(details[0], dict) else {}
    if isinstance(result.get("job_id"), int):
        return result["job_id"], str(result.get("job_status", ""))
    return None


def _is_cancellation(err: BaseException) -> bool:
    return isinstance(err, asyncio.CancelledError) or (
        isinstance(err, ActivityError) and is_cancelled_exception(err)
    )
