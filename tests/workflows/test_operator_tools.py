"""Temporal's own operator tools on a running SkyPilot step, with the `temporal` CLI an operator
uses (docs/deploying-and-operating.md): what each does to the step's SkyPilot job."""

from __future__ import annotations

import asyncio
import subprocess

from temporalio.api.enums.v1 import PendingActivityState
from temporalio.client import WorkflowHandle

from skypilot_temporal.client import following
from skypilot_temporal.payloads import StepTimeouts
from skypilot_temporal.testing.fake_sky import FakeSky
from testing.in_process import TEMPORAL_CLI, Pipeline


def temporal_cli(pipeline: Pipeline, *args: str) -> str:
    address = pipeline.env.client.service_client.config.target_host
    done = subprocess.run(
        [str(TEMPORAL_CLI), *args, "--address", address], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def pending(handle: WorkflowHandle, activity_type: str) -> tuple[str, int]:
    """The pending activity of `activity_type`: its id and state ("" while there is none)."""
    for activity in (await handle.describe()).raw_description.pending_activities:
        if activity.activity_type.name == activity_type:
            return activity.activity_id, activity.state
    return "", 0


async def wait_until(handle: WorkflowHandle, activity_type: str, state: int) -> str:
    for _ in range(400):
        activity_id, now = await pending(handle, activity_type)
        if activity_id and now == state:
            return activity_id
        await asyncio.sleep(0.05)
    raise AssertionError(f"{activity_type} never reached state {state}")


def train_jobs(fake: FakeSky) -> list[str]:
    return [job.status for job in fake.jobs_named("train")]


async def test_a_paused_step_leaves_its_job_running_and_unpause_re_attaches_to_it(pipeline: Pipeline):
    """Pause stops the step's attempt, not its SkyPilot job (an operator pauses to look, or to
    hold the queue, not to lose hours of training); unpause's attempt follows the same job."""
    pipeline.fake.plan("train", seconds=3)
    handle = await pipeline.start()
    await asyncio.to_thread(pipeline.fake.wait_for_job, "train")
    activity_id = await wait_until(handle, "launch_task", PendingActivityState.PENDING_ACTIVITY_STATE_STARTED)
    temporal_cli(pipeline, "activity", "pause", "-w", handle.id, "-a", activity_id, "--reason", "look")
    await wait_until(handle, "launch_task", PendingActivityState.PENDING_ACTIVITY_STATE_PAUSED)
    await asyncio.sleep(1)  # a heartbeat or two: the attempt has stopped
    assert train_jobs(pipeline.fake) == ["RUNNING"], "the pause must not cancel the job"
    temporal_cli(pipeline, "activity", "unpause", "-w", handle.id, "-a", activity_id)
    result = await handle.result()
    assert [step.job_status for step in result.steps][:2] == ["SUCCEEDED", "SUCCEEDED"]
    assert train_jobs(pipeline.fake) == ["SUCCEEDED"]  # one job: re-attached, never a second
    pipeline.assert_no_cluster_left()


async def test_a_reset_step_finds_its_job_again_and_never_submits_a_second(pipeline: Pipeline):
    """`temporal activity reset --clear-heartbeat-details` on a running step: the attempt after
    it has no job id to go on, finds the job by its name on the cluster, and follows it instead
    of submitting a second one."""
    pipeline.fake.plan("train", seconds=3)
    handle = await pipeline.start()
    await asyncio.to_thread(pipeline.fake.wait_for_job, "train")
    activity_id = await wait_until(handle, "launch_task", PendingActivityState.PENDING_ACTIVITY_STATE_STARTED)
    temporal_cli(
        pipeline, "activity", "reset", "-w", handle.id, "-a", activity_id, "--clear-heartbeat-details"
    )
    result = await handle.result()
    assert [step.job_status for step in result.steps][:2] == ["SUCCEEDED", "SUCCEEDED"]
    assert train_jobs(pipeline.fake) == ["SUCCEEDED"]
    pipeline.assert_no_cluster_left()


async def test_a_longer_timeout_given_to_a_running_step_lets_it_finish(pipeline: Pipeline):
    """`temporal activity update-options` on a running step: its job runs past the timeout the
    run gave the step, and the step (the same attempt, the same job) succeeds."""
    pipeline.fake.plan("train", seconds=4)
    handle = await pipeline.start(timeouts=StepTimeouts(train=2))
    await asyncio.to_thread(pipeline.fake.wait_for_job, "train")
    activity_id = await wait_until(handle, "launch_task", PendingActivityState.PENDING_ACTIVITY_STATE_STARTED)
    temporal_cli(
        pipeline, "activity", "update-options", "-w", handle.id, "-a", activity_id,
        "--start-to-close-timeout", "60s", "--schedule-to-close-timeout", "60s",
    )  # fmt: skip
    result = await handle.result()
    assert [step.job_status for step in result.steps][:2] == ["SUCCEEDED", "SUCCEEDED"]
    assert train_jobs(pipeline.fake) == ["SUCCEEDED"]


async def test_the_starter_says_when_a_step_is_paused_and_when_it_resumes(
    pipeline: Pipeline, monkeypatch, capsys
):
    """A pause writes no history event and the workflow is not told of it: `--follow` finds it
    in the run's pending activities (within its safety poll) and names the step from the history."""
    monkeypatch.setattr(following, "SAFETY_POLL_SECONDS", 0.3)
    pipeline.fake.plan("train", seconds=4)
    handle = await pipeline.start()
    client = pipeline.env.client
    follower = asyncio.create_task(
        following.follow(handle, following.Reconnecting("test"), client.data_converter)
    )
    await asyncio.to_thread(pipeline.fake.wait_for_job, "train")
    activity_id = await wait_until(handle, "launch_task", PendingActivityState.PENDING_ACTIVITY_STATE_STARTED)
    temporal_cli(pipeline, "activity", "pause", "-w", handle.id, "-a", activity_id, "--reason", "look")
    output = ""
    for _ in range(100):
        output += capsys.readouterr().out
        if "paused by an operator" in output:
            break
        await asyncio.sleep(0.1)
    temporal_cli(pipeline, "activity", "unpause", "-w", handle.id, "-a", activity_id)
    await follower
    output += capsys.readouterr().out
    paused = next(line for line in output.splitlines() if "paused by an operator" in line)
    assert paused.split()[1] == "train", paused
    assert f"temporal activity unpause -w {handle.id} -a {activity_id}" in paused
    resumed = output.index("train            resumed")
    assert output.index(paused) < resumed < output.index("succeeded  cluster", output.index(paused)), output
