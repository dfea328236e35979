"""SkyPilotWorkflow on a real Temporal dev server (from PyPI), activities over the fake SDK."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from sky import exceptions
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowFailureError, WorkflowUpdateFailedError
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.worker import (
    Interceptor,
    Replayer,
    StartActivityInput,
    WorkflowInboundInterceptor,
    WorkflowInterceptorClassInput,
    WorkflowOutboundInterceptor,
)

from skypilot_temporal.bounds import input_problems
from skypilot_temporal.naming import cluster_prefix_for, cluster_prefix_v1_for, run_token
from skypilot_temporal.payloads import StepTimeouts
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.workflow import pipeline as pipeline_blocks
from testing import HISTORIES
from testing.in_process import Pipeline
from workflows import SkyPilotWorkflow

HISTORY_FILE = HISTORIES / "happy_path.json"
ENCRYPTED_HISTORY_FILE = HISTORIES / "failed_train_encrypted.json"


def sdk_steps(fake: FakeSky) -> list[tuple[str, str]]:
    """The SkyPilot operations in order, as (operation, cluster)."""
    return [
        (name, args if isinstance(args, str) else args[1])
        for name, args in fake.calls
        if name in ("launch", "exec", "down")
    ]


async def test_happy_path_runs_the_six_steps_in_order(pipeline: Pipeline, tmp_path: Path):
    pipeline.fake.plan("eval", logs=["eval_accuracy=0.93"])
    handle = await pipeline.start()
    result = await handle.result()
    prefix = cluster_prefix_for(handle.id)
    pre, train = f"{prefix}-preprocess", f"{prefix}-train"
    assert sdk_steps(pipeline.fake) == [
        ("launch", pre),
        ("down", pre),
        ("launch", train),
        ("exec", train),
        ("down", train),
    ]
    assert [s.step for s in result.steps] == ["preprocess", "train", "eval"]
    assert all(s.job_status == "SUCCEEDED" and s.exit_code == 0 for s in result.steps)
    assert result.steps[-1].log_tail.splitlines()[0] == "eval_accuracy=0.93"
    assert len(result.commit_sha) == 40
    # Job names are unique per run: re-attach can never adopt another run's finished job.
    token = run_token(handle.result_run_id)
    assert [j.job_name for j in pipeline.fake.submitted] == [
        f"{prefix}-{token}-preprocess",
        f"{prefix}-{token}-train",
        f"{prefix}-{token}-eval",
    ]
    assert all(j.envs["PIPELINE_RUN_ID"] == prefix for j in pipeline.fake.submitted)
    pipeline.assert_no_cluster_left()
    assert not any((tmp_path / "checkouts").iterdir()), "checkout not removed"

    progress = await handle.query(SkyPilotWorkflow.progress)
    assert progress.status == "succeeded" and progress.clusters_up == []
    assert [s.status for s in progress.steps] == ["succeeded"] * 6
    # The Web UI renders current details as Markdown: cluster names are code, so `--` stays.
    details = (await handle.query("__temporal_workflow_metadata")).current_details
    assert f"✓ exec eval on `{train}` — job 2" in details, details

    summaries = await pipeline.env.client.data_converter.decode(
        [
            e.user_metadata.summary
            async for e in handle.fetch_history_events()
            if e.HasField("activity_task_scheduled_event_attributes")
        ]
    )
    assert summaries[:6] == [
        f"fetch tasks from {pipeline.repo}@main",
        f"launch preprocess on {pre}",
        f"down {pre}",
        f"launch train on {train}",
        f"exec eval on {train}",
        f"down {train}",
    ]


@pytest.mark.parametrize("failing_step", ["preprocess", "train", "eval"])
async def test_a_failed_job_fails_the_run_after_tearing_everything_down(pipeline, failing_step):
    pipeline.fake.plan(failing_step, status="FAILED", logs=["Traceback", f"{failing_step} broke"])
    cause = await pipeline.fail()
    assert isinstance(cause, ApplicationError) and cause.type == "JobFailed"
    assert f"step '{failing_step}'" in cause.message
    assert f"-{'preprocess' if failing_step == 'preprocess' else 'train'}" in cause.message
    assert "exit code 100" in cause.message and f"{failing_step} broke" in cause.message
    pipeline.assert_no_cluster_left()
    assert len(pipeline.fake.jobs_named(failing_step)) == 1


async def test_a_failed_fetch_launches_nothing(pipeline: Pipeline, tmp_path: Path):
    cause = await pipeline.fail(repo_url=str(tmp_path / "missing-repo"))
    assert cause.type == "RepositoryNotFound" and "step 'fetch-tasks'" in cause.message
    assert pipeline.fake.calls == []


async def test_a_non_retryable_launch_error_fails_fast_and_cleans_up(pipeline: Pipeline):
    pipeline.fake.fail_next("launch", exceptions.ResourcesUnavailableError("cpus=512 fits nowhere"))
    cause = await pipeline.fail()
    assert cause.type == "ResourcesUnavailableError" and "cpus=512" in cause.message
    assert len(pipeline.fake.called("launch")) == 1, "a non-retryable error was retried"
    pipeline.assert_no_cluster_left()


@pytest.mark.parametrize("step", ["preprocess-down", "train-down"])
async def test_teardown_retries_until_it_succeeds(pipeline: Pipeline, step: str):
    outage = [exceptions.ApiServerConnectionError("http://127.0.0.1:46580")] * 3
    if step == "train-down":
        outage = [None, *outage]  # the preprocess cluster's down goes through
    pipeline.fake.fail_next("down", *outage)
    result = await pipeline.run()
    assert [s.job_status for s in result.steps] == ["SUCCEEDED"] * 3
    assert len(pipeline.fake.called("down")) == 5
    pipeline.assert_no_cluster_left()


async def test_cancel_during_train_cancels_the_job_and_tears_down(pipeline: Pipeline):
    pipeline.fake.plan("train", until_cancelled=True)
    handle = await pipeline.start()
    train_job = await asyncio.to_thread(pipeline.fake.wait_for_job, "train")
    await handle.cancel()
    with pytest.raises(WorkflowFailureError) as err:
        await handle.result()
    assert isinstance(err.value.cause, CancelledError)
    assert train_job.status == "CANCELLED"
    assert pipeline.fake.called("cancel") == [(f"{cluster_prefix_for(handle.id)}-train", [1])]
    pipeline.assert_no_cluster_left()
    progress = await handle.query(SkyPilotWorkflow.progress)
    assert progress.status == "cancelled"
    assert [(s.summary, s.status) for s in progress.steps][3:] == [
        (f"launch train on {cluster_prefix_for(handle.id)}-train", "cancelled"),
        ("eval", "skipped"),
        ("train-down", "skipped"),
        (f"cleanup: down {cluster_prefix_for(handle.id)}-train", "succeeded"),
    ]


async def test_a_retried_train_step_reattaches_instead_of_resubmitting(pipeline: Pipeline):
    pipeline.fake.plan("train", seconds=0.3)
    pipeline.fake.fail_next("tail_logs", exceptions.ApiServerConnectionError("http://x"))
    result = await pipeline.run()
    assert len(pipeline.fake.jobs_named("train")) == 1, "the retry submitted a second train job"
    assert len(pipeline.fake.called("launch")) == 2  # preprocess + train, once each
    assert result.steps[1].job_status == "SUCCEEDED"
    pipeline.assert_no_cluster_left()


async def test_a_step_timeout_fails_the_run_and_tears_down(pipeline: Pipeline):
    pipeline.fake.plan("train", until_cancelled=True)
    cause = await pipeline.fail(timeouts=StepTimeouts(train=3, heartbeat=5))
    assert cause.type == "StepTimedOut" and "step 'train'" in cause.message
    pipeline.assert_no_cluster_left()


async def test_keep_clusters_on_failure_keeps_them_while_the_run_stays_open(pipeline: Pipeline):
    """Kept clusters belong to a run that is still open, so the reaper leaves them alone; the
    `release_clusters` signal (or the keep time running out) tears them down."""
    pipeline.fake.plan("train", status="FAILED")
    handle = await pipeline.start(keep_clusters_on_failure=True, keep_clusters_minutes=30)

    async def kept() -> bool:
        progress = await handle.query(SkyPilotWorkflow.progress)
        return progress.status.startswith("failed: clusters kept for debugging until")

    deadline = asyncio.get_running_loop().time() + 20
    while not await kept():
        assert asyncio.get_running_loop().time() < deadline, "the failed run never kept its clusters"
        await asyncio.sleep(0.1)
    assert [name for name in pipeline.fake.clusters] == [
        n for n in pipeline.fake.ever_launched if n.endswith("-train")
    ]
    assert (await handle.describe()).status.name == "RUNNING"
    await handle.signal(SkyPilotWorkflow.release_clusters)
    with pytest.raises(WorkflowFailureError) as err:
        await handle.result()
    assert err.value.cause.type == "JobFailed"
    pipeline.assert_no_cluster_left()


async def test_the_release_update_says_what_it_released_and_refuses_when_nothing_is_kept(
    pipeline: Pipeline,
):
    """The Update is acknowledged: a caller learns at once whether there was anything to release;
    a refused one leaves nothing in the run's history."""
    pipeline.fake.plan("train", status="FAILED", seconds=2)
    handle = await pipeline.start(keep_clusters_on_failure=True, keep_clusters_minutes=30)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(SkyPilotWorkflow.release_kept_clusters)
    assert "nothing to release: this run keeps no clusters" in str(refused.value.cause)
    deadline = asyncio.get_running_loop().time() + 20
    while not (await handle.query(SkyPilotWorkflow.progress)).status.startswith("failed: clusters kept"):
        assert asyncio.get_running_loop().time() < deadline, "the failed run never kept its clusters"
        await asyncio.sleep(0.1)
    released = await handle.execute_update(SkyPilotWorkflow.release_kept_clusters)
    assert released.clusters == [f"{cluster_prefix_for(handle.id)}-train"] and released.variants == []
    with pytest.raises(WorkflowUpdateFailedError):  # released once: nothing left to release
        await handle.execute_update(SkyPilotWorkflow.release_kept_clusters)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    pipeline.assert_no_cluster_left()
    accepted = [
        e
        async for e in handle.fetch_history_events()
        if e.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_UPDATE_ACCEPTED
    ]
    assert len(accepted) == 1


async def test_a_cancel_ends_the_keep_clusters_wait_and_tears_them_down(pipeline: Pipeline):
    pipeline.fake.plan("train", status="FAILED")
    handle = await pipeline.start(keep_clusters_on_failure=True, keep_clusters_minutes=30)
    deadline = asyncio.get_running_loop().time() + 20
    while not (await handle.query(SkyPilotWorkflow.progress)).status.startswith("failed: clusters kept"):
        assert asyncio.get_running_loop().time() < deadline, "the failed run never kept its clusters"
        await asyncio.sleep(0.1)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    pipeline.assert_no_cluster_left()


async def test_invalid_input_fails_the_run_with_a_message_not_a_hang(pipeline: Pipeline):
    cause = await pipeline.fail(repo_url="", timeouts=StepTimeouts(train=0), keep_clusters_minutes=0)
    assert cause.type == "InvalidInput"
    assert "repo_url is empty" in cause.message and "timeouts.train" in cause.message
    assert "keep_clusters_minutes" in cause.message
    assert pipeline.fake.calls == []


async def test_concurrent_runs_never_share_a_cluster(pipeline: Pipeline):
    pipeline.fake.plan("train", seconds=0.5)
    handles = [await pipeline.start() for _ in range(3)]
    await asyncio.gather(*(h.result() for h in handles))
    launched = [cluster for op, cluster in sdk_steps(pipeline.fake) if op == "launch"]
    assert len(launched) == len(set(launched)) == 6
    pipeline.assert_no_cluster_left()


def test_cluster_prefix_is_valid_marked_and_unique_per_workflow_id():
    ids = [
        "skypilot-3fa2b1c9",
        "Run_1",
        "run-1",
        "x" * 80,
        "x" * 80 + "y",
        "123",
        "a/b c",
        "e2e-1",
        "skypilot-e2e-1",
        "skypilot-UPPER",
        "",
    ]
    prefixes = [cluster_prefix_for(i) for i in ids]
    assert prefixes[0] == "skypilot-3fa2b1c9"
    assert len(set(prefixes)) == len(ids)
    from skypilot_temporal.naming import CLUSTER_MARKER, CLUSTER_NAME, MAX_PREFIX_LENGTH

    for prefix in prefixes:
        assert CLUSTER_NAME.fullmatch(prefix) and len(prefix) <= MAX_PREFIX_LENGTH, prefix
        assert prefix.startswith(CLUSTER_MARKER), "the reaper only looks at marked clusters"


@pytest.mark.parametrize(
    "name",
    [
        "happy_path",
        "overlap_happy",
        "overlap_failed_provision",
        "overlap_failed_preprocess",
        "overlap_cancel_during_preprocess",
        "cancel_during_train",
        "keep_clusters_then_release",
        "searchable_happy_path",
    ],
)
async def test_recorded_history_replays_deterministically(name: str):
    """Guards determinism: today's workflow code must replay histories recorded earlier.

    happy_path.json is from before run-scoped names; the other three were recorded by the
    workflow as it was before the building blocks (commit 42b2fa8): the overlap path, a
    provisioning failure that stops preprocess, and a cancel during train; searchable_happy_path
    is a run started with its search attributes (the upserts that keep them current). Regenerate
    (`python -m tests.workflows.record_history`) only for an intended, versioned change.
    """
    history = json.loads((HISTORIES / f"{name}.json").read_text())
    from temporalio.client import WorkflowHistory

    await Replayer(workflows=[SkyPilotWorkflow]).replay_workflow(
        WorkflowHistory.from_json(history["workflow_id"], history["history"])
    )


class _RecordActivityInputs(Interceptor):
    """Replayer interceptor: what the workflow code asks each activity to do."""

    def __init__(self) -> None:
        self.inputs: list[tuple[str, object]] = []

    def workflow_interceptor_class(self, input: WorkflowInterceptorClassInput):
        recorded = self.inputs

        class Inbound(WorkflowInboundInterceptor):
            def init(self, outbound: WorkflowOutboundInterceptor) -> None:
                class Outbound(WorkflowOutboundInterceptor):
                    def start_activity(self, input: StartActivityInput):
                        recorded.append((input.activity, input.args[0]))
                        return super().start_activity(input)

                super().init(Outbound(outbound))

        return Inbound


async def test_a_run_started_before_run_scoped_names_keeps_its_cluster_and_job_names():
    """A run in flight across the upgrade tears down the clusters it launched, under their names."""
    history = json.loads(HISTORY_FILE.read_text())
    from temporalio.client import WorkflowHistory

    recorder = _RecordActivityInputs()
    await Replayer(workflows=[SkyPilotWorkflow], interceptors=[recorder]).replay_workflow(
        WorkflowHistory.from_json(history["workflow_id"], history["history"])
    )
    clusters = [getattr(args, "cluster_name", None) for _, args in recorder.inputs]
    assert clusters[1:6] == [
        "recorded-happy-path-preprocess",
        "recorded-happy-path-preprocess",
        "recorded-happy-path-train",
        "recorded-happy-path-train",
        "recorded-happy-path-train",
    ]
    assert recorder.inputs[3][1].task.job_name == "recorded-happy-path-train"


async def test_a_run_started_before_injective_prefixes_keeps_its_cluster_names():
    """Its workflow id is hashed differently now: across the upgrade it still tears down the
    clusters it launched, under their names."""
    history = json.loads((HISTORIES / "searchable_happy_path.json").read_text())
    from temporalio.client import WorkflowHistory

    recorder = _RecordActivityInputs()
    await Replayer(workflows=[SkyPilotWorkflow], interceptors=[recorder]).replay_workflow(
        WorkflowHistory.from_json(history["workflow_id"], history["history"])
    )
    old_prefix = cluster_prefix_v1_for(history["workflow_id"])
    assert old_prefix != cluster_prefix_for(history["workflow_id"])
    clusters = {getattr(args, "cluster_name", None) for _, args in recorder.inputs} - {None}
    assert clusters == {f"{old_prefix}-preprocess", f"{old_prefix}-train"}


async def test_a_run_whose_first_workflow_task_was_retried_replays(pipeline: Pipeline, monkeypatch):
    """The patch markers are recorded in the first workflow task: a history whose first task
    failed once (a worker's transient error) still replays."""
    once = [RuntimeError("transient, once")]

    def flaky(input):
        if once:
            raise once.pop()
        return input_problems(input)

    monkeypatch.setattr(pipeline_blocks, "input_problems", flaky)
    handle = await pipeline.start()
    await handle.result()
    history = await handle.fetch_history()
    assert any(e.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED for e in history.events)
    await Replayer(
        workflows=[SkyPilotWorkflow], data_converter=pipeline.env.client.data_converter
    ).replay_workflow(history)


@pytest.mark.parametrize("overlap", [False, True])
async def test_a_fresh_history_replays(pipeline: Pipeline, overlap: bool):
    handle = await pipeline.start(overlap_provisioning=overlap)
    await handle.result()
    history = await handle.fetch_history()
    await Replayer(
        workflows=[SkyPilotWorkflow], data_converter=pipeline.env.client.data_converter
    ).replay_workflow(history)


async def test_overlapped_provisioning_brings_train_up_during_preprocess(pipeline: Pipeline):
    pipeline.fake.plan("preprocess", seconds=1.0)
    pipeline.fake.down_seconds = 1.0
    handle = await pipeline.start(overlap_provisioning=True)
    result = await handle.result()
    prefix = cluster_prefix_for(handle.id)
    train = f"{prefix}-train"
    order = sdk_steps(pipeline.fake)
    assert order.index(("launch", train)) < order.index(("down", f"{prefix}-preprocess"))
    # The preprocess cluster goes down while train starts on the early cluster, not before it.
    [down_at] = [t for t, m, a in pipeline.fake.timeline if (m, a) == ("down", f"{prefix}-preprocess")]
    train_launch_at = [t for t, m, a in pipeline.fake.timeline if m == "launch" and a[1] == train][-1]
    assert train_launch_at < down_at + pipeline.fake.down_seconds
    assert order.count(("launch", train)) == 2  # provision, then the train job reusing it
    [preprocess_job], [setup_job], [train_job] = (
        pipeline.fake.jobs_named(step) for step in ("preprocess", "provision", "train")
    )
    assert preprocess_job.status == "SUCCEEDED"
    # Setup ran once, in the early job; the train launch reused the cluster without re-running it.
    assert (setup_job.job_id, setup_job.ran_setup) == (1, True)
    assert (train_job.job_id, train_job.ran_setup) == (2, False)
    assert [s.job_status for s in result.steps] == ["SUCCEEDED"] * 3
    progress = await handle.query(SkyPilotWorkflow.progress)
    assert [s.name for s in progress.steps] == [
        "fetch-tasks",
        "preprocess",
        "preprocess-down",
        "train-provision",
        "train",
        "eval",
        "train-down",
    ]
    pipeline.assert_no_cluster_left()


@pytest.mark.parametrize("overlap", [False, True])
async def test_steps_on_a_cluster_the_run_launched_skip_the_job_listing(pipeline: Pipeline, overlap: bool):
    """Listing a cluster's jobs (sky.queue) is a round trip to the cluster, ~3 s on the local
    stack: eval (and, overlapped, train) run on a cluster this run launched, so no earlier run's
    job can be there to adopt."""
    handle = await pipeline.start(overlap_provisioning=overlap)
    result = await handle.result()
    assert pipeline.fake.called("queue") == []
    [train] = [s for s in result.steps if s.step == "train"]
    # Overlapped, the provision step launched the cluster and train reused it.
    assert train.cluster_created_by_run == ("" if overlap else handle.result_run_id)


async def test_overlapped_provisioning_tears_the_early_cluster_down_if_preprocess_fails(pipeline: Pipeline):
    pipeline.fake.provision_seconds = 1.0
    pipeline.fake.plan("preprocess", status="FAILED")
    cause = await pipeline.fail(overlap_provisioning=True)
    assert "step 'preprocess'" in cause.message
    assert pipeline.fake.jobs_named("train") == [], "the train job ran although preprocess failed"
    assert any(c.endswith("-train") for c in pipeline.fake.ever_launched)
    pipeline.assert_no_cluster_left()


def test_run_tokens_differ_for_runs_started_in_the_same_minute():
    """Run ids are UUIDv7: time-ordered, the leading digits shared by runs a minute apart."""
    run_ids = [f"01a209be-{i:04x}-7dc2-8cf6-52ed43e40177" for i in range(50)]
    assert len({run_token(r) for r in run_ids}) == 50


async def test_an_encrypted_history_of_a_failed_run_replays_with_its_key_only():
    """Recorded with payload encryption on
    (`python -m tests.workflows.record_history --failed-encrypted`): the
    failure path replays, and without the key the history cannot even be read."""
    from record_history import FAILED_RUN_MARKERS, RECORDING_CODEC_KEYS
    from temporalio.client import WorkflowHistory

    from skypilot_temporal.trust.codec import data_converter

    text = ENCRYPTED_HISTORY_FILE.read_text()
    assert not [m for m in FAILED_RUN_MARKERS if m in text], "the raw history shows a marker"
    recorded = json.loads(text)
    history = WorkflowHistory.from_json(recorded["workflow_id"], recorded["history"])
    replayed = await Replayer(
        workflows=[SkyPilotWorkflow], data_converter=data_converter(RECORDING_CODEC_KEYS)
    ).replay_workflow(history, raise_on_replay_failure=False)
    assert replayed.replay_failure is None, replayed.replay_failure
    unreadable = await Replayer(workflows=[SkyPilotWorkflow]).replay_workflow(
        history, raise_on_replay_failure=False
    )
    assert unreadable.replay_failure is not None


async def test_the_workflow_result_carries_each_steps_metrics(pipeline):
    pipeline.fake.plan("train", logs=["(train, pid=7) METRIC loss=0.125"])
    pipeline.fake.plan("eval", logs=["(eval, pid=9) METRIC eval_accuracy=0.93"])
    result = await pipeline.run()
    assert [s.metrics for s in result.steps] == [{}, {"loss": 0.125}, {"eval_accuracy": 0.93}]
