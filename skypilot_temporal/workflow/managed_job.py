"""A pipeline step run as a SkyPilot managed job (see workflow/pipeline.py, activity/managed_jobs.py).

    trained = await managed_job(pipeline, "train.yaml", step="train")

SkyPilot's jobs controller launches the job's cluster, relaunches the job on a new one when that
cluster is preempted or lost, and tears it down when the job ends: the run owns the job, not a
cluster. Two activities, so the progress shows the job's id while it runs: one submits the job (or
finds the one an earlier attempt submitted, by its name), one follows it to its end. From before
the submit until the job has ended, the run's cleanup owes it a cancel: a cancelled or failed run
cancels it (and waits until the controller confirms), like it tears down the clusters it has up.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
    from skypilot_temporal.activity.activities import SkyPilotActivities
    from skypilot_temporal.payloads import (
        CancelManagedJobInput,
        FollowManagedJobInput,
        ManagedJobInput,
        StepProgress,
        StepResult,
    )
    from skypilot_temporal.workflow.pipeline import Pipeline
    from skypilot_temporal.workflow.step_board import failed_job


async def managed_job(
    pipeline: Pipeline, yaml_path: str, step: str, *, env: Mapping[str, str] | None = None, document: int = 0
) -> StepResult:
    """Run the task at `yaml_path` as a managed job, as step `step`; its result once it ended.
    `env`, `document`: as `Pipeline.task_spec`."""
    spec = pipeline.task_spec(step, yaml_path, env, document)
    async with pipeline.board.step(step, f"managed job {step}") as progress:
        # Owed from before the submit: a cancel can land as the submit ends, its job id unseen.
        owed = f"cancel managed job {spec.job_name}"
        pipeline.pending_cleanups[owed] = functools.partial(_cancel, pipeline, spec.job_name, progress)
        options = pipeline.job_options(step, progress.summary)
        job_id: int = await pipeline.job_step(
            workflow.execute_activity_method(
                SkyPilotActivities.submit_managed_job, ManagedJobInput(spec, pipeline.input.infra), **options
            )
        )
        # Its live status and recoveries are in the follow activity's heartbeat details (the Web
        # UI's pending activity); the step shows them once the job ended.
        progress.job_id = job_id
        pipeline.board.redraw()
        try:
            result: StepResult = await pipeline.job_step(
                workflow.execute_activity_method(
                    SkyPilotActivities.follow_managed_job, FollowManagedJobInput(job_id, spec), **options
                )
            )
        except ActivityError as err:
            if failed_job(err) is not None:  # the job ended (it failed): nothing left to cancel
                pipeline.pending_cleanups.pop(owed)
            raise
        pipeline.pending_cleanups.pop(owed)
        progress.job_status, progress.recoveries = result.job_status, result.recoveries
    return result


async def _cancel(pipeline: Pipeline, job_name: str, job: StepProgress) -> None:
    """Cleanup: cancel the step's job until the controller confirms it ended (retried, never
    given up); by its id once the run knows it, else by its name."""
    which = str(job.job_id) if job.job_id is not None else job_name
    step = f"cleanup managed job {which}"
    pipeline.board.add(step, f"cleanup: cancel managed job {which}").name = "cleanup"
    async with pipeline.board.step(step) as progress:
        timeouts = pipeline.input.timeouts
        await workflow.execute_activity_method(
            SkyPilotActivities.cancel_managed_job,
            CancelManagedJobInput(job.job_id, job_name),
            start_to_close_timeout=timedelta(seconds=timeouts.teardown),
            heartbeat_timeout=timedelta(seconds=timeouts.heartbeat),
            retry_policy=pipeline.retry_policy(maximum_attempts=0),
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=progress.summary,
        )
    pipeline.pending_cleanups.pop(f"cancel managed job {job_name}", None)
