"""Starting a pipeline run (or a schedule of them) from a client, and finding one again.

What a starter needs beyond `Client.start_workflow`: the run's search attributes (and a run that
still starts, with a one-line note, where the namespace has not registered them), the Web UI's
summary and details, one-line errors for what Temporal refuses, and a handle on a run by its id
alone. run_workflow.py is argument parsing over these; a platform's own starter can use them too.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from temporalio.client import Client, ScheduleActionStartWorkflow, WorkflowHandle
from temporalio.common import Priority, TypedSearchAttributes
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from skypilot_temporal import config
from skypilot_temporal.client.following import Reconnecting
from skypilot_temporal.errors import ConfigError
from skypilot_temporal.operations import search_attributes
from skypilot_temporal.operations.schedules import ScheduleRequest, create_or_update
from skypilot_temporal.payloads import PipelineFileInput, PipelineInput, SweepInput
from skypilot_temporal.trust.codec import PayloadDecryptionError
from skypilot_temporal.trust.redaction import redact_credentials

T = TypeVar("T")
RunInput = PipelineInput | SweepInput | PipelineFileInput


def pipeline_of(run: RunInput) -> PipelineInput:
    return run if isinstance(run, PipelineInput) else run.pipeline


def summary_and_details(run: RunInput) -> tuple[str, str]:
    """The Web UI's summary and details of `run` (credentials in the repository URL masked)."""
    pipeline = pipeline_of(run)
    what = f"{redact_credentials(pipeline.repo_url)}@{pipeline.ref}"
    if isinstance(run, PipelineFileInput):
        details = f"pipeline file: {run.path}; infra: {pipeline.infra or 'from the tasks'}"
        return f"SkyPilot pipeline file {run.path}: {what}", details
    details = (
        f"tasks: {pipeline.preprocess_yaml}, {pipeline.train_yaml}, "
        f"{pipeline.eval_yaml}; infra: {pipeline.infra or 'from the tasks'}"
    )
    if isinstance(run, SweepInput):
        details += f"; best by {run.select_metric}:{run.select_direction}"
        return f"SkyPilot sweep of {len(run.variants)} variants: {what}", details
    return f"SkyPilot pipeline: {what}", details


async def searchable(
    workflow_type: str, run: RunInput, start: Callable[[TypedSearchAttributes], Awaitable[T]]
) -> T:
    """`start` the run (or schedule) with its search attributes; without them, and a one-line
    note, if the namespace has not registered them (as Keyword)."""
    attributes = search_attributes.at_start(workflow_type, pipeline_of(run).repo_url)
    try:
        return await start(attributes)
    except RPCError as err:
        if not search_attributes.is_unregistered_error(err.message):
            raise
        refused = config.one_line(err)
    program = os.path.basename(sys.argv[0]) or "starter"  # as argparse names the program
    print(
        f"{program}: note: the namespace refused the search attributes "
        f"({refused}); started without them, so not searchable (docs/deploying-and-operating.md)",
        file=sys.stderr,
    )
    return await start(TypedSearchAttributes.empty)


async def start_run(
    client: Client,
    workflow: Any,
    run: RunInput,
    workflow_id: str,
    task_queue: str,
    in_use: str = "",
    priority: Priority = Priority.default,
) -> WorkflowHandle[Any, Any]:
    """Start `workflow` (a `@workflow.defn` class) on `run`; ConfigError, one line, if Temporal
    refuses (`in_use`: what to say when the id is taken by a running workflow)."""
    summary, details = summary_and_details(run)
    try:
        return await searchable(
            workflow.__name__,
            run,
            lambda attributes: client.start_workflow(
                workflow.run,
                run,
                id=workflow_id,
                task_queue=task_queue,
                static_summary=summary,
                static_details=details,
                search_attributes=attributes,
                priority=priority,
            ),
        )
    except WorkflowAlreadyStartedError:
        raise ConfigError(
            in_use or f"cannot start workflow {workflow_id!r}: a workflow with this id is already running"
        ) from None
    except RPCError as err:
        raise ConfigError(f"cannot start workflow {workflow_id!r}: {config.one_line(err)}") from None


async def schedule_runs(
    client: Client,
    workflow: Any,
    run: RunInput,
    request: ScheduleRequest,
    task_queue: str,
    priority: Priority = Priority.default,
) -> str:
    """Create or update the schedule `request` of runs of `workflow` on `run`: "created" or
    "updated"; ConfigError, one line, if Temporal refuses."""
    summary, details = summary_and_details(run)

    def upsert(attributes: TypedSearchAttributes) -> Awaitable[str]:
        action = ScheduleActionStartWorkflow(
            workflow.run,
            run,
            id=request.schedule_id,  # Temporal appends each run's start time
            task_queue=task_queue,
            static_summary=summary,
            static_details=details,
            typed_search_attributes=attributes,
            priority=priority,
        )
        return create_or_update(client, request, action)

    try:
        return await searchable(workflow.__name__, run, upsert)
    except RPCError as err:
        raise ConfigError(f"cannot create schedule {request.schedule_id!r}: {config.one_line(err)}") from None


async def attach(
    client: Client, workflow_id: str, temporal: Reconnecting, result_types: Mapping[str, type]
) -> WorkflowHandle[Any, Any]:
    """A handle on the latest run with `workflow_id`, going or ended, if its type is one of
    `result_types` (workflow type name -> what its run returns)."""
    try:
        description = await temporal.call(client.get_workflow_handle(workflow_id).describe)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise ConfigError(f"no workflow with id {workflow_id}") from None
        raise
    result_type = result_types.get(description.workflow_type or "")
    if result_type is None:
        raise ConfigError(
            f"workflow {workflow_id} is a {description.workflow_type}, not a {' or '.join(result_types)} run"
        )
    return client.get_workflow_handle(workflow_id, run_id=description.run_id, result_type=result_type)


def decryption_error(err: BaseException | None) -> PayloadDecryptionError | None:
    """The payload-key problem behind `err`, if that is what it is (the SDK may wrap it)."""
    while err is not None and not isinstance(err, PayloadDecryptionError):
        err = err.__cause__ or err.__context__
    return err
