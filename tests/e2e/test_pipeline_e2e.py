"""The pipeline end to end on the real stack: Temporal dev server, SkyPilot API server, Slurm.

Assertions are on what Temporal (workflow history, result) and SkyPilot (`sky status`,
`sky queue`, the API server's request records) report, not on this project's logs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError
from temporalio.common import VersioningBehavior

from skypilot_temporal.naming import OWNER_LABEL, cluster_prefix_for, owner_token
from testing import ROOT
from testing.deploys import EXTRA_STEP, copy_of_next_version, version_of, wait_for_current
from testing.in_process import git, make_task_repo
from testing.local_stack import (
    SKY_API,
    SKY_CLI,
    TEMPORAL_ADDRESS,
    Stack,
    process_env,
    start_worker_process,
)
from testing.waiting import eventually

pytestmark = pytest.mark.e2e

DATA_DIR = Path("/tmp/skypilot-pipeline-data")  # the example tasks' DATA_DIR
OTHER_HOST_USER = "0b0b0b0b"


@dataclass
class Run:
    workflow_id: str
    rc: int
    stdout: str
    stderr: str
    seconds: float


async def result_of(temporal: Client, workflow_id: str) -> dict:
    """The workflow's result as recorded in its history (plain JSON)."""
    return await temporal.get_workflow_handle(workflow_id, result_type=dict).result()


async def status_of(temporal: Client, workflow_id: str) -> str:
    """The run's status as Temporal reports it: COMPLETED, FAILED, CANCELED, ..."""
    description = await temporal.get_workflow_handle(workflow_id).describe()
    return description.status.name


async def activity_attempts(temporal: Client, workflow_id: str) -> dict[str, list[int]]:
    """Activity type -> the attempt number of each time it started, from the history."""
    scheduled: dict[int, str] = {}
    attempts: dict[str, list[int]] = {}
    async for event in temporal.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            scheduled[event.event_id] = event.activity_task_scheduled_event_attributes.activity_type.name
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            attributes = event.activity_task_started_event_attributes
            attempts.setdefault(scheduled[attributes.scheduled_event_id], []).append(attributes.attempt)
    return attempts


async def wait_for_job(stack: Stack, cluster: str, step: str, status: str = "RUNNING", timeout: float = 300):
    async def reached() -> bool:
        return (await asyncio.to_thread(stack.job_statuses, cluster)).get(step) == status

    await eventually(reached, f"job of step {step} on {cluster} to be {status}", timeout, every=2)


async def stored_history_bytes(workflow_id: str) -> bytes:
    """The run's history as Temporal stores it (read without the codec), payload bytes raw."""
    plain = await Client.connect(TEMPORAL_ADDRESS)
    history = await plain.get_workflow_handle(workflow_id).fetch_history()
    return b"".join(event.SerializeToString() for event in history.events)


def assert_no_cluster_left(stack: Stack, prefix: str) -> None:
    assert stack.clusters(prefix) == [], f"`sky status` still lists clusters of {prefix}"


@pytest.fixture(scope="module")
async def happy_run(temporal, sky_sdk, worker, tmp_path_factory) -> Run:
    """One pipeline run on the example tasks, shared by the tests that look at it."""
    stack = Stack(temporal, sky_sdk, worker[0], tmp_path_factory.mktemp("happy"))
    started = time.monotonic()
    rc, stdout, stderr, workflow_id = await stack.start_pipeline()
    return Run(workflow_id, rc, stdout, stderr, time.monotonic() - started)


async def test_happy_path_runs_six_real_steps_and_leaves_no_cluster(stack: Stack, happy_run: Run):
    assert happy_run.rc == 0, happy_run.stderr
    assert await status_of(stack.temporal, happy_run.workflow_id) == "COMPLETED"
    result = await result_of(stack.temporal, happy_run.workflow_id)
    assert [(s["step"], s["job_status"], s["exit_code"]) for s in result["steps"]] == [
        ("preprocess", "SUCCEEDED", 0),
        ("train", "SUCCEEDED", 0),
        ("eval", "SUCCEEDED", 0),
    ]
    assert result["commit_sha"] == git("rev-parse", "HEAD", cwd=ROOT)
    assert "eval_accuracy=0." in result["steps"][2]["log_tail"]
    assert (
        "eval_accuracy=0." in happy_run.stdout
        and "http://localhost:8233/namespaces/default/workflows/" in happy_run.stdout
    )

    prefix = cluster_prefix_for(happy_run.workflow_id)
    # The tasks really wrote and read files: data -> model -> metric.
    run_dir = DATA_DIR / prefix
    assert len(list((run_dir / "data").glob("file_*"))) == 10
    assert (run_dir / "model" / "weights.txt").read_text().strip()
    assert (run_dir / "model" / "metrics.txt").read_text().startswith("eval_accuracy=0.")
    assert_no_cluster_left(stack, prefix)
    attempts = await activity_attempts(stack.temporal, happy_run.workflow_id)
    assert attempts["launch_task"] == [1, 1] and attempts["exec_task"] == [1]
    # Payloads are encrypted (the local stack's codec key): Temporal's own copy of the history
    # holds neither the task text nor a job's log line in clear.
    raw = await stored_history_bytes(happy_run.workflow_id)
    assert b"binary/encrypted" in raw
    assert b"Data preprocessing completed" not in raw and b"eval_accuracy" not in raw


async def test_a_failing_train_task_fails_the_run_naming_step_and_exit_code(stack: Stack):
    rc, stdout, stderr, workflow_id = await stack.start_pipeline("--env", "FAIL_TRAINING=1")
    assert rc == 1, stdout + stderr
    prefix = cluster_prefix_for(workflow_id)
    assert f"step 'train' on cluster {prefix}-train failed" in stderr and "exit code 3" in stderr
    assert "training diverged" in stderr
    with pytest.raises(WorkflowFailureError) as err:
        await stack.temporal.get_workflow_handle(workflow_id).result()
    assert err.value.cause.type == "JobFailed"
    assert_no_cluster_left(stack, prefix)


async def test_cancel_during_train_cancels_the_job_and_removes_both_clusters(stack: Stack):
    rc, _, stderr, workflow_id = await stack.start_pipeline("--env", "EPOCHS=600", wait=False)
    assert rc == 0, stderr
    prefix = cluster_prefix_for(workflow_id)
    train_cluster = f"{prefix}-train"
    await wait_for_job(stack, train_cluster, "train")
    handle = stack.temporal.get_workflow_handle(workflow_id)
    await handle.cancel()
    # Watch SkyPilot while the run winds down: the job is cancelled before the cluster goes.
    seen = {"RUNNING"}  # wait_for_job saw it running
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and stack.clusters(train_cluster):
        seen.add((await asyncio.to_thread(stack.job_statuses, train_cluster)).get("train"))
        await asyncio.sleep(1)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert await status_of(stack.temporal, workflow_id) == "CANCELED"
    requests = await asyncio.to_thread(stack.requests_on, train_cluster)
    cancels = [r for r in requests if r.name == "sky.cancel"]
    downs = [r for r in requests if r.name == "sky.down"]
    assert [r.status for r in cancels] == ["SUCCEEDED"], "the train job was not cancelled on SkyPilot"
    assert cancels[0].finished_at <= min(r.created_at for r in downs), "the cluster went before the job"
    assert seen - {"RUNNING", None} <= {"CANCELLED"}, seen
    assert_no_cluster_left(stack, prefix)


async def test_overlapped_provisioning_sets_train_up_during_preprocess(stack: Stack):
    rc, stdout, stderr, workflow_id = await stack.start_pipeline("--overlap-provisioning")
    assert rc == 0, stdout + stderr
    prefix = cluster_prefix_for(workflow_id)
    preprocess, train = f"{prefix}-preprocess", f"{prefix}-train"
    requests = {c: await asyncio.to_thread(stack.requests_on, c) for c in (preprocess, train)}
    [preprocess_launch] = [r for r in requests[preprocess] if r.name == "sky.launch"]
    provision_launch, train_launch = sorted(
        (r for r in requests[train] if r.name == "sky.launch"), key=lambda r: r.created_at
    )
    # The train cluster was brought up while preprocess was still launching ...
    assert provision_launch.created_at < preprocess_launch.finished_at
    # ... its setup ran there once, as job 1; the train launch reused it (fast) without setup.
    assert json.loads(train_launch.request_body).get("fast") is True
    result = await result_of(stack.temporal, workflow_id)
    by_step = {s["step"]: s for s in result["steps"]}
    assert (by_step["train"]["job_id"], by_step["eval"]["job_id"]) == (2, 3)
    assert "Setting up dependencies for training" not in by_step["train"]["log_tail"]
    assert "Training completed" in by_step["train"]["log_tail"]
    assert_no_cluster_left(stack, prefix)


async def test_a_deploy_between_two_runs_at_once_keeps_each_on_its_version_and_they_share_nothing(
    stack: Stack, tmp_path: Path
):
    """A deploy with a run in flight, as docs/deploying-and-operating.md does it: run A starts on
    version 1's workers; version 2 (one more step: testing/deploys.py) starts and makes itself
    current while A runs; run B starts, on version 2. A finishes on version 1's code and workers
    (no extra step, no non-determinism error), B runs the extra step; the two runs share no
    cluster or checkout, overlap, and leave nothing behind."""
    task_queue = f"e2e-deploy-{uuid.uuid4().hex[:8]}"
    deploy = Stack(stack.temporal, stack.sky, task_queue, tmp_path)
    v1 = start_worker_process(task_queue, tmp_path / "v1.log", tmp_path / "checkouts-v1")
    workers = [v1]
    try:
        old = await wait_for_current(stack.temporal, task_queue)
        first_id = f"e2e-deploy-a-{uuid.uuid4().hex[:6]}"
        first = asyncio.create_task(deploy.start_pipeline(workflow_id=first_id))

        async def a_cluster() -> list[str]:
            assert not first.done(), "the first run brought up no cluster (it ended)"
            return await asyncio.to_thread(stack.clusters, cluster_prefix_for(first_id))

        # A is in flight: its first cluster is coming up
        await eventually(a_cluster, "the first run brought up no cluster", 300)
        code = copy_of_next_version(tmp_path / "v2-code")
        workers.append(
            await asyncio.to_thread(
                start_worker_process, task_queue, tmp_path / "v2.log", tmp_path / "checkouts-v2", code
            )
        )
        new = await wait_for_current(stack.temporal, task_queue, other_than=old)
        assert not first.done(), "A finished before the deploy: nothing was in flight"
        runs = list(await asyncio.gather(first, deploy.start_pipeline()))
    finally:
        for worker in workers:
            worker.kill(signal.SIGTERM)
    for rc, _, stderr, _ in runs:
        assert rc == 0, stderr
    logs = "".join(worker.log() for worker in workers)
    assert "nondetermin" not in logs.lower()
    handles = [stack.temporal.get_workflow_handle(workflow_id) for *_, workflow_id in runs]
    pinned = VersioningBehavior.PINNED.value
    assert [await version_of(handle) for handle in handles] == [(old, pinned), (new, pinned)]
    results = [await result_of(stack.temporal, workflow_id) for *_, workflow_id in runs]
    executed = [await activity_steps(stack.temporal, workflow_id) for *_, workflow_id in runs]
    assert EXTRA_STEP not in executed[0] and EXTRA_STEP in executed[1], executed
    clusters = [{s["cluster_name"] for s in r["steps"]} for r in results]
    assert not clusters[0] & clusters[1], clusters
    checkouts = set()
    for *_, workflow_id in runs:
        async for event in stack.temporal.get_workflow_handle(workflow_id).fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                payloads = event.activity_task_scheduled_event_attributes.input.payloads
                [scheduled] = await stack.temporal.data_converter.decode(payloads[:1])
                if isinstance(scheduled, dict) and "checkout_name" in scheduled and "yaml_paths" in scheduled:
                    checkouts.add(scheduled["checkout_name"])
    assert len(checkouts) == 2
    # Ran at once, not one after the other: B started once the deploy was done, while A ran.
    # (How much slower two at once are than one is the benchmark's business.)
    spans = [await steps_span(stack.temporal, workflow_id) for *_, workflow_id in runs]
    overlap = min(end for _, end in spans) - max(start for start, _ in spans)
    assert overlap > 0.3 * min(end - start for start, end in spans), spans
    for *_, workflow_id in runs:
        assert_no_cluster_left(stack, cluster_prefix_for(workflow_id))


async def activity_steps(client: Client, workflow_id: str) -> list[str]:
    """The steps of the tasks the run's activities launched or executed, from its history."""
    steps = []
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            payloads = event.activity_task_scheduled_event_attributes.input.payloads
            [scheduled] = await client.data_converter.decode(payloads[:1])
            if isinstance(scheduled, dict) and isinstance(scheduled.get("task"), dict):
                steps.append(scheduled["task"]["step"])
    return steps


async def steps_span(client: Client, workflow_id: str) -> tuple[float, float]:
    """From the first activity's start to the last one's end (epoch seconds, from the history)."""
    times = [
        event.event_time.ToDatetime().timestamp()
        async for event in client.get_workflow_handle(workflow_id).fetch_history_events()
        if event.event_type
        in (EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED)
    ]
    return min(times), max(times)


def task_repo_args(tmp: Path, replaced: dict[str, str]) -> list[str]:
    """A git repo holding the example tasks at its root, some files replaced; its run_workflow.py args."""
    repo = make_task_repo(tmp / "bad-tasks", replaced)
    return [
        "--repo",
        str(repo),
        "--preprocess-yaml",
        "data_preprocessing.yaml",
        "--train-yaml",
        "train.yaml",
        "--eval-yaml",
        "eval.yaml",
    ]


INFEASIBLE = (ROOT / "tasks" / "data_preprocessing.yaml").read_text().replace("cpus: 1+", "cpus: 512+")


@pytest.mark.parametrize("case", ["unknown repo", "missing yaml", "malformed yaml", "infeasible resources"])
async def test_bad_input_is_a_one_line_error_naming_it_and_leaves_no_cluster(
    stack: Stack, tmp_path: Path, case
):
    if case == "unknown repo":
        args, expected = ["--repo", str(tmp_path / "no-such-repo")], "no-such-repo"
    elif case == "missing yaml":
        args, expected = ["--train-yaml", "tasks/nope.yaml"], "tasks/nope.yaml"
    elif case == "malformed yaml":
        args = task_repo_args(tmp_path, {"train.yaml": "name: train\nrun: [unclosed\n"})
        expected = "'train.yaml' is not valid YAML"
    else:
        args = task_repo_args(tmp_path, {"data_preprocessing.yaml": INFEASIBLE})
        expected = "ResourcesUnavailableError"
    started = time.monotonic()
    rc, stdout, stderr, workflow_id = await stack.start_pipeline(*args)
    assert rc == 1, stdout + stderr
    [failure_line] = [line for line in stderr.splitlines() if line.startswith(f"Workflow {workflow_id}")]
    assert expected in failure_line, stderr
    assert "Traceback" not in stderr
    assert time.monotonic() - started < 240, "a deterministic error was retried"
    attempts = await activity_attempts(stack.temporal, workflow_id)
    assert all(a == [1] * len(a) for name, a in attempts.items() if name != "down_cluster"), attempts
    assert_no_cluster_left(stack, cluster_prefix_for(workflow_id))


async def test_worker_sigkill_during_train_resumes_on_a_second_worker_without_a_duplicate_job(
    temporal, sky_sdk, tmp_path: Path
):
    """The second worker is another host, so another SkyPilot user of the API server: it finds,
    follows and tears down the first one's cluster and job."""
    task_queue = f"e2e-failover-{uuid.uuid4().hex[:6]}"
    stack = Stack(temporal, sky_sdk, task_queue, tmp_path)
    first = start_worker_process(task_queue, tmp_path / "worker1.log", tmp_path / "checkouts")
    second = None
    try:
        rc, _, stderr, workflow_id = await stack.start_pipeline("--env", "EPOCHS=45", wait=False)
        assert rc == 0, stderr
        prefix = cluster_prefix_for(workflow_id)
        await wait_for_job(stack, f"{prefix}-train", "train")
        [train] = [r for r in sky_sdk.get(sky_sdk.status(all_users=True)) if r.name == f"{prefix}-train"]
        assert train.labels.get(OWNER_LABEL) == owner_token(workflow_id), train.labels
        first.kill(signal.SIGKILL)
        second = await asyncio.to_thread(
            start_worker_process,
            task_queue,
            tmp_path / "worker2.log",
            tmp_path / "checkouts-b",
            SKYPILOT_USER_ID=OTHER_HOST_USER,  # the user hash of a client on another host
        )
        result = await asyncio.wait_for(result_of(temporal, workflow_id), 600)
        steps = {s["step"]: s for s in result["steps"]}
        assert steps["train"]["job_status"] == "SUCCEEDED"
        # Job ids count per cluster: train kept job 1 and eval got job 2, so no train job was resubmitted.
        assert (steps["train"]["job_id"], steps["eval"]["job_id"]) == (1, 2)
        attempts = await activity_attempts(temporal, workflow_id)
        # History records each activity's last attempt: preprocess ran once, train ran twice.
        assert attempts["launch_task"] == [1, 2], attempts
        assert_no_cluster_left(stack, prefix)
        users = {(r.name, r.user_id) for r in stack.requests_on(f"{prefix}-train")}
        assert ("sky.launch", OTHER_HOST_USER) not in users, "the second worker launched train again"
        assert ("sky.down", OTHER_HOST_USER) in users, users
    finally:
        first.kill()
        if second:
            second.kill(signal.SIGTERM)


async def test_worker_stops_gracefully_on_sigterm(tmp_path: Path, temporal, sky_sdk):
    worker = await asyncio.to_thread(
        start_worker_process,
        f"e2e-term-{uuid.uuid4().hex[:6]}",
        tmp_path / "worker.log",
        tmp_path / "checkouts",
    )
    worker.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.proc.wait, 30) == 0
    assert "Shutting down" in worker.log() and "Traceback" not in worker.log()


def test_local_stack_status_reports_every_component():
    out = subprocess.run(
        ["bash", str(ROOT / "scripts" / "local_stack.sh"), "status"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for name in ("temporal", "skypilot", "munged", "slurmctld", "slurmd", "sshd"):
        assert f"running  {name}" in out, out


async def test_a_terminated_runs_cluster_is_torn_down_by_the_reaper_within_one_period(
    temporal, sky_sdk, tmp_path: Path
):
    """Terminate skips the workflow's cleanup: the worker's reaper schedule removes the cluster."""
    period = 30
    task_queue = f"e2e-reaper-{uuid.uuid4().hex[:6]}"
    stack = Stack(temporal, sky_sdk, task_queue, tmp_path)
    worker = start_worker_process(
        task_queue,
        tmp_path / "worker.log",
        tmp_path / "checkouts",
        REAPER_PERIOD_SECONDS=str(period),
        REAPER_GRACE_SECONDS="10",
    )
    try:
        rc, _, stderr, workflow_id = await stack.start_pipeline("--env", "EPOCHS=600", wait=False)
        assert rc == 0, stderr
        prefix = cluster_prefix_for(workflow_id)
        await wait_for_job(stack, f"{prefix}-train", "train")
        await temporal.get_workflow_handle(workflow_id).terminate("e2e: terminate skips the cleanup")
        terminated_at = time.monotonic()
        while stack.clusters(prefix) and time.monotonic() - terminated_at < period + 90:
            await asyncio.sleep(2)
        gone_after = time.monotonic() - terminated_at
        assert_no_cluster_left(stack, prefix)
        assert gone_after < period + 60, f"the reaper took {gone_after:.0f} s (period {period} s)"
        reaped = []
        query = f"WorkflowType = 'ClusterReaperWorkflow' AND TaskQueue = '{task_queue}'"
        async for execution in temporal.list_workflows(query):
            with contextlib.suppress(Exception):
                result = await temporal.get_workflow_handle(execution.id, run_id=execution.run_id).result(
                    rpc_timeout=timedelta(seconds=5)
                )
                reaped += result.get("reaped", [])
        assert f"{prefix}-train" in reaped, "the cluster went, but not by the reaper"
    finally:
        worker.kill(signal.SIGTERM)
        with contextlib.suppress(Exception):
            await temporal.get_schedule_handle(f"skypilot-cluster-reaper-{task_queue}").delete()


async def test_a_skypilot_api_server_outage_during_train_is_ridden_through(stack: Stack):
    """The API server is down for longer than the old retry budget (5 quick attempts, ~75 s):
    the step waits for it in the same attempt, re-attaches to its job, and the run succeeds."""
    rc, _, stderr, workflow_id = await stack.start_pipeline("--env", "EPOCHS=40", wait=False)
    assert rc == 0, stderr
    prefix = cluster_prefix_for(workflow_id)
    await wait_for_job(stack, f"{prefix}-train", "train")
    env = {**process_env(), "SKYPILOT_API_SERVER_LOCAL_PORT": SKY_API.rsplit(":", 1)[-1]}
    try:
        await asyncio.to_thread(subprocess.run, [str(SKY_CLI), "api", "stop"], env=env, capture_output=True)
        await asyncio.sleep(100)
    finally:
        up = await asyncio.to_thread(
            subprocess.run, ["bash", str(ROOT / "scripts" / "local_stack.sh"), "up"], capture_output=True
        )
    assert up.returncode == 0, up.stderr.decode()[-2000:]
    result = await asyncio.wait_for(result_of(stack.temporal, workflow_id), 600)
    steps = {s["step"]: s for s in result["steps"]}
    assert [steps[s]["job_status"] for s in ("preprocess", "train", "eval")] == ["SUCCEEDED"] * 3
    assert (steps["train"]["job_id"], steps["eval"]["job_id"]) == (1, 2), "a job was submitted twice"
    attempts = await activity_attempts(stack.temporal, workflow_id)
    assert attempts["launch_task"] == [1, 1], "the outage failed an attempt instead of being waited out"
    assert_no_cluster_left(stack, prefix)
