"""Pipeline files: any shape from a file in the task repository, run by one generic workflow over
the fake SDK (order, parallelism, shared clusters, outputs, conditions, failure, cancel)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import WorkflowFailureError, WorkflowHandle

from skypilot_temporal.payloads import PipelineFileInput, PipelineResult
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.workflow.pipeline_file_workflow import PipelineFileWorkflow
from testing.in_process import Pipeline, make_task_repo, running_worker

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
