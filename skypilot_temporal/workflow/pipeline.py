"""Workflow-side building blocks: the safe mechanics of a pipeline run, written once.

A pipeline workflow holds one `Pipeline` and composes its steps with it:

    async with self.pipeline.running():                      # on exit: cleanup, failure report
        await self.pipeline.fetch_tasks(train_yaml, eval_yaml)
        async with Cluster(self.pipeline, "train") as train:    # torn down on exit, whatever happens
            trained = await train.launch(train_yaml)
            evaluated = await train.exec(eval_yaml, step="eval")

What every step gets without the workflow writing it: the progress query (`progress()`), the Web
UI's current details and activity summaries, retries that re-attach to the step's SkyPilot job,
the SkyPilot side cancelled when the run is cancelled, and a failure that names the step, its
cluster and job, with the job's last log lines.

Teardown: a cluster block tears its cluster down when it ends, as the step "<role>-down"; when an
error or a cancel ends it, every cluster of the run goes down together, as cleanup. `running()`
then tears down any cluster still up (one launched in the background, a teardown a cancel
interrupted), retrying until SkyPilot confirms; a cancel that arrives during cleanup does not
stop it. (Terminate, reset and an execution timeout skip all this: the cluster reaper in
reaper.py and SkyPilot's autodown do it.)
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from datetime import timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from skypilot_temporal.activity.activities import SkyPilotActivities
    from skypilot_temporal.bounds import input_problems
    from skypilot_temporal.naming import (
        cluster_prefix_for,
        cluster_prefix_v1_for,
        job_name_for,
        legacy_cluster_prefix_for,
    )
    from skypilot_temporal.operations import metrics
    from skypilot_temporal.payloads import (
        DownInput,
        FetchPipelineInput,
        FetchTasksInput,
        PipelineInput,
        PipelineProgress,
        PipelineResult,
        ReleasedClusters,
        RemoveCheckoutInput,
        RunTasks,
        StepResult,
        TaskSpec,
    )
    from skypilot_temporal.pipeline_file.graph import PipelineGraph, attempt_name
    from skypilot_temporal.trust.redaction import redact_credentials
    from skypilot_temporal.workflow.step_board import FETCH_TASKS, StepBoard

T = TypeVar("T")
# Runs started before this patch keep their old cluster and job names (see Pipeline.__init__).
RUN_SCOPED_NAMES = "run-scoped-cluster-and-job-names"
# Runs started before it keep the prefix of cluster_prefix_v1_for (not injective).
INJECTIVE_PREFIXES = "injective-cluster-prefixes"
# Teardown: attempts per round, then the run reports it is stuck and tries again after a pause.
TEARDOWN_ATTEMPTS_PER_ROUND = 4
TEARDOWN_MAX_PAUSE = timedelta(minutes=5)


class Pipeline:
    """One run's clusters, steps and progress. Create it in the workflow's `@workflow.init`.

    `plan` lists the steps the progress query shows as pending from the start, in order:
    "fetch-tasks", "launch STEP [on ROLE]", "exec STEP on ROLE", "managed STEP", "provision ROLE",
    "down ROLE".
    A step not in the plan shows once it starts.
    """

    def __init__(self, input: PipelineInput, plan: Sequence[str] = ()) -> None:
        self.input = input
        info = workflow.info()
        self._run_scoped_names = workflow.patched(RUN_SCOPED_NAMES)
        if self._run_scoped_names:
            # One workflow id, one prefix: Temporal refuses a second running workflow with the id.
            prefix_for = cluster_prefix_for if workflow.patched(INJECTIVE_PREFIXES) else cluster_prefix_v1_for
            self.prefix = prefix_for(info.workflow_id)
        else:  # a run started by an older worker: keep the names its clusters and jobs have
            self.prefix = input.cluster_prefix or legacy_cluster_prefix_for(info.workflow_id)
        self.tasks = RunTasks(commit_sha="", yaml_texts={}, checkout_name=f"{self.prefix}/{info.run_id}")
        self.owns_checkout = True
        self.board = StepBoard(self.prefix, self._fetch_summary(), list(plan))
        self.release_requested = False
        self.keeping_clusters = False  # a failed run's clusters, kept for debugging now
        # What the run's cleanup must still do besides tearing down clusters (e.g. cancel a
        # managed job that has not ended), by key; a block removes its entry once done.
        self.pending_cleanups: dict[str, Callable[[], Awaitable[Any]]] = {}
        self._background: list[asyncio.Task[Any]] = []
        self._teardowns: list[asyncio.Task[Any]] = []

    # ------------------------------------------------------------------ what a workflow composes

    async def fetch_tasks(self, *yaml_paths: str) -> RunTasks:
        """Step 1: check out the task repository at the ref, read and check the task YAMLs."""
        tasks = await self._step_one(SkyPilotActivities.fetch_tasks, self._fetch_input(list(yaml_paths)))
        self.tasks.yaml_texts = tasks.yaml_texts
        return self.tasks

    async def fetch_pipeline_file(self, path: str) -> PipelineGraph:
        """Step 1 of a pipeline-file run: check out the task repository at the ref, read and check
        the pipeline file at `path` and every task it names; the steps' timeouts apply from now."""
        input = self.input
        fetched = await self._step_one(
            SkyPilotActivities.fetch_pipeline, FetchPipelineInput(path, self._fetch_input([]))
        )
        graph = fetched.graph
        timeouts = input.timeouts
        known = {name for step in graph.steps for name in (step.name, step.declared)}
        if unknown := next((name for name in timeouts.steps if name not in known), None):
            raise ApplicationError(
                f"--timeout names step {unknown!r}, which {path} does not have",
                type="InvalidInput",
                non_retryable=True,
            )
        by_step = {}
        for step in graph.steps:
            # One the run names (run_workflow.py --timeout STEP=S: the step, or the step a variant
            # comes from), else the file's, else the run's for the declared name; retries alike.
            named = timeouts.steps.get(step.name) or timeouts.steps.get(step.declared)
            seconds = named or step.timeout_seconds or timeouts.for_step(step.declared or step.name)
            for attempt in range(step.retries + 1):
                by_step[attempt_name(step.name, attempt)] = seconds
        self.input = dataclasses.replace(input, timeouts=dataclasses.replace(timeouts, steps=by_step))
        return graph

    def use_tasks(self, tasks: RunTasks) -> None:
        """Run the tasks another run fetched (a sweep's variants): its checkout stays its own."""
        self.tasks, self.owns_checkout = tasks, False
        self.board.set_commit(tasks.commit_sha)

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
            raise self.board.failure(err) from err
        finally:
            await self.shielded_from_cancel(functools.partial(self._clean_up, outcome))

    def progress(self) -> PipelineProgress:
        return self.board.progress()

    def result(self, steps: Sequence[StepResult]) -> PipelineResult:
        """The run's result: its repository (URL credentials masked), commit and `steps`."""
        return PipelineResult(redact_credentials(self.input.repo_url), self.tasks.commit_sha, list(steps))

    def release_clusters(self) -> None:
        """Tear down the clusters a failed run kept for debugging, now."""
        self.release_requested = True

    def check_anything_to_release(self) -> None:
        """Refuse a release Update that would do nothing (before it reaches history)."""
        if not self.keeping_clusters or self.release_requested:
            raise ValueError(f"nothing to release: this run keeps no clusters (it is {self.board.status})")

    def release_kept_clusters(self) -> ReleasedClusters:
        """Tear down the kept clusters now; which they are."""
        self.release_clusters()
        return ReleasedClusters(clusters=list(self.board.clusters_up))

    # ------------------------------------------------------------------ for new kinds of step

    def background(self, work: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run `work` alongside the next steps: its failure stops the step running then and
        fails the run; the run's cleanup cancels it if it is still going."""
        task = asyncio.create_task(work)
        self._background.append(task)
        return task

    def teardown_in_background(self, cluster: str, step: str) -> None:
        """Tear `cluster` down as `step` alongside the next steps (shielded from cancel); the
        run's cleanup waits for it."""
        teardown = functools.partial(self.down, cluster, step, background=True)
        self._teardowns.append(asyncio.create_task(self.shielded_from_cancel(teardown)))

    async def teardowns_done(self) -> None:
        """Wait for the teardowns going on in the background."""
        await asyncio.gather(*self._teardowns, return_exceptions=True)

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
            self.board.stopped_by = failure
            raise failure
        return await main

    def task_spec(
        self, step: str, yaml_path: str, env: Mapping[str, str] | None = None, document: int = 0
    ) -> TaskSpec:
        """Step `step`'s task: the file at `yaml_path` (its YAML document `document`), with `env`
        (default: the run's env overrides) on top."""
        return TaskSpec(
            step=step,
            job_name=self.job_name(step),
            yaml_text="",  # read from the checkout: task files stay out of the run's history
            yaml_path=yaml_path,
            yaml_document=document,
            # Tasks keep their files apart per run with PIPELINE_RUN_ID.
            env_overrides={
                "PIPELINE_RUN_ID": self.prefix,
                **(self.input.env_overrides if env is None else env),
            },
            secret_names=self.input.secret_names,
            checkout_name=self.tasks.checkout_name,
            repo_url=self.input.repo_url,
            commit_sha=self.tasks.commit_sha,
        )

    def job_options(self, step: str, summary: str, timeout_step: str = "") -> dict[str, Any]:
        """Activity options of a step that runs a SkyPilot job (timeouts by step name)."""
        timeouts = self.input.timeouts
        timeout = timeouts.for_step(timeout_step or step)
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

    async def down(self, cluster: str, step: str | None = None, background: bool = False) -> None:
        """Tear `cluster` down: as pipeline step `step`, or as cleanup when `step` is None
        (`background`: alongside the pipeline's main line).

        Never gives up (a leaked cluster costs more than a stuck workflow): after each round of
        attempts the step shows as `retrying` with the error, and a warning is logged.
        """
        if step is None:  # shown in the progress query and the Web UI after the pipeline's steps
            step = f"cleanup {cluster}"
            self.board.add(step, f"cleanup: down {cluster}", cluster).name = "cleanup"
        async with self.board.step(step, f"down {cluster}", cluster, background) as progress:
            for attempt_round in itertools.count(1):
                if attempt_round > 1:
                    metrics.teardown_round_retried()
                try:
                    await workflow.execute_activity_method(
                        SkyPilotActivities.down_cluster,
                        DownInput(cluster_name=cluster, job_name_prefix=self.job_name(""), check_owner=True),
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
                    self.board.redraw()
                    pause = self._retry_interval() * 2**attempt_round
                    await workflow.sleep(min(pause, TEARDOWN_MAX_PAUSE))
            progress.error = ""
        if cluster in self.board.clusters_up:
            self.board.clusters_up.remove(cluster)

    async def _tear_down_everything(self, outcome: str) -> None:
        self.board.status = "cleaning up"
        self.board.search.step("cleanup")
        self.board.redraw()
        for task in self._background:
            task.cancel()  # e.g. a provisioning still going: cancelled on SkyPilot too
        await asyncio.gather(*self._background, *self._teardowns, return_exceptions=True)
        if outcome == "failed" and self.input.keep_clusters_on_failure and self.board.clusters_up:
            await self._keep_clusters_for_debugging()
        await asyncio.gather(
            *(cleanup() for cleanup in list(self.pending_cleanups.values())),
            *(self.down(cluster) for cluster in list(self.board.clusters_up)),
        )

    async def _clean_up(self, outcome: str) -> None:
        """Tear down every cluster still up, whatever ended the run; then drop the checkout."""
        await self._tear_down_everything(outcome)
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
        self.board.ended(outcome)

    async def _keep_clusters_for_debugging(self) -> None:
        """Leave a failed run's clusters up for a while, the run still open (so the reaper
        leaves them alone), until the `release_clusters` signal, a cancel, or the time is up."""
        minutes = self.input.keep_clusters_minutes
        until = workflow.now() + timedelta(minutes=minutes)
        self.board.status = f"failed: clusters kept for debugging until {until:%Y-%m-%d %H:%M} UTC"
        self.board.search.step("clusters-kept")
        workflow.logger.warning(
            "keep_clusters_on_failure: %s stay up for %d min (signal release_clusters to tear down now)",
            ", ".join(self.board.clusters_up),
            minutes,
        )
        self.board.redraw()
        self.keeping_clusters = True
        with contextlib.suppress(asyncio.TimeoutError):
            await workflow.wait_condition(lambda: self.release_requested, timeout=timedelta(minutes=minutes))
        self.keeping_clusters = False
        self.board.status = "cleaning up"

    def refuse(self, problems: Sequence[str], what: str = "pipeline") -> None:
        """Fail the run before any step if its input has `problems` (it ends as failed)."""
        if problems:
            self.board.ended("failed")
            raise ApplicationError(
                f"invalid {what} input: " + "; ".join(problems), type="InvalidInput", non_retryable=True
            )

    def _refuse_bad_input(self) -> None:
        problems = input_problems(self.input)
        if self.input.cluster_prefix and self._run_scoped_names:
            problems.append(
                "cluster_prefix is not an input any more: the prefix comes from the workflow id "
                "(run_workflow.py --cluster-prefix NAME starts workflow skypilot-NAME)"
            )
        self.refuse(problems)

    async def _step_one(self, activity: Callable[..., Awaitable[T]], arg: Any) -> T:
        """Run step 1's activity (`fetch-tasks`); the run's commit is the one it checked out."""
        timeout = timedelta(seconds=self.input.timeouts.fetch_tasks)
        async with self.board.step(FETCH_TASKS, self._fetch_summary()) as progress:
            fetched = await workflow.execute_activity_method(
                activity,
                arg,
                start_to_close_timeout=timeout,
                schedule_to_close_timeout=timeout,
                retry_policy=self.retry_policy(maximum_attempts=5),
                summary=progress.summary,
            )
        self.tasks.commit_sha = fetched.commit_sha  # type: ignore[attr-defined]
        self.board.set_commit(self.tasks.commit_sha)
        return fetched

    def _fetch_input(self, yaml_paths: list[str]) -> FetchTasksInput:
        input = self.input
        return FetchTasksInput(
            repo_url=input.repo_url,
            ref=input.ref,
            yaml_paths=yaml_paths,
            checkout_name=self.tasks.checkout_name,
            env_overrides=input.env_overrides,
            secret_names=input.secret_names,
        )

    def _fetch_summary(self) -> str:
        return f"fetch tasks from {redact_credentials(self.input.repo_url)}@{self.input.ref}"

    def _retry_interval(self) -> timedelta:
        return timedelta(seconds=self.input.retry_initial_interval_seconds)


class PipelineHandlers:
    """The progress query, and the release Update and signal, for any workflow with a `pipeline`."""

    pipeline: Pipeline

    @workflow.query
    def progress(self) -> PipelineProgress:
        return self.pipeline.progress()

    @workflow.signal
    def release_clusters(self) -> None:
        """Tear down the clusters a failed run kept for debugging, now (unacknowledged: the
        Update below tells the caller what it released, or that there was nothing to)."""
        self.pipeline.release_clusters()

    @workflow.update
    async def release_kept_clusters(self) -> ReleasedClusters:
        """Tear down the clusters a failed run keeps for debugging, now: which they are."""
        return self.pipeline.release_kept_clusters()

    @release_kept_clusters.validator
    def _anything_to_release(self) -> None:
        self.pipeline.check_anything_to_release()


def _failure(task: asyncio.Task[Any]) -> BaseException | None:
    """What `task` failed with (None while it runs, or when it succeeded or was cancelled)."""
    return task.exception() if task.done() and not task.cancelled() else None
