"""Record the histories the replay tests replay (tests/histories/).

    .venv/bin/python tests/record_history.py                   # happy_path.json (plain payloads)
    .venv/bin/python tests/record_history.py --failed-encrypted  # failed_train_encrypted.json

The second is a run whose train job fails, recorded with payload encryption on (the fixed key
RECORDING_CODEC_KEYS): it guards replay of encrypted histories and of the failure path.

Run it only when a workflow change is meant to be incompatible with running workflows (and then
version the change); otherwise the replay test exists to catch exactly that change.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from temporalio.testing import WorkflowEnvironment  # noqa: E402

from activities import SkyPilotActivities  # noqa: E402
from codec import data_converter  # noqa: E402
from fake_sky import FakeSky  # noqa: E402
from run_worker import create_worker  # noqa: E402
from shared import PipelineInput  # noqa: E402
from workflows import SkyPilotWorkflow  # noqa: E402

# Not a secret: the key of the recorded encrypted history, so the replay test can decode it.
RECORDING_CODEC_KEYS = {"recorded": bytes(range(32))}
# In the recorded failed run: an env value, a task line and a log line that must never show in
# the raw (encrypted) history.
FAILED_RUN_MARKERS = ("env-marker-7c1e", "Data preprocessing completed", "log-marker-51d0")


async def record(failed_encrypted: bool = False) -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(ROOT / ".venv" / "bin" / "temporal"),
        data_converter=data_converter(RECORDING_CODEC_KEYS if failed_encrypted else None),
    )
    fake = FakeSky()
    fake.plan("eval", logs=["eval_accuracy=0.93"])
    if failed_encrypted:
        fake.plan("train", status="FAILED", logs=["epoch 1", "log-marker-51d0 loss went NaN"])
    with tempfile.TemporaryDirectory() as scratch, concurrent.futures.ThreadPoolExecutor(8) as pool:
        activities = SkyPilotActivities(
            fake, pool, checkout_root=Path(scratch), heartbeat_interval_seconds=0.1
        )
        async with create_worker(env.client, activities, "record", heartbeat_interval=0.2):
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
            )
            try:
                await handle.result()
            except Exception:
                if not failed_encrypted:
                    raise
            history = await handle.fetch_history()
    name = "failed_train_encrypted.json" if failed_encrypted else "happy_path.json"
    out = ROOT / "tests" / "histories" / name
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"workflow_id": handle.id, "history": history.to_json_dict()}, indent=1) + "\n")
    print(f"wrote {out}")
    await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record(failed_encrypted="--failed-encrypted" in sys.argv[1:]))
    sys.stdout.flush()
    os._exit(0)
