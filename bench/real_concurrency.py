"""Row 8 at every width: N pipelines at once on one worker against N hand-runs at once.

    .venv/bin/python -m bench.real_concurrency                  # 1-4 at once, 3 times each (~70 min)
    .venv/bin/python -m bench.real_concurrency --counts 2 --repeat 1

On the real local stack (scripts/local_stack.sh). Each repetition runs N pipelines at once
(`run_workflow.py`, one worker process), then N hand-runs at once (the six operations with the
sky CLI). Beside the wall times, the SkyPilot API server's own records of the requests each batch
made: how long they waited for a server worker, and how long they took in all, so a gap can be
told apart as the server's queueing or as the work itself getting slower on a shared machine.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from bench.real_stack import RequestTimes, Starter, hand_run, request_times
from bench.report import print_table
from testing.local_stack import local_stack_up, point_sdk_at_local_stack, start_worker_process


@dataclass
class Batch:
    walls: list[float] = field(default_factory=list)
    queued: list[float] = field(default_factory=list)  # seconds the batch's requests waited
    launch_seconds: list[float] = field(default_factory=list)  # mean sky.launch request time
    machine_cpu: list[float] = field(default_factory=list)  # CPU seconds used on the machine
    worker_cpu: list[float] = field(default_factory=list)  # of them, by the worker process

    def text(self) -> str:
        return f"{statistics.median(self.walls):.0f} s ({min(self.walls):.0f}-{max(self.walls):.0f})"


def busy_cpu_seconds() -> float:
    times = psutil.cpu_times()
    return times.user + times.nice + times.system + times.irq + times.softirq


def process_cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


async def timed_batch(
    run: Callable[[], Awaitable[object]], count: int, batch: Batch, worker: psutil.Process
) -> None:
    since, started = time.time(), time.monotonic()
    machine, own = busy_cpu_seconds(), process_cpu_seconds(worker)
    await asyncio.gather(*(run() for _ in range(count)))
    batch.walls.append(time.monotonic() - started)
    batch.machine_cpu.append(busy_cpu_seconds() - machine)
    batch.worker_cpu.append(process_cpu_seconds(worker) - own)
    await asyncio.sleep(1)  # the server writes its last records
    times = request_times(since, time.time())
    batch.queued.append(sum(t.queued for t in times.values()))
    launches = times.get("sky.launch", RequestTimes())
    batch.launch_seconds.append(launches.total / max(1, launches.count))


async def measure(counts: list[int], repeat: int, scratch: Path) -> dict[int, tuple[Batch, Batch]]:
    local_stack_up(scratch / "stack.log")
    task_queue = f"bench-wide-{uuid.uuid4().hex[:6]}"
    worker = await asyncio.to_thread(
        start_worker_process, task_queue, scratch / "worker.log", scratch / "checkouts"
    )
    start_pipeline = Starter(task_queue, scratch)
    worker_process = psutil.Process(worker.proc.pid)
    log = scratch / "hand.log"
    results: dict[int, tuple[Batch, Batch]] = {}
    try:
        for count in counts:
            ours, hand = results.setdefault(count, (Batch(), Batch()))
            for _ in range(repeat):
                await timed_batch(start_pipeline, count, ours, worker_process)
                await timed_batch(
                    lambda: asyncio.to_thread(hand_run, scratch, log), count, hand, worker_process
                )
                print(
                    f"  {count} at once: pipelines {ours.walls[-1]:.0f} s, hand-runs {hand.walls[-1]:.0f} s"
                )
    finally:
        worker.kill(signal.SIGTERM)
    return results


def print_results(results: dict[int, tuple[Batch, Batch]]) -> None:
    one_ours, one_hand = (statistics.median(batch.walls) for batch in results[1])
    header = ["at once", "pipelines (median, range)", "hand-runs", "pipelines / hand-runs"]
    header += ["vs one pipeline", "vs one hand-run", "server queueing (pipelines / hand)"]
    header += ["sky.launch mean (pipelines / hand)", "machine CPU s (pipelines / hand)"]
    header += ["worker process CPU s"]
    rows = []
    for count, (ours, hand) in sorted(results.items()):
        ours_median, hand_median = statistics.median(ours.walls), statistics.median(hand.walls)
        cells = [str(count), ours.text(), hand.text(), f"{ours_median / hand_median:.2f}"]
        cells += [f"{ours_median / one_ours:.2f}x", f"{hand_median / one_hand:.2f}x"]
        cells += [f"{statistics.median(ours.queued):.1f} / {statistics.median(hand.queued):.1f} s"]
        launch = (statistics.median(ours.launch_seconds), statistics.median(hand.launch_seconds))
        cells += [f"{launch[0]:.0f} / {launch[1]:.0f} s"]
        cpu = (statistics.median(ours.machine_cpu), statistics.median(hand.machine_cpu))
        cells += [f"{cpu[0]:.0f} / {cpu[1]:.0f}", f"{statistics.median(ours.worker_cpu):.1f}"]
        rows.append(cells)
    print_table(header, rows)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2, 3, 4], help="runs at once (1 is added)")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions of each width")
    args = parser.parse_args()
    point_sdk_at_local_stack()
    counts = [1, *sorted({c for c in args.counts if c > 1})]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-wide-") as scratch:
        results = await measure(counts, args.repeat, Path(scratch))
    print(f"\npython -m bench.real_concurrency ({time.monotonic() - started:.0f} s)")
    print_results(results)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
