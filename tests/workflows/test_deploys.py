"""Deploys with runs in flight (worker versioning: operations/deployment.py), on the dev server:
workers of this project's workflows.py and of its next version (testing/deploys.py: one
more step) over one fake SkyPilot."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.workflowservice.v1 import request_response_pb2 as service
from temporalio.client import WorkflowHandle
from temporalio.common import VersioningBehavior

from skypilot_temporal.naming import cluster_prefix_for, job_name_for
from skypilot_temporal.operations.deployment import code_build_id
from skypilot_temporal.operations.reaper import ClusterReaperWorkflow, ReaperInput
from skypilot_temporal.payloads import SweepInput
from skypilot_temporal.testing import in_process as harness
from skypilot_temporal.testing.fake_sky import FakeSky
from testing.deploys import EXTRA_STEP, current_build, next_workflows_source, version_of, wait_for_current
from testing.in_process import WORKER_ENVIRON, WORKER_POLICY, Pipeline
from testing.waiting import eventually
from workflows import PIPELINES, SweepWorkflow


@pytest.fixture
def next_pipelines(tmp_path: Path, monkeypatch) -> list[type]:
    """The next version's workflows (same type names, one more step), importable as a module."""
    code = tmp_path / "next_code"
    code.mkdir()
    (code / "workflows_next.py").write_text(next_workflows_source())
    monkeypatch.syspath_prepend(str(code))
    return list(importlib.import_module("workflows_next").PIPELINES)


@asynccontextmanager
async def versioned_worker(
    pipeline: Pipeline,
    workflows: list[Any],
    tmp_path: Path,
    versioning: bool = True,
    make_current: str = "auto",
) -> AsyncIterator[None]:
    async with harness.running_worker(
        pipeline.env.client,
        pipeline.fake,
        pipeline.task_queue,
        workflows=workflows,
        checkout_root=tmp_path / f"checkouts-{uuid.uuid4().hex[:6]}",
        environ=WORKER_ENVIRON,
        policy=WORKER_POLICY,
        versioning=versioning,
        make_current=make_current,
    ):
        yield


async def jobs_of(fake: FakeSky, handle: WorkflowHandle) -> list[str]:
    """The jobs `handle`'s run submitted, in order."""
    prefix, run_id = cluster_prefix_for(handle.id), (await handle.describe()).run_id
    names = {job_name_for(prefix, run_id, step): step for step in ("preprocess", "train", "eval", EXTRA_STEP)}
    return [names[job.job_name] for job in fake.submitted if job.job_name in names]


def finish(fake: FakeSky, step: str) -> None:
    job = fake.wait_for_job(step)
    job.status, job.finished_at = "SUCCEEDED", time.monotonic()
    job.done.set()


@pytest.fixture
def pipeline(env, fake_sky: FakeSky, task_repo: Path) -> Pipeline:
    """A handle with no worker: each test starts its own versioned ones."""
    return Pipeline(env, fake_sky, task_repo, f"deploy-{uuid.uuid4().hex[:8]}")


async def test_a_run_in_flight_finishes_on_its_version_and_new_runs_start_on_the_new_one(
    pipeline: Pipeline, next_pipelines: list[type], tmp_path: Path
):
    client, fake = pipeline.env.client, pipeline.fake
    fake.plan("train", seconds=600)  # held until the new version is current
    async with versioned_worker(pipeline, PIPELINES, tmp_path):
        old = await wait_for_current(client, pipeline.task_queue)
        in_flight = await pipeline.start()
        await asyncio.to_thread(fake.wait_for_job, "train")
        async with versioned_worker(pipeline, next_pipelines, tmp_path):
            new = await wait_for_current(client, pipeline.task_queue, other_than=old)
            assert (await in_flight.describe()).status is not None
            await asyncio.to_thread(finish, fake, "train")
            result = await in_flight.result()  # no non-determinism error: its own code replays it
            fake.plan("train", seconds=0)
            new_run = await pipeline.start()
            await new_run.result()
    assert [step.job_status for step in result.steps] == ["SUCCEEDED"] * 3
    assert await jobs_of(fake, in_flight) == ["preprocess", "train", "eval"]
    assert await jobs_of(fake, new_run) == ["preprocess", "train", "eval", EXTRA_STEP]
    pinned = VersioningBehavior.PINNED.value
    assert await version_of(in_flight) == (old, pinned)
    assert await version_of(new_run) == (new, pinned)
    pipeline.assert_no_cluster_left()


async def test_an_old_worker_restarted_while_its_runs_drain_does_not_take_the_deployment_back(
    pipeline: Pipeline, next_pipelines: list[type], tmp_path: Path, caplog
):
    client = pipeline.env.client
    async with versioned_worker(pipeline, PIPELINES, tmp_path):
        old = await wait_for_current(client, pipeline.task_queue)
    async with versioned_worker(pipeline, next_pipelines, tmp_path):
        new = await wait_for_current(client, pipeline.task_queue, other_than=old)
    caplog.set_level(logging.INFO, "skypilot_temporal")
    async with versioned_worker(pipeline, PIPELINES, tmp_path):
        await wait_for_log(caplog, f"build {old} is NOT current")
    assert await current_build(client, pipeline.task_queue) == new
    assert f"set-current-version --deployment-name {pipeline.task_queue} --build-id {old}" in caplog.text


async def test_a_new_worker_restarted_after_a_rollback_does_not_undo_it(
    pipeline: Pipeline, next_pipelines: list[type], tmp_path: Path, caplog
):
    client, deployment = pipeline.env.client, pipeline.task_queue
    async with versioned_worker(pipeline, PIPELINES, tmp_path):
        old = await wait_for_current(client, deployment)
        async with versioned_worker(pipeline, next_pipelines, tmp_path):
            new = await wait_for_current(client, deployment, other_than=old)
        await client.workflow_service.set_worker_deployment_current_version(
            service.SetWorkerDeploymentCurrentVersionRequest(
                namespace=client.namespace, deployment_name=deployment, build_id=old
            )
        )  # the operator's rollback
        caplog.set_level(logging.INFO, "skypilot_temporal")
        async with versioned_worker(pipeline, next_pipelines, tmp_path):
            await wait_for_log(caplog, f"build {new} is NOT current (current: {old}, this build was current")
        assert await current_build(client, deployment) == old


async def test_with_make_current_never_a_new_version_waits_for_the_operator(
    pipeline: Pipeline, tmp_path: Path, caplog
):
    caplog.set_level(logging.INFO, "skypilot_temporal")
    async with versioned_worker(pipeline, PIPELINES, tmp_path, make_current="never"):
        await wait_for_log(caplog, "WORKER_MAKE_CURRENT=never")
        assert await current_build(pipeline.env.client, pipeline.task_queue) == ""
        handle = await pipeline.start()
        await asyncio.sleep(1)
        assert pipeline.fake.submitted == []  # no version is current: the run waits, nothing ran
        await handle.terminate()


async def wait_for_log(caplog, text: str) -> None:
    try:
        await eventually(lambda: text in caplog.text, f"a log line with {text!r}", 30, every=0.1)
    except AssertionError as error:
        raise AssertionError(f"{error}; the log:\n{caplog.text}") from None


def test_the_build_id_follows_the_workflow_code(next_pipelines: list[type]):
    assert code_build_id(PIPELINES) == code_build_id(PIPELINES)
    assert code_build_id(PIPELINES) != code_build_id(next_pipelines)


@pytest.mark.parametrize("versioned", [True, False])
async def test_the_reaper_upgrades_mid_run_on_a_versioned_worker_and_runs_on_an_unversioned_one(
    pipeline: Pipeline, tmp_path: Path, versioned: bool
):
    """Temporal refuses a versioning behaviour on an unversioned worker (WORKER_DEPLOYMENT_NAME=off):
    the reaper must run on both."""
    async with versioned_worker(pipeline, PIPELINES, tmp_path, versioning=versioned):
        handle = await pipeline.env.client.start_workflow(
            ClusterReaperWorkflow.run,
            ReaperInput(grace_seconds=60),
            id=f"reaper-{uuid.uuid4().hex[:8]}",
            task_queue=pipeline.task_queue,
        )
        await asyncio.wait_for(handle.result(), 30)
    behavior = VersioningBehavior.AUTO_UPGRADE if versioned else VersioningBehavior.UNSPECIFIED
    assert (await version_of(handle))[1] == behavior.value


async def test_a_sweeps_variants_started_after_a_deploy_stay_on_the_sweeps_version(
    pipeline: Pipeline, next_pipelines: list[type], tmp_path: Path
):
    """Children inherit their parent's pinned version: one variant at a time, the second starts
    after the deploy, on the sweep's version and workers."""
    client, fake = pipeline.env.client, pipeline.fake
    fake.plan("train", seconds=600)
    async with versioned_worker(pipeline, PIPELINES, tmp_path):
        old = await wait_for_current(client, pipeline.task_queue)
        sweep = await client.start_workflow(
            SweepWorkflow.run,
            SweepInput(pipeline.input(), [{"LR": "0.1"}, {"LR": "0.01"}], max_parallel=1),
            id=f"sweep-{uuid.uuid4().hex[:8]}",
            task_queue=pipeline.task_queue,
        )
        await asyncio.to_thread(fake.wait_for_job, "train")
        async with versioned_worker(pipeline, next_pipelines, tmp_path):
            await wait_for_current(client, pipeline.task_queue, other_than=old)
            fake.plan("train", seconds=0)
            await asyncio.to_thread(finish, fake, "train")
            await sweep.result()
    second = client.get_workflow_handle(f"{sweep.id}-v2")
    assert await version_of(second) == (old, VersioningBehavior.PINNED.value)
