"""The pipelines: each a short workflow on the building blocks of skypilot_temporal.workflow.

SkyPilotWorkflow, the six steps of the seed:

    1. fetch the tasks      clone the task repository, read and check the three task YAMLs
    2. preprocess           launch the preprocess cluster, run data_preprocessing.yaml
    3. preprocess-down      tear the preprocess cluster down
    4. train                launch the train cluster, run train.yaml
    5. eval                 run eval.yaml on the train cluster with exec
    6. train-down           tear the train cluster down

With `managed_train`, step 4 runs as a SkyPilot managed job (relaunched when its cluster is
preempted or lost) and steps 5-6 launch eval on a cluster of its own and tear that down.

SweepWorkflow: steps 1-3 once, then steps 4-6 for each variant (its own env overrides) as a
SweepVariantWorkflow child, at most `max_parallel` at once; the result is a table of the
variants' metrics and the best of them.

Cleanup is the building blocks' job: a `cluster` block tears its cluster down when it ends,
whatever ends it, and `running()` tears down anything still up and removes the checkout.
"""

from __future__ import annotations

import dataclasses

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from skypilot_temporal.bounds import sweep_problems
    from skypilot_temporal.payloads import (
        PipelineInput,
        PipelineResult,
        ReleasedClusters,
        StepResult,
        SweepInput,
        SweepResult,
        VariantInput,
        VariantProgress,
    )
    from skypilot_temporal.trust.redaction import redact_credentials
    from skypilot_temporal.workflow.cluster import Cluster
    from skypilot_temporal.workflow.fan_out import (
        best_variant,
        pass_release_to_variants,
        run_variants,
        running_variants,
    )
    from skypilot_temporal.workflow.managed_job import managed_job
    from skypilot_temporal.workflow.pipeline import Pipeline, PipelineHandlers


# Sweeps started before it replay without the bounds on what their variants carry.
SWEEP_SIZE_BOUNDS = "sweep-size-bounds"


@workflow.defn
class SkyPilotWorkflow(PipelineHandlers):
    @workflow.init
    def __init__(self, input: PipelineInput) -> None:
        provision_early = ["train-provision"] if input.overlap_provisioning else []
        steps = ["fetch-tasks", "preprocess", "preprocess-down", *provision_early]
        self.pipeline = Pipeline(input, plan=[*steps, *train_and_eval_plan(input)])

    @workflow.run
    async def run(self, input: PipelineInput) -> PipelineResult:
        pipeline = self.pipeline
        async with pipeline.running():
            await pipeline.fetch_tasks(input.preprocess_yaml, input.train_yaml, input.eval_yaml)
            train = Cluster(pipeline, "train")
            overlap = input.overlap_provisioning
            if overlap:  # bring the train cluster up while preprocess runs
                train.provision(input.train_yaml)
            async with Cluster(pipeline, "preprocess", down_in_background=overlap) as preprocess:
                preprocessed = await preprocess.launch(input.preprocess_yaml)
            if input.managed_train:
                trained, evaluated = await managed_train_then_eval(pipeline, input)
            else:
                async with train:
                    trained = await train.launch(input.train_yaml)
                    evaluated = await train.exec(input.eval_yaml, step="eval")
        return pipeline.result([preprocessed, trained, evaluated])


@workflow.defn
class SweepWorkflow(PipelineHandlers):
    """Preprocess once; then train + eval every variant on its own cluster, as child workflows."""

    @workflow.init
    def __init__(self, input: SweepInput) -> None:
        self.pipeline = Pipeline(input.pipeline, plan=["fetch-tasks", "preprocess", "preprocess-down"])
        self.pipeline.board.variants = [
            VariantProgress(f"v{number}", params) for number, params in enumerate(input.variants, 1)
        ]

    @workflow.run
    async def run(self, input: SweepInput) -> SweepResult:
        pipeline, base = self.pipeline, input.pipeline
        pipeline.refuse(sweep_problems(input, size_bounds=workflow.patched(SWEEP_SIZE_BOUNDS)), "sweep")
        async with pipeline.running():
            tasks = await pipeline.fetch_tasks(base.preprocess_yaml, base.train_yaml, base.eval_yaml)
            async with Cluster(pipeline, "preprocess") as preprocess:
                preprocessed = await preprocess.launch(base.preprocess_yaml)
            # Each child's start input is in this run's history: no task texts in it.
            shared_tasks = dataclasses.replace(tasks, yaml_texts={})
            variant_inputs = [
                (
                    variant,
                    VariantInput(self._variant_pipeline(base, variant), variant.variant_id, shared_tasks),
                )
                for variant in pipeline.board.variants
            ]
            await run_variants(
                pipeline,
                SweepVariantWorkflow.run,
                variant_inputs,
                input.max_parallel,
                input.fail_fast,
                input.select_metric,
            )
        return SweepResult(
            repo_url=redact_credentials(base.repo_url),
            commit_sha=tasks.commit_sha,
            preprocess=preprocessed,
            variants=pipeline.board.variants,
            best=best_variant(pipeline.board.variants, input.select_metric, input.select_direction),
            select=f"{input.select_metric}:{input.select_direction}",
        )

    # Async where a run's is not: it signals the variants too. The handler stays as recorded
    # histories ran it, so the override's type differs.
    @workflow.signal
    async def release_clusters(self) -> None:  # type: ignore[override]
        """Tear down kept clusters now: the sweep's own and those of its variants."""
        self.pipeline.release_clusters()
        await pass_release_to_variants(self.pipeline.board.variants)

    @workflow.update
    async def release_kept_clusters(self) -> ReleasedClusters:  # type: ignore[override]
        """Tear down kept clusters now: the sweep's own, and the release passed on to the
        variants still running (each tears down what it keeps)."""
        own = self.pipeline.release_kept_clusters() if self.pipeline.keeping_clusters else None
        variants = await pass_release_to_variants(self.pipeline.board.variants)
        return ReleasedClusters(clusters=own.clusters if own else [], variants=variants)

    @release_kept_clusters.validator
    def _anything_to_release(self) -> None:
        if not running_variants(self.pipeline.board.variants):
            self.pipeline.check_anything_to_release()

    def _variant_pipeline(self, base: PipelineInput, variant: VariantProgress) -> PipelineInput:
        """The variant's input: its parameters as env overrides, its id, and the sweep's data
        (PIPELINE_RUN_ID names the sweep's preprocessed data; VARIANT_ID keeps models apart)."""
        env = {**base.env_overrides, **variant.params}
        env |= {"PIPELINE_RUN_ID": self.pipeline.prefix, "VARIANT_ID": variant.variant_id}
        return dataclasses.replace(base, env_overrides=env)


@workflow.defn
class SweepVariantWorkflow(PipelineHandlers):
    """One variant of a sweep: train and eval on a cluster of its own, with the sweep's tasks."""

    @workflow.init
    def __init__(self, input: VariantInput) -> None:
        self.pipeline = Pipeline(input.pipeline, plan=train_and_eval_plan(input.pipeline))
        self.pipeline.use_tasks(input.tasks)

    @workflow.run
    async def run(self, input: VariantInput) -> PipelineResult:
        async with self.pipeline.running():
            if input.pipeline.managed_train:
                trained, evaluated = await managed_train_then_eval(self.pipeline, input.pipeline)
            else:
                async with Cluster(self.pipeline, "train") as train:
                    trained = await train.launch(input.pipeline.train_yaml)
                    evaluated = await train.exec(input.pipeline.eval_yaml, step="eval")
        return self.pipeline.result([trained, evaluated])


async def managed_train_then_eval(pipeline: Pipeline, input: PipelineInput) -> tuple[StepResult, StepResult]:
    """Train as a SkyPilot managed job (relaunched if its cluster is lost), then eval on a cluster
    of its own: the job's cluster is gone once the job ends. Train's outputs must be where eval
    can read them (a bucket or volume on a cloud; the shared disk on the local stack)."""
    trained = await managed_job(pipeline, input.train_yaml, step="train")
    async with Cluster(pipeline, "eval") as evaluator:
        return trained, await evaluator.launch(input.eval_yaml)


def train_and_eval_plan(input: PipelineInput) -> list[str]:
    if input.managed_train:
        return ["train", "eval", "eval-down"]
    return ["train", "eval", "train-down"]


# The example's pipelines, registered once: the worker runs them, the starter follows them.
PIPELINES: list[type[SkyPilotWorkflow] | type[SweepWorkflow] | type[SweepVariantWorkflow]] = [
    SkyPilotWorkflow,
    SweepWorkflow,
    SweepVariantWorkflow,
]
