"""Any pipeline shape from a file in the task repository: one generic workflow.

    1. fetch-tasks   clone the task repository, read and check the pipeline file and its tasks
    2. the steps     as the file's graph says (workflow/graph_runner.py), clusters torn down
                     once their last step ended
    cleanup          whatever ends the run, every cluster still up goes down

The file is a pipeline file (docs/pipeline-files.md) or SkyPilot's own multi-task YAML.
"""

from __future__ import annotations

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from skypilot_temporal.payloads import PipelineFileInput, PipelineResult
    from skypilot_temporal.workflow.graph_runner import GraphRunner
    from skypilot_temporal.workflow.pipeline import Pipeline, PipelineHandlers

MAX_PATH_CHARS = 255


@workflow.defn
class PipelineFileWorkflow(PipelineHandlers):
    @workflow.init
    def __init__(self, input: PipelineFileInput) -> None:
        self.pipeline = Pipeline(input.pipeline, plan=["fetch-tasks"])

    @workflow.run
    async def run(self, input: PipelineFileInput) -> PipelineResult:
        pipeline = self.pipeline
        if not isinstance(input.path, str) or not 0 < len(input.path) <= MAX_PATH_CHARS:
            pipeline.refuse([f"the pipeline file's path must be 1 to {MAX_PATH_CHARS} characters"])
        async with pipeline.running():
            graph = await pipeline.fetch_pipeline_file(input.path)
            steps = GraphRunner(pipeline, graph)
            steps.show_plan()
            results = await steps.run()
        return pipeline.result(results)
