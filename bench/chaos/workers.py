"""The soak's worker processes (testing.local_stack's worker-process helper): started on the
soak's task queue, SIGKILLed at random while runs are open, restarted, stopped at the end."""

from __future__ import annotations

import argparse
import asyncio
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench.chaos.journal import Journal
from testing import ROOT
from testing.local_stack import WorkerProcess, spawn_worker_process, stack_env

WORKER_GRACE_SECONDS = 20


@dataclass
class WorkerSlot:
    number: int
    checkout_root: Path
    process: WorkerProcess | None = None
    incarnation: int = 0
    killed_pids: set[int] = field(default_factory=set)
    retry_at: float = 0.0

    def alive(self) -> bool:
        return self.process is not None and self.process.proc.poll() is None

    def log_tail(self, lines: int = 2) -> str:
        text = self.process.log() if self.process else ""
        return " | ".join(text.strip().splitlines()[-lines:])[-400:]


@dataclass
class WorkerFleet:
    args: argparse.Namespace
    journal: Journal
    task_queue: str
    code: Path
    runs_open: Callable[[], bool]
    rng: random.Random
    slots: list[WorkerSlot] = field(init=False)

    def __post_init__(self) -> None:
        self.slots = [WorkerSlot(n, self.journal.out / f"checkouts-{n}") for n in range(self.args.workers)]

    def start(self, slot: WorkerSlot) -> None:
        slot.incarnation += 1
        env = stack_env(
            TEMPORAL_TASK_QUEUE=self.task_queue,
            WORKER_CHECKOUT_ROOT=str(slot.checkout_root),
            # The task repository is this project even when the workers run a `git archive`.
            WORKER_ALLOWED_LOCAL_REPOS=str(ROOT),
            REAPER_PERIOD_SECONDS=str(self.args.reaper_period),
            REAPER_GRACE_SECONDS=str(self.args.reaper_grace),
        )
        log_path = self.journal.out / f"worker-{slot.number}.{slot.incarnation}.log"
        # Its own session: Ctrl-C is ours to handle, we stop the workers ourselves.
        slot.process = spawn_worker_process(log_path, env, code=self.code, own_session=True)
        self.journal.log(f"worker {slot.number}: started pid {slot.process.proc.pid} (log {log_path.name})")

    async def start_all(self) -> None:
        for slot in self.slots:
            self.start(slot)
        deadline = time.monotonic() + 120
        while not all(s.process and s.process.polling() for s in self.slots):
            for slot in self.slots:
                if slot.process and slot.process.proc.poll() is not None:
                    raise RuntimeError(f"worker {slot.number} exited at start: {slot.log_tail()}")
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not report 'Worker started' within 120 s")
            await asyncio.sleep(0.5)
        self.journal.log(f"{len(self.slots)} workers polling task queue {self.task_queue}")

    async def supervise(self) -> None:
        """Restart any worker that exited: at once after our SIGKILL, with backoff otherwise."""
        counters = self.journal.counters
        while True:
            for slot in self.slots:
                if slot.process is None or slot.alive() or time.monotonic() < slot.retry_at:
                    continue
                pid, rc = slot.process.proc.pid, slot.process.proc.returncode
                if pid not in slot.killed_pids:
                    counters.worker_exits += 1
                    self.journal.log(f"worker {slot.number}: pid {pid} exited rc {rc}: {slot.log_tail()}")
                    slot.killed_pids.add(pid)  # report an exit once
                    slot.retry_at = time.monotonic() + 5
                    continue
                self.start(slot)
                counters.worker_restarts += 1
            await asyncio.sleep(0.5)

    async def kill_at_random(self) -> None:
        """SIGKILL a random live worker every ~kill_every seconds while runs are open."""
        counters = self.journal.counters
        while self.args.max_kills == 0 or counters.kills < self.args.max_kills:
            await asyncio.sleep(self.args.kill_every * self.rng.uniform(0.75, 1.25))
            live = [s for s in self.slots if s.alive()]
            if not live or not self.runs_open():
                continue
            slot = self.rng.choice(live)
            assert slot.process
            slot.killed_pids.add(slot.process.proc.pid)
            slot.process.kill()
            counters.kills += 1
            self.journal.log(
                f"worker {slot.number}: SIGKILL pid {slot.process.proc.pid} (kill {counters.kills})"
            )

    async def stop_all(self) -> None:
        live = [s for s in self.slots if s.alive()]
        for slot in live:
            assert slot.process
            slot.killed_pids.add(slot.process.proc.pid)
            slot.process.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_GRACE_SECONDS
        while any(s.alive() for s in live) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        for slot in live:
            if slot.process:
                slot.process.kill()
        if live:
            self.journal.log(f"stopped {len(live)} workers")
