"""Pipeline files: any shape from a file in the task repository, run by one generic workflow over
the fake SDK (order, parallelism, shared clusters, outputs, conditions, failure, cancel)."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sky import exceptions
from temporalio.client import (
    Client,
    ScheduleActionStartWorkflow,
    WorkflowFailureError,
    WorkflowHandle,
    WorkflowHistory,
)
from temporalio.converter import DataConverter
from temporalio.worker import Replayer
from test_scripts import assert_one_line_error, run_script, starter_env

from skypilot_temporal import SkyPilotPlugin
from skypilot_temporal.activity.activities import SkyPilotActivities
from skypilot_temporal.naming import cluster_prefix_for
from skypilot_temporal.operations.reaper import ClusterReaperWorkflow
from skypilot_temporal.operations.search_attributes import PIPELINE_KIND
from skypilot_temporal.payloads import PipelineFileInput, PipelineResult, ReaperInput, StepTimeouts, TaskSpec
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.workflow.pipeline_file_workflow import PipelineFileWorkflow
from testing import HISTORIES, ROOT
from testing.in_process import Pipeline, make_git_repo, make_task_repo, running_worker
from testing.waiting import eventually
from workflows import SkyPilotWorkflow

DIAMOND = """
name: diamond
steps:
  prepare:
    task: data_preprocessing.yaml
  train-small:
    task: train.yaml
    needs: [prepare]
    cluster: small
    env: {MODEL_SIZE: small}
  train-large:
    task: train.yaml
    needs: [prepare]
    cluster: large
    env: {MODEL_SIZE: large}
  eval:
    task: eval.yaml
    needs: [train-large]
    cluster: large
  compare:
    task: eval.yaml
    needs: [eval, train-small]
    env_from: {SMALL_LOSS: train-small.train_loss, LARGE_ACC: eval.eval_accuracy}
"""


async def start_file(
    pipeline: Pipeline, repo: Path, path: str = "pipeline.yaml", **overrides: Any
) -> WorkflowHandle:
    return await pipeline.env.client.start_workflow(
        PipelineFileWorkflow.run,
        PipelineFileInput(path, pipeline.input(repo_url=str(repo), **overrides)),
        id=f"pf-{uuid.uuid4().hex[:8]}",
        task_queue=pipeline.task_queue,
        execution_timeout=timedelta(minutes=2),
    )


def repo_with(pipeline: Pipeline, tmp_path: Path, files: dict[str, str]) -> Path:
    return make_task_repo(tmp_path / f"repo-{uuid.uuid4().hex[:6]}", files)


def job_envs(fake: FakeSky, step: str) -> dict[str, str]:
    [job] = fake.jobs_named(step)
    return job.envs


async def test_a_diamond_runs_in_the_order_its_needs_say_with_the_trainings_at_once(
    pipeline: Pipeline, tmp_path: Path
):
    fake = pipeline.fake
    fake.plan("prepare", seconds=0.2)
    fake.plan("train-small", seconds=1.0, logs=["METRIC train_loss=0.25"])
    fake.plan("train-large", seconds=1.0, logs=["METRIC train_loss=0.125"])
    fake.plan("eval", logs=["METRIC eval_accuracy=0.91"])
    repo = repo_with(pipeline, tmp_path, {"pipeline.yaml": DIAMOND})
    handle = await start_file(pipeline, repo)
    result: PipelineResult = await handle.result()
    progress = await handle.query(PipelineFileWorkflow.progress)
    assert [s.step for s in result.steps] == ["prepare", "train-small", "train-large", "eval", "compare"]
    statuses = {s.name: s.status for s in progress.steps}
    assert statuses == {
        "fetch-tasks": "succeeded",
        "prepare": "succeeded",
        "train-small": "succeeded",
        "train-large": "succeeded",
        "eval": "succeeded",
        "compare": "succeeded",
        "prepare-down": "succeeded",
        "small-down": "succeeded",
        "large-down": "succeeded",
        "compare-down": "succeeded",
    }
    prefix = result.steps[0].cluster_name.removesuffix("-prepare")
    assert {s.step: s.cluster_name for s in result.steps}["eval"] == f"{prefix}-large"
    assert [cluster for _, cluster in fake.called("exec")] == [f"{prefix}-large"]
    envs = job_envs(fake, "compare")
    assert envs["SMALL_LOSS"] == "0.25" and envs["LARGE_ACC"] == "0.91"
    assert job_envs(fake, "train-small")["MODEL_SIZE"] == "small"
    # The two trainings overlapped: each started before the other ended.
    small, large = (fake.jobs_named(s)[0] for s in ("train-small", "train-large"))
    assert small.started_at < large.finished_at and large.started_at < small.finished_at
    pipeline.assert_no_cluster_left()


def example_tasks_repo(tmp_path: Path) -> Path:
    """A repository of this project's tasks/ folder (task files and pipeline files)."""
    files = {f"tasks/{p.name}": p.read_text() for p in (ROOT / "tasks").glob("*.yaml")}
    return make_git_repo(tmp_path / f"repo-{uuid.uuid4().hex[:6]}", files)


async def test_the_six_steps_as_a_file_give_the_steps_clusters_and_outcome_of_skypilotworkflow(
    pipeline: Pipeline, tmp_path: Path
):
    pipeline.fake.plan("eval", logs=["METRIC eval_accuracy=0.9"])
    seed = await pipeline.start(
        preprocess_yaml="tasks/data_preprocessing.yaml",
        train_yaml="tasks/train.yaml",
        eval_yaml="tasks/eval.yaml",
        repo_url=str(example_tasks_repo(tmp_path)),
    )
    seed_result = await seed.result()
    seed_progress = await seed.query(SkyPilotWorkflow.progress)
    handle = await start_file(pipeline, example_tasks_repo(tmp_path), "tasks/pipeline.yaml")
    result = await handle.result()
    progress = await handle.query(PipelineFileWorkflow.progress)

    def shape(steps: list[Any], prefix: str) -> list[tuple[str, str, str]]:
        return sorted((s.name, s.status, s.cluster_name.removeprefix(prefix)) for s in steps)

    seed_prefix = seed_result.steps[0].cluster_name.removesuffix("preprocess")
    prefix = result.steps[0].cluster_name.removesuffix("preprocess")
    assert shape(progress.steps, prefix) == shape(seed_progress.steps, seed_prefix)
    assert [(s.step, s.job_status, s.metrics) for s in result.steps] == [
        (s.step, s.job_status, s.metrics) for s in seed_result.steps
    ]
    assert progress.status == seed_progress.status == "succeeded"
    pipeline.assert_no_cluster_left()


async def test_a_failed_branch_stops_the_other_and_leaves_nothing(pipeline: Pipeline, tmp_path: Path):
    fake = pipeline.fake
    fake.plan("train-small", status="FAILED", seconds=0.3, logs=["diverged"])
    fake.plan("train-large", until_cancelled=True)
    repo = repo_with(pipeline, tmp_path, {"pipeline.yaml": DIAMOND})
    handle = await start_file(pipeline, repo)
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert "step 'train-small'" in str(failed.value.cause), failed.value.cause
    statuses = {s.name: s.status for s in (await handle.query(PipelineFileWorkflow.progress)).steps}
    assert statuses["train-small"] == "failed" and statuses["train-large"] == "cancelled"
    assert statuses["eval"] == statuses["compare"] == "skipped"
    assert [j.status for j in fake.jobs_named("train-large")] == ["CANCELLED"]
    pipeline.assert_no_cluster_left()


async def test_on_failure_continue_runs_what_does_not_need_the_failed_step(
    pipeline: Pipeline, tmp_path: Path
):
    fake = pipeline.fake
    fake.plan("train-small", status="FAILED", logs=["diverged"])
    fake.plan("eval", logs=["METRIC eval_accuracy=0.8"])
    repo = repo_with(pipeline, tmp_path, {"pipeline.yaml": "on_failure: continue\n" + DIAMOND})
    handle = await start_file(pipeline, repo)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    progress = await handle.query(PipelineFileWorkflow.progress)
    statuses = {s.name: s.status for s in progress.steps}
    assert statuses["train-large"] == statuses["eval"] == "succeeded"
    assert statuses["compare"] == "skipped"
    assert "needs train-small" in next(s.error for s in progress.steps if s.name == "compare")
    pipeline.assert_no_cluster_left()


async def test_a_condition_that_does_not_hold_skips_the_step_and_what_needs_it(
    pipeline: Pipeline, tmp_path: Path
):
    pipeline.fake.plan("check", logs=["METRIC score=0.4"])
    text = """
steps:
  check: {task: eval.yaml}
  deploy:
    task: train.yaml
    needs: [check]
    when: [{metric: check.score, op: ">=", value: 0.5}]
  announce: {task: eval.yaml, needs: [deploy]}
  always: {task: eval.yaml, needs: [check], when: [{metric: check.score, op: "<", value: 0.5}]}
"""
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    result = await handle.result()
    progress = await handle.query(PipelineFileWorkflow.progress)
    steps = {s.name: s for s in progress.steps}
    assert steps["deploy"].status == steps["announce"].status == "skipped"
    assert steps["deploy"].error == "when check.score >= 0.5 did not hold (0.4)"
    assert steps["announce"].error == "needs deploy, which did not succeed"
    assert [s.step for s in result.steps] == ["check", "always"]
    assert pipeline.fake.jobs_named("deploy") == []
    pipeline.assert_no_cluster_left()


MATRIX = """
matrices:
  lr: {LR: [0.1, 0.01, 0.001]}
steps:
  prepare: {task: data_preprocessing.yaml}
  train: {task: train.yaml, matrix: lr, needs: [prepare], cluster: train}
  eval:
    task: eval.yaml
    matrix: lr
    needs: [train]
    cluster: train
    select: {metric: eval_accuracy, goal: max}
  report:
    task: eval.yaml
    needs: [eval]
    env_from: {BEST_ACCURACY: eval.eval_accuracy, BEST_LR: eval.matrix.LR}
"""


async def test_a_matrix_fans_a_group_of_steps_out_and_a_later_step_reads_the_best_variant(
    pipeline: Pipeline, tmp_path: Path
):
    fake = pipeline.fake
    for variant, accuracy in (("v1", 0.7), ("v2", 0.93), ("v3", 0.81)):
        fake.plan(f"eval-{variant}", logs=[f"METRIC eval_accuracy={accuracy}"])
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": MATRIX}))
    result = await handle.result()
    names = [s.step for s in result.steps]
    assert names == ["prepare", "train-v1", "train-v2", "train-v3", "eval-v1", "eval-v2", "eval-v3", "report"]
    prefix = result.steps[0].cluster_name.removesuffix("prepare")
    # Each variant's eval runs on its own variant's train cluster.
    assert sorted(c for _, c in fake.called("exec")) == [f"{prefix}trainv{n}" for n in (1, 2, 3)]
    assert job_envs(fake, "train-v2")["LR"] == "0.01" and job_envs(fake, "train-v2")["VARIANT_ID"] == "v2"
    envs = job_envs(fake, "report")
    assert envs["BEST_ACCURACY"] == "0.93" and envs["BEST_LR"] == "0.01"
    pipeline.assert_no_cluster_left()


async def test_never_more_steps_at_once_than_max_parallel(pipeline: Pipeline, tmp_path: Path):
    steps = "\n".join(f"  s{n}: {{task: train.yaml}}" for n in range(6))
    for n in range(6):
        pipeline.fake.plan(f"s{n}", seconds=0.3)
    text = f"max_parallel: 2\nsteps:\n{steps}\n"
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    await handle.result()
    jobs = [j for n in range(6) for j in pipeline.fake.jobs_named(f"s{n}")]
    at_once = max(sum(1 for j in jobs if j.started_at <= t.started_at < (j.finished_at or 0)) for t in jobs)
    assert at_once == 2
    pipeline.assert_no_cluster_left()


async def test_a_failed_job_runs_again_as_many_times_as_its_retries(pipeline: Pipeline, tmp_path: Path):
    pipeline.fake.plan("flaky", status="FAILED", logs=["oops"])
    pipeline.fake.plan("flaky-retry1", status="FAILED", logs=["oops again"])
    pipeline.fake.plan("flaky-retry2", logs=["METRIC ok=1"])
    text = "steps:\n  flaky: {task: train.yaml, retries: 2}\n"
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    result = await handle.result()
    assert [s.step for s in result.steps] == ["flaky-retry2"]
    assert [
        j.status for j in pipeline.fake.jobs_named("flaky") + pipeline.fake.jobs_named("flaky-retry1")
    ] == [
        "FAILED",
        "FAILED",
    ]
    pipeline.assert_no_cluster_left()


async def test_a_skypilot_multi_task_yaml_runs_as_a_chain(pipeline: Pipeline, tmp_path: Path):
    chain = (
        "name: chain\n---\n"
        "name: prep\nrun: echo prep\n---\n"
        "name: train\nenvs: {EPOCHS: '2'}\nrun: echo train\n"
    )
    pipeline.fake.plan("prep", seconds=0.2)
    handle = await start_file(
        pipeline, repo_with(pipeline, tmp_path, {"chain.yaml": chain}), path="chain.yaml"
    )
    result = await handle.result()
    assert [s.step for s in result.steps] == ["prep", "train"]
    prep, train = (pipeline.fake.jobs_named(s)[0] for s in ("prep", "train"))
    assert prep.finished_at is not None and prep.finished_at <= train.started_at
    assert train.envs["EPOCHS"] == "2"
    pipeline.assert_no_cluster_left()


async def test_a_cancel_stops_every_running_step_and_leaves_nothing(pipeline: Pipeline, tmp_path: Path):
    fake = pipeline.fake
    fake.plan("train-small", until_cancelled=True)
    fake.plan("train-large", until_cancelled=True)
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": DIAMOND}))
    await asyncio.to_thread(fake.wait_for_job, "train-small")
    await asyncio.to_thread(fake.wait_for_job, "train-large")
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert {j.status for j in fake.jobs_named("train-small") + fake.jobs_named("train-large")} == {
        "CANCELLED"
    }
    pipeline.assert_no_cluster_left()


@pytest.mark.parametrize(
    "files, message",
    [
        (
            {
                "pipeline.yaml": "steps:\n  a: {task: train.yaml, needs: [b]}\n"
                "  b: {task: train.yaml, needs: [a]}\n"
            },
            "pipeline.yaml: needs form a cycle: a -> b -> a",
        ),
        ({"pipeline.yaml": "steps:\n  a: {task: nope.yaml}\n"}, "task file 'nope.yaml' not found"),
        ({"pipeline.yaml": "steps:\n  a: {task: ../../etc/passwd}\n"}, "outside the task repository"),
        ({}, "pipeline file 'pipeline.yaml' not found"),
        (
            {"pipeline.yaml": "steps:\n  a: {task: bad.yaml}\n", "bad.yaml": "run: x\nvolume_mounts: []\n"},
            "volume_mounts",
        ),
    ],
)
async def test_a_bad_pipeline_file_fails_the_run_in_one_line_before_any_cluster(
    pipeline: Pipeline, tmp_path: Path, files: dict[str, str], message: str
):
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, files))
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    text = str(failed.value.cause)
    assert message in text and "\n" not in text, text
    assert pipeline.fake.ever_launched == set()


# ---------------------------------------------------------------- generated graphs, run


@st.composite
def runnable_graphs(draw: st.DrawFn) -> tuple[str, int, dict[str, list[str]]]:
    """A pipeline file's text, its max_parallel, and each step's needs."""
    count = draw(st.integers(1, 8))
    names = [f"s{n}" for n in range(count)]
    needs = {
        name: draw(st.lists(st.sampled_from(names[:index]), unique=True, max_size=2)) if index else []
        for index, name in enumerate(names)
    }
    limit = draw(st.integers(1, 3))
    lines = [f"max_parallel: {limit}", "steps:"]
    lines += [f"  {name}: {{task: train.yaml, needs: [{', '.join(needs[name])}]}}" for name in names]
    return "\n".join(lines) + "\n", limit, needs


@given(runnable_graphs(), st.booleans())
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_a_generated_graph_runs_in_needs_order_within_its_limit_or_fails_in_one_line(
    env, tmp_path_factory: pytest.TempPathFactory, graph: tuple[str, int, dict[str, list[str]]], broken: bool
):
    text, limit, needs = graph
    if broken:  # the last step needs a step that does not exist
        text = (
            text.rstrip("\n").removesuffix("]}")
            + (", nowhere]}" if needs[f"s{len(needs) - 1}"] else "nowhere]}")
            + "\n"
        )
    fake = FakeSky()
    for name in needs:
        fake.plan(name, seconds=0.15)
    scratch = tmp_path_factory.mktemp("graph")
    repo = make_task_repo(scratch / "repo", {"pipeline.yaml": text})
    address = env.client.service_client.config.target_host

    async def run() -> Any:  # its own event loop and client: a sync test, as Hypothesis runs it
        client = await Client.connect(address, data_converter=env.client.data_converter)
        task_queue = f"gen-{uuid.uuid4().hex[:8]}"
        async with running_worker(env, fake, scratch / "checkouts", task_queue, client=client):
            handle = await client.start_workflow(
                PipelineFileWorkflow.run,
                PipelineFileInput("pipeline.yaml", Pipeline(env, fake, repo, task_queue).input()),
                id=f"gen-{uuid.uuid4().hex[:8]}",
                task_queue=task_queue,
                execution_timeout=timedelta(minutes=1),
            )
            return await handle.result()

    if broken:
        with pytest.raises(WorkflowFailureError) as failed:
            asyncio.run(run())
        message = failed.value.cause.message
        assert "needs 'nowhere', which is not a step of this file" in message and "\n" not in message
        assert fake.ever_launched == set()
        return
    asyncio.run(run())
    jobs = {name: fake.jobs_named(name)[0] for name in needs}
    for name, job in jobs.items():
        for need in needs[name]:
            assert (jobs[need].finished_at or 0) <= job.started_at, (name, need)
    at_once = max(
        sum(1 for j in jobs.values() if j.started_at <= t.started_at < (j.finished_at or 0))
        for t in jobs.values()
    )
    assert at_once <= limit
    assert fake.clusters == {}


@pytest.mark.parametrize("name", ["diamond", "failed_branch", "cancel", "managed"])
async def test_recorded_pipeline_file_histories_replay(name: str):
    """Today's generic workflow must replay the runs recorded earlier (success, a failed branch,
    a cancel mid-train, a managed step): regenerate them (`python -m
    tests.workflows.record_history --pipeline-files`) only for an intended, versioned change."""
    recorded = json.loads((HISTORIES / f"pipeline_file_{name}.json").read_text())
    history = WorkflowHistory.from_json(recorded["workflow_id"], recorded["history"])
    # As a platform replays: the plugin registers the workflow and passes the package through.
    plugin = SkyPilotPlugin(sky=FakeSky(), data_converter=DataConverter.default)
    await Replayer(workflows=[], plugins=[plugin]).replay_workflow(history)


# ---------------------------------------------------------------- the starter


async def test_the_starter_runs_a_pipeline_file_and_shows_each_step_and_cluster(
    pipeline: Pipeline, tmp_path: Path
):
    pipeline.fake.plan("train-small", seconds=0.5, logs=["METRIC train_loss=0.25"])
    pipeline.fake.plan("train-large", seconds=0.5, logs=["METRIC train_loss=0.2"])
    pipeline.fake.plan("eval", logs=["METRIC eval_accuracy=0.9"])
    repo = repo_with(pipeline, tmp_path, {"pipeline.yaml": DIAMOND})
    env = {**starter_env(pipeline), "PIPELINE_REPO_URL": str(repo)}
    rc, stdout, stderr = await run_script("run_workflow.py", "--pipeline", "pipeline.yaml", env_overrides=env)
    assert rc == 0, (stdout, stderr)
    lines = stdout.splitlines()
    started = [line.split()[1] for line in lines if line.startswith("  ▶")]
    assert started[:2] == ["fetch-tasks", "prepare"] and set(started[2:4]) == {"train-small", "train-large"}
    assert any(
        "▶ eval" in line and "exec eval on" in line and "-large after train-large" in line for line in lines
    )
    assert "succeeded" in lines[-2] or any(
        line.startswith("Workflow ") and "succeeded" in line for line in lines
    )
    assert "diamond (5 steps, at most 4 at once, on_failure: stop)" in lines  # what runs, once
    # Both trainings started before either ended: the lines show them running side by side.
    first_end = next(i for i, line in enumerate(lines) if line.startswith("  ✓ train-"))
    assert all(any(f"▶ {s}" in line for line in lines[:first_end]) for s in ("train-small", "train-large"))


async def test_the_details_name_the_pipeline_without_letting_its_name_format_them(
    pipeline: Pipeline, tmp_path: Path
):
    text = "name: '[click](http://x) `*a*`'\nmax_parallel: 2\nsteps:\n  only: {task: train.yaml}\n"
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    await handle.result()
    progress = await handle.query(PipelineFileWorkflow.progress)
    assert progress.heading == "`clickhttp//x a` (1 step, at most 2 at once, on_failure: stop)"
    details = (await handle.query("__temporal_workflow_metadata")).current_details
    assert details.splitlines()[2] == progress.heading  # under the status line, in the Web UI


@pytest.mark.parametrize(
    "name, shown",
    [("", "pipeline.yaml"), ("name: '*[]*'\n", "pipeline"), ("name: ' <b> x '\n", "b x")],
)
async def test_the_heading_names_the_file_without_a_name_and_pipeline_without_a_showable_one(
    pipeline: Pipeline, tmp_path: Path, name: str, shown: str
):
    text = name + "steps:\n  only: {task: train.yaml}\n"
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    await handle.result()
    heading = f"`{shown}` (1 step, at most 4 at once, on_failure: stop)"
    assert (await handle.query(PipelineFileWorkflow.progress)).heading == heading
    details = (await handle.query("__temporal_workflow_metadata")).current_details
    assert details.splitlines()[1:4] == ["", heading, ""]  # a paragraph of its own


async def test_the_starter_refuses_pipeline_options_that_do_not_go_together(pipeline: Pipeline):
    for flags, message in (
        (["--sweep", "LR=1,2"], "--pipeline (or PIPELINE_FILE) does not take --sweep"),
        (["--managed-train"], "--pipeline (or PIPELINE_FILE) does not take --managed-train"),
    ):
        rc, stdout, stderr = await run_script(
            "run_workflow.py", "--pipeline", "p.yaml", *flags, env_overrides=starter_env(pipeline)
        )
        assert_one_line_error(rc, stdout, stderr, message)


async def test_a_managed_step_runs_as_a_managed_job_with_its_env_and_no_cluster_of_the_run(
    pipeline: Pipeline, tmp_path: Path
):
    fake = pipeline.fake
    fake.plan("train", logs=["METRIC train_loss=0.25"])
    text = """
steps:
  prepare: {task: data_preprocessing.yaml}
  train: {task: train.yaml, needs: [prepare], managed: true, env: {EPOCHS: "7"}}
  eval: {task: eval.yaml, needs: [train], env_from: {LOSS: train.train_loss}}
"""
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    result = await handle.result()
    [job] = fake.jobs.named("train")
    assert job.envs["EPOCHS"] == "7" and job_envs(fake, "eval")["LOSS"] == "0.25"
    trained = next(s for s in result.steps if s.step == "train")
    assert (trained.job_id, trained.job_status) == (job.job_id, "SUCCEEDED")
    prefix = result.steps[0].cluster_name.removesuffix("prepare")
    assert [args[1] for args in fake.called("launch")] == [f"{prefix}prepare", f"{prefix}eval"]
    progress = await handle.query(PipelineFileWorkflow.progress)
    assert "train-down" not in {s.name for s in progress.steps}
    pipeline.assert_no_cluster_left()


# ---------------------------------------------------------------- review findings


async def activity_spans(handle: WorkflowHandle, client: Client) -> dict[str, tuple[float, float]]:
    """Each activity's summary -> (scheduled, closed) in epoch seconds, from the run's history."""
    summaries: dict[int, str] = {}
    spans: dict[str, tuple[float, float]] = {}
    async for event in handle.fetch_history_events():
        at = event.event_time.ToDatetime().timestamp()
        if event.HasField("activity_task_scheduled_event_attributes"):
            [summary] = await client.data_converter.decode([event.user_metadata.summary])
            summaries[event.event_id] = summary
            spans[summary] = (at, at)
        for kind in ("completed", "failed", "canceled"):
            field = f"activity_task_{kind}_event_attributes"
            if event.HasField(field):
                summary = summaries[getattr(event, field).scheduled_event_id]
                spans[summary] = (spans[summary][0], at)
    return spans


async def test_a_cluster_goes_down_once_its_last_step_ended_while_later_steps_run(
    pipeline: Pipeline, tmp_path: Path
):
    pipeline.fake.plan("train-small", logs=["METRIC train_loss=0.25"])
    pipeline.fake.plan("eval", logs=["METRIC eval_accuracy=0.9"])
    pipeline.fake.plan("compare", seconds=0.5)
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": DIAMOND}))
    result = await handle.result()
    prefix = result.steps[0].cluster_name.removesuffix("-prepare")
    spans = await activity_spans(handle, pipeline.env.client)
    compare = next(v for k, v in spans.items() if k.startswith("launch compare"))
    assert spans[f"down {prefix}-prepare"][1] < compare[0]
    assert spans[f"down {prefix}-small"][1] < compare[1]  # train-small's cluster went during compare


async def test_a_skipped_tail_lets_its_cluster_go_while_other_branches_run(
    pipeline: Pipeline, tmp_path: Path
):
    fake = pipeline.fake
    fake.plan("a", status="FAILED")
    fake.plan("long", seconds=2.0)
    text = """
on_failure: continue
steps:
  a: {task: train.yaml, cluster: c}
  b: {task: eval.yaml, needs: [a], cluster: c}
  long: {task: train.yaml}
"""
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    spans = await activity_spans(handle, pipeline.env.client)
    prefix = cluster_prefix_for(handle.id)
    assert spans[f"down {prefix}-c"][1] < spans[f"launch long on {prefix}-long"][1]
    pipeline.assert_no_cluster_left()


async def test_a_failed_steps_cluster_is_kept_for_debugging_when_the_run_asks(
    pipeline: Pipeline, tmp_path: Path
):
    fake = pipeline.fake
    fake.plan("a", status="FAILED")
    fake.plan("long", seconds=1.0)
    text = "on_failure: continue\nsteps:\n  a: {task: train.yaml, cluster: c}\n  long: {task: train.yaml}\n"
    repo = repo_with(pipeline, tmp_path, {"pipeline.yaml": text})
    handle = await start_file(pipeline, repo, keep_clusters_on_failure=True)
    prefix = cluster_prefix_for(handle.id)

    async def kept() -> bool:
        progress = await handle.query(PipelineFileWorkflow.progress)
        return progress.status.startswith("failed: clusters kept")

    await eventually(kept, "the failed run keeping its clusters", 30, every=0.05)
    assert f"{prefix}-c" in fake.clusters and f"{prefix}-long" not in fake.clusters
    await handle.signal(PipelineFileWorkflow.release_clusters)
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    pipeline.assert_no_cluster_left()


async def test_the_runs_failure_names_the_step_that_failed_not_an_earlier_retried_one(
    pipeline: Pipeline, tmp_path: Path
):
    fake = pipeline.fake
    fake.plan("a", status="FAILED")
    fake.plan("b", status="FAILED", logs=["b broke"])
    text = "steps:\n  a: {task: train.yaml, retries: 1}\n  b: {task: train.yaml, needs: [a]}\n"
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert failed.value.cause.message.startswith("step 'b' on cluster "), failed.value.cause


async def test_a_value_a_step_reads_that_was_not_reported_fails_that_step(pipeline: Pipeline, tmp_path: Path):
    text = "steps:\n  a: {task: train.yaml}\n  b: {task: eval.yaml, needs: [a], env_from: {LOSS: a.loss}}\n"
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert "step 'b': LOSS reads a.loss, which step 'a' did not report" in str(failed.value.cause)
    statuses = {s.name: s.status for s in (await handle.query(PipelineFileWorkflow.progress)).steps}
    assert statuses["b"] == "failed"
    assert pipeline.fake.jobs_named("b") == []
    pipeline.assert_no_cluster_left()


@pytest.mark.parametrize("status", ["CANCELLED"])
async def test_only_a_failed_job_is_retried(pipeline: Pipeline, tmp_path: Path, status: str):
    pipeline.fake.plan("a", status=status)
    text = "steps:\n  a: {task: train.yaml, retries: 2}\n"
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    assert len(pipeline.fake.jobs_named("a")) == 1 and pipeline.fake.jobs_named("a-retry1") == []


async def test_step_one_checks_every_steps_task_with_that_steps_env_before_any_cluster(
    env, fake_sky: FakeSky, tmp_path: Path
):
    checked: list[tuple[str, int, dict[str, str]]] = []

    class Recording(SkyPilotActivities):  # what step 1 builds and checks, as a launch would
        def _build_task(self, spec: TaskSpec, infra: str) -> Any:
            if spec.job_name == "validate":
                checked.append((spec.step, spec.yaml_document, dict(spec.env_overrides)))
            return super()._build_task(spec, infra)

    text = """
env: {BASE: b}
matrices: {m: {LR: [1, 2]}}
steps:
  one: {task: train.yaml, env: {OWN: "1"}}
  two: {task: train.yaml, needs: [one], matrix: m, env_from: {X: one.loss}}
"""
    repo = make_task_repo(tmp_path / "repo", {"pipeline.yaml": text})
    pipeline = Pipeline(env, fake_sky, repo, f"rec-{uuid.uuid4().hex[:6]}")
    fake_sky.plan("one", status="FAILED")  # nothing after step 1 matters here
    async with running_worker(
        env, fake_sky, tmp_path / "co", pipeline.task_queue, activities_class=Recording
    ):
        handle = await start_file(pipeline, repo, env_overrides={"RUN": "r"})
        with pytest.raises(WorkflowFailureError):
            await handle.result()
    assert [(step, doc) for step, doc, _ in checked] == [("one", 0), ("two-v1", 0), ("two-v2", 0)]
    envs = {step: e for step, _, e in checked}
    assert envs["one"] == {"BASE": "b", "OWN": "1", "RUN": "r"}
    assert envs["two-v2"] == {"BASE": "b", "RUN": "r", "LR": "2", "VARIANT_ID": "v2", "X": "0"}


async def test_step_one_checks_each_task_of_a_skypilot_chain(pipeline: Pipeline, tmp_path: Path):
    chain = "name: c\n---\nname: ok\nrun: echo\n---\nname: bad\nrun: echo\nvolume_mounts: []\n"
    handle = await start_file(
        pipeline, repo_with(pipeline, tmp_path, {"chain.yaml": chain}), path="chain.yaml"
    )
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    message = str(failed.value.cause)
    assert "chain.yaml: step 'bad': task 'bad'" in message and "volume_mounts" in message
    assert pipeline.fake.ever_launched == set()


async def test_a_missing_task_file_names_the_pipeline_file_and_the_step(pipeline: Pipeline, tmp_path: Path):
    text = "steps:\n  ok: {task: train.yaml}\n  lost: {task: nope.yaml, needs: [ok]}\n"
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    message = str(failed.value.cause)
    assert "pipeline.yaml: step 'lost': " in message and "nope.yaml" in message and "\n" not in message
    assert pipeline.fake.ever_launched == set()


async def test_a_task_problem_keeps_its_type_under_the_files_and_steps_names(
    pipeline: Pipeline, tmp_path: Path
):
    text = "steps:\n  lost: {task: nope.yaml}\n"
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert failed.value.cause.type == "TaskFileNotFound", failed.value.cause


async def test_a_timeout_for_a_step_the_file_does_not_have_fails_the_run_in_one_line(
    pipeline: Pipeline, tmp_path: Path
):
    repo = repo_with(pipeline, tmp_path, {"pipeline.yaml": "steps:\n  only: {task: train.yaml}\n"})
    handle = await start_file(pipeline, repo, timeouts=StepTimeouts(steps={"olny": 60}))
    with pytest.raises(WorkflowFailureError) as failed:
        await handle.result()
    assert failed.value.cause.message == "--timeout names step 'olny', which pipeline.yaml does not have"
    assert (failed.value.cause.type, failed.value.cause.non_retryable) == ("InvalidInput", True)  # bad input
    assert pipeline.fake.ever_launched == set()


async def test_the_pipeline_file_is_read_off_the_workers_event_loop(
    pipeline: Pipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """A large file, or one that expands to many steps, must not hold up every activity's
    heartbeats on the worker: the loader runs in the SDK thread pool."""
    import skypilot_temporal.activity.activities as activities_module

    threads: list[str] = []
    real_load = activities_module.load_pipeline

    def load(path: str, text: str) -> Any:
        threads.append(threading.current_thread().name)
        return real_load(path, text)

    monkeypatch.setattr(activities_module, "load_pipeline", load)
    repo = repo_with(pipeline, tmp_path, {"pipeline.yaml": "steps:\n  only: {task: train.yaml}\n"})
    await (await start_file(pipeline, repo)).result()
    assert threads and threads[0] != threading.main_thread().name


async def test_a_pipeline_file_can_be_scheduled_and_its_runs_are_searchable_by_kind(
    pipeline: Pipeline, tmp_path: Path
):
    repo = repo_with(pipeline, tmp_path, {"pipeline.yaml": "steps:\n  only: {task: train.yaml}\n"})
    env = {**starter_env(pipeline), "PIPELINE_REPO_URL": str(repo)}
    schedule_id = f"pf-sched-{uuid.uuid4().hex[:6]}"
    rc, stdout, stderr = await run_script(
        "run_workflow.py",
        "--pipeline",
        "pipeline.yaml",
        "--every",
        "1h",
        "--schedule-id",
        schedule_id,
        env_overrides=env,
    )
    assert rc == 0, (stdout, stderr)
    handle = pipeline.env.client.get_schedule_handle(schedule_id)
    try:
        action = (await handle.describe()).schedule.action
        assert isinstance(action, ScheduleActionStartWorkflow)
        assert action.workflow == "PipelineFileWorkflow"
        assert action.typed_search_attributes.get(PIPELINE_KIND) == "pipeline-file"
        await handle.trigger()

        async def ran() -> list[Any]:
            found = [
                w async for w in pipeline.env.client.list_workflows(f"TemporalScheduledById='{schedule_id}'")
            ]
            return [w for w in found if w.status is not None and w.status.name == "COMPLETED"]

        [run] = await eventually(ran, "the scheduled pipeline-file run completing", 60, every=0.05)
        assert run.typed_search_attributes.get(PIPELINE_KIND) == "pipeline-file"
    finally:
        await handle.delete()
    pipeline.assert_no_cluster_left()


async def test_follow_attaches_to_a_pipeline_file_run(pipeline: Pipeline, tmp_path: Path):
    repo = repo_with(pipeline, tmp_path, {"pipeline.yaml": "steps:\n  only: {task: train.yaml}\n"})
    handle = await start_file(pipeline, repo)
    await handle.result()
    rc, stdout, stderr = await run_script(
        "run_workflow.py", "--follow", handle.id, env_overrides=starter_env(pipeline)
    )
    assert rc == 0, (stdout, stderr)
    assert stdout.startswith(f"Following workflow {handle.id}\n") and "✓ only " in stdout
    assert f"Workflow {handle.id} succeeded" in stdout


async def scheduled_timeouts(handle: WorkflowHandle, client: Client) -> dict[str, int]:
    """Each activity's summary -> its start-to-close timeout in seconds, from the history."""
    found = {}
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            [summary] = await client.data_converter.decode([event.user_metadata.summary])
            found[summary] = event.activity_task_scheduled_event_attributes.start_to_close_timeout.seconds
    return found


async def test_a_steps_timeout_is_the_runs_for_it_else_the_files_else_the_runs_for_its_name(
    pipeline: Pipeline, tmp_path: Path
):
    fake = pipeline.fake
    fake.plan("a", status="FAILED")
    text = """
matrices: {m: {LR: [1]}}
steps:
  a: {task: train.yaml, timeout: 90s, retries: 1}
  b: {task: train.yaml, timeout: 90s}
  train: {task: train.yaml, matrix: m}
  other: {task: train.yaml}
"""
    repo = repo_with(pipeline, tmp_path, {"pipeline.yaml": text})
    # (Under the test run's 2-minute execution timeout, which caps an activity's.)
    timeouts = StepTimeouts(heartbeat=5, train=80, other_steps=100, steps={"b": 60})
    handle = await start_file(pipeline, repo, timeouts=timeouts)
    await handle.result()  # a fails once, and its retry succeeds
    seconds = {
        k.split()[1]: v
        for k, v in (await scheduled_timeouts(handle, pipeline.env.client)).items()
        if k.startswith("launch")
    }
    assert seconds["a"] == seconds["a-retry1"] == 90  # the file's, retries alike
    assert seconds["b"] == 60  # the run's for the step wins over the file's
    assert seconds["train-v1"] == 80 and seconds["other"] == 100  # the run's for the name


async def test_a_timeout_may_name_a_matrix_step_or_one_of_its_variants(pipeline: Pipeline, tmp_path: Path):
    text = "matrices: {m: {LR: [1, 2]}}\nsteps:\n  t: {task: train.yaml, matrix: m}\n"
    repo = repo_with(pipeline, tmp_path, {"pipeline.yaml": text})
    handle = await start_file(pipeline, repo, timeouts=StepTimeouts(steps={"t": 70, "t-v2": 50}))
    await handle.result()
    seconds = {
        k.split()[1]: v
        for k, v in (await scheduled_timeouts(handle, pipeline.env.client)).items()
        if k.startswith("launch")
    }
    assert (seconds["t-v1"], seconds["t-v2"]) == (70, 50)


async def step_succeeded(handle: WorkflowHandle, step: str) -> bool:
    """Whether the run saw `step` succeed (its activity ended: not only its job)."""
    progress = await handle.query(PipelineFileWorkflow.progress)
    return any(s.name == step and s.status == "succeeded" for s in progress.steps)


async def run_with_shared_cluster_taken(
    pipeline: Pipeline, tmp_path: Path, take: Callable[[str], Any]
) -> WorkflowHandle:
    """A run whose step `later` waits for `slow` while its cluster, `first`'s, is taken (down,
    stopped) by `take(cluster)`."""
    pipeline.fake.plan("slow", seconds=2.0)
    text = """
steps:
  first: {task: train.yaml, cluster: c}
  slow: {task: train.yaml}
  later: {task: eval.yaml, needs: [first, slow], cluster: c}
"""
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    await eventually(lambda: step_succeeded(handle, "first"), "first succeeding", 20, every=0.05)
    take(f"{cluster_prefix_for(handle.id)}-c")
    await handle.result()
    return handle


async def test_a_shared_cluster_skypilot_took_down_while_idle_is_launched_again_for_its_next_step(
    pipeline: Pipeline, tmp_path: Path
):
    """A later user of a shared cluster may wait hours for another branch; SkyPilot's autodown can
    take the idle cluster down meanwhile: the step launches it again instead of failing."""
    fake = pipeline.fake
    fake.plan("slow", seconds=1.0)
    text = """
steps:
  first: {task: train.yaml, cluster: c}
  slow: {task: train.yaml}
  later: {task: eval.yaml, needs: [first, slow], cluster: c}
"""
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    prefix = cluster_prefix_for(handle.id)
    await asyncio.to_thread(fake.wait_for_job, "slow")
    # The step, not its job only:
    await eventually(lambda: step_succeeded(handle, "first"), "first succeeding", 20, every=0.05)
    fake._do_down(f"{prefix}-c")  # SkyPilot's autodown of the idle cluster
    result = await handle.result()
    assert {s.step: s.job_status for s in result.steps}["later"] == "SUCCEEDED"
    assert [c for _, c, _ in fake.called("launch")].count(f"{prefix}-c") == 2
    progress = await handle.query(PipelineFileWorkflow.progress)
    later = next(s for s in progress.steps if s.name == "later")
    assert "launched again" in later.summary
    pipeline.assert_no_cluster_left()


async def test_a_shared_cluster_skypilot_stopped_while_idle_is_launched_again_for_its_next_step(
    pipeline: Pipeline, tmp_path: Path
):
    """An exec on a stopped cluster gets ClusterNotUpError (not ClusterDoesNotExist): the same."""
    fake = pipeline.fake

    def stop(cluster: str) -> None:
        fake.clusters[cluster].status = "STOPPED"

    handle = await run_with_shared_cluster_taken(pipeline, tmp_path, stop)
    assert [c for _, c, _ in fake.called("launch")].count(f"{cluster_prefix_for(handle.id)}-c") == 2
    pipeline.assert_no_cluster_left()


async def test_launching_a_gone_cluster_again_is_behind_its_patch(pipeline: Pipeline, tmp_path: Path):
    """Where an older worker's history failed the step, a replay must fail it too."""
    handle = await run_with_shared_cluster_taken(pipeline, tmp_path, pipeline.fake._do_down)
    patches = [
        json.loads(e.marker_recorded_event_attributes.details["patch-data"].payloads[0].data)["id"]
        async for e in handle.fetch_history_events()
        if e.marker_recorded_event_attributes.marker_name == "core_patch"
    ]
    assert "pipeline-file-relaunch-gone-clusters" in patches, patches


# ---------------------------------------------------------------- faults, as for the six steps


async def test_a_retried_launch_and_exec_step_reattach_instead_of_submitting_again(
    pipeline: Pipeline, tmp_path: Path
):
    """The API server drops the log stream of each step's first attempt: the retry finds the job
    by its name (launch and exec alike), never a second job."""
    fake = pipeline.fake
    fake.plan("first", seconds=0.3)
    fake.plan("then", seconds=0.3)
    text = (
        "steps:\n  first: {task: train.yaml, cluster: c}\n"
        "  then: {task: eval.yaml, needs: [first], cluster: c}\n"
    )
    dropped = exceptions.ApiServerConnectionError("http://x")
    fake.fail_next("tail_logs", dropped)
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    await asyncio.to_thread(fake.wait_for_job, "first", "SUCCEEDED")
    fake.fail_next("tail_logs", dropped)
    result = await handle.result()
    assert [s.job_status for s in result.steps] == ["SUCCEEDED", "SUCCEEDED"]
    assert len(fake.jobs_named("first")) == len(fake.jobs_named("then")) == 1
    assert len(fake.called("launch")) == len(fake.called("exec")) == 1
    pipeline.assert_no_cluster_left()


async def test_the_reaper_leaves_a_running_pipeline_files_clusters_and_variants_alone(
    pipeline: Pipeline, tmp_path: Path
):
    fake = pipeline.fake
    fake.plan("long-v1", until_cancelled=True)
    fake.plan("long-v2", until_cancelled=True)
    text = "matrices: {m: {LR: [1, 2]}}\nsteps:\n  long: {task: train.yaml, matrix: m, cluster: t}\n"
    handle = await start_file(pipeline, repo_with(pipeline, tmp_path, {"pipeline.yaml": text}))
    prefix = cluster_prefix_for(handle.id)
    ours = {f"{prefix}-tv1", f"{prefix}-tv2"}

    async def both_running() -> bool:
        return ours <= {c.name for c in fake.clusters.values() if any(j.status == "RUNNING" for j in c.jobs)}

    await eventually(both_running, "both variants run", 20, every=0.05)
    for name in ours:
        fake.clusters[name].launched_at -= 3600
    fake.add_job("skypilot-gone1-tv1", "x")  # a closed run's variant cluster
    fake.clusters["skypilot-gone1-tv1"].launched_at -= 3600
    reaped = await pipeline.env.client.execute_workflow(
        ClusterReaperWorkflow.run,
        ReaperInput(grace_seconds=60),
        id=f"reaper-{handle.id}",
        task_queue=pipeline.task_queue,
    )
    assert reaped.reaped == ["skypilot-gone1-tv1"]
    assert ours <= set(fake.clusters)
    await handle.cancel()
    with pytest.raises(WorkflowFailureError):
        await handle.result()
    pipeline.assert_no_cluster_left()
