"""SweepWorkflow on a real Temporal dev server, activities over the fake SDK."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from datetime import timedelta

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle, WorkflowHistory
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.service import RPCError
from temporalio.worker import Replayer

import workflows
from skypilot_temporal.bounds import (
    MAX_SWEEP_PARAMS_BYTES,
    MAX_SWEEP_VARIANT_INPUTS_BYTES,
    MAX_SWEEP_VARIANTS,
    MAX_VARIANT_METRICS,
)
from skypilot_temporal.naming import cluster_prefix_for
from skypilot_temporal.operations.search_attributes import at_start
from skypilot_temporal.payloads import SweepInput, SweepResult, VariantProgress
from skypilot_temporal.plugin import SkyPilotPlugin
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.workflow.fan_out import best_variant
from testing import HISTORIES
from testing.in_process import Pipeline, git
from workflows import SweepVariantWorkflow, SweepWorkflow

# Temporal terminates a workflow whose history passes this (limit.historySize.error), and
# refuses a payload past this (limit.blobSize.error).
TEMPORAL_HISTORY_LIMIT_BYTES = 50 * 2**20
TEMPORAL_PAYLOAD_LIMIT_BYTES = 2 * 2**20


async def start_sweep(pipeline: Pipeline, variants: list[dict[str, str]], **options) -> WorkflowHandle:
    return await pipeline.env.client.start_workflow(
        SweepWorkflow.run,
        SweepInput(pipeline.input(), variants, **options),
        id=f"sweep-{uuid.uuid4().hex[:8]}",
        task_queue=pipeline.task_queue,
        execution_timeout=timedelta(minutes=2),
        search_attributes=at_start(SweepWorkflow.__name__, str(pipeline.repo)),
    )


async def run_sweep(pipeline: Pipeline, variants: list[dict[str, str]], **options) -> SweepResult:
    return await (await start_sweep(pipeline, variants, **options)).result()


def lr_grid(*rates: str) -> list[dict[str, str]]:
    return [{"LR": rate} for rate in rates]


async def test_a_sweep_preprocesses_once_and_reports_every_variant_and_the_best(pipeline: Pipeline):
    for variant, accuracy in [("v1", "0.81"), ("v2", "0.93"), ("v3", "0.87")]:
        pipeline.fake.plan(f"eval@{variant}", logs=[f"(eval, pid=7) METRIC eval_accuracy={accuracy}"])
    handle = await start_sweep(pipeline, lr_grid("0.1", "0.01", "0.001"), max_parallel=2)
    result = await handle.result()

    assert [(v.variant_id, v.params, v.status) for v in result.variants] == [
        ("v1", {"LR": "0.1"}, "succeeded"),
        ("v2", {"LR": "0.01"}, "succeeded"),
        ("v3", {"LR": "0.001"}, "succeeded"),
    ]
    assert [v.metrics["eval_accuracy"] for v in result.variants] == [0.81, 0.93, 0.87]
    assert result.best is not None and result.best.variant_id == "v2"
    assert result.select == "eval_accuracy:max" and result.preprocess.job_status == "SUCCEEDED"

    sweep_prefix = cluster_prefix_for(handle.id)
    assert len(pipeline.fake.jobs_named("preprocess")) == 1
    trains = pipeline.fake.jobs_named("train")
    assert sorted(j.envs["VARIANT_ID"] for j in trains) == ["v1", "v2", "v3"]
    # Every variant reads the sweep's data and writes under its own id, on its own cluster.
    assert all(j.envs["PIPELINE_RUN_ID"] == sweep_prefix for j in trains)
    assert {j.envs["LR"] for j in trains} == {"0.1", "0.01", "0.001"}
    launched = {args[1] for args in pipeline.fake.called("launch")}
    assert launched == {f"{sweep_prefix}-preprocess"} | {
        f"{cluster_prefix_for(f'{handle.id}-v{n}')}-train" for n in (1, 2, 3)
    }
    pipeline.assert_no_cluster_left()

    progress = await handle.query(SweepWorkflow.progress)
    assert progress.status == "succeeded"
    assert [v.workflow_id for v in progress.variants] == [f"{handle.id}-v{n}" for n in (1, 2, 3)]
    child = pipeline.env.client.get_workflow_handle(f"{handle.id}-v2")
    assert (await child.describe()).status == WorkflowExecutionStatus.COMPLETED


async def test_a_sweep_never_runs_more_than_max_parallel_variants_at_once(pipeline: Pipeline):
    pipeline.fake.plan("train", seconds=0.5)
    sweep = asyncio.ensure_future(run_sweep(pipeline, lr_grid(*"12345"), max_parallel=2))
    most = 0
    while not sweep.done():
        most = max(most, sum(j.status == "RUNNING" for j in pipeline.fake.jobs_named("train")))
        await asyncio.sleep(0.01)
    result = sweep.result()
    assert all(v.status == "succeeded" for v in result.variants)
    assert most == 2, f"{most} variants trained at once with max_parallel=2"
    pipeline.assert_no_cluster_left()


async def test_a_failed_variant_does_not_fail_the_sweep(pipeline: Pipeline):
    pipeline.fake.plan("train@v2", status="FAILED", logs=["loss went NaN"])
    pipeline.fake.plan("eval", logs=["METRIC eval_accuracy=0.9"])
    result = await run_sweep(pipeline, lr_grid("0.1", "10", "0.01"))
    assert [v.status for v in result.variants] == ["succeeded", "failed", "succeeded"]
    failed = result.variants[1]
    assert "step 'train'" in failed.error and "loss went NaN" in failed.error
    assert result.best is not None and result.best.variant_id in ("v1", "v3")
    pipeline.assert_no_cluster_left()


async def test_a_sweep_fails_when_every_variant_fails(pipeline: Pipeline):
    pipeline.fake.plan("train", status="FAILED")
    with pytest.raises(WorkflowFailureError) as err:
        await run_sweep(pipeline, lr_grid("0.1", "0.01"))
    cause = err.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "AllVariantsFailed"
    assert "all 2 variants failed" in cause.message
    pipeline.assert_no_cluster_left()


async def test_fail_fast_cancels_the_other_variants_at_the_first_failure(pipeline: Pipeline):
    pipeline.fake.plan("train@v1", status="FAILED", seconds=0.3)
    pipeline.fake.plan("train@v2", until_cancelled=True)
    with pytest.raises(WorkflowFailureError) as err:
        await run_sweep(pipeline, lr_grid("0.1", "0.01", "0.001"), max_parallel=2, fail_fast=True)
    cause = err.value.cause
    assert isinstance(cause, ApplicationError) and cause.type == "VariantFailed"
    assert "variant v1 failed" in cause.message
    trains = {j.envs["VARIANT_ID"]: j.status for j in pipeline.fake.jobs_named("train")}
    assert trains == {"v1": "FAILED", "v2": "CANCELLED"}
    assert not [j for j in pipeline.fake.submitted if j.envs.get("VARIANT_ID") == "v3"]
    pipeline.assert_no_cluster_left()


@pytest.mark.parametrize("how", ["cancel", "terminate"])
async def test_stopping_a_sweep_cancels_every_running_variant_and_tears_down(pipeline: Pipeline, how: str):
    pipeline.fake.plan("train", until_cancelled=True)
    handle = await start_sweep(pipeline, lr_grid("0.1", "0.01", "0.001"), max_parallel=2)
    while len(pipeline.fake.jobs_named("train")) < 2:
        await asyncio.sleep(0.02)
    if how == "cancel":
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as err:
            await handle.result()
        assert isinstance(err.value.cause, CancelledError)
    else:  # the parent skips its cleanup; each child still gets a cancel and cleans up
        await handle.terminate("test")
    for _ in range(500):
        if not pipeline.fake.clusters:
            break
        await asyncio.sleep(0.02)
    assert [j.status for j in pipeline.fake.jobs_named("train")] == ["CANCELLED", "CANCELLED"]
    pipeline.assert_no_cluster_left()
    for n in (1, 2):
        child = pipeline.env.client.get_workflow_handle(f"{handle.id}-v{n}")
        with pytest.raises(WorkflowFailureError):
            await child.result()
        assert (await child.describe()).status == WorkflowExecutionStatus.CANCELED


@pytest.mark.parametrize(
    ("variants", "options", "problem"),
    [
        (lr_grid("0.1"), {"max_parallel": 0}, "max_parallel must be between 1 and"),
        (lr_grid("0.1"), {"select_direction": "up"}, "select direction must be max or min"),
        (lr_grid("0.1"), {"select_metric": "no spaces"}, "is not a metric name"),
        # Any client, not only the starter, is held to the bounds.
        (lr_grid(*map(str, range(MAX_SWEEP_VARIANTS + 1))), {}, f"at most {MAX_SWEEP_VARIANTS} variants"),
        ([{"BLOB": "x" * 1000}] * 300, {}, "parameters take 296 KB in all: at most 256 KB"),
        ([{"E": "é" * 200}] * 300, {}, "parameters take 354 KB in all"),  # as JSON writes them
    ],
    ids=["parallel", "direction", "metric", "variants", "variant inputs", "non-ascii"],
)
async def test_a_bad_sweep_input_is_refused_before_anything_runs(
    pipeline: Pipeline, variants, options, problem
):
    with pytest.raises(WorkflowFailureError) as err:
        await run_sweep(pipeline, variants, **options)
    assert err.value.cause.type == "InvalidInput" and problem in err.value.cause.message
    assert pipeline.fake.calls == []


async def test_the_largest_sweep_the_bounds_allow_stays_far_under_temporals_limits(pipeline: Pipeline):
    """Task files of the largest size, variants at their input bounds, eight metrics each with
    the longest names, log tails full, half the variants failing (a failure carries its message
    and log tail): the sweep's history grows linearly with its variants, so 100 of them project
    the largest sweep allowed. Task texts never travel to the variants."""
    padding = "# " + "x" * 1020 + "\n"
    for name in ("data_preprocessing.yaml", "train.yaml", "eval.yaml"):
        (pipeline.repo / name).write_text((pipeline.repo / name).read_text() + padding * 250)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-am", "large", cwd=pipeline.repo)
    metrics = [f"METRIC {'m' * 60}{n:03d}=0.{n}" for n in range(20)]
    for step in ("train", "eval"):
        pipeline.fake.plan(step, logs=[*metrics, *(f"{step} line {i} " + "y" * 100 for i in range(60))])
    for n in range(1, 101, 2):
        pipeline.fake.plan(
            f"eval@v{n}", status="FAILED", logs=[f"eval line {i} " + "z" * 100 for i in range(60)]
        )
    # Each variant at its share of the bounds, as the bounds weigh it (JSON).
    params_share = MAX_SWEEP_PARAMS_BYTES // MAX_SWEEP_VARIANTS - len(json.dumps({"LR": "0000", "P": ""}))
    env_share = MAX_SWEEP_VARIANT_INPUTS_BYTES // MAX_SWEEP_VARIANTS - (params_share + 30) - 20
    variants = [{"LR": f"{n:04d}", "P": "p" * params_share} for n in range(100)]
    handle = await pipeline.env.client.start_workflow(
        SweepWorkflow.run,
        SweepInput(pipeline.input(env_overrides={"SHARED": "s" * env_share}), variants, max_parallel=50),
        id=f"sweep-{uuid.uuid4().hex[:8]}",
        task_queue=pipeline.task_queue,
        execution_timeout=timedelta(minutes=2),
    )
    result = await handle.result()
    assert [v.status for v in result.variants].count("failed") == 50
    assert all(len(v.metrics) == MAX_VARIANT_METRICS for v in result.variants if v.status == "succeeded")
    events = (await handle.fetch_history()).events
    scale = MAX_SWEEP_VARIANTS / len(variants)
    # The step activities (fetch, preprocess, teardown) do not grow with the variants; all else does.
    once = {EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED, EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED}
    fixed = sum(e.ByteSize() for e in events if e.event_type in once)
    growing = sum(e.ByteSize() for e in events if e.event_type not in once)
    largest = max(e.ByteSize() for e in events if e.event_type not in once)
    projected = fixed + growing * scale
    print(
        f"{len(variants)} variants: {(fixed + growing) / 2**20:.1f} MB of history; {MAX_SWEEP_VARIANTS} "
        f"variants: {projected / 2**20:.1f} MB, largest payload {largest * scale / 2**20:.2f} MB"
    )
    assert projected < TEMPORAL_HISTORY_LIMIT_BYTES / 2
    assert largest * scale < TEMPORAL_PAYLOAD_LIMIT_BYTES, "the sweep's input or result would pass 2 MB"


async def test_a_sweep_and_its_variants_replay_from_their_histories(pipeline: Pipeline):
    pipeline.fake.plan("train@v2", status="FAILED")
    handle = await start_sweep(pipeline, lr_grid("0.1", "0.01", "0.001"), max_parallel=2)
    await handle.result()
    replayer = Replayer(
        workflows=[SweepWorkflow, SweepVariantWorkflow], data_converter=pipeline.env.client.data_converter
    )
    for workflow_id in (handle.id, f"{handle.id}-v1", f"{handle.id}-v2"):
        history = await pipeline.env.client.get_workflow_handle(workflow_id).fetch_history()
        replayed = await replayer.replay_workflow(history, raise_on_replay_failure=False)
        events = [f"{e.event_id} {e.WhichOneof('attributes')}" for e in history.events]
        assert replayed.replay_failure is None, (workflow_id, replayed.replay_failure, events)


async def test_a_sweep_started_before_the_size_bounds_still_replays(pipeline: Pipeline, monkeypatch):
    """A sweep in flight across the upgrade whose variants carry more than the bounds now allow
    (recorded here by a worker without the marker) replays: the bounds apply to new sweeps only."""
    real_patched = workflows.workflow.patched
    monkeypatch.setattr(
        workflows.workflow,
        "patched",
        lambda patch_id: patch_id != workflows.SWEEP_SIZE_BOUNDS and real_patched(patch_id),
    )
    heavy = [{"LR": str(n), "NOTE": "n" * 2000} for n in range(150)]  # 300 KB of parameters
    handle = await start_sweep(pipeline, heavy, max_parallel=50)
    await handle.result()
    monkeypatch.undo()
    history = await handle.fetch_history()
    await Replayer(
        workflows=[SweepWorkflow], data_converter=pipeline.env.client.data_converter
    ).replay_workflow(history)


def test_the_best_variant_is_the_highest_or_lowest_of_the_succeeded_ones():
    variants = [
        VariantProgress("v1", {}, "succeeded", metrics={"loss": 0.5}),
        VariantProgress("v2", {}, "succeeded", metrics={"loss": 0.2}),
        VariantProgress("v3", {}, "failed", metrics={"loss": 0.1}),
        VariantProgress("v4", {}, "succeeded"),
    ]
    assert best_variant(variants, "loss", "min").variant_id == "v2"
    assert best_variant(variants, "loss", "max").variant_id == "v1"
    assert best_variant(variants, "accuracy", "max") is None


async def test_variants_run_on_the_sweeps_checkout_and_leave_it_to_the_sweep(pipeline: Pipeline):
    handle = await start_sweep(pipeline, lr_grid("0.1", "0.01"), max_parallel=1)
    await handle.result()

    async def activities_of(workflow_id: str) -> list[str]:
        return [
            e.activity_task_scheduled_event_attributes.activity_type.name
            async for e in pipeline.env.client.get_workflow_handle(workflow_id).fetch_history_events()
            if e.HasField("activity_task_scheduled_event_attributes")
        ]

    assert (await activities_of(handle.id))[-1] == "remove_checkout"
    for n in (1, 2):
        assert await activities_of(f"{handle.id}-v{n}") == ["launch_task", "exec_task", "down_cluster"]


@pytest.mark.parametrize("how", ["signal", "update"])
async def test_a_release_reaches_a_variant_that_keeps_its_clusters(pipeline: Pipeline, how: str):
    """The release_clusters signal and the release_kept_clusters Update (which also names the
    variants it passed the release to) both reach a failed variant keeping its cluster."""
    pipeline.fake.plan("train@v1", status="FAILED")
    handle = await pipeline.env.client.start_workflow(
        SweepWorkflow.run,
        SweepInput(pipeline.input(keep_clusters_on_failure=True), lr_grid("0.1", "0.01")),
        id=f"sweep-{uuid.uuid4().hex[:8]}",
        task_queue=pipeline.task_queue,
        execution_timeout=timedelta(minutes=2),
    )
    variant = pipeline.env.client.get_workflow_handle(f"{handle.id}-v1")
    for _ in range(500):
        with contextlib.suppress(RPCError):
            if (await variant.query(SweepVariantWorkflow.progress)).status.startswith(
                "failed: clusters kept"
            ):
                break
        await asyncio.sleep(0.02)
    assert pipeline.fake.clusters, "the failed variant's cluster is kept for debugging"
    if how == "signal":
        await handle.signal(SweepWorkflow.release_clusters)
    else:
        released = await handle.execute_update(SweepWorkflow.release_kept_clusters)
        assert released.clusters == [] and f"{handle.id}-v1" in released.variants  # the sweep keeps none
    result = await handle.result()
    assert [v.status for v in result.variants] == ["failed", "succeeded"]
    pipeline.assert_no_cluster_left()


@pytest.mark.parametrize("name", ["sweep", "sweep_v1", "sweep_v2", "reaper"])
async def test_recorded_sweep_variant_and_reaper_histories_replay(name: str):
    """Today's sweep, variant and reaper code must replay the runs recorded earlier (a sweep
    whose v2 failed, both variants, a reaper run): regenerate them (`python -m
    tests.workflows.record_history --sweep-and-reaper`) only for an intended, versioned change."""
    recorded = json.loads((HISTORIES / f"{name}.json").read_text())
    history = WorkflowHistory.from_json(recorded["workflow_id"], recorded["history"])
    plugin = SkyPilotPlugin(sky=FakeSky(), data_converter=DataConverter.default)
    replayer = Replayer(workflows=[SweepWorkflow, SweepVariantWorkflow], plugins=[plugin])
    await replayer.replay_workflow(history)
