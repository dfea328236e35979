"""Pipeline files: any pipeline shape from a file in the task repository, no Temporal code.

`pipeline_file.load.load_pipeline` checks a file (this project's format, pipeline.schema.json,
or SkyPilot's own multi-task YAML) and expands it into the `graph.PipelineGraph` the generic
workflow runs. This module imports neither: the workflow side needs only the graph, and the
loader's JSON Schema validator has no place in the workflow sandbox.
"""
