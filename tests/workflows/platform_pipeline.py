"""A platform's own pipeline shape, as its own module would hold it: the package imported at the
top (SkyPilotPlugin passes it through the workflow sandbox), the building blocks, nothing else."""

from __future__ import annotations

from temporalio import workflow

from skypilot_temporal import Cluster, Pipeline, PipelineHandlers, PipelineInput, PipelineResult


@workflow.defn
class TrainOnlyPipeline(PipelineHandlers):
    """Fetch the tasks, then train on a cluster of its own; the cluster goes when the block ends."""

    @workflow.init
    def __init__(self, input: PipelineInput) -> None:
        self.pipeline = Pipeline(input, plan=["fetch-tasks", "train", "train-down"])

    @workflow.run
    async def run(self, input: PipelineInput) -> str:
        async with self.pipeline.running():
            await self.pipeline.fetch_tasks(input.train_yaml)
            async with Cluster(self.pipeline, "train") as train:
                trained = await train.launch(input.train_yaml)
        return trained.job_status


@workflow.defn
class TrainThenSmokeTests(PipelineHandlers):
    """Steps the seed does not have: each gets its own timeout, and the result masks the URL."""

    @workflow.init
    def __init__(self, input: PipelineInput) -> None:
        self.pipeline = Pipeline(input, plan=["fetch-tasks", "train", "smoke", "teardown", "train-down"])

    @workflow.run
    async def run(self, input: PipelineInput) -> PipelineResult:
        async with self.pipeline.running():
            await self.pipeline.fetch_tasks(input.train_yaml, input.eval_yaml)
            async with Cluster(self.pipeline, "train") as train:
                trained = await train.launch(input.train_yaml)
                smoked = await train.exec(input.eval_yaml, step="smoke")
                # Named like a StepTimeouts field: still a job step with the default job timeout.
                again = await train.exec(input.eval_yaml, step="teardown")
        return self.pipeline.result([trained, smoked, again])
