"""How many pipelines one worker process holds, and what a second worker process adds.

    .venv/bin/python -m bench.capacity                          # 1 and 2 workers, 50-200 pipelines
    .venv/bin/python -m bench.capacity --workers 1 --counts 50 100

Each worker is its own process, as `run_worker.py` processes on one host are: the real workflow
and activity code, the project's data converter, Prometheus metrics, and a simulated SkyPilot
SDK (testing/fake_sky.py) whose every call blocks for a second, as real API round trips do. All
of them poll one task queue on one Temporal dev server. For each number of pipelines started at
once, the table shows the wall time against one pipeline's, the workflow tasks that took over
1 s (Temporal's own `workflow_task_execution_latency`, summed over the workers) and the workers'
CPU seconds per pipeline. A worker "holds" a load when none of its workflow tasks took over 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import psutil
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from bench.report import print_table
from skypilot_temporal.operations.metrics import prometheus_runtime
from skypilot_temporal.operations.search_attributes import at_start
from skypilot_temporal.payloads import PipelineInput
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.trust.codec import configured_data_converter
from testing import ROOT, free_port
from testing.in_process import benchmark_worker, make_task_repo, start_dev_server
from testing.prometheus import slow_workflow_tasks
from workflows import SkyPilotWorkflow

CALL_SECONDS = 1.0  # every simulated SDK call blocks its thread this long
READY = "capacity worker ready"


@dataclass
class WorkerProcess:
    proc: subprocess.Popen
    metrics_address: str

    def cpu_seconds(self) -> float:
        times = psutil.Process(self.proc.pid).cpu_times()
        return times.user + times.system

    def workflow_tasks(self) -> tuple[float, float]:
        """Workflow tasks run so far, and how many of them took over 1 s."""
        return slow_workflow_tasks(self.metrics_address)


@dataclass
class Load:
    workers: int
    pipelines: int
    wall: float
    tasks: float
    slow_tasks: float
    cpu_seconds: float


def start_workers(
    target: str, task_queue: str, count: int, max_pipelines: int, logs: Path
) -> list[WorkerProcess]:
    workers = []
    for number in range(count):
        address = f"127.0.0.1:{free_port()}"
        log = logs / f"worker-{task_queue}-{number}.log"
        with log.open("w") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.capacity",
                    "--serve",
                    target,
                    task_queue,
                    address,
                    str(max_pipelines),
                ],
                cwd=ROOT,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        workers.append(WorkerProcess(proc, address))
        while READY not in log.read_text(errors="replace"):
            if proc.poll() is not None:
                raise RuntimeError(f"a capacity worker exited before it was ready:\n{log.read_text()}")
            time.sleep(0.2)
    return workers


async def run_pipelines(client: Client, task_queue: str, repo: Path, count: int) -> float:
    started = time.monotonic()
    handles = await asyncio.gather(
        *(
            client.start_workflow(
                SkyPilotWorkflow.run,
                PipelineInput(repo_url=str(repo), ref="main", retry_initial_interval_seconds=0.1),
                id=f"capacity-{uuid.uuid4().hex[:10]}",
                task_queue=task_queue,
                search_attributes=at_start(SkyPilotWorkflow.__name__, str(repo)),
            )
            for _ in range(count)
        )
    )
    await asyncio.gather(*(handle.result() for handle in handles))
    return time.monotonic() - started


async def measure(client: Client, repo: Path, workers: int, counts: list[int], logs: Path) -> list[Load]:
    task_queue = f"capacity-{uuid.uuid4().hex[:8]}"
    target = client.service_client.config.target_host
    processes = await asyncio.to_thread(start_workers, target, task_queue, workers, max(counts), logs)
    loads = []
    try:
        for count in counts:
            before = [(w.workflow_tasks(), w.cpu_seconds()) for w in processes]
            wall = await run_pipelines(client, task_queue, repo, count)
            after = [(w.workflow_tasks(), w.cpu_seconds()) for w in processes]
            loads.append(
                Load(
                    workers,
                    count,
                    wall,
                    tasks=sum(a[0][0] - b[0][0] for a, b in zip(after, before, strict=True)),
                    slow_tasks=sum(a[0][1] - b[0][1] for a, b in zip(after, before, strict=True)),
                    cpu_seconds=sum(a[1] - b[1] for a, b in zip(after, before, strict=True)),
                )
            )
            print(f"  {workers} worker(s), {count} pipelines: {wall:.1f} s", flush=True)
    finally:
        for worker in processes:
            worker.proc.kill()
            worker.proc.wait()
    return loads


def print_loads(loads: list[Load]) -> None:
    one = {load.workers: load.wall for load in loads if load.pipelines == 1}
    header = ["worker processes", "pipelines at once", "wall", "vs one pipeline"]
    header += ["workflow tasks over 1 s", "CPU s per pipeline"]
    rows = [
        [
            load.workers,
            load.pipelines,
            f"{load.wall:.1f} s",
            f"{load.wall / one[load.workers]:.2f}x",
            f"{load.slow_tasks:.0f} of {load.tasks:.0f}",
            f"{load.cpu_seconds / load.pipelines:.2f}",
        ]
        for load in loads
    ]
    print_table(header, rows)
    held = {}
    for load in loads:
        if load.pipelines > 1 and load.slow_tasks == 0:
            held[load.workers] = max(held.get(load.workers, 0), load.pipelines)
    for workers in sorted({load.workers for load in loads}):
        print(
            f"{workers} worker process(es): held {held.get(workers, 0)} pipelines at once "
            "with no workflow task over 1 s"
        )


async def serve(target: str, task_queue: str, metrics_address: str, max_pipelines: int) -> None:
    """One worker process (started by `start_workers`) until its stdin closes."""
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    client = await Client.connect(
        target, runtime=prometheus_runtime(metrics_address), data_converter=configured_data_converter()
    )
    async with benchmark_worker(
        WorkflowEnvironment.from_client(client),
        FakeSky(call_seconds=CALL_SECONDS),
        task_queue,
        threads=4 * max_pipelines + 8,
        concurrency=max(100, 2 * max_pipelines),
    ):
        print(READY, flush=True)
        await asyncio.to_thread(sys.stdin.read)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1, 2], help="worker processes (default 1 2)"
    )
    parser.add_argument(
        "--counts", type=int, nargs="+", default=[50, 100, 150, 200], help="pipelines at once"
    )
    parser.add_argument("--serve", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        target, task_queue, address, max_pipelines = args.serve
        await serve(target, task_queue, address, int(max_pipelines))
        return
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    counts = [1, *sorted(c for c in set(args.counts) if c > 1)]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="capacity-") as scratch:
        repo = make_task_repo(Path(scratch) / "tasks-repo")
        env = await start_dev_server(extra_args=["--dynamic-config-value", "frontend.rps=10000"])
        try:
            loads = []
            for workers in args.workers:
                loads += await measure(env.client, repo, workers, counts, Path(scratch))
        finally:
            await env.shutdown()
    print(f"\npython -m bench.capacity ({time.monotonic() - started:.0f} s), {os.cpu_count()} cores")
    print_loads(loads)
    one = statistics.median(load.wall for load in loads if load.pipelines == 1)
    print(f"(one pipeline alone: {one:.1f} s)")


if __name__ == "__main__":
    asyncio.run(main())
    sys.stdout.flush()
    os._exit(0)
