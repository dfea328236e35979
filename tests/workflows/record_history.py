"""Record the histories the replay tests replay (tests/workflows/histories/).

    .venv/bin/python -m tests.workflows.record_history                     # happy_path.json (plain payloads)
    .venv/bin/python -m tests.workflows.record_history --failed-encrypted  # failed_train_encrypted.json
    .venv/bin/python -m tests.workflows.record_history --searchable        # searchable_happy_path.json
    .venv/bin/python -m tests.workflows.record_history --pipeline-files    # pipeline_file_*.json
    .venv/bin/python -m tests.workflows.record_history --sweep-and-reaper  # sweep*.json, reaper.json

The second is a run whose train job fails, recorded with payload encryption on (the fixed key
RECORDING_CODEC_KEYS): it guards replay of encrypted histories and of the failure path. The
third is a happy path started with its search attributes, as run_workflow.py starts runs: it
guards the upserts that keep them current.

Run it only when a workflow change is meant to be incompatible with running workflows (and then
version the change); otherwise the replay test exists to catch exactly that change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from skypilot_temporal.operations.reaper import ClusterReaperWorkflow
from skypilot_temporal.operations.search_attributes import at_start
from skypilot_temporal.payloads import PipelineFileInput, PipelineInput, ReaperInput, SweepInput
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.trust.codec import data_converter
from skypilot_temporal.trust.task_policy import TaskPolicy
from skypilot_temporal.workflow.pipeline_file_workflow import PipelineFileWorkflow
from testing import HISTORIES, ROOT
from testing.in_process import REAL_WORKER_POLICY, make_git_repo, running_worker, start_dev_server
from workflows import SkyPilotWorkflow, SweepWorkflow

# Not a secret: the key of the recorded encrypted history, so the replay test can decode it.
RECORDING_CODEC_KEYS = {"recorded": bytes(range(32))}
# In the recorded failed run: an env value, a task line and a log line that must never show in
# the raw (encrypted) history.
FAILED_RUN_MARKERS = ("env-marker-7c1e", "Data preprocessing completed", "log-marker-51d0")


async def record(failed_encrypted: bool = False, searchable: bool = False) -> None:
    env = await start_dev_server(data_converter(RECORDING_CODEC_KEYS if failed_encrypted else None))
    fake = FakeSky()
    fake.plan("eval", logs=["eval_accuracy=0.93"])
    if failed_encrypted:
        fake.plan("train", status="FAILED", logs=["epoch 1", "log-marker-51d0 loss went NaN"])
    with tempfile.TemporaryDirectory() as scratch:
        # A real worker's settings (its own environment, no secret allowed), quick heartbeats.
        async with running_worker(
            env,
            fake,
            Path(scratch),
            "record",
            threads=8,
            heartbeat_seconds=0.1,
            environ=None,
            policy=REAL_WORKER_POLICY,
        ):
            handle = await env.client.start_workflow(
                SkyPilotWorkflow.run,
                PipelineInput(
                    repo_url=str(ROOT),
                    ref="HEAD",
                    preprocess_yaml="tasks/data_preprocessing.yaml",
                    train_yaml="tasks/train.yaml",
                    eval_yaml="tasks/eval.yaml",
                    env_overrides={"MARKER": FAILED_RUN_MARKERS[0]} if failed_encrypted else {},
                ),
                id="recorded-failed-train" if failed_encrypted else "recorded-happy-path",
                task_queue="record",
                search_attributes=at_start(SkyPilotWorkflow.__name__, str(ROOT)) if searchable else None,
            )
            try:
                await handle.result()
            except Exception:
                if not failed_encrypted:
                    raise
            history = await handle.fetch_history()
    name = "failed_train_encrypted.json" if failed_encrypted else "happy_path.json"
    name = f"searchable_{name}" if searchable else name
    out = HISTORIES / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"workflow_id": handle.id, "history": history.to_json_dict()}, indent=1) + "\n")
    print(f"wrote {out}")
    await env.shutdown()


# The generic workflow's histories (pipeline_file_<name>.json): a pipeline file of this
# project's tasks/, how the fake SDK's jobs behave, and whether the run is cancelled mid-train.
MANAGED_TRAIN_FILE = """
steps:
  prepare: {task: tasks/data_preprocessing.yaml}
  train: {task: tasks/train.yaml, needs: [prepare], managed: true}
  eval: {task: tasks/eval.yaml, needs: [train]}
"""
PIPELINE_FILE_RUNS: dict[str, tuple[str, dict[str, dict[str, Any]], bool]] = {
    "diamond": (
        "tasks/diamond.yaml",
        {
            "train-small": {"logs": ["METRIC train_loss=0.25"]},
            "train-large": {"logs": ["METRIC train_loss=0.2"]},
            "eval-large": {"logs": ["METRIC eval_accuracy=0.9"]},
        },
        False,
    ),
    "failed_branch": (
        "tasks/diamond.yaml",
        {"train-small": {"status": "FAILED", "seconds": 0.5}, "train-large": {"until_cancelled": True}},
        False,
    ),
    "cancel": ("tasks/diamond.yaml", {"train-large": {"until_cancelled": True}}, True),
    "managed": ("tasks/managed.yaml", {"train": {"logs": ["METRIC train_loss=0.3"]}}, False),
}


async def record_pipeline_files() -> None:
    env = await start_dev_server(data_converter(None))
    with tempfile.TemporaryDirectory() as scratch:
        files = {f"tasks/{p.name}": p.read_text() for p in (ROOT / "tasks").glob("*.yaml")}
        repo = make_git_repo(Path(scratch) / "repo", {**files, "tasks/managed.yaml": MANAGED_TRAIN_FILE})
        for name, (path, plans, cancel) in PIPELINE_FILE_RUNS.items():
            fake = FakeSky()
            for step, plan in plans.items():
                fake.plan(step, **plan)
            async with running_worker(
                env,
                fake,
                Path(scratch) / name,
                "record",
                threads=8,
                heartbeat_seconds=0.1,
                environ=None,
                policy=TaskPolicy(local_repo_dirs=(Path(scratch),)),
            ):
                handle = await env.client.start_workflow(
                    PipelineFileWorkflow.run,
                    PipelineFileInput(path, PipelineInput(repo_url=str(repo), ref="main")),
                    id=f"recorded-pipeline-file-{name.replace('_', '-')}",
                    task_queue="record",
                )
                if cancel:
                    await asyncio.to_thread(fake.wait_for_job, "train-large")
                    await handle.cancel()
                try:
                    await handle.result()
                except Exception:
                    if not (cancel or name == "failed_branch"):
                        raise
                history = await handle.fetch_history()
            out = HISTORIES / f"pipeline_file_{name}.json"
            out.write_text(
                json.dumps({"workflow_id": handle.id, "history": history.to_json_dict()}, indent=1) + "\n"
            )
            print(f"wrote {out}")
    await env.shutdown()


async def record_sweep_and_reaper() -> None:
    """A sweep of two variants (v2's train fails), its two child runs, and a reaper run:
    sweep.json, sweep_v1.json, sweep_v2.json and reaper.json."""
    env = await start_dev_server(data_converter(None))
    fake = FakeSky()
    fake.plan("eval", logs=["METRIC eval_accuracy=0.9"])
    fake.plan("train@v2", status="FAILED")
    with tempfile.TemporaryDirectory() as scratch:
        async with running_worker(
            env, fake, Path(scratch), "record", threads=8, heartbeat_seconds=0.1, environ=None,
            policy=TaskPolicy(local_repo_dirs=(ROOT,)),
        ):  # fmt: skip
            pipeline = PipelineInput(
                repo_url=str(ROOT),
                ref="HEAD",
                preprocess_yaml="tasks/data_preprocessing.yaml",
                train_yaml="tasks/train.yaml",
                eval_yaml="tasks/eval.yaml",
            )
            sweep = await env.client.start_workflow(
                SweepWorkflow.run,
                SweepInput(pipeline, [{"LR": "0.1"}, {"LR": "0.01"}]),
                id="recorded-sweep",
                task_queue="record",
            )
            await sweep.result()
            reaper = await env.client.start_workflow(
                ClusterReaperWorkflow.run,
                ReaperInput(grace_seconds=0),
                id="recorded-reaper",
                task_queue="record",
            )
            await reaper.result()
            runs = {"sweep": sweep.id, "sweep_v1": f"{sweep.id}-v1", "sweep_v2": f"{sweep.id}-v2"}
            runs["reaper"] = reaper.id
            for name, workflow_id in runs.items():
                history = await env.client.get_workflow_handle(workflow_id).fetch_history()
                out = HISTORIES / f"{name}.json"
                out.write_text(
                    json.dumps({"workflow_id": workflow_id, "history": history.to_json_dict()}, indent=1)
                    + "\n"
                )
                print(f"wrote {out}")
    await env.shutdown()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--failed-encrypted",
        action="store_true",
        help="record failed_train_encrypted.json (train fails, payloads encrypted), not happy_path.json",
    )
    parser.add_argument("--searchable", action="store_true", help="start the run with its search attributes")
    parser.add_argument(
        "--pipeline-files", action="store_true", help="record the generic workflow's pipeline_file_*.json"
    )
    parser.add_argument(
        "--sweep-and-reaper",
        action="store_true",
        help="record sweep*.json (a sweep, its variants) and reaper.json",
    )
    args = parser.parse_args()
    if args.sweep_and_reaper:
        asyncio.run(record_sweep_and_reaper())
    elif args.pipeline_files:
        asyncio.run(record_pipeline_files())
    else:
        asyncio.run(record(failed_encrypted=args.failed_encrypted, searchable=args.searchable))
    sys.stdout.flush()
    os._exit(0)
