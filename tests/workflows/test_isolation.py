"""Runs never share a cluster: injective cluster prefixes, the owner label every launch puts on
its cluster, SkyPilot's per-user scoping (each worker host is its own user), and a reaper that
matches exact owners."""

from __future__ import annotations

import asyncio
import hashlib
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st
from temporalio.activity import ActivityCancellationDetails
from temporalio.client import WorkflowFailureError
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from skypilot_temporal.activity.activities import SkyPilotActivities
from skypilot_temporal.naming import (
    CLUSTER_MARKER,
    CLUSTER_NAME,
    MAX_PREFIX_LENGTH,
    OWNER_LABEL,
    cluster_prefix_for,
    cluster_prefix_v1_for,
    owner_token,
)
from skypilot_temporal.operations.reaper import ClusterReaperWorkflow, managed_job_owners
from skypilot_temporal.payloads import DownInput, ExecInput, ReaperInput
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.workflow import pipeline as pipeline_blocks
from testing.activity_env import CLUSTER, launch_input, retry_env, run_until, spec
from testing.in_process import WORKER_ENVIRON, WORKER_POLICY, Pipeline
from workflows import SkyPilotWorkflow

# ActivityEnvironment runs every activity for the workflow id "test".
OURS = {OWNER_LABEL: owner_token("test")}
THEIRS = {OWNER_LABEL: owner_token("another workflow")}


# ---------------------------------------------------------------- one workflow id, one prefix


def test_the_ids_that_shared_a_prefix_no_longer_do():
    hashed = cluster_prefix_v1_for("nightly run 1")
    assert hashed == "skypilot-nightly-0d3928"  # and that string was a valid id used as is
    assert cluster_prefix_v1_for(hashed) == hashed
    assert cluster_prefix_for("nightly run 1") != cluster_prefix_for(hashed)


@given(st.text(max_size=80) | st.from_regex(r"skypilot-[a-z0-9-]{0,20}", fullmatch=True))
def test_a_prefix_is_the_id_itself_or_a_hash_that_no_id_used_as_is_can_equal(workflow_id):
    prefix = cluster_prefix_for(workflow_id)
    assert CLUSTER_NAME.fullmatch(prefix) and len(prefix) <= MAX_PREFIX_LENGTH
    assert prefix.startswith(CLUSTER_MARKER)
    if prefix == workflow_id:
        assert "--" not in prefix
    else:  # a hashed prefix: "--" and 32 bits of the id's hash, which nothing used as is has
        assert prefix.endswith("--" + hashlib.sha256(workflow_id.encode()).hexdigest()[:8])


# ---------------------------------------------------------------- the owner label


async def test_a_launch_labels_the_cluster_it_creates_with_its_workflow(activities, fake_sky: FakeSky):
    await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert fake_sky.clusters[CLUSTER].labels[OWNER_LABEL] == owner_token("test")


@pytest.mark.parametrize("attempt", ["first", "retry"])
async def test_a_launch_never_touches_a_cluster_another_workflow_launched(activities, fake_sky, attempt):
    fake_sky.add_job(CLUSTER, "wf1-train", status="RUNNING", labels=THEIRS)  # its job has our name
    env = ActivityEnvironment() if attempt == "first" else retry_env()
    with pytest.raises(ApplicationError, match="launched for another workflow") as err:
        await env.run(activities.launch_task, launch_input())
    assert err.value.type == "ClusterOwnedByAnotherRun" and err.value.non_retryable
    assert fake_sky.called("launch") == [] and fake_sky.called("queue") == [], "it adopted or launched"
    assert fake_sky.submitted[0].status == "RUNNING"


async def test_a_launch_waits_for_a_launch_of_its_cluster_in_flight_then_checks_the_owner(
    activities, fake_sky: FakeSky
):
    """Should another workflow be creating the cluster right now, the step does not queue its
    own launch behind it onto their cluster."""
    fake_sky.provision_seconds = 0.5
    task = fake_sky.Task.from_yaml_config({"name": "x-train", "run": "true", "resources": {"labels": THEIRS}})
    fake_sky.launch(task, cluster_name=CLUSTER)
    with pytest.raises(ApplicationError, match="launched for another workflow"):
        await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert len(fake_sky.called("launch")) == 1


async def test_an_exec_never_runs_on_a_cluster_another_workflow_launched(activities, fake_sky):
    fake_sky.add_job(CLUSTER, "someone-else", status="SUCCEEDED", labels=THEIRS)
    with pytest.raises(ApplicationError, match="launched for another workflow"):
        await ActivityEnvironment().run(activities.exec_task, ExecInput(CLUSTER, spec("eval")))
    assert fake_sky.called("exec") == []


async def test_a_cluster_of_this_workflow_or_without_a_label_is_used(activities, fake_sky: FakeSky):
    fake_sky.add_job("wf1-train", "x", labels=OURS)
    fake_sky.add_job("wf1-eval", "x")  # launched before clusters had labels
    await ActivityEnvironment().run(activities.exec_task, ExecInput("wf1-train", spec("eval")))
    await ActivityEnvironment().run(activities.exec_task, ExecInput("wf1-eval", spec("eval")))
    assert len(fake_sky.called("exec")) == 2


async def test_a_pipeline_teardown_leaves_another_workflows_cluster_up(activities, fake_sky: FakeSky):
    fake_sky.add_job(CLUSTER, "someone-else", status="RUNNING", labels=THEIRS)
    result = await ActivityEnvironment().run(activities.down_cluster, DownInput(CLUSTER, check_owner=True))
    assert result.job_status == "NOT_OURS" and CLUSTER in fake_sky.clusters
    assert fake_sky.called("down") == []
    # The reaper decides ownership by Temporal's list of running workflows instead.
    result = await ActivityEnvironment().run(activities.down_cluster, DownInput(CLUSTER))
    assert result.job_status == "TERMINATED" and CLUSTER not in fake_sky.clusters


async def test_a_run_whose_prefix_collides_never_adopts_cancels_or_tears_down_the_other(
    pipeline: Pipeline, monkeypatch
):
    """The issue's reproduction, with the prefix forced equal (a 32-bit hash collision): the
    second run fails on its first cluster step and leaves the first run's job and cluster alone."""
    monkeypatch.setattr(pipeline_blocks, "cluster_prefix_for", lambda workflow_id: "skypilot-shared")
    pipeline.fake.plan("train", until_cancelled=True)
    first = await pipeline.start()
    train_job = await asyncio.to_thread(pipeline.fake.wait_for_job, "train")
    second = await pipeline.start()
    with pytest.raises(WorkflowFailureError) as failure:
        await second.result()
    assert "launched for another workflow" in str(failure.value.cause)
    assert train_job.status == "RUNNING", "the second run touched the first run's job"
    assert "skypilot-shared-train" in pipeline.fake.clusters
    assert pipeline.fake.called("cancel") == []
    await first.cancel()
    with pytest.raises(WorkflowFailureError):
        await first.result()
    assert pipeline.fake.clusters == {}


# ---------------------------------------------------------------- each worker host is a SkyPilot user


def host_b(fake_sky: FakeSky, executor, tmp_path) -> SkyPilotActivities:
    """The same worker code on another host: another SkyPilot user of the same API server."""
    return SkyPilotActivities(
        fake_sky.as_user("worker-b"),
        executor,
        checkout_root=tmp_path / "checkouts-b",
        heartbeat_interval_seconds=0.05,
        environ=WORKER_ENVIRON,
        policy=WORKER_POLICY,
    )


async def test_a_step_started_again_on_another_host_finds_the_job_of_the_first(
    activities, fake_sky: FakeSky, executor, tmp_path
):
    fake_sky.plan("train", until_cancelled=True)
    first_host = ActivityEnvironment()
    running = await run_until(
        first_host, (activities.launch_task, launch_input()), lambda: fake_sky.jobs_named("train")
    )
    first_host.cancel(ActivityCancellationDetails(timed_out=True))  # host A lost
    with pytest.raises(asyncio.CancelledError):
        await running
    # An attempt without details (a reset to attempt 1, or details never sent) on host B.
    second_host = ActivityEnvironment()
    following = await run_until(
        second_host,
        (host_b(fake_sky, executor, tmp_path).launch_task, launch_input()),
        lambda: len(fake_sky.called("tail_logs")) == 2,
    )
    assert len(fake_sky.submitted) == 1, "host B launched a second train job beside the running one"
    fake_sky.submitted[0].status = "SUCCEEDED"
    fake_sky.submitted[0].done.set()
    assert (await following).job_id == 1


async def test_a_teardown_on_another_host_cancels_the_launch_the_first_left_in_flight(
    fake_sky: FakeSky, executor, tmp_path
):
    fake_sky.provision_seconds = 30
    abandoned = fake_sky.launch(
        fake_sky.Task.from_yaml_config({"name": "wf1-0123abcd-train", "run": "true"}), cluster_name=CLUSTER
    )
    await ActivityEnvironment().run(
        host_b(fake_sky, executor, tmp_path).down_cluster,
        DownInput(CLUSTER, job_name_prefix="wf1-0123abcd-"),
    )
    assert fake_sky.requests[abandoned].status == "CANCELLED", "host B could not cancel host A's launch"
    assert CLUSTER not in fake_sky.clusters


async def test_with_auth_an_admin_teardown_cancels_a_launch_whose_body_it_cannot_read(
    fake_sky: FakeSky, executor, tmp_path
):
    """With auth on, an admin sees another user's request without its body: on the run's
    cluster, a body it cannot read is another worker's submission for the run."""
    fake_sky.provision_seconds = 30
    fake_sky.auth, fake_sky.admins = True, {"worker-b"}
    abandoned = fake_sky.launch(
        fake_sky.Task.from_yaml_config({"name": "wf1-0123abcd-train", "run": "true"}), cluster_name=CLUSTER
    )
    await ActivityEnvironment().run(
        host_b(fake_sky, executor, tmp_path).down_cluster,
        DownInput(CLUSTER, job_name_prefix="wf1-0123abcd-"),
    )
    assert fake_sky.called("api_cancel") == [[abandoned]]
    assert fake_sky.requests[abandoned].status == "CANCELLED"


async def test_the_fake_scopes_by_user_as_skypilot_does(fake_sky: FakeSky):
    """So that a test over the fake can see a look-up or a cancel that forgets another host."""
    fake_sky.provision_seconds = 30
    other = fake_sky.as_user("worker-b")
    fake_sky.add_job("mine", "a-job", status="RUNNING")
    assert other.get(other.status(cluster_names=["mine"])) == []
    assert [r.name for r in other.get(other.status(cluster_names=["mine"], all_users=True))] == ["mine"]
    assert other.get(other.queue("mine")) == []
    launch = fake_sky.launch(fake_sky.Task.from_yaml_config({"name": "x", "run": "true"}), cluster_name="c")
    assert other.get(other.api_cancel([launch])) == []  # not its request
    fake_sky.auth = True  # a user that is not an admin: its own requests only, whatever it asks
    assert launch not in [r.request_id for r in other.api_status()]
    assert other.get(other.api_cancel([launch], all_users=True)) == []
    fake_sky.auth = False
    cancel = other.api_cancel([launch], all_users=True)
    assert fake_sky.requests[launch].status == "RUNNING", "a cancel lands on the server, not in the call"
    assert other.get(cancel) == [launch]


# ---------------------------------------------------------------- the reaper's exact owners


@pytest.mark.parametrize(
    "job, owner",
    [
        ("skypilot-a-1a2b3c4d-train", "skypilot-a"),
        ("skypilot-a-1a2b3c4d-smoke-test", "skypilot-a"),  # a step with "-" in its name
        # A prefix ending in 8 hex: its token and the run's share a "-".
        ("skypilot-nightly-0d3928e8-1a2b3c4d-train", "skypilot-nightly-0d3928e8"),
        ("skypilot-a-train", "skypilot-a"),  # named before run tokens
    ],
)
def test_a_managed_jobs_possible_owners_include_the_run_that_launched_it(job: str, owner: str):
    assert owner in managed_job_owners(job)


async def test_the_reaper_reaps_a_terminated_runs_cluster_whose_name_extends_a_running_prefix(
    pipeline: Pipeline,
):
    pipeline.fake.plan("train", until_cancelled=True)
    terminated = await pipeline.env.client.start_workflow(
        SkyPilotWorkflow.run, pipeline.input(), id="skypilot-a-b", task_queue=pipeline.task_queue
    )
    await asyncio.to_thread(pipeline.fake.wait_for_job, "train")
    await terminated.terminate("operator")  # no cleanup: its train cluster stays up
    running = await pipeline.env.client.start_workflow(
        SkyPilotWorkflow.run, pipeline.input(), id="skypilot-a", task_queue=pipeline.task_queue
    )
    deadline = time.monotonic() + 20
    while "skypilot-a-train" not in pipeline.fake.clusters:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.05)
    for cluster in pipeline.fake.clusters.values():
        cluster.launched_at -= 3600
    found = await pipeline.env.client.execute_workflow(
        ClusterReaperWorkflow.run,
        ReaperInput(grace_seconds=60),
        id="reaper-a",
        task_queue=pipeline.task_queue,
    )
    assert found.reaped == ["skypilot-a-b-train"] and found.kept == ["skypilot-a-train"]
    await running.cancel()
    with pytest.raises(WorkflowFailureError):
        await running.result()
    assert pipeline.fake.clusters == {}
