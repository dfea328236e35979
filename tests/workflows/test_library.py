"""The package as a platform team uses it: one plugin on its own worker, its own pipeline shape,
type names that recorded histories depend on, and one list of settings."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from platform_pipeline import TrainOnlyPipeline, TrainThenSmokeTests
from temporalio import activity, workflow
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.converter import (
    DataConverter,
    DefaultFailureConverterWithEncodedAttributes,
    DefaultPayloadConverter,
)
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker, WorkerTuner

import workflows
from skypilot_temporal import PipelineInput, SkyPilotActivities, SkyPilotPlugin, WorkerSettings, settings
from skypilot_temporal.errors import ConfigError
from skypilot_temporal.operations.reaper import ClusterReaperWorkflow
from skypilot_temporal.payloads import FetchTasksInput, ReaperInput, RunTasks, StepTimeouts
from skypilot_temporal.testing import FakeSky, running_worker
from skypilot_temporal.trust import codec
from testing import ROOT
from testing.in_process import WORKER_POLICY

# Recorded histories and runs in flight name these: renaming one breaks them (tests/workflows/histories).
WORKFLOW_TYPES = {
    "SkyPilotWorkflow",
    "SweepWorkflow",
    "SweepVariantWorkflow",
    "ClusterReaperWorkflow",
    "PipelineFileWorkflow",
}
ACTIVITY_TYPES = {
    "fetch_tasks",
    "fetch_pipeline",
    "launch_task",
    "exec_task",
    "down_cluster",
    "remove_checkout",
    "submit_managed_job",
    "follow_managed_job",
    "cancel_managed_job",
    "find_orphan_clusters",
}


@asynccontextmanager
async def platform_worker(
    env: WorkflowEnvironment, fake_sky: FakeSky, checkout_root: Path, pipeline: Any, **options: Any
) -> AsyncIterator[Callable[[PipelineInput], Awaitable[WorkflowHandle[Any, Any]]]]:
    """A platform's worker running only `pipeline` (on the plugin); yields what starts a run of it."""
    task_queue = f"platform-{uuid.uuid4().hex[:8]}"
    async with running_worker(
        env.client,
        fake_sky,
        task_queue,
        workflows=[pipeline],
        checkout_root=checkout_root,
        policy=WORKER_POLICY,
        **options,
    ):

        async def start(input: PipelineInput) -> WorkflowHandle[Any, Any]:
            run_id = f"{task_queue}-{uuid.uuid4().hex[:6]}"
            return await env.client.start_workflow(pipeline.run, input, id=run_id, task_queue=task_queue)

        yield start


async def test_the_registered_type_names_never_change(env, fake_sky: FakeSky, tmp_path: Path):
    worker = Worker(
        env.client, task_queue="names", workflows=workflows.PIPELINES, plugins=[SkyPilotPlugin(sky=fake_sky)]
    )
    config = worker.config(active_config=True)
    assert {getattr(w, "__temporal_workflow_definition").name for w in config["workflows"]} == WORKFLOW_TYPES
    assert {getattr(a, "__temporal_activity_definition").name for a in config["activities"]} == ACTIVITY_TYPES


async def test_a_platforms_own_pipeline_runs_on_its_own_worker_with_one_plugin(
    env, fake_sky: FakeSky, task_repo: Path, tmp_path: Path
):
    task_queue = f"platform-{uuid.uuid4().hex[:8]}"
    plugin = SkyPilotPlugin(
        settings.WorkerSettings(
            checkout_root=tmp_path / "checkouts", heartbeat_interval_seconds=0.2, policy=WORKER_POLICY
        ),
        sky=fake_sky,
        data_converter=env.client.data_converter,
    )
    async with Worker(env.client, task_queue=task_queue, workflows=[TrainOnlyPipeline], plugins=[plugin]):
        status = await env.client.execute_workflow(
            TrainOnlyPipeline.run,
            PipelineInput(repo_url=str(task_repo), ref="main", timeouts=StepTimeouts(heartbeat=5)),
            id=f"platform-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
            execution_timeout=timedelta(minutes=1),
        )
    assert status == "SUCCEEDED"
    assert [call for call in fake_sky.called("launch")] and fake_sky.clusters == {}


async def test_a_new_step_gets_its_own_timeout_and_the_result_masks_url_credentials(
    env, fake_sky: FakeSky, task_repo: Path, tmp_path: Path
):
    class FromLocalCopy(SkyPilotActivities):  # the credentialed URL names a server that is not here
        @activity.defn(name="fetch_tasks")
        async def fetch_tasks(self, input: FetchTasksInput) -> RunTasks:
            return await super().fetch_tasks(dataclasses.replace(input, repo_url=str(task_repo)))

    timeouts = StepTimeouts(heartbeat=5, steps={"smoke": 77}, other_steps=55)
    async with platform_worker(
        env, fake_sky, tmp_path / "c", TrainThenSmokeTests, activities_class=FromLocalCopy
    ) as start:
        credentialed = "https://bob:hunter2pw@example.com/t.git"
        handle = await start(PipelineInput(repo_url=credentialed, timeouts=timeouts))
        result = await handle.result()
        progress = await handle.query(TrainThenSmokeTests.progress)
    assert [s.status for s in progress.steps] == ["succeeded"] * 5
    assert result.repo_url == "https://***@example.com/t.git"
    scheduled = {}
    async for event in handle.fetch_history_events():
        if event.HasField("activity_task_scheduled_event_attributes"):
            attributes = event.activity_task_scheduled_event_attributes
            summary = await env.client.data_converter.decode([event.user_metadata.summary])
            scheduled[summary[0]] = attributes.start_to_close_timeout.seconds
    prefix = result.steps[0].cluster_name
    assert scheduled[f"launch train on {prefix}"] == StepTimeouts().train
    assert scheduled[f"exec smoke on {prefix}"] == 77
    assert scheduled[f"exec teardown on {prefix}"] == 55


def test_each_step_has_its_own_timeout_and_a_new_one_the_explicit_default():
    timeouts = StepTimeouts(preprocess=1, train=2, eval=3, other_steps=4, steps={"eval": 5})
    steps = ["preprocess", "train", "eval", "smoke"]
    assert [timeouts.for_step(s) for s in steps] == [1, 2, 5, 4]
    assert dataclasses.replace(timeouts, steps={}).for_step("eval") == 3


async def test_a_planned_step_the_run_never_reaches_ends_skipped_not_pending(
    env, fake_sky: FakeSky, task_repo: Path, tmp_path: Path
):
    fake_sky.plan("train", status="FAILED")
    async with platform_worker(env, fake_sky, tmp_path / "c", TrainThenSmokeTests) as start:
        handle = await start(PipelineInput(repo_url=str(task_repo), timeouts=StepTimeouts(heartbeat=5)))
        with pytest.raises(WorkflowFailureError):
            await handle.result()
        progress = await handle.query(TrainThenSmokeTests.progress)
    statuses = {s.name: s.status for s in progress.steps}
    assert statuses["train"] == "failed"
    assert [statuses[name] for name in ("smoke", "teardown", "train-down")] == ["skipped"] * 3


async def test_a_worker_whose_client_would_not_encrypt_refuses_to_start(env, fake_sky: FakeSky):
    plain = Client(**{**env.client.config(), "data_converter": codec.data_converter(None)})
    keyed = codec.data_converter({"k1": b"k" * 32})
    with pytest.raises(ConfigError, match=r"pass SkyPilotPlugin to Client\.connect"):
        Worker(
            plain,
            task_queue="x",
            workflows=[TrainOnlyPipeline],
            plugins=[SkyPilotPlugin(sky=fake_sky, data_converter=keyed)],
        )


class TeamPayloadConverter(DefaultPayloadConverter):
    """A platform's own payload converter (e.g. for pydantic models)."""


def test_the_plugin_adds_the_codec_to_the_clients_converter_and_keeps_the_rest(
    env, fake_sky: FakeSky, monkeypatch: pytest.MonkeyPatch
):
    theirs = DataConverter(payload_converter_class=TeamPayloadConverter)
    keyed = codec.data_converter({"k1": b"k" * 32})
    config = {**env.client.config(), "data_converter": theirs}
    encrypting = Client(**{**config, "plugins": [SkyPilotPlugin(sky=fake_sky, data_converter=keyed)]})
    assert encrypting.data_converter.payload_converter_class is TeamPayloadConverter
    assert isinstance(encrypting.data_converter.payload_codec, codec.EncryptionCodec)
    # Failure messages and stack traces are encrypted too, not only payloads.
    assert encrypting.data_converter.failure_converter_class is DefaultFailureConverterWithEncodedAttributes
    plain = Client(
        **{**config, "plugins": [SkyPilotPlugin(sky=fake_sky, data_converter=codec.data_converter(None))]}
    )
    assert plain.data_converter is theirs


async def test_the_plugin_gives_a_worker_its_settings_and_keeps_credentials_out_of_logs(
    env, fake_sky: FakeSky, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.delenv("SKYPILOT_DISABLE_LOCAL_API_SERVER", raising=False)
    chosen = WorkerSettings(max_concurrent_activities=7, shutdown_grace_seconds=42)
    plugin = SkyPilotPlugin(chosen)  # the real SDK: it must never start a local API server
    assert os.environ["SKYPILOT_DISABLE_LOCAL_API_SERVER"] == "1"
    plugin = SkyPilotPlugin(chosen, sky=fake_sky)
    worker = Worker(env.client, task_queue="settings", workflows=[TrainOnlyPipeline], plugins=[plugin])
    config = worker.config(active_config=True)
    assert config["max_concurrent_activities"] == 7
    assert config["graceful_shutdown_timeout"] == timedelta(seconds=42)
    own = Worker(
        env.client,
        task_queue="own",
        workflows=[TrainOnlyPipeline],
        plugins=[plugin],
        max_concurrent_activities=3,
    )
    assert own.config(active_config=True)["max_concurrent_activities"] == 3
    tuned = Worker(  # a Worker with its own tuner: the plugin must not add a slot count beside it
        env.client,
        task_queue="tuned",
        workflows=[TrainOnlyPipeline],
        plugins=[plugin],
        tuner=WorkerTuner.create_fixed(workflow_slots=5, activity_slots=5, local_activity_slots=5),
    )
    assert tuned.config(active_config=True)["max_concurrent_activities"] is None
    loggers = [activity.logger.logger, workflow.logger.logger, logging.getLogger("skypilot_temporal")]
    with caplog.at_level(logging.INFO):
        for logger in loggers:
            logger.warning("cannot clone %s", f"https://bob:hunter2pw@git.example.com/{logger.name}")
    assert "hunter2pw" not in caplog.text
    for logger in loggers:
        assert f"https://***@git.example.com/{logger.name}" in caplog.text


async def test_workers_sharing_a_client_with_the_plugin_keep_their_own_sdk_threads(
    env, fake_sky: FakeSky, task_repo: Path, tmp_path: Path
):
    plugin = SkyPilotPlugin(
        WorkerSettings(checkout_root=tmp_path / "c", reaper_period_seconds=0, policy=WORKER_POLICY),
        sky=fake_sky,
        data_converter=env.client.data_converter,
    )
    client = Client(**{**env.client.config(), "plugins": [plugin]})
    queues = [f"shared-{n}-{uuid.uuid4().hex[:6]}" for n in range(2)]
    first, second = (Worker(client, task_queue=q, workflows=[TrainOnlyPipeline]) for q in queues)
    async with second:
        async with first:
            pass  # the first worker stops: its thread pools go, the second's stay
        result = await client.execute_workflow(
            TrainOnlyPipeline.run,
            PipelineInput(repo_url=str(task_repo), timeouts=StepTimeouts(heartbeat=5)),
            id=f"shared-{uuid.uuid4().hex[:8]}",
            task_queue=queues[1],
        )
    assert result == "SUCCEEDED"


async def test_the_reaper_keeps_the_clusters_of_a_running_pipeline_it_does_not_know(
    env, fake_sky: FakeSky, task_repo: Path, tmp_path: Path
):
    """A pipeline type on another worker (another task queue, another team's type) still owns its
    clusters: the reaper keeps them while that run is going."""
    fake_sky.plan("train", until_cancelled=True)
    async with platform_worker(env, fake_sky, tmp_path / "a", TrainOnlyPipeline) as start:
        handle = await start(PipelineInput(repo_url=str(task_repo), timeouts=StepTimeouts(heartbeat=5)))
        await asyncio.to_thread(fake_sky.wait_for_job, "train")
        reaper_queue = f"reaper-{uuid.uuid4().hex[:8]}"
        async with running_worker(
            env.client, fake_sky, reaper_queue, workflows=workflows.PIPELINES, checkout_root=tmp_path / "b"
        ):
            result = await env.client.execute_workflow(
                ClusterReaperWorkflow.run,
                ReaperInput(grace_seconds=0),
                id=f"reaper-{uuid.uuid4().hex[:8]}",
                task_queue=reaper_queue,
            )
        assert result.reaped == [] and len(result.kept) == 1, result
        await handle.cancel()


SETTING_PREFIXES = (
    "WORKER_",
    "TEMPORAL_",
    "CODEC_",
    "PAYLOAD_",
    "OTEL_",
    "PIPELINE_",
    "REAPER_",
    "AUTODOWN_",
)
SETTING_PREFIXES += ("SKYPILOT_", "LOG_")
# Environment names the code uses that no one sets for it: a task's env, and one it sets itself.
NOT_SETTINGS = {"PIPELINE_RUN_ID", "SKYPILOT_DISABLE_LOCAL_API_SERVER"}


def test_every_setting_is_read_documented_and_in_env_example():
    listed = set(settings.ALL_SETTINGS)
    code = "\n".join(p.read_text() for p in [*ROOT.glob("*.py"), *(ROOT / "skypilot_temporal").rglob("*.py")])
    read = set(re.findall(r"env_(?:str|int|bool|list)\(\s*\"([A-Z][A-Z0-9_]+)\"", code))
    read |= set(re.findall(r"environ(?:\.get\(|\[)\s*\"([A-Z][A-Z0-9_]+)\"", code))
    assert read - listed == set(), "read but not in settings.ALL_SETTINGS"
    # Names a setting may be read under without a literal env_*("...") call (tuples, f-strings).
    quoted = set(re.findall(r"[\"']([A-Z][A-Z0-9_]{3,})[\"']", code))
    assert listed - quoted == set(), "listed in settings.ALL_SETTINGS but named nowhere in the code"
    ours = {name for name in quoted if name.startswith(SETTING_PREFIXES)} - NOT_SETTINGS
    assert ours - listed == set(), "named in the code like a setting but not in settings.ALL_SETTINGS"
    example = (ROOT / ".env.example").read_text()
    example_names = set(re.findall(r"^#? ?([A-Z][A-Z0-9_]{3,})=", example, re.M)) - {"HF_TOKEN"}
    assert example_names - listed == set(), ".env.example names a setting that does not exist"
    assert {n for n in listed if not re.search(rf"\b{n}\b", example)} == set(), "missing from .env.example"
    table = [
        line for line in (ROOT / "docs" / "configuration.md").read_text().splitlines() if line[:1] == "|"
    ]
    first_cells = "\n".join(line.split("|")[1] for line in table)
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]{3,})`", first_cells))
    assert documented - listed == set(), "docs/configuration.md names a setting that does not exist"
    assert listed - documented == set(), "missing from docs/configuration.md"
