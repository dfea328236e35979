"""Train as a SkyPilot managed job: the workflow on a real Temporal dev server, and the activities
alone, over the fake SDK (testing/fake_managed_jobs.py)."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from datetime import timedelta

import pytest
from temporalio.activity import ActivityCancellationDetails
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from skypilot_temporal.activity.managed_jobs import ManagedJobState, note
from skypilot_temporal.naming import OWNER_LABEL, cluster_prefix_for, owner_token
from skypilot_temporal.operations.reaper import ClusterReaperWorkflow
from skypilot_temporal.payloads import (
    CancelManagedJobInput,
    FollowManagedJobInput,
    JobProgress,
    ManagedJobInput,
    ReaperInput,
    StepTimeouts,
    SweepInput,
    TaskSpec,
)
from skypilot_temporal.testing.fake_sky import FakeSky
from testing import ROOT
from testing.in_process import Pipeline
from workflows import SkyPilotWorkflow, SweepVariantWorkflow, SweepWorkflow

# ---------------------------------------------------------------- the pipeline with a managed train


async def test_a_managed_train_runs_as_one_managed_job_and_eval_on_its_own_cluster(pipeline: Pipeline):
    pipeline.fake.plan("train", logs=["epoch 1", "METRIC train_loss=0.25"])
    handle = await pipeline.start(managed_train=True)
    result = await handle.result()

    _, trained, evaluated = result.steps
    [job] = pipeline.fake.jobs.named("train")
    assert (trained.job_id, trained.job_status, trained.recoveries) == (job.job_id, "SUCCEEDED", 0)
    assert trained.metrics == {"train_loss": 0.25} and "epoch 1" in trained.log_tail
    prefix = cluster_prefix_for(handle.id)
    assert job.job_name.startswith(f"{prefix}-") and job.envs["PIPELINE_RUN_ID"] == prefix
    # No cluster of the run's own for train; eval ran on a fresh cluster, torn down after.
    assert [args[1] for args in pipeline.fake.called("launch")] == [f"{prefix}-preprocess", f"{prefix}-eval"]
    assert evaluated.cluster_name == f"{prefix}-eval" and evaluated.job_status == "SUCCEEDED"
    assert pipeline.fake.called("exec") == [] and pipeline.fake.called("jobs.cancel") == []
    pipeline.assert_no_cluster_left()

    progress = await handle.query(SkyPilotWorkflow.progress)
    steps = {s.name: s for s in progress.steps}
    assert list(steps) == ["fetch-tasks", "preprocess", "preprocess-down", "train", "eval", "eval-down"]
    assert (steps["train"].job_id, steps["train"].job_status, steps["train"].summary) == (
        job.job_id,
        "SUCCEEDED",
        "managed job train",
    )
    history = await handle.fetch_history()
    await Replayer(
        workflows=[SkyPilotWorkflow], data_converter=pipeline.env.client.data_converter
    ).replay_workflow(history)


async def test_a_managed_job_gets_no_api_server_token_of_the_worker(pipeline: Pipeline):
    """An API server with service accounts gives a managed job a token of the user who launched
    it unless the task opts out: the task author's job would call the API server as the worker."""
    await (await pipeline.start(managed_train=True)).result()
    [job] = pipeline.fake.jobs.named("train")
    assert "SKYPILOT_SERVICE_ACCOUNT_TOKEN" not in job.secrets, job.secrets


async def test_a_preempted_managed_train_recovers_and_the_run_counts_the_recovery(pipeline: Pipeline):
    pipeline.fake.plan("train", seconds=1.0)
    handle = await pipeline.start(managed_train=True)
    job = await asyncio.to_thread(pipeline.fake.jobs.wait_for, "train", "RUNNING")
    await asyncio.sleep(0.2)  # let the follow activity see it RUNNING first
    pipeline.fake.jobs.preempt(job, recovery_seconds=0.5)
    result = await handle.result()

    assert result.steps[1].recoveries == 1 and result.steps[1].job_status == "SUCCEEDED"
    assert len(pipeline.fake.jobs.managed) == 1, "the recovery must not submit a second job"
    progress = await handle.query(SkyPilotWorkflow.progress)
    assert next(s for s in progress.steps if s.name == "train").recoveries == 1
    pipeline.assert_no_cluster_left()


async def test_a_failed_managed_train_fails_the_run_with_its_log_tail(pipeline: Pipeline):
    pipeline.fake.plan("train", status="FAILED", logs=["epoch 1", "loss is nan: diverged"])
    handle = await pipeline.start(managed_train=True)
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    error = failure.value.cause
    assert isinstance(error, ApplicationError) and error.type == "JobFailed"
    assert "step 'train' failed" in error.message and "FAILED" in error.message
    assert "loss is nan: diverged" in error.message
    assert pipeline.fake.called("jobs.cancel") == [], "an ended job needs no cancel"
    assert [args[1] for args in pipeline.fake.called("launch")] == [
        f"{cluster_prefix_for(handle.id)}-preprocess"
    ]
    pipeline.assert_no_cluster_left()


async def test_cancelling_the_run_cancels_the_managed_job(pipeline: Pipeline):
    pipeline.fake.plan("train", until_cancelled=True)
    handle = await pipeline.start(managed_train=True)
    job = await asyncio.to_thread(pipeline.fake.jobs.wait_for, "train", "RUNNING")
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    assert isinstance(failure.value.cause, CancelledError)
    assert pipeline.fake.called("jobs.cancel") == [[job.job_id]]
    assert job.status == "CANCELLED", "the run ended before the controller confirmed the cancel"
    progress = await handle.query(SkyPilotWorkflow.progress)
    assert progress.status == "cancelled"
    # By id; by name when the cancel landed as the submit ended (the run never saw the id).
    cleanups = {f"cleanup: cancel managed job {which}" for which in (job.job_id, job.job_name)}
    assert any(s.summary in cleanups for s in progress.steps), progress.steps
    pipeline.assert_no_cluster_left()


async def test_a_run_that_fails_while_its_managed_job_runs_cancels_the_job(pipeline: Pipeline):
    pipeline.fake.plan("train", until_cancelled=True)
    handle = await pipeline.start(managed_train=True, timeouts=StepTimeouts(train=3, heartbeat=5))
    with pytest.raises(WorkflowFailureError) as failure:
        await handle.result()

    assert failure.value.cause.type == "StepTimedOut"
    [job] = pipeline.fake.jobs.named("train")
    assert pipeline.fake.called("jobs.cancel") == [[job.job_id]] and job.status == "CANCELLED"
    pipeline.assert_no_cluster_left()


async def test_a_sweep_runs_each_variants_train_as_a_managed_job(pipeline: Pipeline):
    handle = await pipeline.env.client.start_workflow(
        SweepWorkflow.run,
        SweepInput(pipeline.input(managed_train=True), [{"LR": "0.1"}, {"LR": "0.01"}]),
        id=f"sweep-{uuid.uuid4().hex[:8]}",
        task_queue=pipeline.task_queue,
        execution_timeout=timedelta(minutes=2),
    )
    result = await handle.result()

    assert [v.status for v in result.variants] == ["succeeded", "succeeded"]
    jobs = pipeline.fake.jobs.named("train")
    assert sorted((j.envs["VARIANT_ID"], j.envs["LR"]) for j in jobs) == [("v1", "0.1"), ("v2", "0.01")]
    assert pipeline.fake.called("exec") == [] and pipeline.fake.jobs_named("train") == []
    child = pipeline.env.client.get_workflow_handle(f"{handle.id}-v1")
    assert (await child.describe()).status == WorkflowExecutionStatus.COMPLETED
    replayer = Replayer(workflows=[SweepVariantWorkflow], data_converter=pipeline.env.client.data_converter)
    await replayer.replay_workflow(await child.fetch_history())
    pipeline.assert_no_cluster_left()


# ---------------------------------------------------------------- the activities alone


def managed_spec() -> TaskSpec:
    return TaskSpec(
        step="train", job_name="wf1-0123abcd-train", yaml_text=(ROOT / "tasks" / "train.yaml").read_text()
    )


def submitted_earlier(fake_sky: FakeSky, name: str = "wf1-0123abcd-train") -> int:
    """A managed job named `name`, as an earlier attempt or run submitted it: its id."""
    task = fake_sky.Task.from_yaml_config({"name": name, "run": "true"})
    [job_id], _ = fake_sky.get(fake_sky.jobs.launch(task, name=name))
    return job_id


def retry_env(details: dict) -> ActivityEnvironment:
    env = ActivityEnvironment()
    env.info = dataclasses.replace(env.info, attempt=2, heartbeat_details=[details])
    return env


async def test_a_retried_submit_reattaches_to_the_job_by_name(activities, fake_sky: FakeSky):
    task = fake_sky.Task.from_yaml_config({"name": "x", "run": "true"})
    fake_sky.get(fake_sky.jobs.launch(task, name="wf1-0123abcd-train-extra"))  # a LIKE match only
    earlier = fake_sky.get(fake_sky.jobs.launch(task, name="wf1-0123abcd-train"))[0][0]
    job_id = await retry_env({}).run(activities.submit_managed_job, ManagedJobInput(managed_spec()))
    assert job_id == earlier and len(fake_sky.called("jobs.launch")) == 2


async def test_a_retried_submit_takes_the_job_from_the_request_the_dead_attempt_made(activities, fake_sky):
    task = fake_sky.Task.from_yaml_config({"name": "wf1-0123abcd-train", "run": "true"})
    request_id = fake_sky.jobs.launch(task, name="wf1-0123abcd-train")
    details = dataclasses.asdict(JobProgress("submitting", "", "wf1-0123abcd-train", request_id))
    job_id = await retry_env(details).run(activities.submit_managed_job, ManagedJobInput(managed_spec()))
    assert job_id == 1 and len(fake_sky.called("jobs.launch")) == 1


async def test_a_first_submit_adopts_an_earlier_runs_unfinished_job_of_the_step(activities, fake_sky):
    fake_sky.plan("train", until_cancelled=True)
    task = fake_sky.Task.from_yaml_config({"name": "wf1-99999999-train", "run": "true"})
    fake_sky.get(fake_sky.jobs.launch(task, name=task.name))  # the run before a reset, still going
    job_id = await ActivityEnvironment().run(activities.submit_managed_job, ManagedJobInput(managed_spec()))
    assert job_id == 1 and len(fake_sky.called("jobs.launch")) == 1
    fake_sky.jobs.managed[0].done.set()


async def test_a_first_submit_never_adopts_a_job_another_workflow_labelled(activities, fake_sky):
    """A same-step job whose cluster carries another workflow's owner label (a prefix shared by
    a hash collision) is not this run's to adopt, nor its cleanup's to cancel."""
    fake_sky.plan("train", until_cancelled=True)
    theirs = {OWNER_LABEL: owner_token("another workflow")}
    task = fake_sky.Task.from_yaml_config(
        {"name": "wf1-99999999-train", "run": "true", "resources": {"labels": theirs}}
    )
    fake_sky.get(fake_sky.jobs.launch(task, name=task.name))
    job_id = await ActivityEnvironment().run(activities.submit_managed_job, ManagedJobInput(managed_spec()))
    assert job_id == 2 and len(fake_sky.called("jobs.launch")) == 2
    assert fake_sky.jobs.managed[-1].labels[OWNER_LABEL] == owner_token("test"), "its own job is labelled"
    for job in fake_sky.jobs.managed:
        job.done.set()


async def test_a_retried_follow_keeps_counting_recoveries(activities, fake_sky: FakeSky):
    job_id = submitted_earlier(fake_sky)
    details = {"job_id": job_id, "job_status": "RUNNING", "recoveries": 2}
    result = await retry_env(details).run(
        activities.follow_managed_job, FollowManagedJobInput(job_id, managed_spec())
    )
    assert (result.job_status, result.recoveries) == ("SUCCEEDED", 2)


async def test_cancel_waits_until_the_controller_confirms(activities, fake_sky: FakeSky):
    fake_sky.plan("train", until_cancelled=True)
    job_id = submitted_earlier(fake_sky)
    status = await ActivityEnvironment().run(
        activities.cancel_managed_job, CancelManagedJobInput(job_id, "wf1-0123abcd-train")
    )
    assert status == "CANCELLED" and fake_sky.jobs.managed[0].status == "CANCELLED"
    again = await ActivityEnvironment().run(
        activities.cancel_managed_job, CancelManagedJobInput(job_id, "wf1-0123abcd-train")
    )
    assert again == "CANCELLED" and fake_sky.called("jobs.cancel") == [[job_id]]


def test_a_recovery_counts_once_from_running_and_never_from_a_launch_retry():
    progress = JobProgress("running", "", "j")
    for status in ["STARTING", "RECOVERING", "RUNNING", "RECOVERING", "RECOVERING", "RUNNING", "SUCCEEDED"]:
        note(ManagedJobState(1, "j", status, 0, ""), progress)
    assert progress.recoveries == 1
    note(ManagedJobState(1, "j", "SUCCEEDED", 3, ""), progress)  # SkyPilot's own count, when it has one
    assert progress.recoveries == 3


async def test_the_reaper_cancels_managed_jobs_whose_run_is_gone_and_only_those(pipeline: Pipeline):
    for step in ("train", "eval"):  # the fake plans "...-stress-eval" as its last word
        pipeline.fake.plan(step, until_cancelled=True)
    live = await pipeline.start(managed_train=True)
    live_job = await asyncio.to_thread(pipeline.fake.jobs.wait_for, "train", "RUNNING")
    # A step name may have "-" in it, and a hashed prefix ends in 8 hex like a run token does.
    live_sibling = live_job.job_name.removesuffix("-train") + "-stress-eval"
    names = ["skypilot-terminated1-0123abcd-train", "skypilot-young-0123abcd-train", "teammates-train"]
    names += [live_sibling, "skypilot-night--0d3928e8-0123abcd-stress-eval"]
    for name in names:
        task = pipeline.fake.Task.from_yaml_config({"name": name, "run": "true"})
        pipeline.fake.get(pipeline.fake.jobs.launch(task, name=name))
    orphan, young, teammates, sibling, hashed_orphan = pipeline.fake.jobs.managed[-5:]
    for old in (orphan, teammates, sibling, hashed_orphan):
        old.submitted_at -= 3600

    result = await pipeline.env.client.execute_workflow(
        ClusterReaperWorkflow.run,
        ReaperInput(grace_seconds=60),
        id=f"reaper-{live.id}",
        task_queue=pipeline.task_queue,
    )
    cancelled = sorted([orphan.job_id, hashed_orphan.job_id])
    assert result.cancelled_jobs == cancelled
    assert sorted(job for call in pipeline.fake.called("jobs.cancel") for job in call) == cancelled
    assert orphan.status == "CANCELLED"
    assert (live_job.status, young.status, teammates.status, sibling.status) == ("RUNNING",) * 4
    await live.cancel()
    with pytest.raises(WorkflowFailureError):
        await live.result()
    for job in (young, teammates, sibling):
        job.done.set()


async def test_a_cancel_as_the_submit_ends_still_cancels_the_job_by_name(activities, fake_sky: FakeSky):
    fake_sky.plan("train", until_cancelled=True)
    job_id = submitted_earlier(fake_sky)
    status = await ActivityEnvironment().run(
        activities.cancel_managed_job, CancelManagedJobInput(None, "wf1-0123abcd-train")
    )
    assert status == "CANCELLED" and fake_sky.called("jobs.cancel") == [[job_id]]


async def test_a_retried_submit_waits_for_a_launch_still_in_flight_instead_of_submitting_again(
    activities, fake_sky: FakeSky
):
    fake_sky.jobs.launch_seconds = 0.5
    task = fake_sky.Task.from_yaml_config({"name": "wf1-0123abcd-train", "run": "true"})
    fake_sky.jobs.launch(task, name="wf1-0123abcd-train")  # the dead attempt's, heartbeat never sent
    job_id = await retry_env({}).run(activities.submit_managed_job, ManagedJobInput(managed_spec()))
    assert job_id == 1 and len(fake_sky.called("jobs.launch")) == 1 and len(fake_sky.jobs.managed) == 1


async def test_a_cancel_by_name_during_the_launch_cancels_the_launch(activities, fake_sky: FakeSky):
    fake_sky.plan("train", until_cancelled=True)
    fake_sky.jobs.launch_seconds = 5
    task = fake_sky.Task.from_yaml_config({"name": "wf1-0123abcd-train", "run": "true"})
    request_id = fake_sky.jobs.launch(task, name="wf1-0123abcd-train")
    status = await ActivityEnvironment().run(
        activities.cancel_managed_job, CancelManagedJobInput(None, "wf1-0123abcd-train")
    )
    assert status == "GONE" and fake_sky.called("api_cancel") == [[request_id]]
    assert fake_sky.jobs.managed == [], "the launch went on and submitted a job"


async def test_a_cancelled_submit_cancels_the_job_its_launch_went_on_to_create(activities, fake_sky: FakeSky):
    """The cancel reaches the launch only after it submitted the job: the step cancels that
    managed job (`cancel_with`), not some cluster job."""
    fake_sky.plan("train", until_cancelled=True)
    fake_sky.cancel_seconds = 0.5  # the launch ends before the cancel lands
    uploads = fake_sky.hold_uploads("jobs.launch")
    env = ActivityEnvironment()
    submit = asyncio.ensure_future(env.run(activities.submit_managed_job, ManagedJobInput(managed_spec())))
    while not fake_sky.called("jobs.launch"):
        await asyncio.sleep(0.02)
    env.cancel(ActivityCancellationDetails(cancel_requested=True))
    uploads.set()
    with pytest.raises(asyncio.CancelledError):
        await submit
    [job] = fake_sky.jobs.managed
    assert job.status in ("CANCELLING", "CANCELLED") and fake_sky.called("jobs.cancel") == [[job.job_id]]


async def test_a_first_submit_works_while_no_jobs_controller_is_up(activities, fake_sky: FakeSky):
    down = fake_sky.exceptions.ClusterNotUpError("sky-jobs-controller is STOPPED", cluster_status=None)
    fake_sky.fail_next("jobs.queue_v2", down)
    job_id = await ActivityEnvironment().run(activities.submit_managed_job, ManagedJobInput(managed_spec()))
    assert job_id == 1 and len(fake_sky.called("jobs.launch")) == 1
