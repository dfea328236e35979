"""Record the histories the replay tests replay (tests/workflows/histories/).

    .venv/bin/python -m tests.workflows.record_history                     # happy_path.json (plain payloads)
    .venv/bin/python -m tests.workflows.record_history --failed-encrypted  # failed_train_encrypted.json
    .venv/bin/python -m tests.workflows.record_history --searchable        # searchable_happy_path.json

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

from skypilot_temporal.operations.search_attributes import at_start
from skypilot_temporal.payloads import PipelineInput
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.trust.codec import data_converter
from testing import HISTORIES, ROOT
from testing.in_process import REAL_WORKER_POLICY, running_worker, start_dev_server
from workflows import SkyPilotWorkflow

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


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--failed-encrypted",
        action="store_true",
        help="record failed_train_encrypted.json (train fails, payloads encrypted), not happy_path.json",
    )
    parser.add_argument("--searchable", action="store_true", help="start the run with its search attributes")
    args = parser.parse_args()
    asyncio.run(record(failed_encrypted=args.failed_encrypted, searchable=args.searchable))
    sys.stdout.flush()
    os._exit(0)
