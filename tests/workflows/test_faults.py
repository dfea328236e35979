"""Cleanup and isolation under faults: SkyPilotWorkflow on a real Temporal dev server, fake SDK.

Each test names the fault it injects and the leak or collision it guards against.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from sky import exceptions
from temporalio.api.common.v1 import WorkflowExecution
from temporalio.api.enums.v1 import EventType
from temporalio.api.workflowservice.v1 import ResetWorkflowExecutionRequest
from temporalio.client import ScheduleActionStartWorkflow, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError, WorkflowAlreadyStartedError

from skypilot_temporal.naming import cluster_prefix_for
from skypilot_temporal.operations.reaper import (
    ClusterReaperWorkflow,
    ensure_reaper_schedule,
    reaper_schedule_id,
)
from skypilot_temporal.payloads import ReaperInput
from testing.in_process import Pipeline
from testing.waiting import eventually
from workflows import SkyPilotWorkflow


async def test_a_stuck_teardown_keeps_trying_says_so_and_keeps_the_real_failure(pipeline: Pipeline):
    pipeline.fake.plan("train", status="FAILED", logs=["train broke"])
    denied = exceptions.PermissionDeniedError("token expired: not allowed to down the cluster")
    pipeline.fake.fail_next("down", None, *[denied] * 9)  # preprocess-down goes through
    handle = await pipeline.start()

    async def stuck_step():
        progress = await handle.query(SkyPilotWorkflow.progress)
        return next((s for s in progress.steps if s.status == "retrying"), None)

    step = await eventually(stuck_step, "a teardown shown as retrying", 20, every=0.05)
    assert step.name == "cleanup" and "PermissionDeniedError" in step.error and "still trying" in step.error
    metadata = await handle.query("__temporal_workflow_metadata")  # what the Web UI shows
    assert "retrying" in str(metadata) and "PermissionDeniedError" in str(metadata)
    assert f"clusters up: `{cluster_prefix_for(handle.id)}-train`" in metadata.current_details

    with pytest.raises(WorkflowFailureError) as err:
        await handle.result()
    cause = err.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "JobFailed", cause
    assert "step 'train'" in cause.message, "the teardown's trouble replaced the run's real failure"
    assert len(pipeline.fake.called("down")) == 11
    pipeline.assert_no_cluster_left()


async def test_a_cancel_during_cleanup_does_not_stop_the_teardown(pipeline: Pipeline):
    pipeline.fake.plan("train", status="FAILED")
    pipeline.fake.fail_next("down", None, exceptions.CommandError(255, "ssh", "API server blip", None))
    handle = await pipeline.start(retry_initial_interval_seconds=1.0)

    # preprocess-down, then the failed cleanup try
    await eventually(
        lambda: len(pipeline.fake.called("down")) >= 2, "the cleanup's first teardown attempt", 20, every=0.05
    )
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as err:
        await handle.result()
    assert isinstance(err.value.cause, ApplicationError) and err.value.cause.type == "JobFailed"
    pipeline.assert_no_cluster_left()
    progress = await handle.query(SkyPilotWorkflow.progress)
    assert progress.clusters_up == [] and progress.status == "failed"


async def test_a_failed_provision_fails_the_run_at_once(pipeline: Pipeline):
    pipeline.fake.plan("preprocess", seconds=30)
    pipeline.fake.launch_errors["provision"] = exceptions.ResourcesUnavailableError("no node fits cpus=512")
    started = time.monotonic()
    handle = await pipeline.start(overlap_provisioning=True)
    with pytest.raises(WorkflowFailureError) as err:
        await handle.result()
    cause = err.value.cause
    assert time.monotonic() - started < 15, "the failed provision waited for preprocess to end"
    assert "step 'train-provision'" in cause.message and "cpus=512" in cause.message
    [preprocess_job] = pipeline.fake.jobs_named("preprocess")
    assert preprocess_job.status == "CANCELLED"
    pipeline.assert_no_cluster_left()
    # The stopped step shows as cancelled; the provisioning's step carries the failure.
    steps = {
        s.name: s
        for s in (
            await pipeline.env.client.get_workflow_handle(handle.id).query(SkyPilotWorkflow.progress)
        ).steps
    }
    assert (steps["preprocess"].status, steps["preprocess"].error) == ("cancelled", "Cancelled")
    assert steps["train-provision"].status == "failed" and "cpus=512" in steps["train-provision"].error


async def test_a_cluster_prefix_is_reserved_by_the_workflow_id(pipeline: Pipeline):
    pipeline.fake.plan("train", until_cancelled=True)
    first = await pipeline.env.client.start_workflow(
        SkyPilotWorkflow.run, pipeline.input(), id="skypilot-shared", task_queue=pipeline.task_queue
    )
    assert cluster_prefix_for(first.id) == "skypilot-shared"
    with pytest.raises(WorkflowAlreadyStartedError):
        await pipeline.env.client.start_workflow(
            SkyPilotWorkflow.run, pipeline.input(), id="skypilot-shared", task_queue=pipeline.task_queue
        )
    await first.cancel()
    with pytest.raises(WorkflowFailureError):
        await first.result()
    pipeline.assert_no_cluster_left()


async def test_a_new_run_of_a_terminated_runs_id_adopts_its_running_job(pipeline: Pipeline):
    pipeline.fake.plan("train", seconds=6)
    workflow_id = "skypilot-rerun"
    handle = await pipeline.env.client.start_workflow(
        SkyPilotWorkflow.run, pipeline.input(), id=workflow_id, task_queue=pipeline.task_queue
    )
    await asyncio.to_thread(pipeline.fake.wait_for_job, "train")
    await handle.terminate("operator")  # no cleanup: the train job keeps running
    rerun = await pipeline.env.client.start_workflow(
        SkyPilotWorkflow.run, pipeline.input(), id=workflow_id, task_queue=pipeline.task_queue
    )
    result = await rerun.result()
    assert len(pipeline.fake.jobs_named("train")) == 1, "the new run put a second train job on the cluster"
    assert result.steps[1].job_status == "SUCCEEDED"
    pipeline.assert_no_cluster_left()


# ---------------------------------------------------------------- the reaper


def old_cluster(pipeline: Pipeline, name: str, age_seconds: float = 3600) -> None:
    pipeline.fake.add_job(name, "x")
    pipeline.fake.clusters[name].launched_at = time.time() - age_seconds


async def test_the_reaper_tears_down_only_marked_clusters_whose_run_is_gone(pipeline: Pipeline):
    pipeline.fake.plan("train", until_cancelled=True)
    live = await pipeline.start()
    await asyncio.to_thread(pipeline.fake.wait_for_job, "train")
    live_cluster = f"{cluster_prefix_for(live.id)}-train"
    pipeline.fake.clusters[live_cluster].launched_at -= 3600
    old_cluster(pipeline, "skypilot-terminated1-train")  # its run is closed
    old_cluster(pipeline, "skypilot-young-train", age_seconds=5)  # its run may not be listed yet
    old_cluster(pipeline, "teammates-notebook")  # not launched by this project

    result = await pipeline.env.client.execute_workflow(
        ClusterReaperWorkflow.run,
        ReaperInput(grace_seconds=60),
        id=f"reaper-{live.id}",
        task_queue=pipeline.task_queue,
    )
    assert result.reaped == ["skypilot-terminated1-train"]
    assert set(pipeline.fake.clusters) == {live_cluster, "skypilot-young-train", "teammates-notebook"}
    await live.cancel()
    with pytest.raises(WorkflowFailureError):
        await live.result()


async def test_the_reaper_schedule_is_set_up_idempotently_keeps_a_pause_and_fires(pipeline: Pipeline):
    old_cluster(pipeline, "skypilot-leaked-train")
    client = pipeline.env.client
    schedule_id = await ensure_reaper_schedule(
        client, pipeline.task_queue, period=timedelta(hours=1), grace=timedelta(seconds=75)
    )
    try:
        # A second worker (or a restart with a new period) updates the same schedule.
        assert schedule_id == await ensure_reaper_schedule(
            client, pipeline.task_queue, period=timedelta(seconds=2), grace=timedelta(seconds=75)
        )
        assert schedule_id == reaper_schedule_id(pipeline.task_queue)
        handle = client.get_schedule_handle(schedule_id)
        description = await handle.describe()
        assert description.schedule.spec.intervals[0].every == timedelta(seconds=2)
        action = description.schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        [reaper_input] = await client.data_converter.decode(action.args, [ReaperInput])
        assert reaper_input == ReaperInput(grace_seconds=75)
        # An operator's pause outlives a worker restart; the operator unpauses it.
        await handle.pause(note="operator: maintenance")
        await ensure_reaper_schedule(
            client, pipeline.task_queue, period=timedelta(seconds=2), grace=timedelta(seconds=75)
        )
        assert (await handle.describe()).schedule.state.paused
        await handle.unpause()

        await eventually(
            lambda: "skypilot-leaked-train" not in pipeline.fake.clusters,
            "the scheduled reaper removing the leaked cluster",
            30,
            every=0.05,
        )
    finally:
        await client.get_schedule_handle(schedule_id).delete()


async def reset_and_wait(pipeline: Pipeline, workflow_id: str, workflow_task_done: int, why: str) -> Any:
    """Reset the workflow to just after workflow task `workflow_task_done`; the new run's result."""
    client = pipeline.env.client
    reset = await client.workflow_service.reset_workflow_execution(
        ResetWorkflowExecutionRequest(
            namespace=client.namespace,
            workflow_execution=WorkflowExecution(workflow_id=workflow_id),
            reason=f"test: {why}",
            workflow_task_finish_event_id=workflow_task_done,
            request_id=str(uuid.uuid4()),
        )
    )
    return await client.get_workflow_handle_for(
        SkyPilotWorkflow.run, workflow_id, run_id=reset.run_id
    ).result()


async def test_a_reset_run_adopts_the_running_job_instead_of_starting_a_second(pipeline: Pipeline):
    pipeline.fake.plan("train", seconds=6)
    handle = await pipeline.start()
    await asyncio.to_thread(pipeline.fake.wait_for_job, "train")
    task_done_events = [
        e.event_id
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED
    ]
    first_task_done = task_done_events[0]
    result = await reset_and_wait(pipeline, handle.id, first_task_done, "reset to the start while train runs")
    assert len(pipeline.fake.jobs_named("train")) == 1, "the reset run started a second train job"
    assert result.steps[1].job_status == "SUCCEEDED"
    pipeline.assert_no_cluster_left()


async def test_a_run_reset_while_eval_runs_adopts_that_eval_instead_of_starting_a_second(pipeline: Pipeline):
    """The reset run replays train's result, which names the run that launched the cluster: not
    the reset run, so its eval looks for the earlier run's eval on the cluster and adopts it."""
    pipeline.fake.plan("eval", seconds=6)
    handle = await pipeline.start()
    await asyncio.to_thread(pipeline.fake.wait_for_job, "eval")
    events = [e async for e in handle.fetch_history_events()]
    [eval_scheduled] = [
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "exec_task"
    ]
    after_train = max(
        e.event_id
        for e in events
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED and e.event_id < eval_scheduled
    )
    result = await reset_and_wait(
        pipeline, handle.id, after_train, "reset to just before eval while eval runs"
    )
    assert len(pipeline.fake.jobs_named("eval")) == 1, "the reset run started a second eval job"
    assert len(pipeline.fake.jobs_named("train")) == 1
    assert result.steps[-1].job_status == "SUCCEEDED"
    pipeline.assert_no_cluster_left()


async def test_a_cancel_while_preprocess_and_the_overlapped_provision_run_leaves_no_cluster(
    pipeline: Pipeline,
):
    pipeline.fake.plan("preprocess", until_cancelled=True)
    pipeline.fake.provision_seconds = 8.0
    handle = await pipeline.start(overlap_provisioning=True)

    await eventually(
        lambda: len(pipeline.fake.called("launch")) >= 2,
        "preprocess and the provision both launching",
        20,
        every=0.05,
    )
    await asyncio.sleep(1.0)
    # The cleanup's teardowns hit a few transient errors: the preprocess step must not outlive them.
    pipeline.fake.fail_next("down", *[exceptions.CommandError(255, "ssh", "blip", None)] * 6)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as err:
        await handle.result()
    assert isinstance(err.value.cause, CancelledError)
    progress = await handle.query(SkyPilotWorkflow.progress)
    assert {s.name: s.status for s in progress.steps}["preprocess"] == "cancelled"
    [preprocess_launch] = [r for r in pipeline.fake.requests.values() if r.task_name.endswith("-preprocess")]
    assert preprocess_launch.status == "CANCELLED", "the preprocess launch was not cancelled on SkyPilot"
    await asyncio.sleep(2)  # a leaked retry would launch the cluster again about now
    pipeline.assert_no_cluster_left()


async def test_a_step_outlives_more_lost_attempts_than_any_fixed_count(pipeline: Pipeline):
    """Found by the chaos soak: with workers killed every ~40 s, preprocess lost its 5th attempt
    and the run failed although its job was fine. Attempts end by the step's timeout instead."""
    flaky = [RuntimeError("connection reset by peer")] * 7
    pipeline.fake.fail_next("launch", *flaky)
    result = await pipeline.run()
    assert [s.job_status for s in result.steps] == ["SUCCEEDED"] * 3
    pipeline.assert_no_cluster_left()
