"""Cleanup without gaps: a cancel while the SDK is still in its launch call, an attempt that lost
its worker stops following its job, and the figures a step reports (its time across attempts,
the task's own exit code)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import threading

import pytest
import requests
from sky import exceptions
from temporalio.activity import ActivityCancellationDetails
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from skypilot_temporal.activity.activities import SkyPilotActivities
from skypilot_temporal.activity.job_log import JobLogSink, drain_log
from skypilot_temporal.payloads import DownInput, JobProgress, LaunchInput
from skypilot_temporal.testing.fake_sky import FakeSky
from testing.activity_env import CLUSTER, launch_input, retry_env, run_until, spec
from testing.in_process import Pipeline
from testing.waiting import eventually

# ---------------------------------------------------------------- a cancel inside the launch call


@pytest.mark.parametrize("managed", [False, True], ids=["cluster launch", "managed job launch"])
async def test_a_cancel_while_the_sdk_uploads_still_cancels_the_launch_it_then_sends(
    pipeline: Pipeline, managed: bool
):
    """Before the API server has a request, SkyPilot validates the task and uploads its workdir
    in the client: a cancel then has no request to cancel. The run still owns the launch."""
    fake = pipeline.fake
    fake.provision_seconds = fake.jobs.launch_seconds = 0.3
    held = "jobs.launch" if managed else "launch"  # the managed train's, or preprocess's
    uploads = fake.hold_uploads(held)
    handle = await pipeline.start(managed_train=managed)
    await eventually(lambda: fake.called(held), f"the SDK's {held} call", 20, every=0.02)
    await handle.cancel()
    await asyncio.sleep(0.5)  # a run that did not wait for the call would clean up and end now
    uploads.set()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    await asyncio.sleep(1.0)  # what an abandoned call sent would launch now
    pipeline.assert_no_cluster_left()
    assert [j for j in fake.jobs.managed if j.status not in ("CANCELLED",)] == []
    launches = [r for r in fake.requests.values() if r.name in ("sky.launch", "jobs.launch")]
    assert [r.status for r in launches][-1:] == ["CANCELLED"]


# ---------------------------------------------------------------- a lost attempt's log thread


async def test_a_lost_attempt_stops_following_its_job_and_frees_its_thread(fake_sky: FakeSky, tmp_path):
    """Two steps whose attempts were lost (heartbeat timeout) on a worker with a 2-thread SDK pool,
    their jobs silent and running on: a teardown still gets a thread at once."""
    fake_sky.plan("train", until_cancelled=True, logs=[])
    fake_sky.add_job("unrelated", "x")
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        activities = SkyPilotActivities(
            fake_sky, pool, checkout_root=tmp_path / "checkouts", heartbeat_interval_seconds=0.05
        )
        for cluster in ("c1", "c2"):
            env = ActivityEnvironment()
            following = await run_until(
                env,
                (activities.launch_task, LaunchInput(cluster, spec())),
                lambda cluster=cluster: (
                    fake_sky.called("tail_logs") and fake_sky.called("tail_logs")[-1][0] == cluster
                ),
            )
            env.cancel(ActivityCancellationDetails(timed_out=True))
            with pytest.raises(asyncio.CancelledError):
                await following
        await eventually(lambda: fake_sky.log_followers == 0, "every job log follower to stop", 2, every=0.02)
        torn_down = await asyncio.wait_for(
            ActivityEnvironment().run(activities.down_cluster, DownInput("unrelated")), timeout=5
        )
    assert torn_down.job_status == "TERMINATED"
    assert [j.status for j in fake_sky.jobs_named("train")] == ["RUNNING", "RUNNING"], "the jobs go on"
    for job in fake_sky.submitted:
        job.done.set()


@pytest.mark.parametrize(
    "broken",
    [
        requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead(0 bytes read)"),
        exceptions.RequestInterruptedError("Streaming interrupted. Please retry."),
    ],
    ids=["server killed", "server restarting"],
)
async def test_a_log_stream_cut_mid_way_is_followed_again_within_the_attempt(
    activities, fake_sky: FakeSky, broken
):
    """The SDK does not retry a stream it already handed over: the step rides it out itself."""
    fake_sky.plan("train", logs=["epoch 1", "epoch 2"], seconds=0.3)
    fake_sky.stream_errors.append(broken)
    result = await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert result.job_status == "SUCCEEDED" and len(fake_sky.called("tail_logs")) == 2
    assert len(fake_sky.called("launch")) == 1


def test_only_skypilots_last_line_of_the_stream_says_the_job_succeeded():
    """A job that prints SkyPilot's line itself, then goes on, has not ended."""
    sink = JobLogSink(lambda line: None, [], JobProgress("running", "c"))
    finished = "\x1b[32m✓ Job finished (status: SUCCEEDED).\x1b[0m\n"
    assert drain_log(lambda: iter([finished, "(train, pid=1) still going\n"]), sink, threading.Event()) == ""
    assert (
        drain_log(lambda: iter(["(train, pid=1) x\n", None, finished]), sink, threading.Event())
        == "SUCCEEDED"
    )


# ---------------------------------------------------------------- what a step reports


async def test_a_reattached_step_reports_its_time_since_its_first_attempt(activities, fake_sky: FakeSky):
    job = fake_sky.add_job(CLUSTER, "wf1-train", status="SUCCEEDED")
    details = [dataclasses.asdict(JobProgress("running", CLUSTER, "wf1-train", "req-0", job.job_id))]
    result = await retry_env(details, first_scheduled_seconds_ago=66).run(
        activities.launch_task, launch_input()
    )
    assert 66 <= result.duration_seconds < 80


@pytest.mark.parametrize(
    "report",
    [
        "ERROR: Job 1's setup failed with return code 3 (pid=9047). See error logs above for more details.",
        "ERROR: Job 1's setup failed. Failed workers: (pid=9047, returncode=3). See error logs above.",
    ],
    ids=["slurm", "vm or kubernetes"],
)
async def test_a_failed_setup_reports_the_setups_own_exit_code(activities, fake_sky: FakeSky, report):
    fake_sky.plan("train", status="FAILED_SETUP", logs=["(setup pid=9070) setting up", report])
    with pytest.raises(ApplicationError, match="FAILED_SETUP, exit code 3") as err:
        await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert err.value.details[0].exit_code == 3
