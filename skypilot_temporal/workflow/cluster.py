"""A cluster of a pipeline run, as an async context manager (see workflow/pipeline.py).

    async with Cluster(pipeline, "train") as train:
        trained = await train.launch("train.yaml")                # step "train", the role
        evaluated = await train.exec("eval.yaml", step="eval")

The block tears the cluster down when it ends, as the step "<role>-down". An error or a cancel
that leaves the block ends the run: `Pipeline.running()` then tears down every cluster the run
has up, together, as cleanup, shielded from a further cancel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from skypilot_temporal.activity.activities import SkyPilotActivities
    from skypilot_temporal.naming import CLUSTER_ROLE
    from skypilot_temporal.payloads import ExecInput, LaunchInput, StepResult
    from skypilot_temporal.workflow.pipeline import Pipeline

STEPS_OVERLAP_TEARDOWNS = "steps-overlap-background-teardowns"


class Cluster:
    """The run's cluster "<prefix>-<role>", launched by its first step. `async with` tears it
    down (as "<role>-down") when the block succeeds; `down_in_background`: the next steps start
    while it goes down. After an error or a cancel, `Pipeline.running()` tears it down."""

    def __init__(self, pipeline: Pipeline, role: str, down_in_background: bool = False) -> None:
        if not CLUSTER_ROLE.fullmatch(role):  # the reaper reads a cluster's owner off its name
            raise ApplicationError(
                f"cluster role {role!r}: lowercase letters and digits only", type="InvalidPipeline"
            )
        self.pipeline = pipeline
        self.role = role
        self.name = f"{pipeline.prefix}-{role}"
        self.down_in_background = down_in_background
        self._provisioning: asyncio.Task[None] | None = None
        # The workflow run whose launch created the cluster, once a launch here reports it.
        self._created_by_run = ""

    async def launch(
        self, yaml_path: str, step: str = "", *, env: Mapping[str, str] | None = None, document: int = 0
    ) -> StepResult:
        """Launch the task at `yaml_path` on this cluster (bringing it up), as step `step`
        (default: the cluster's role); `env`, `document`: as `Pipeline.task_spec`."""
        step = step or self.role
        self._up()  # before launching: a failed launch can leave the cluster INIT
        try:
            if self._provisioning:
                await self._provisioning
            return await self._run_job(
                step,
                f"launch {step} on {self.name}",
                SkyPilotActivities.launch_task,
                LaunchInput(
                    self.name,
                    self.pipeline.task_spec(step, yaml_path, env, document),
                    infra=self.pipeline.input.infra,
                    reuse_provisioned=self._provisioning is not None,
                    cluster_created_by_run=self._created_by_run,
                ),
            )
        finally:
            # Runs started before the building blocks waited here for the teardowns going on in
            # the background (the overlapped preprocess-down): they replay that order.
            if self._provisioning and not workflow.patched(STEPS_OVERLAP_TEARDOWNS):
                await self.pipeline.teardowns_done()

    async def exec(
        self, yaml_path: str, step: str, *, env: Mapping[str, str] | None = None, document: int = 0
    ) -> StepResult:
        """Run the task at `yaml_path` on this (launched) cluster with `sky exec`: step `step`."""
        return await self._run_job(
            step,
            f"exec {step} on {self.name}",
            SkyPilotActivities.exec_task,
            ExecInput(
                self.name,
                self.pipeline.task_spec(step, yaml_path, env, document),
                cluster_created_by_run=self._created_by_run,
            ),
        )

    def provision(self, yaml_path: str) -> None:
        """Bring this cluster up for the task at `yaml_path` (and run its setup) in the
        background, while the run goes on; the task's `launch` then reuses the cluster."""
        self._up()  # before the run goes on: the progress lists its clusters in launch order
        self._provisioning = self.pipeline.background(self._provision(yaml_path))

    async def __aenter__(self) -> Cluster:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any
    ) -> None:
        if exc is not None:
            return  # the run is ending: `running()` tears down every cluster it has up, together
        if self.down_in_background:
            self._created_by_run = ""
            self.pipeline.teardown_in_background(self.name, f"{self.role}-down")
        else:
            await self.down()

    async def down(self) -> None:
        """Tear this cluster down now, as the step "<role>-down"."""
        self._created_by_run = ""  # a later launch brings up a new cluster under the name
        await self.pipeline.down(self.name, step=f"{self.role}-down")

    async def _provision(self, yaml_path: str) -> None:
        step = f"{self.role}-provision"
        board = self.pipeline.board
        async with board.step(step, f"provision {self.name}", self.name, background=True) as progress:
            provisioned: StepResult = await workflow.execute_activity_method(
                SkyPilotActivities.launch_task,
                LaunchInput(
                    self.name,
                    self.pipeline.task_spec(step, yaml_path),
                    self.pipeline.input.infra,
                    provision_only=True,
                ),
                **self.pipeline.job_options(step, progress.summary, timeout_step=self.role),
            )
        self._created_by_run = self._created_by_run or provisioned.cluster_created_by_run

    async def _run_job(self, step: str, summary: str, activity: Any, arg: Any) -> StepResult:
        pipeline = self.pipeline
        async with pipeline.board.step(step, summary, self.name) as progress:
            result: StepResult = await pipeline.job_step(
                workflow.execute_activity_method(
                    activity, arg, **pipeline.job_options(step, progress.summary)
                ),
            )
            progress.job_id, progress.job_status = result.job_id, result.job_status
        self._created_by_run = self._created_by_run or result.cluster_created_by_run
        return result

    def _up(self) -> None:
        if self.name not in self.pipeline.board.clusters_up:
            self.pipeline.board.clusters_up.append(self.name)
