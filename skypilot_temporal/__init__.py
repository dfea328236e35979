"""SkyPilot tasks as durable Temporal pipelines.

A platform registers everything with one plugin and adds its pipelines to its own workers:

    from skypilot_temporal import SkyPilotPlugin, WorkerSettings

    settings = WorkerSettings.from_env()
    client = await Client.connect(address, plugins=[SkyPilotPlugin(settings)])
    worker = Worker(client, task_queue=settings.task_queue, workflows=[MyPipeline])

A pipeline is a workflow on the building blocks below (docs/writing-pipelines.md):
`Pipeline` runs the steps and cleans up, `Cluster` launches, execs on and tears down one cluster,
`managed_job` runs a step as a SkyPilot managed job. `skypilot_temporal.testing` has the fake
SkyPilot SDK and an in-process worker to test a pipeline with.
"""

from skypilot_temporal.activity.activities import SkyPilotActivities
from skypilot_temporal.config import connect_temporal
from skypilot_temporal.errors import ConfigError
from skypilot_temporal.payloads import (
    PipelineInput,
    PipelineProgress,
    PipelineResult,
    StepProgress,
    StepResult,
    StepTimeouts,
)
from skypilot_temporal.plugin import SkyPilotPlugin
from skypilot_temporal.settings import WorkerSettings
from skypilot_temporal.trust.task_policy import TaskPolicy
from skypilot_temporal.workflow.cluster import Cluster
from skypilot_temporal.workflow.managed_job import managed_job
from skypilot_temporal.workflow.pipeline import Pipeline, PipelineHandlers

__all__ = [
    "Cluster",
    "ConfigError",
    "Pipeline",
    "PipelineHandlers",
    "PipelineInput",
    "PipelineProgress",
    "PipelineResult",
    "SkyPilotActivities",
    "SkyPilotPlugin",
    "StepProgress",
    "StepResult",
    "StepTimeouts",
    "TaskPolicy",
    "WorkerSettings",
    "connect_temporal",
    "managed_job",
]
