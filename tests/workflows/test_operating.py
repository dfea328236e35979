"""Operating it: schedules, search attributes, metrics and tracing, on a real dev server with the
fake SkyPilot SDK (tests/e2e/test_operating_e2e.py does the same on the real stack)."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from temporalio.client import (
    Client,
    ScheduleIntervalSpec,
    ScheduleOverlapPolicy,
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.common import TypedSearchAttributes
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment
from temporalio.worker import Replayer
from test_scripts import assert_one_line_error, run_script, starter_env

import run_workflow
from skypilot_temporal import worker_startup
from skypilot_temporal.client import starting
from skypilot_temporal.errors import ConfigError
from skypilot_temporal.operations import search_attributes
from skypilot_temporal.operations.metrics import prometheus_runtime
from skypilot_temporal.operations.reaper import ClusterReaperWorkflow
from skypilot_temporal.operations.schedules import ScheduleRequest
from skypilot_temporal.operations.search_attributes import (
    COMMIT_SHA,
    PIPELINE_KIND,
    PIPELINE_OUTCOME,
    PIPELINE_STEP,
    TASK_REPO,
)
from skypilot_temporal.operations.tracing import otlp_tracing, tracing
from skypilot_temporal.payloads import LaunchInput, ManagedJobInput, ReaperInput, SweepInput, TaskSpec
from skypilot_temporal.settings import WorkerSettings
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.workflow.pipeline import TEARDOWN_ATTEMPTS_PER_ROUND
from testing import ROOT, free_port
from testing.in_process import Pipeline, git, running_worker, start_dev_server
from testing.prometheus import scrape, serving_metrics, value
from testing.waiting import eventually
from workflows import SkyPilotWorkflow, SweepVariantWorkflow, SweepWorkflow

SIX_STEPS = ["fetch-tasks", "preprocess", "preprocess-down", "train", "eval", "train-down"]


async def workflow_ids(client: Client, query: str) -> list[str]:
    return sorted([w.id async for w in client.list_workflows(query)])


async def steps_seen(handle: WorkflowHandle) -> tuple[list[str], WorkflowExecutionDescription]:
    """The run's PipelineStep values as they change, polled until it ends; its last description."""
    seen: list[str] = []
    while (description := await handle.describe()).status == WorkflowExecutionStatus.RUNNING:
        step = description.typed_search_attributes.get(PIPELINE_STEP)
        if step and (not seen or seen[-1] != step):
            seen.append(step)
        await asyncio.sleep(0.1)
    return seen, description


# ------------------------------------------------------------------ schedules


async def test_a_schedule_fires_runs_and_skips_one_that_would_overlap(pipeline: Pipeline):
    pipeline.fake.plan("train", seconds=4)
    schedule_id = f"sched-{uuid.uuid4().hex[:6]}"
    rc, stdout, stderr = await run_script(
        "run_workflow.py", "--every", "1s", "--schedule-id", schedule_id, env_overrides=starter_env(pipeline)
    )
    assert rc == 0 and stderr == "", (stdout, stderr)
    assert stdout.startswith(f"Created schedule {schedule_id}: every 0:00:01, overlap skip;"), stdout
    assert f"/namespaces/default/schedules/{schedule_id}" in stdout
    client = pipeline.env.client
    handle = client.get_schedule_handle(schedule_id)

    async def two_runs_and_a_skip() -> bool:
        info = (await handle.describe()).info
        return len(info.recent_actions) >= 2 and info.num_actions_skipped_overlap >= 1

    try:
        await eventually(two_runs_and_a_skip, "two scheduled runs, one skipped for overlap", 60, every=0.2)
    finally:
        await handle.delete()
    runs = [w async for w in client.list_workflows(f"TemporalScheduledById='{schedule_id}'")]
    for run in runs:
        await client.get_workflow_handle(run.id, run_id=run.run_id).result()
    runs = [w async for w in client.list_workflows(f"TemporalScheduledById='{schedule_id}'")]
    assert len(runs) >= 2 and len({run.id for run in runs}) == len(runs)  # each its own id
    assert all(run.id.startswith(f"{schedule_id}-") for run in runs)
    assert all(run.status == WorkflowExecutionStatus.COMPLETED for run in runs)
    spans = sorted((run.start_time, run.close_time) for run in runs)
    for (_, closed), (next_start, _) in itertools.pairwise(spans):
        assert closed is not None and closed <= next_start, "a scheduled run started while one was going"
    pipeline.assert_no_cluster_left()


async def test_the_same_schedule_id_updates_it_and_keeps_it_paused(pipeline: Pipeline):
    schedule_id = f"sched-{uuid.uuid4().hex[:6]}"
    env = starter_env(pipeline)
    cron = "CRON_TZ=Europe/Paris 0 3 * * *"
    rc, stdout, _ = await run_script(
        "run_workflow.py", "--schedule", cron, "--schedule-id", schedule_id, env_overrides=env
    )
    assert rc == 0 and stdout.startswith(f"Created schedule {schedule_id}: cron '{cron}', overlap"), stdout
    handle = pipeline.env.client.get_schedule_handle(schedule_id)
    try:
        await handle.pause(note="maintenance")
        rc, stdout, _ = await run_script(
            "run_workflow.py",
            "--sweep",
            "LR=0.1,0.01",
            "--every",
            "6h",
            "--overlap",
            "buffer-one",
            "--schedule-id",
            schedule_id,
            env_overrides=env,
        )
        assert rc == 0 and stdout.startswith(
            f"Updated schedule {schedule_id}: every 6:00:00, overlap buffer-one"
        ), stdout
        schedule = (await handle.describe()).schedule
        assert schedule.state.paused and schedule.state.note == "maintenance"
        assert schedule.spec.intervals == [ScheduleIntervalSpec(every=timedelta(hours=6))]
        assert schedule.spec.cron_expressions == [] and schedule.spec.calendars == []
        assert schedule.policy.overlap == ScheduleOverlapPolicy.BUFFER_ONE
        assert schedule.policy.catchup_window == timedelta(hours=6)
        assert schedule.action.workflow == SweepWorkflow.__name__
        kind = schedule.action.typed_search_attributes.get(PIPELINE_KIND)
        assert kind == "sweep"
    finally:
        await handle.delete()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--every", "5x", "--schedule-id", "s"], "--every '5x': use a duration such as 30m"),
        (["--schedule", "0 3 * * *"], "--schedule needs --schedule-id ID"),
        (["--every", "1h", "--schedule-id", "s", "--workflow-id", "w"], "does not take --workflow-id"),
        (["--every", "1h", "--schedule-id", "s", "--cluster-prefix", "c"], "a fixed --cluster-prefix"),
        (["--every", "1h", "--schedule-id", "bad id!"], "--schedule-id 'bad id!': use letters"),
        (["--overlap", "skip"], "--schedule-id and --overlap need --schedule CRON or --every DURATION"),
        (["--schedule", "not a cron", "--schedule-id", "s"], "cannot create schedule 's': "),
        (["--schedule", "0 3 * * *", "--every", "1h", "--schedule-id", "s"], "not allowed with argument"),
        (["--schedule", "  ", "--schedule-id", "s"], "--schedule needs a cron expression"),
        (["--every", "99999999999d", "--schedule-id", "s"], "must be between 1s and 366d"),
        (["--every", "0s", "--schedule-id", "s"], "must be between 1s and 366d"),
    ],
)
async def test_bad_schedule_input_is_a_one_line_error(pipeline: Pipeline, args, message):
    rc, stdout, stderr = await run_script("run_workflow.py", *args, env_overrides=starter_env(pipeline))
    assert_one_line_error(rc, stdout, stderr, message)


def test_a_schedule_says_when_it_fires():
    assert ScheduleRequest("s", cron="0 3 * * *").when() == "cron '0 3 * * *' (UTC)"
    assert ScheduleRequest("s", cron="CRON_TZ=Europe/Paris 0 3 * * *").when() == (
        "cron 'CRON_TZ=Europe/Paris 0 3 * * *'"
    )
    assert ScheduleRequest("s", every=timedelta(minutes=90)).when() == "every 1:30:00"


# ------------------------------------------------------------------ search attributes


async def test_search_attributes_find_the_run_training_now_then_its_outcome(pipeline: Pipeline):
    pipeline.fake.plan("train", until_cancelled=True)
    workflow_id = f"wf-{uuid.uuid4().hex[:8]}"
    rc, stdout, stderr = await run_script(
        "run_workflow.py", "--no-wait", "--workflow-id", workflow_id, env_overrides=starter_env(pipeline)
    )
    assert rc == 0 and stderr == "", (stdout, stderr)
    client = pipeline.env.client
    sha = git("rev-parse", "main", cwd=pipeline.repo)
    training_now = f"PipelineStep='train' AND CommitSha='{sha}'"
    job = await asyncio.to_thread(pipeline.fake.wait_for_job, "train")

    async def found(query: str) -> bool:
        return await workflow_ids(client, query) == [workflow_id]

    await eventually(lambda: found(training_now), training_now, 30, every=0.2)
    repo = str(pipeline.repo)
    await eventually(
        lambda: found(f"PipelineKind='pipeline' AND TaskRepo='{repo}' AND PipelineOutcome='running'"),
        "the run",
        30,
        every=0.2,
    )
    job.status, job.finished_at = "SUCCEEDED", time.monotonic()
    job.done.set()
    await client.get_workflow_handle(workflow_id).result()
    await eventually(
        lambda: found(f"PipelineOutcome='succeeded' AND CommitSha='{sha}'"), "its outcome", 30, every=0.2
    )
    attributes = (await client.get_workflow_handle(workflow_id).describe()).typed_search_attributes
    assert attributes.get(PIPELINE_STEP) is None  # no step runs any more
    assert await workflow_ids(client, training_now) == []


async def test_the_current_step_follows_every_step_of_the_run(pipeline: Pipeline):
    """Each step shows while it runs (polled from visibility as the run goes)."""
    for step in ("preprocess", "train", "eval"):
        pipeline.fake.plan(step, seconds=1.5)
    handle = await pipeline.env.client.start_workflow(
        SkyPilotWorkflow.run,
        pipeline.input(),
        id=f"wf-{uuid.uuid4().hex[:8]}",
        task_queue=pipeline.task_queue,
        search_attributes=search_attributes.at_start("SkyPilotWorkflow", str(pipeline.repo)),
    )
    seen, description = await steps_seen(handle)
    assert [s for s in ("preprocess", "train", "eval") if s in seen] == ["preprocess", "train", "eval"], seen
    assert description.typed_search_attributes.get(PIPELINE_OUTCOME) == "succeeded"
    await Replayer(
        workflows=[SkyPilotWorkflow], data_converter=pipeline.env.client.data_converter
    ).replay_workflow(await handle.fetch_history())


async def test_with_overlapping_steps_the_step_still_running_shows(pipeline: Pipeline):
    """Overlapped provisioning: preprocess shows while the train cluster is provisioned beside
    it; once preprocess (and its teardown) ended, that provisioning, still going, shows."""
    pipeline.fake.plan("preprocess", seconds=0.3)
    pipeline.fake.plan("provision", seconds=3)  # the train task's setup on the early cluster
    pipeline.fake.plan("train", seconds=1)
    handle = await pipeline.start(overlap_provisioning=True)
    seen, _ = await steps_seen(handle)
    assert "preprocess" in seen and "train" in seen, seen
    between = seen[seen.index("preprocess") + 1 : seen.index("train")]
    assert between and between[-1] == "train-provision", seen


async def test_a_failed_run_keeping_its_clusters_shows_it_then_ends_failed(pipeline: Pipeline):
    pipeline.fake.plan("train", status="FAILED")
    handle = await pipeline.start(keep_clusters_on_failure=True, keep_clusters_minutes=30)

    async def kept() -> bool:
        attributes = (await handle.describe()).typed_search_attributes
        return attributes.get(PIPELINE_STEP) == "clusters-kept"

    await eventually(kept, "PipelineStep 'clusters-kept'", 30, every=0.2)
    await handle.signal(SkyPilotWorkflow.release_clusters)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    attributes = (await handle.describe()).typed_search_attributes
    assert (attributes.get(PIPELINE_OUTCOME), attributes.get(PIPELINE_STEP)) == ("failed", None)
    pipeline.assert_no_cluster_left()


async def test_a_run_refused_for_bad_input_ends_failed(pipeline: Pipeline):
    handle = await pipeline.start(repo_url="")
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    attributes = (await handle.describe()).typed_search_attributes
    assert (attributes.get(PIPELINE_OUTCOME), attributes.get(PIPELINE_STEP)) == ("failed", None)


async def test_sweep_variants_are_searchable_by_kind_and_commit(pipeline: Pipeline):
    client = pipeline.env.client
    sweep_id = f"sweep-{uuid.uuid4().hex[:6]}"
    result = await client.execute_workflow(
        SweepWorkflow.run,
        SweepInput(pipeline.input(), variants=[{"LR": "0.1"}, {"LR": "0.01"}]),
        id=sweep_id,
        task_queue=pipeline.task_queue,
        search_attributes=search_attributes.at_start("SweepWorkflow", str(pipeline.repo)),
    )
    query = (
        f"PipelineKind='sweep-variant' AND CommitSha='{result.commit_sha}' AND PipelineOutcome='succeeded'"
    )
    expected = [f"{sweep_id}-v1", f"{sweep_id}-v2"]

    async def variants_found() -> bool:
        return await workflow_ids(client, query) == expected

    await eventually(variants_found, query, 30, every=0.2)
    parent = (await client.get_workflow_handle(sweep_id).describe()).typed_search_attributes
    assert (parent.get(PIPELINE_KIND), parent.get(PIPELINE_OUTCOME)) == ("sweep", "succeeded")
    child = (await client.get_workflow_handle(expected[0]).describe()).typed_search_attributes
    assert child.get(TASK_REPO) == str(pipeline.repo) and child.get(COMMIT_SHA) == result.commit_sha
    child_history = await client.get_workflow_handle(expected[0]).fetch_history()
    started = child_history.events[0].workflow_execution_started_event_attributes.search_attributes
    assert started.indexed_fields["CommitSha"].data == f'"{result.commit_sha}"'.encode()  # from the start
    assert not [
        e
        for e in child_history.events
        if "CommitSha"
        in e.upsert_workflow_search_attributes_event_attributes.search_attributes.indexed_fields
    ]
    replayer = Replayer(workflows=[SweepWorkflow, SweepVariantWorkflow], data_converter=client.data_converter)
    for workflow_id in (sweep_id, *expected):
        await replayer.replay_workflow(await client.get_workflow_handle(workflow_id).fetch_history())


async def test_without_registered_attributes_runs_work_and_the_worker_says_so(
    fake_sky: FakeSky, task_repo: Path, tmp_path: Path, caplog
):
    env = await start_dev_server(register_search_attributes=False)
    try:
        task_queue = f"test-{uuid.uuid4().hex[:8]}"
        async with running_worker(env, fake_sky, tmp_path / "checkouts", task_queue):
            pipeline = Pipeline(env, fake_sky, task_repo, task_queue)
            rc, stdout, stderr = await run_script("run_workflow.py", env_overrides=starter_env(pipeline))
        assert rc == 0, (stdout, stderr)
        note = stderr.splitlines()
        assert len(note) == 1 and note[0].startswith("run_workflow.py: note: the namespace refused"), stderr
        assert note[0].endswith(
            "started without them, so not searchable (docs/deploying-and-operating.md)"
        ), stderr
        rc, stdout, stderr = await run_script(
            "run_workflow.py", "--every", "1h", "--schedule-id", "hourly", env_overrides=starter_env(pipeline)
        )
        assert rc == 0 and stdout.startswith("Created schedule hourly: every 1:00:00"), (stdout, stderr)
        assert len(stderr.splitlines()) == 1 and "note: the namespace refused" in stderr, stderr
        schedule = (await env.client.get_schedule_handle("hourly").describe()).schedule
        assert schedule.action.typed_search_attributes == TypedSearchAttributes.empty
        caplog.clear()
        with caplog.at_level(logging.INFO, logger=worker_startup.log.name):
            await worker_startup.report_search_attributes(env.client)
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "\n" not in warnings[0], warnings
        assert warnings[0].startswith("Search attributes NOT registered in namespace default: PipelineStep, ")
        assert "temporal operator search-attribute create --name NAME --type Keyword" in warnings[0]
    finally:
        await env.shutdown()


async def test_the_worker_reports_registered_attributes_in_one_line(env: WorkflowEnvironment, caplog):
    with caplog.at_level(logging.INFO, logger=worker_startup.log.name):
        await worker_startup.report_search_attributes(env.client)
    assert [r.getMessage() for r in caplog.records] == [
        "Search attributes: PipelineStep, TaskRepo, CommitSha, PipelineKind, PipelineOutcome"
    ]


async def test_search_attributes_never_carry_repository_credentials():
    url = "https://user:tok3n@git.example.com/tasks.git?private_token=tok4n#frag"
    args = run_workflow.build_parser().parse_args(["--repo", url])
    captured: list[TypedSearchAttributes] = []

    async def start(given: TypedSearchAttributes) -> None:
        captured.append(given)

    await starting.searchable("SkyPilotWorkflow", run_workflow.pipeline_input(args), start)
    repo = captured[0].get(TASK_REPO)
    assert repo == "https://git.example.com/tasks.git", repo
    assert (
        search_attributes.searchable_repo("deploy@git.example.com:org/tasks.git")
        == "git.example.com:org/tasks.git"
    )
    assert search_attributes.searchable_repo("/srv/tasks") == "/srv/tasks"


# ------------------------------------------------------------------ metrics and tracing


async def test_the_worker_serves_sdk_and_pipeline_metrics(
    env: WorkflowEnvironment, fake_sky: FakeSky, task_repo: Path, tmp_path: Path
):
    measured, address = await serving_metrics(env)
    client = measured.client
    task_queue = f"test-{uuid.uuid4().hex[:8]}"
    fake_sky.plan("train", seconds=0.3)
    # A whole round of teardown attempts fails, then the next round's first attempt succeeds:
    # three retries inside the round (the activity counts them) and one new round (the workflow).
    fake_sky.fail_next("down", *[RuntimeError("teardown hiccup")] * TEARDOWN_ATTEMPTS_PER_ROUND)
    old = "skypilot-gone1-train"  # a leaked cluster whose run is gone
    fake_sky.add_job(old, "x")
    fake_sky.clusters[old].launched_at = time.time() - 3600
    async with running_worker(measured, fake_sky, tmp_path / "checkouts", task_queue):
        pipeline = Pipeline(measured, fake_sky, task_repo, task_queue)
        await pipeline.run()
        fake_sky.plan("train", status="FAILED")
        failed = await pipeline.start()
        with pytest.raises(WorkflowFailureError):
            await failed.result()
        fake_sky.plan("train", until_cancelled=True)  # a managed job whose run is gone
        orphan_job = "skypilot-gone2-0123abcd-train"
        task = fake_sky.Task.from_yaml_config({"name": orphan_job, "run": "true"})
        fake_sky.get(fake_sky.jobs.launch(task, name=orphan_job))
        fake_sky.jobs.managed[-1].submitted_at -= 3600
        reaped = await client.execute_workflow(
            ClusterReaperWorkflow.run,
            ReaperInput(grace_seconds=60),
            id=f"reaper-{task_queue}",
            task_queue=task_queue,
        )
        assert reaped.reaped == [old] and reaped.cancelled_jobs == [fake_sky.jobs.managed[-1].job_id]
        samples = scrape(address)
    for step in SIX_STEPS:  # two runs: one succeeded, one failed at train
        labels = dict(step=step, outcome="succeeded", workflow_type="SkyPilotWorkflow")
        runs = 2 if step in ("fetch-tasks", "preprocess", "preprocess-down") else 1
        assert value(samples, "skypilot_step_duration_seconds_count", **labels) == runs, step
        assert 0 < value(samples, "skypilot_step_duration_seconds_sum", **labels) < 60, step
    assert value(samples, "skypilot_step_duration_seconds_sum", step="train") >= 0.3
    # Buckets fit steps of seconds to a day (not the SDK's default milliseconds).
    train_buckets = [
        (labels["le"], count)
        for labels, count in samples["skypilot_step_duration_seconds_bucket"]
        if labels["step"] == "train" and labels["outcome"] == "succeeded"
    ]
    assert [le for le, _ in train_buckets][:4] == ["0.5", "1", "5", "15"], train_buckets
    assert dict(train_buckets)["30"] == 1 and dict(train_buckets)["86400"] == 1
    assert value(samples, "skypilot_runs_total", outcome="succeeded", task_queue=task_queue) == 1
    assert value(samples, "skypilot_runs_total", outcome="failed", task_queue=task_queue) == 1
    assert value(samples, "skypilot_step_duration_seconds_count", step="train", outcome="failed") == 1
    assert value(samples, "skypilot_step_duration_seconds_count", step="cleanup", outcome="succeeded") == 1
    assert value(samples, "skypilot_teardown_retries_total") == TEARDOWN_ATTEMPTS_PER_ROUND
    assert value(samples, "skypilot_jobs_reattached_total") == 0  # nothing was re-attached
    reaper = dict(workflow_type="ClusterReaperWorkflow")
    assert value(samples, "skypilot_reaper_clusters_removed_total", **reaper) == 1
    assert value(samples, "skypilot_reaper_jobs_cancelled_total", **reaper) == 1
    # The SDK's own: workflow task latencies, slots, pollers; durations in seconds.
    assert value(samples, "temporal_workflow_task_execution_latency_count", task_queue=task_queue) > 0
    assert value(samples, "temporal_activity_execution_latency_count", activity_type="launch_task") == 4
    assert 0.3 < value(samples, "temporal_activity_execution_latency_sum", activity_type="launch_task") < 60
    outcome = (await failed.describe()).typed_search_attributes
    assert (outcome.get(PIPELINE_OUTCOME), outcome.get(PIPELINE_STEP)) == ("failed", None)
    assert value(samples, "temporal_num_pollers", poller_type="activity_task", task_queue=task_queue) > 0
    assert "temporal_worker_task_slots_available" in samples


async def test_retries_that_find_their_job_count_as_reattached(activities, fake_sky: FakeSky):
    """A retried step that finds the job an earlier attempt submitted (on a cluster, or as a
    managed job) counts once, with its kind."""
    address = f"127.0.0.1:{free_port()}"
    retry = ActivityEnvironment()
    retry.info = dataclasses.replace(retry.info, attempt=2, heartbeat_details=[])
    runtime = prometheus_runtime(address)  # serves while referenced
    retry.metric_meter = runtime.metric_meter
    yaml_text = (ROOT / "tasks" / "train.yaml").read_text()
    train = TaskSpec(step="train", job_name="wf1-0123abcd-train", yaml_text=yaml_text)
    fake_sky.add_job("wf1-train", train.job_name, status="SUCCEEDED")
    await retry.run(activities.launch_task, LaunchInput(cluster_name="wf1-train", task=train))
    task = fake_sky.Task.from_yaml_config({"name": train.job_name, "run": "true"})
    fake_sky.get(fake_sky.jobs.launch(task, name=train.job_name))
    await retry.run(activities.submit_managed_job, ManagedJobInput(train))
    assert fake_sky.called("launch") == [] and len(fake_sky.called("jobs.launch")) == 1  # nothing resubmitted
    samples = scrape(address)
    assert value(samples, "skypilot_jobs_reattached_total", kind="cluster") == 1
    assert value(samples, "skypilot_jobs_reattached_total", kind="managed") == 1


async def test_tracing_exports_a_span_per_workflow_and_activity(pipeline: Pipeline, tmp_path: Path):
    exporter = InMemorySpanExporter()
    interceptor, provider = tracing(exporter)
    task_queue = f"test-{uuid.uuid4().hex[:8]}"
    async with running_worker(
        pipeline.env, pipeline.fake, tmp_path / "traced", task_queue, interceptors=[interceptor]
    ):
        traced = Pipeline(pipeline.env, pipeline.fake, pipeline.repo, task_queue)
        handle = await traced.start()
        await handle.result()
    provider.shutdown()
    names = [span.name for span in exporter.get_finished_spans()]
    assert "RunWorkflow:SkyPilotWorkflow" in names, names
    for activity_name in ("fetch_tasks", "launch_task", "exec_task", "down_cluster"):
        assert f"RunActivity:{activity_name}" in names, names
    workflow_span = next(s for s in exporter.get_finished_spans() if s.name == "RunWorkflow:SkyPilotWorkflow")
    assert workflow_span.resource.attributes["service.name"] == "skypilot-temporal-worker"
    assert workflow_span.attributes.get("temporalWorkflowID") == handle.id


def metrics_runtime_from_env():
    return worker_startup.metrics_runtime(WorkerSettings.from_env().metrics_address)


def test_the_metrics_address_setting(monkeypatch):
    monkeypatch.setenv("WORKER_METRICS_ADDRESS", "off")
    assert metrics_runtime_from_env() == (None, "off (WORKER_METRICS_ADDRESS=off)")
    monkeypatch.setenv("WORKER_METRICS_ADDRESS", "localhost:http")
    with pytest.raises(
        ConfigError, match=r"^WORKER_METRICS_ADDRESS 'localhost:http': Invalid Prometheus address"
    ):
        metrics_runtime_from_env()
    address = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("WORKER_METRICS_ADDRESS", address)
    runtime, status = metrics_runtime_from_env()
    assert runtime is not None and status == f"Prometheus at http://{address}/metrics"
    in_use = metrics_runtime_from_env()  # a second worker on the same host
    assert in_use == (None, f"NOT served: {address} is in use (set WORKER_METRICS_ADDRESS to another port)")


def test_tracing_is_off_unless_an_otlp_endpoint_is_set():
    assert otlp_tracing({}) is None and otlp_tracing({"OTEL_EXPORTER_OTLP_ENDPOINT": " "}) is None
    traced = otlp_tracing({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:1/v1/traces"})
    assert traced is not None
    traced[1].shutdown()
    grpc = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    with pytest.raises(
        ConfigError, match=r"^OTEL_EXPORTER_OTLP_PROTOCOL=grpc: the worker exports traces over http"
    ):
        otlp_tracing(grpc)
