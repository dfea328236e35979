"""Run a pipeline file's graph on the building blocks (workflow side).

    results = await GraphRunner(pipeline, graph).run()

Steps start as soon as every step they need has succeeded, at most `graph.max_parallel` at once.
A step on a shared cluster launches it if it is the cluster's first step, else execs on it; the
cluster goes down (as "<cluster>-down", alongside the steps still running) once every step on it
has ended. A step whose `when` does not hold is skipped, and so is everything that needs it. A
failed step stops the steps running (their SkyPilot jobs are cancelled) unless the file says
`on_failure: continue`; either way the run fails, and `Pipeline.running()` tears down whatever
is still up.
"""

from __future__ import annotations

import asyncio
import re
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from skypilot_temporal.payloads import StepResult
    from skypilot_temporal.pipeline_file.graph import (
        GraphStep,
        PipelineGraph,
        attempt_name,
        dependents,
        resolve,
    )
    from skypilot_temporal.workflow.cluster import Cluster
    from skypilot_temporal.workflow.managed_job import managed_job
    from skypilot_temporal.workflow.pipeline import Pipeline
    from skypilot_temporal.workflow.step_board import is_cancellation

# A job that ran and did not succeed: the step's `retries` run it again. (Not a cancel, a
# timeout or a task the policy refused: running those again gives the same answer.)
RETRIED_JOB_FAILURES = {"JobFailed", "JobFailedSetup", "JobFailedDriver"}
# What an exec on a shared cluster gets when SkyPilot's autodown took the cluster down while the
# step waited for others (a branch can take hours): the step launches the cluster again.
CLUSTER_GONE = {"ClusterDoesNotExist", "ClusterNotUpError"}
RELAUNCH_GONE_CLUSTERS = "pipeline-file-relaunch-gone-clusters"


class GraphRunner:
    def __init__(self, pipeline: Pipeline, graph: PipelineGraph) -> None:
        self.pipeline = pipeline
        self.graph = graph
        self.steps = {step.name: step for step in graph.steps}
        self.clusters = {role: Cluster(pipeline, role) for role in graph.cluster_users()}
        # step -> succeeded | failed | cancelled | skipped, once it ended
        self.ended: dict[str, str] = {}
        self.results: dict[str, StepResult] = {}
        self.metrics: dict[str, dict[str, float]] = {}
        self._torn_down: set[str] = set()

    def show_plan(self) -> None:
        """Every step of the graph, pending, with what it does, on which cluster and after which
        steps (the progress query, the Web UI's details, the activities' summaries); then each
        cluster's teardown."""
        board, prefix, graph = self.pipeline.board, self.pipeline.prefix, self.graph
        # Task-author text in the Web UI's Markdown: only characters that cannot format it.
        name = re.sub(r"[^A-Za-z0-9 ._/-]", "", graph.name or graph.file).strip() or "pipeline"
        steps = f"{len(graph.steps)} step{'' if len(graph.steps) == 1 else 's'}"
        board.heading = (
            f"`{name}` ({steps}, at most {graph.max_parallel} at once, on_failure: {graph.on_failure})"
        )
        for step in graph.steps:
            after = f" after {', '.join(step.needs)}" if step.needs else ""
            if step.managed:
                board.add(step.name, f"managed job {step.name}{after}")
            else:
                verb = "launch" if step.launches else "exec"
                name = f"{prefix}-{step.cluster}"
                board.add(step.name, f"{verb} {step.name} on {name}{after}", name)
        for role, cluster in self.clusters.items():
            board.add(f"{role}-down", f"down {cluster.name}", cluster.name)
        board.redraw()

    async def run(self) -> list[StepResult]:
        """Run the graph to its end; the results of the steps that succeeded, in graph order."""
        pending = [step.name for step in self.graph.steps]
        running: dict[str, asyncio.Task[None]] = {}
        failures: list[BaseException] = []
        try:
            while pending or running:
                self._skip_unreachable(pending)
                self._tear_down_finished_clusters()
                ready = [n for n in pending if self._ready(n)]
                for name in ready[: max(0, self.graph.max_parallel - len(running))]:
                    pending.remove(name)
                    running[name] = asyncio.create_task(self._run_step(self.steps[name]))
                if not running:
                    break
                await workflow.wait(list(running.values()), return_when=asyncio.FIRST_COMPLETED)
                for name, task in list(running.items()):  # in start order: deterministic
                    if not task.done():
                        continue
                    del running[name]
                    error = task.exception() if not task.cancelled() else asyncio.CancelledError()
                    if error is not None and not is_cancellation(error):
                        failures.append(error)
                if failures and self.graph.on_failure == "stop":
                    await self._stop(running)
                    break
        except BaseException:  # a cancel of the run: its steps cancel their SkyPilot side first
            await self._stop(running)
            raise
        if not failures or self.graph.on_failure == "continue":
            self._tear_down_finished_clusters()  # the last steps' (after a stop: running() does it)
        await self.pipeline.teardowns_done()
        if failures:
            raise failures[0]
        return [self.results[s.name] for s in self.graph.steps if s.name in self.results]

    # ---------------------------------------------------------------- one step

    async def _run_step(self, step: GraphStep) -> None:
        try:
            try:
                env = self._env(step)
            except ApplicationError as err:  # a value it reads was not reported: the step fails
                async with self.pipeline.board.step(step.name):
                    raise err
            if env is None:
                return
            for attempt in range(step.retries + 1):
                name = attempt_name(step.name, attempt)
                try:
                    result = await self._run_job(step, name, env)
                    break
                except ActivityError as err:
                    cause = err.cause
                    failed_job = isinstance(cause, ApplicationError) and cause.type in RETRIED_JOB_FAILURES
                    if not failed_job or attempt == step.retries:
                        raise
            self.results[step.name] = result
            self.metrics[step.name] = dict(result.metrics)
            self.ended[step.name] = "succeeded"
        except BaseException as err:
            self.ended[step.name] = "cancelled" if is_cancellation(err) else "failed"
            raise

    async def _run_job(self, step: GraphStep, name: str, env: dict[str, str]) -> StepResult:
        if step.managed:
            return await managed_job(self.pipeline, step.task, name, env=env, document=step.document)
        cluster = self.clusters[step.cluster]
        # A retry of the launching step launches again: the cluster may not have come up.
        if step.launches:
            return await cluster.launch(step.task, name, env=env, document=step.document)
        try:
            return await cluster.exec(step.task, name, env=env, document=step.document)
        except ActivityError as err:
            gone = isinstance(err.cause, ApplicationError) and err.cause.type in CLUSTER_GONE
            if not (gone and workflow.patched(RELAUNCH_GONE_CLUSTERS)):
                raise
        self.pipeline.board.add(
            name,
            f"launch {name} on {cluster.name} (launched again: SkyPilot took it down while idle)",
            cluster.name,
        )
        return await cluster.launch(step.task, name, env=env, document=step.document)

    def _env(self, step: GraphStep) -> dict[str, str] | None:
        """The step's env: the file's, the run's overrides, its matrix values, the values it
        reads from earlier steps. None (and the step skipped) if a `when` does not hold."""
        for condition in step.when:
            actual, _ = resolve(self.graph, condition.ref, self.metrics)
            number = actual if isinstance(actual, float) else None
            if not condition.holds(number):
                seen = "not reported" if actual is None else f"{actual:g}" if number is not None else actual
                self._skip(step.name, f"when {condition} did not hold ({seen})")
                return None
        env = self.graph.env_of(step, self.pipeline.input.env_overrides)
        for name, ref in step.env_from.items():
            value, source = resolve(self.graph, ref, self.metrics)
            if value is None:
                raise ApplicationError(
                    f"step {step.name!r}: {name} reads {ref}, which "
                    + (f"step {source!r} did not report" if source else "no variant reported"),
                    type="MissingMetric",
                    non_retryable=True,
                )
            env[name] = str(value)
        return env

    # ---------------------------------------------------------------- the graph around it

    def _ready(self, name: str) -> bool:
        return all(self.ended.get(need) == "succeeded" for need in self.steps[name].needs)

    def _skip_unreachable(self, pending: list[str]) -> None:
        """Skip the pending steps a step they need will never let run (failed, skipped, stopped)."""
        blocked = [n for n, status in self.ended.items() if status != "succeeded"]
        if not blocked:
            return
        unreachable = dependents(self.graph, blocked)
        for name in [n for n in pending if n in unreachable]:
            pending.remove(name)
            failed = next(n for n in self.steps[name].needs if n in blocked or n in unreachable)
            self._skip(name, f"needs {failed}, which did not succeed")

    def _skip(self, name: str, why: str) -> None:
        self.ended[name] = "skipped"
        self.pipeline.board.skip(name, why)

    def _tear_down_finished_clusters(self) -> None:
        """Down, alongside the steps still running, each cluster whose steps have all ended; not
        one a failed step ran on when the run keeps failed clusters for debugging (`running()`
        keeps it, then tears it down)."""
        keep_failed = self.pipeline.input.keep_clusters_on_failure
        for role, users in self.graph.cluster_users().items():
            cluster = self.clusters[role]
            if role in self._torn_down or not all(u in self.ended for u in users):
                continue
            if keep_failed and any(self.ended[u] == "failed" for u in users):
                continue
            self._torn_down.add(role)
            if cluster.name in self.pipeline.board.clusters_up:  # not if its first step never ran
                self.pipeline.teardown_in_background(cluster.name, f"{role}-down")

    async def _stop(self, running: dict[str, asyncio.Task[Any]]) -> None:
        for task in running.values():
            task.cancel()
        await asyncio.gather(*running.values(), return_exceptions=True)
