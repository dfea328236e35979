"""Acme's pipeline shape: train, then evaluate twice on the training cluster (a held-out set and
a stress set), then tear the cluster down. The building blocks do the teardown on every exit,
the cancel on SkyPilot, the re-attach on retry and the progress the Web UI shows."""

from __future__ import annotations

from dataclasses import dataclass

from temporalio import workflow

from skypilot_temporal import Cluster, Pipeline, PipelineHandlers, PipelineInput, PipelineResult


@dataclass
class TrainTwiceEvaluatedInput:
    pipeline: PipelineInput
    stress_eval_yaml: str = "stress_eval.yaml"


@workflow.defn
class TrainTwiceEvaluated(PipelineHandlers):
    @workflow.init
    def __init__(self, input: TrainTwiceEvaluatedInput) -> None:
        self.pipeline = Pipeline(
            input.pipeline,
            plan=["fetch-tasks", "train", "eval", "stress-eval", "train-down"],
        )

    @workflow.run
    async def run(self, input: TrainTwiceEvaluatedInput) -> PipelineResult:
        run = input.pipeline
        async with self.pipeline.running():
            await self.pipeline.fetch_tasks(run.train_yaml, run.eval_yaml, input.stress_eval_yaml)
            async with Cluster(self.pipeline, "train") as train:
                trained = await train.launch(run.train_yaml)
                evaluated = await train.exec(run.eval_yaml, step="eval")
                stressed = await train.exec(input.stress_eval_yaml, step="stress-eval")
        return self.pipeline.result([trained, evaluated, stressed])
