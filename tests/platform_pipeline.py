"""A platform's own pipeline shape, as its own module would hold it: the package imported at the
top (SkyPilotPlugin passes it through the workflow sandbox), the building blocks, nothing else."""

from __future__ import annotations

from temporalio import workflow

from skypilot_temporal import Cluster, Pipeline, PipelineHandlers, PipelineInput


@workflow.defn
class TrainOnlyPipeline(PipelineHandlers):
    """Fetch the tasks, then train on a cluster of its own; the cluster goes when the block ends."""

    @workflow.init
    def __init__(self, input: PipelineInput) -> None:
        self.pipeline = Pipeline(input, plan=["fetch-tasks", "launch train", "down train"])

    @workflow.run
    async def run(self, input: PipelineInput) -> str:
        async with self.pipeline.running():
            await self.pipeline.fetch_tasks(input.train_yaml)
            async with Cluster(self.pipeline, "train") as train:
                trained = await train.launch(input.train_yaml)
        return trained.job_status
