"""Start a Temporal worker that runs the example pipelines (workflows.py) on SkyPilot.

    python run_worker.py

Reads .env (see .env.example and docs/configuration.md). Exits with a one-line error if a
setting is bad or Temporal or the SkyPilot API server cannot be reached. SIGINT/SIGTERM stop it
gracefully: running steps are handed back to Temporal, and the next worker re-attaches to their
SkyPilot jobs instead of starting new ones.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import traceback
from pathlib import Path

from temporalio.worker import Worker

from skypilot_temporal import SkyPilotPlugin, WorkerSettings, config, worker_startup
from skypilot_temporal.activity.sdk import skypilot_sdk
from workflows import PIPELINES

PROJECT_DIR = Path(__file__).resolve().parent


async def run_worker(settings: WorkerSettings) -> None:
    config.check_temporal_settings()  # a bad setting is reported before any server is tried
    plugin = SkyPilotPlugin(settings)  # also: no SDK call ever starts a local API server
    api_server = await asyncio.to_thread(worker_startup.check_skypilot_api_server, skypilot_sdk())
    runtime, metrics_status = worker_startup.metrics_runtime(settings.metrics_address)
    client = await config.connect_temporal(runtime, plugins=[plugin])
    await worker_startup.report_search_attributes(client)
    # The plugin gives it WORKER_MAX_CONCURRENT_ACTIVITIES and WORKER_SHUTDOWN_GRACE_SECONDS.
    worker = Worker(client, task_queue=settings.task_queue, workflows=PIPELINES)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with worker:
        worker_startup.log_started(settings, plugin, api_server, metrics_status)
        await stop.wait()
        worker_startup.log.info("Shutting down: unfinished steps will be resumed by another worker")


def main() -> None:
    code = 0
    try:
        config.load_env(PROJECT_DIR / ".env")
        # Unset, local repositories may come from this project only (its example tasks).
        settings = WorkerSettings.from_env(default_local_repos=[PROJECT_DIR])
        worker_startup.configure_logging(settings)
        asyncio.run(run_worker(settings))
    except config.ConfigError as err:
        print(f"run_worker.py: error: {err}", file=sys.stderr)
        code = 2
    except Exception:  # a bug: its traceback, then the same quick exit as below
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: SDK threads may still be blocked on the API server, and the
    # Temporal client's native threads can crash a normal exit (PyGILState_Release).
    os._exit(code)


if __name__ == "__main__":
    main()
