"""Record the happy-path history that test_recorded_history_replays_deterministically replays.

    .venv/bin/python tests/record_history.py

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
from fake_sky import FakeSky  # noqa: E402
from run_worker import create_worker  # noqa: E402
from shared import PipelineInput  # noqa: E402
from workflows import SkyPilotWorkflow  # noqa: E402


async def record() -> None:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(ROOT / ".venv" / "bin" / "temporal")
    )
    fake = FakeSky()
    fake.plan("eval", logs=["eval_accuracy=0.93"])
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
                ),
                id="recorded-happy-path",
                task_queue="record",
            )
            await handle.result()
            history = await handle.fetch_history()
    out = ROOT / "tests" / "histories" / "happy_path.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"workflow_id": handle.id, "history": history.to_json_dict()}, indent=1) + "\n")
    print(f"wrote {out}")
    await env.shutdown()


if __name__ == "__main__":
    asyncio.run(record())
    sys.stdout.flush()
    os._exit(0)
