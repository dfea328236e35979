"""Pipeline files: any pipeline shape from a file in the task repository, no Temporal code.

`load_pipeline` checks a file (this project's format, pipeline.schema.json, or SkyPilot's own
multi-task YAML) and expands it into the `PipelineGraph` the generic workflow runs.
"""

from skypilot_temporal.pipeline_file.graph import Condition, GraphStep, MetricRef, PipelineGraph, Selection
from skypilot_temporal.pipeline_file.load import PipelineFileError, load_pipeline, schema

__all__ = [
    "Condition",
    "GraphStep",
    "MetricRef",
    "PipelineFileError",
    "PipelineGraph",
    "Selection",
    "load_pipeline",
    "schema",
]
