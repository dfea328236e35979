"""Acme's worker: its own pipelines, and everything SkyPilot on them from one plugin.

    python -m acme_pipelines.worker

Settings come from the environment, as for the package's own worker (TEMPORAL_*, WORKER_*,
CODEC_*; the SkyPilot API server from SKYPILOT_API_SERVER_ENDPOINT or SkyPilot's config).
"""

from __future__ import annotations

import asyncio
import signal
import sys

from temporalio.worker import Worker

from acme_pipelines.pipelines import TrainTwiceEvaluated
from skypilot_temporal import ConfigError, SkyPilotPlugin, WorkerSettings, connect_temporal


async def main() -> None:
    settings = WorkerSettings.from_env()
    plugin = SkyPilotPlugin(settings)
    client = await connect_temporal(plugins=[plugin])  # address, TLS, API key, codec
    worker = Worker(client, task_queue=settings.task_queue, workflows=[TrainTwiceEvaluated])
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    async with worker:
        print(f"acme worker on task queue {settings.task_queue}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except ConfigError as err:
        sys.exit(f"acme worker: error: {err}")
