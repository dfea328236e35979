"""Launch / exec / down activities against the fake SkyPilot SDK."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import os
import time

import pytest
from sky import exceptions
from temporalio.activity import ActivityCancellationDetails
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from skypilot_temporal.activity import jobs as skypilot_jobs
from skypilot_temporal.activity.activities import SkyPilotActivities
from skypilot_temporal.activity.job_log import LOG_TAIL_BYTES, JobLogSink
from skypilot_temporal.errors import is_retryable
from skypilot_temporal.payloads import DownInput, ExecInput, JobProgress, LaunchInput
from skypilot_temporal.testing.fake_sky import FakeRequest, FakeSky
from skypilot_temporal.trust.checkout import prune_checkouts
from testing.activity_env import CLUSTER, launch_input, retry_env, run_until, spec
from testing.in_process import git


async def test_launch_waits_for_the_job_and_returns_its_outcome(activities, fake_sky: FakeSky):
    fake_sky.plan("train", logs=["epoch 1", "eval_accuracy=0.9"], seconds=0.3)
    started = time.monotonic()
    result = await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert time.monotonic() - started >= 0.3, "returned before the job finished"
    assert (result.job_status, result.exit_code, result.job_id) == ("SUCCEEDED", 0, 1)
    assert result.log_tail.splitlines()[-2:] == ["eval_accuracy=0.9", "✓ Job finished (status: SUCCEEDED)."]
    assert fake_sky.clusters[CLUSTER].status == "UP"
    [job] = fake_sky.submitted
    assert job.job_name == "wf1-train"


async def test_launch_and_exec_return_the_metrics_the_job_reported(activities, fake_sky: FakeSky):
    fake_sky.plan("train", logs=["(train, pid=41) METRIC loss=0.5", "(train, pid=41) METRIC loss=0.25"])
    fake_sky.plan("eval", logs=["(eval, pid=42) METRIC eval_accuracy=0.91", "METRIC bad=nan"])
    launched = await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert launched.metrics == {"loss": 0.25}
    evaluated = await ActivityEnvironment().run(activities.exec_task, ExecInput(CLUSTER, spec("eval")))
    assert evaluated.metrics == {"eval_accuracy": 0.91}


async def test_a_failed_jobs_error_carries_the_metrics_it_reported(activities, fake_sky: FakeSky):
    fake_sky.plan("train", status="FAILED", logs=["METRIC loss=7.5", "diverged"])
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert err.value.details[0].metrics == {"loss": 7.5}


async def test_env_overrides_infra_and_secrets_reach_the_task(activities, fake_sky: FakeSky):
    task = spec(env_overrides={"EPOCHS": "7"}, secret_names=["HF_TOKEN"])
    await ActivityEnvironment().run(activities.launch_task, LaunchInput(CLUSTER, task, infra="slurm"))
    [job] = fake_sky.submitted
    assert job.envs["EPOCHS"] == "7"
    assert job.secrets == {"HF_TOKEN": "s3cr3t-value"}
    assert "HF_TOKEN" not in job.envs


async def test_missing_secret_is_a_non_retryable_error_naming_it(activities):
    with pytest.raises(ApplicationError, match="NOPE_TOKEN") as err:
        await ActivityEnvironment().run(activities.launch_task, launch_input(secret_names=["NOPE_TOKEN"]))
    assert err.value.non_retryable


@pytest.mark.parametrize("status,error_type", [("FAILED", "JobFailed"), ("FAILED_SETUP", "JobFailedSetup")])
async def test_failed_job_raises_non_retryable_error_with_status_exit_code_and_tail(
    activities, fake_sky: FakeSky, status, error_type
):
    fake_sky.plan("train", status=status, logs=["Traceback", "boom: loss is NaN"])
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert err.value.non_retryable
    assert err.value.type == error_type
    assert status in err.value.message and "exit code 100" in err.value.message
    [details] = err.value.details
    assert details.job_status == status and details.exit_code == 100
    assert "boom: loss is NaN" in details.log_tail


async def test_exec_runs_on_the_existing_cluster(activities, fake_sky: FakeSky):
    await ActivityEnvironment().run(activities.launch_task, launch_input())
    result = await ActivityEnvironment().run(activities.exec_task, ExecInput(CLUSTER, spec("eval")))
    assert result.job_status == "SUCCEEDED" and result.job_id == 2
    assert fake_sky.called("exec") == [("wf1-eval", CLUSTER)]


async def test_exec_on_a_missing_cluster_is_non_retryable(activities):
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activities.exec_task, ExecInput("gone", spec("eval")))
    assert err.value.type == "ClusterDoesNotExist" and err.value.non_retryable


@pytest.mark.parametrize(
    "error,retryable",
    [
        (exceptions.ResourcesUnavailableError("no slot fits cpus=64"), False),
        (exceptions.NoCloudAccessError("no cloud access"), False),
        (exceptions.InvalidCloudCredentials("bad creds"), False),
        (exceptions.APIVersionMismatchError("client 1 server 2"), False),
        (exceptions.ApiServerAuthenticationError("http://x"), True),
        (ValueError("invalid task"), False),
        (exceptions.CommandError(255, "ssh", "allocation vanished", None), True),
        (exceptions.ClusterSetUpError("setup of the runtime failed"), True),
    ],
)
async def test_sdk_errors_are_classified(activities, fake_sky: FakeSky, error, retryable):
    assert is_retryable(error) is retryable
    fake_sky.fail_next("launch", error)
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert err.value.non_retryable is (not retryable)
    assert err.value.type == type(error).__name__
    assert "train on wf1-train" in err.value.message
    assert "\x1b[" not in err.value.message


@pytest.mark.parametrize(
    "refusal",
    [
        exceptions.ApiServerAuthenticationError("http://127.0.0.1:46580"),
        RuntimeError(
            'Failed to get request 5e1f: 401 {"detail":"Service account token has been revoked or rotated"}'
        ),
    ],
)
async def test_a_refused_token_mid_run_is_retried_and_says_what_to_fix(
    activities, fake_sky: FakeSky, refusal
):
    """A token revoked while a run goes: the step waits (retries) for the operator to fix it, and
    its failure says so, rather than failing a run of days."""
    fake_sky.fail_next("launch", refusal)
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert not err.value.non_retryable and err.value.type == "ApiServerAuthenticationError"
    assert "refused this worker's credentials" in err.value.message
    assert "SKYPILOT_SERVICE_ACCOUNT_TOKEN" in err.value.message


async def test_log_tail_is_bounded_whatever_the_job_prints(activities, fake_sky: FakeSky):
    fake_sky.plan("train", logs=[f"line {i} " + "x" * 100 for i in range(20_000)] + ["the end"])
    result = await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert len(result.log_tail) <= LOG_TAIL_BYTES
    assert result.log_tail.splitlines()[-2] == "the end"
    assert "line 19999" in result.log_tail


def test_log_sink_strips_ansi_redacts_secrets_and_never_raises():
    lines = []
    progress = JobProgress(phase="running", cluster_name="c")
    sink = JobLogSink(lines.append, ["hunter2"], progress)
    sink.write("\x1b[32mtoken=hunter2\x1b[0m\npartial")
    sink.write(" line\n")
    sink.write(None)  # type: ignore[arg-type] - a bad write must not raise into the SDK
    assert lines == ["token=***", "partial line"]
    assert progress.last_log_line == "partial line"


async def test_secret_values_never_reach_the_log_tail(activities, fake_sky: FakeSky):
    fake_sky.plan("train", logs=["using token s3cr3t-value"])
    result = await ActivityEnvironment().run(activities.launch_task, launch_input(secret_names=["HF_TOKEN"]))
    assert "s3cr3t-value" not in result.log_tail and "using token ***" in result.log_tail


async def test_heartbeats_carry_phase_cluster_request_and_job(activities, fake_sky: FakeSky):
    fake_sky.plan("train", seconds=0.5)
    env = ActivityEnvironment()
    beats = []
    env.on_heartbeat = lambda *details: beats.append(details[0])
    await env.run(activities.launch_task, launch_input())
    assert any(b["request_id"].startswith("req-") for b in beats)
    running = [b for b in beats if b["phase"] == "running"]
    assert running and running[-1]["job_id"] == 1 and running[-1]["cluster_name"] == CLUSTER


async def test_blocking_sdk_calls_never_block_the_event_loop(activities):
    slow = FakeSky(call_seconds=0.3)
    slow_activities = SkyPilotActivities(
        slow, activities._executor, checkout_root=activities._checkout_root, heartbeat_interval_seconds=0.05
    )
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    ticking = asyncio.create_task(ticker())
    started = time.monotonic()
    await ActivityEnvironment().run(slow_activities.launch_task, launch_input())
    elapsed = time.monotonic() - started
    ticking.cancel()
    # launch + stream_and_get (+ its wait) + tail_logs: >= 0.9 s of blocking calls
    assert elapsed >= 0.9
    assert ticks >= elapsed / 0.01 * 0.5, f"event loop starved: {ticks} ticks in {elapsed:.1f}s"


async def test_cancel_during_the_job_cancels_it_on_skypilot(activities, fake_sky: FakeSky):
    fake_sky.plan("train", until_cancelled=True)
    env = ActivityEnvironment()
    task = await run_until(
        env, (activities.launch_task, launch_input()), lambda: fake_sky.jobs_named("train")
    )
    env.cancel(ActivityCancellationDetails(cancel_requested=True))
    with pytest.raises(asyncio.CancelledError):
        await task
    [job] = fake_sky.submitted
    assert job.status == "CANCELLED"
    assert fake_sky.called("cancel") == [(CLUSTER, [1])]


async def cancel_while_provisioning(activities: SkyPilotActivities, fake_sky: FakeSky) -> FakeRequest:
    """Start a launch, cancel it (as the workflow would) while it provisions; its request."""
    env = ActivityEnvironment()
    task = await run_until(
        env, (activities.launch_task, launch_input()), lambda: fake_sky.called("stream_and_get")
    )
    env.cancel(ActivityCancellationDetails(cancel_requested=True))
    with pytest.raises(asyncio.CancelledError):
        await task
    [launch_request] = [r for r in fake_sky.requests.values() if r.name == "sky.launch"]
    return launch_request


async def test_cancel_while_provisioning_cancels_the_launch_request(activities, fake_sky: FakeSky):
    fake_sky.provision_seconds = 30
    launch_request = await cancel_while_provisioning(activities, fake_sky)
    assert fake_sky.called("api_cancel") == [[launch_request.request_id]]
    assert launch_request.status == "CANCELLED"
    assert fake_sky.submitted == [], "a job was submitted after the cancel"


async def test_a_cancel_lands_while_running_steps_fill_the_sdk_pool(fake_sky: FakeSky, tmp_path, monkeypatch):
    """The launch's log stream and result wait hold both threads of a full pool: the cancel's
    calls run in the cancel pool and land well inside the cancel window."""
    monkeypatch.setattr(skypilot_jobs, "CANCEL_CONFIRM_TIMEOUT_SECONDS", 5.0)
    fake_sky.provision_seconds = 8  # without the cancel pool the launch just runs out
    with (
        concurrent.futures.ThreadPoolExecutor(2) as full,
        concurrent.futures.ThreadPoolExecutor(1) as for_cancels,
    ):
        activities = SkyPilotActivities(
            fake_sky,
            full,
            checkout_root=tmp_path / "checkouts",
            heartbeat_interval_seconds=0.05,
            cancel_executor=for_cancels,
        )
        launch_request = await cancel_while_provisioning(activities, fake_sky)
    assert fake_sky.called("api_cancel") == [[launch_request.request_id]]
    assert launch_request.status == "CANCELLED"


async def test_worker_shutdown_leaves_the_job_running_for_the_next_attempt(activities, fake_sky):
    fake_sky.plan("train", until_cancelled=True)
    env = ActivityEnvironment()
    task = await run_until(
        env, (activities.launch_task, launch_input()), lambda: fake_sky.jobs_named("train")
    )
    env.cancel(ActivityCancellationDetails(worker_shutdown=True))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert fake_sky.called("cancel") == [] and fake_sky.called("api_cancel") == []
    assert fake_sky.submitted[0].status == "RUNNING"
    fake_sky.submitted[0].done.set()


async def test_retry_reattaches_to_the_job_found_by_name(activities, fake_sky: FakeSky):
    fake_sky.add_job(CLUSTER, "someone-elses-job", status="SUCCEEDED")
    fake_sky.add_job(CLUSTER, "wf1-train", status="SUCCEEDED", logs=["trained once"])
    result = await retry_env().run(activities.launch_task, launch_input())
    assert fake_sky.called("launch") == [], "a retry submitted a duplicate job"
    assert (result.job_id, result.job_status) == (2, "SUCCEEDED")
    assert "trained once" in result.log_tail


async def test_retry_reattaches_to_the_job_in_heartbeat_details(activities, fake_sky: FakeSky):
    job = fake_sky.add_job(CLUSTER, "wf1-train", status="FAILED", logs=["oom"])
    details = [dataclasses.asdict(JobProgress("running", CLUSTER, "wf1-train", "req-0", job.job_id))]
    with pytest.raises(ApplicationError, match="FAILED") as err:
        await retry_env(details).run(activities.launch_task, launch_input())
    assert fake_sky.called("launch") == [] and fake_sky.called("queue") == []
    assert err.value.non_retryable


async def test_retry_waits_for_an_in_flight_launch_instead_of_submitting_again(activities, fake_sky):
    fake_sky.provision_seconds = 0.5
    first_attempt_task = fake_sky.Task.from_yaml_config({"name": "wf1-train", "run": "true"})
    fake_sky.launch(first_attempt_task, cluster_name=CLUSTER)  # the attempt that died
    result = await retry_env().run(activities.launch_task, launch_input())
    assert len(fake_sky.called("launch")) == 1 and len(fake_sky.submitted) == 1
    assert result.job_id == 1


async def test_retry_with_no_earlier_job_submits_one(activities, fake_sky: FakeSky):
    result = await retry_env().run(activities.launch_task, launch_input())
    assert len(fake_sky.called("launch")) == 1 and result.job_status == "SUCCEEDED"


async def test_down_tears_the_cluster_down(activities, fake_sky: FakeSky):
    await ActivityEnvironment().run(activities.launch_task, launch_input())
    result = await ActivityEnvironment().run(activities.down_cluster, DownInput(CLUSTER))
    assert result.job_status == "TERMINATED" and CLUSTER not in fake_sky.clusters


async def test_down_of_a_missing_cluster_counts_as_torn_down(activities, fake_sky: FakeSky):
    result = await ActivityEnvironment().run(activities.down_cluster, DownInput("never-existed"))
    assert result.job_status == "ALREADY_GONE"


@pytest.mark.parametrize("status", ["RUNNING", "WAITING"])  # WAITING: between two tries
async def test_down_cancels_only_this_runs_launch_still_in_flight(activities, fake_sky, status):
    fake_sky.provision_seconds = 30
    ours = fake_sky.launch(
        fake_sky.Task.from_yaml_config({"name": "wf1-0123abcd-train", "run": "true"}), cluster_name=CLUSTER
    )
    someone_elses_launch = fake_sky.launch(
        fake_sky.Task.from_yaml_config({"name": "debug-session", "run": "true"}), cluster_name=CLUSTER
    )
    fake_sky.requests[ours].status = fake_sky.requests[someone_elses_launch].status = status
    someone_elses_queue = fake_sky.queue(CLUSTER)  # `sky queue` typed in another terminal
    await ActivityEnvironment().run(
        activities.down_cluster, DownInput(CLUSTER, job_name_prefix="wf1-0123abcd-")
    )
    assert fake_sky.called("api_cancel") == [[ours]]
    assert fake_sky.requests[ours].status == "CANCELLED"
    assert not fake_sky.requests[someone_elses_launch].cancelled.is_set()
    assert not fake_sky.requests[someone_elses_queue].cancelled.is_set()
    assert CLUSTER not in fake_sky.clusters


@pytest.mark.parametrize(
    "error",
    [
        exceptions.PermissionDeniedError("not allowed to down this cluster"),
        exceptions.ApiServerAuthenticationError("http://127.0.0.1:46580"),
        exceptions.InvalidCloudCredentials("expired token"),
        exceptions.CommandError(255, "ssh", "allocation vanished", None),
        ValueError("anything at all"),
    ],
)
async def test_every_teardown_error_is_retryable(activities, fake_sky: FakeSky, error):
    fake_sky.add_job(CLUSTER, "wf1-train")
    fake_sky.fail_next("down", error)
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activities.down_cluster, DownInput(CLUSTER))
    assert not err.value.non_retryable, "a teardown error must never stop the teardown for good"
    assert type(error).__name__ in err.value.message


async def test_the_tasks_own_exit_code_is_reported_when_skypilot_prints_it(activities, fake_sky):
    fake_sky.plan(
        "train", status="FAILED", logs=["diverged", "ERROR: Job 1 failed with return code list: [3]"]
    )
    with pytest.raises(ApplicationError, match="FAILED, exit code 3") as err:
        await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert err.value.details[0].exit_code == 3


async def test_provisioning_runs_setup_once_and_the_launch_reusing_it_skips_it(activities, fake_sky: FakeSky):
    provision_spec = dataclasses.replace(spec(), step="train-provision", job_name="wf1-train-provision")
    provision = LaunchInput(CLUSTER, provision_spec, infra="slurm", provision_only=True)
    result = await ActivityEnvironment().run(activities.launch_task, provision)
    assert (result.job_status, result.job_id) == ("SUCCEEDED", 1)
    [setup_job] = fake_sky.submitted
    assert setup_job.ran_setup and setup_job.job_name == "wf1-train-provision"
    reuse = LaunchInput(CLUSTER, spec(), infra="slurm", reuse_provisioned=True)
    result = await ActivityEnvironment().run(activities.launch_task, reuse)
    assert (result.job_status, result.job_id) == ("SUCCEEDED", 2)
    assert not fake_sky.submitted[1].ran_setup, "setup ran a second time"
    # A launch that does not reuse the provisioned cluster runs setup again, as SkyPilot does.
    another_job = dataclasses.replace(spec(), job_name="wf1-train-again")
    await ActivityEnvironment().run(activities.launch_task, LaunchInput(CLUSTER, another_job))
    assert fake_sky.submitted[2].ran_setup


async def test_provisioning_a_task_without_setup_submits_no_job(activities, fake_sky: FakeSky):
    no_setup = dataclasses.replace(spec(), yaml_text="resources:\n  cpus: 1+\nrun: echo hi\n")
    result = await ActivityEnvironment().run(
        activities.launch_task, LaunchInput(CLUSTER, no_setup, provision_only=True)
    )
    assert (result.job_status, result.job_id) == ("UP", None)
    assert fake_sky.clusters[CLUSTER].status == "UP" and fake_sky.submitted == []


async def test_a_failing_setup_fails_provisioning(activities, fake_sky: FakeSky):
    fake_sky.plan("provision", status="FAILED_SETUP")
    provision_spec = dataclasses.replace(spec(), step="train-provision", job_name="wf1-train-provision")
    with pytest.raises(ApplicationError, match="FAILED_SETUP") as err:
        await ActivityEnvironment().run(
            activities.launch_task, LaunchInput(CLUSTER, provision_spec, provision_only=True)
        )
    assert err.value.type == "JobFailedSetup" and err.value.non_retryable


# ---------------------------------------------------------------- re-attach, outages, checkouts, logs


def earlier_run_job(fake_sky: FakeSky, status: str) -> None:
    """A train job that an earlier run of the same workflow id left on the cluster."""
    fake_sky.add_job(CLUSTER, "wf1-99999999-train", status=status)
    if status == "RUNNING":
        fake_sky.submitted[-1].done.clear()


async def test_first_attempt_finds_the_steps_own_job_instead_of_submitting(activities, fake_sky: FakeSky):
    fake_sky.add_job(CLUSTER, "wf1-train", logs=["from the first submission"])
    result = await ActivityEnvironment().run(activities.launch_task, launch_input())  # attempt 1
    assert fake_sky.called("launch") == [], "a second job was submitted for the step"
    assert result.job_id == 1 and "from the first submission" in result.log_tail


async def test_a_still_running_job_of_an_earlier_run_is_adopted_not_duplicated(activities, fake_sky):
    earlier_run_job(fake_sky, "RUNNING")
    spec_of_this_run = dataclasses.replace(spec(), job_name="wf1-0123abcd-train")
    task = asyncio.ensure_future(
        ActivityEnvironment().run(activities.launch_task, LaunchInput(CLUSTER, spec_of_this_run))
    )
    await asyncio.sleep(0.5)
    fake_sky.submitted[0].status = "SUCCEEDED"
    fake_sky.submitted[0].done.set()
    result = await task
    assert fake_sky.called("launch") == [] and result.job_id == 1


async def test_a_finished_job_of_an_earlier_run_is_never_adopted(activities, fake_sky: FakeSky):
    earlier_run_job(fake_sky, "SUCCEEDED")
    spec_of_this_run = dataclasses.replace(spec(), job_name="wf1-0123abcd-train")
    result = await ActivityEnvironment().run(activities.launch_task, LaunchInput(CLUSTER, spec_of_this_run))
    assert len(fake_sky.called("launch")) == 1 and result.job_id == 2


def slow_outage_activities(activities: SkyPilotActivities, budget: float) -> SkyPilotActivities:
    return SkyPilotActivities(
        activities._sky,
        activities._executor,
        checkout_root=activities._checkout_root,
        heartbeat_interval_seconds=0.05,
        outage_budget_seconds=budget,
    )


UNREACHABLE = [
    exceptions.ApiServerConnectionError("http://127.0.0.1:46580"),
    RuntimeError(
        "No SkyPilot API server endpoint is configured, and starting a local API server is disabled"
    ),
    ConnectionRefusedError("[Errno 111] Connection refused"),
]


async def test_an_api_server_outage_is_ridden_through_without_a_second_job(activities, fake_sky: FakeSky):
    riding = slow_outage_activities(activities, budget=5)
    fake_sky.fail_next("launch", *UNREACHABLE)
    fake_sky.fail_next("tail_logs", *UNREACHABLE)
    beats: list[dict] = []
    env = ActivityEnvironment()
    env.on_heartbeat = lambda *details: beats.append(details[0])
    result = await env.run(riding.launch_task, launch_input())
    assert result.job_status == "SUCCEEDED"
    assert len(fake_sky.submitted) == 1, "the outage made the step submit a second job"
    assert any(b["phase"] == "waiting for the SkyPilot API server" for b in beats)


async def test_an_outage_longer_than_the_budget_fails_the_attempt_saying_unreachable(
    activities, fake_sky: FakeSky
):
    riding = slow_outage_activities(activities, budget=0.5)
    fake_sky.fail_next("launch", *UNREACHABLE * 20)
    fake_sky.fail_next("queue", *UNREACHABLE * 20)
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(riding.launch_task, launch_input())
    assert err.value.type == "ApiServerUnreachable" and not err.value.non_retryable
    assert "SkyPilot API server unreachable for" in err.value.message


async def test_autodown_is_asked_for_when_configured(activities, fake_sky: FakeSky):
    with_autodown = SkyPilotActivities(
        fake_sky, activities._executor, checkout_root=activities._checkout_root, autodown_idle_minutes=45
    )
    await ActivityEnvironment().run(with_autodown.launch_task, launch_input())
    [(_, _, kwargs)] = fake_sky.called("launch")
    assert kwargs["idle_minutes_to_autostop"] == 45 and kwargs["down"] is True


async def test_concurrent_steps_recreate_a_missing_checkout_once_and_shallow(activities, fake_sky, task_repo):
    git(
        "-c",
        "user.name=t",
        "-c",
        "user.email=t@t",
        "commit",
        "--quiet",
        "--allow-empty",
        "-m",
        "2",
        cwd=task_repo,
    )
    sha = git("rev-parse", "HEAD", cwd=task_repo)
    fake_sky.add_job(CLUSTER, "other")  # the cluster exists for exec
    checkout = dict(checkout_name="wf1/run1", repo_url=str(task_repo), commit_sha=sha)
    steps = [
        ActivityEnvironment().run(activities.exec_task, ExecInput(CLUSTER, spec("eval", **checkout)))
        for _ in range(4)
    ]
    results = await asyncio.gather(*steps)
    assert all(r.job_status == "SUCCEEDED" for r in results)
    checkout_dir = activities._checkout_root / "wf1" / "run1"
    assert git("rev-parse", "HEAD", cwd=checkout_dir) == sha
    assert git("rev-list", "--count", "HEAD", cwd=checkout_dir) == "1", "fetched more than the one commit"
    assert [p.name for p in checkout_dir.parent.iterdir()] == ["run1"], "a staging directory was left"


def test_the_worker_log_gets_a_bounded_share_of_a_chatty_job():
    logged: list[str] = []
    now = [0.0]
    sink = JobLogSink(logged.append, [], JobProgress("running", "c"), clock=lambda: now[0])
    for i in range(50_000):
        sink.write(f"line {i}\n")
    now[0] += 10  # ten seconds later, the job prints its last line
    sink.write("the end\n")
    assert len(logged) <= 200 + 5 * 10 + 2
    assert any("lines not logged here" in line for line in logged)
    assert logged[-1] == "the end" and sink.tail().endswith("the end")
    sink.write("x" * 100_000 + "\n")
    assert len(logged[-1]) < 2100, "one huge line went to the log whole"


def test_a_progress_bar_costs_linear_time():
    sink = JobLogSink(lambda line: None, [], JobProgress("running", "c"))
    started = time.process_time()
    for i in range(40_000):
        sink.write(f"\r{i / 400:.1f}% [{'#' * (i // 1000)}]")
    sink.write("\rdone\n")
    assert time.process_time() - started < 2.0
    assert sink.tail() == "done"


def test_secrets_are_masked_longest_first():
    sink = JobLogSink(lambda line: None, ["abc", "abcdef"], JobProgress("running", "c"))
    assert sink.redact("token=abcdef and abc") == "token=*** and ***"


def test_checkouts_unused_for_the_ttl_are_pruned_on_every_host(tmp_path):
    root = tmp_path / "checkouts"
    old, fresh, staging = root / "p1" / "run-old", root / "p2" / "run-new", root / "p3" / ".run.1a2b3c4d"
    for directory in (old, fresh, staging):
        (directory / ".git").mkdir(parents=True)
    day_ago = time.time() - 86_400
    os.utime(old, (day_ago, day_ago))
    os.utime(staging, (day_ago, day_ago))
    assert sorted(prune_checkouts(root, max_age_seconds=3600)) == sorted([old, staging])
    assert fresh.is_dir() and sorted(p.name for p in root.iterdir()) == ["p2"]


async def test_down_cancels_a_launch_whose_body_the_api_server_hides(activities, fake_sky):
    """With auth on, another worker's request shows no body: on the run's cluster it is the run's."""
    fake_sky.provision_seconds = 30
    fake_sky.hide_request_bodies = True
    abandoned = fake_sky.launch(
        fake_sky.Task.from_yaml_config({"name": "wf1-0123abcd-train", "run": "true"}), cluster_name=CLUSTER
    )
    await ActivityEnvironment().run(
        activities.down_cluster, DownInput(CLUSTER, job_name_prefix="wf1-0123abcd-")
    )
    assert fake_sky.called("api_cancel") == [[abandoned]]


def test_a_progress_bar_longer_than_the_partial_line_cap_still_ends_on_its_last_frame():
    sink = JobLogSink(lambda line: None, [], JobProgress("running", "c"))
    for i in range(20_000):  # ~200 KB of redraws, no newline
        sink.write(f"\r{i:>6} [{'#' * 20}]")
    sink.write("\rdone")
    sink.write("\n")
    assert sink.tail() == "done"


def test_the_count_of_lines_not_logged_is_logged_when_the_job_ends():
    logged: list[str] = []
    sink = JobLogSink(logged.append, [], JobProgress("running", "c"), clock=lambda: 0.0)
    for i in range(1_000):
        sink.write(f"line {i}\n")
    sink.tail()
    assert logged[-1].startswith("(800 more lines not logged here")


@pytest.mark.parametrize("created_by_run,looks", [("test-run", False), ("an-earlier-run", True), ("", True)])
async def test_a_first_attempt_lists_jobs_only_on_a_cluster_this_run_did_not_launch(
    activities, fake_sky: FakeSky, created_by_run, looks
):
    """Listing a cluster's jobs is a round trip to the cluster: a first attempt skips it on a
    cluster this very run launched (no earlier run's job can be there). A reset run carries the
    launch result of the run it was reset from: another run id, so it lists."""
    await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert fake_sky.called("queue") == [], "the launch created the cluster: nothing to list"
    env = ActivityEnvironment()
    assert env.info.workflow_run_id == "test-run"
    exec_input = ExecInput(CLUSTER, spec("eval"), cluster_created_by_run=created_by_run)
    await env.run(activities.exec_task, exec_input)
    assert bool(fake_sky.called("queue")) is looks


async def test_an_earlier_runs_eval_is_adopted_on_a_cluster_an_earlier_run_launched(activities, fake_sky):
    earlier = fake_sky.add_job(CLUSTER, "wf1-0123abcd-eval", status="RUNNING")
    this_run_eval = dataclasses.replace(spec("eval"), job_name="wf1-99999999-eval")
    task = asyncio.ensure_future(
        ActivityEnvironment().run(
            activities.exec_task, ExecInput(CLUSTER, this_run_eval, cluster_created_by_run="an-earlier-run")
        )
    )
    await asyncio.sleep(0.3)
    earlier.status = "SUCCEEDED"
    earlier.done.set()
    result = await task
    assert result.job_id == earlier.job_id and fake_sky.called("exec") == []


async def test_a_launch_reports_the_run_that_created_its_cluster(activities, fake_sky: FakeSky):
    created = await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert created.cluster_created_by_run == "test-run"
    relaunched = await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert relaunched.cluster_created_by_run == "", "the cluster was there before this launch"
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2)
    fake_sky.clusters.clear()
    retried = await retry.run(activities.launch_task, launch_input())
    assert retried.cluster_created_by_run == "", "an earlier attempt may have created it"


@pytest.mark.parametrize("records", ["kept", "forgotten"])
async def test_an_activity_reset_to_attempt_1_re_attaches_to_the_job_it_already_submitted(
    activities, fake_sky: FakeSky, records: str
):
    """An operator's activity reset starts attempt 1 again while the step's job runs: the first
    look must not be skipped on a cluster this run launched once a request for the step exists.
    The API server forgets finished requests after its retention period (a day by default): a
    reset of a days-old eval finds no record of its submission, nor of the cluster's launch
    before it, so it lists the cluster's jobs too."""
    await ActivityEnvironment().run(activities.launch_task, launch_input())
    fake_sky.plan("eval", until_cancelled=True)
    first = fake_sky.exec(
        fake_sky.Task.from_yaml_config({"name": "wf1-eval", "run": "true"}), cluster_name=CLUSTER
    )
    fake_sky.get(first)
    [submitted] = fake_sky.jobs_named("eval")
    if records == "forgotten":
        fake_sky.forget_finished_requests()
    exec_input = ExecInput(CLUSTER, spec("eval"), cluster_created_by_run="test-run")
    task = asyncio.ensure_future(ActivityEnvironment().run(activities.exec_task, exec_input))
    await asyncio.sleep(0.5)
    submitted.status = "SUCCEEDED"
    submitted.done.set()
    result = await asyncio.wait_for(task, 10)
    assert result.job_id == submitted.job_id
    assert len(fake_sky.called("exec")) == 1, "a second eval job was submitted"


async def test_a_launch_behind_a_proxy_that_cuts_silent_waits_still_gets_its_result(
    activities, fake_sky: FakeSky
):
    """`get` receives nothing until the request ends, and a proxy's idle timeout can cut it; the
    log stream (heartbeats) is not cut, so its outcome counts."""
    fake_sky.provision_seconds = 0.5
    fake_sky.proxy_cuts_silent_waits = True
    launched = await ActivityEnvironment().run(activities.launch_task, launch_input())
    assert (launched.job_id, launched.job_status) == (1, "SUCCEEDED")
    down = await ActivityEnvironment().run(activities.down_cluster, DownInput(CLUSTER))
    assert down.job_status == "TERMINATED"


@pytest.mark.parametrize("step", ["launch", "down"])
async def test_a_step_takes_its_result_while_the_request_log_stream_is_still_ending(
    activities, fake_sky: FakeSky, step: str
):
    """The API server's log stream notices a finished launch or down only on a 1 s poll: the
    step must not wait for it."""
    fake_sky.streams_may_end.clear()
    try:
        env = ActivityEnvironment()
        if step == "launch":
            result = await asyncio.wait_for(env.run(activities.launch_task, launch_input()), 10)
        else:
            fake_sky.add_job(CLUSTER, "wf1-train")
            result = await asyncio.wait_for(env.run(activities.down_cluster, DownInput(CLUSTER)), 10)
        assert result.job_status in ("SUCCEEDED", "TERMINATED")
        assert fake_sky.called("stream_and_get"), "the request's log was not streamed"
    finally:
        fake_sky.streams_may_end.set()
