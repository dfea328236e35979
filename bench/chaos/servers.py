"""Server faults: the SkyPilot API server stopped (`sky api stop`) and the Temporal dev server
SIGKILLed, each brought back with `local_stack.sh up`, one at a time, while runs are open."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

from bench.chaos.journal import Journal
from testing import ROOT
from testing.local_stack import LOCAL_STACK_SH, SKY_API, SKY_CLI

SKY_API_PORT = SKY_API.rsplit(":", 1)[-1]
STATE = ROOT / ".state"


class ServerFaults:
    def __init__(self, args: argparse.Namespace, journal: Journal, runs_open: Callable[[], bool]) -> None:
        self.args = args
        self.journal = journal
        self.runs_open = runs_open
        self.lock = asyncio.Lock()
        self.dirty = False  # a server we stopped may still be down

    async def stack_up(self) -> bool:
        rc = await self.journal.command(["bash", str(LOCAL_STACK_SH), "up"], "stack.log", timeout=600)
        if rc != 0:
            self.journal.note(f"`local_stack.sh up` failed (rc {rc}); see {self.journal.out / 'stack.log'}")
            return False
        self.dirty = False
        return True

    async def restart_api_server(self) -> None:
        async with self.lock:
            self.journal.log("SkyPilot API server: `sky api stop`")
            self.dirty = True
            env = {**os.environ, "SKYPILOT_API_SERVER_LOCAL_PORT": SKY_API_PORT}
            rc = await self.journal.command([str(SKY_CLI), "api", "stop"], "stack.log", timeout=120, env=env)
            if rc != 0:
                self.journal.note(f"`sky api stop` failed (rc {rc})")
            await asyncio.sleep(self.args.api_down)
            self.journal.log("SkyPilot API server: `local_stack.sh up`")
            if await self.stack_up():
                self.journal.counters.api_restarts += 1
                self.journal.log("SkyPilot API server: back")

    async def restart_temporal(self) -> None:
        async with self.lock:
            pid = temporal_pid()
            if pid is None:
                self.journal.note(f"no live Temporal dev server in {STATE / 'temporal.pid'}: restart skipped")
                return
            self.journal.log(f"Temporal dev server: SIGKILL pid {pid}")
            self.dirty = True
            os.kill(pid, signal.SIGKILL)
            while Path(f"/proc/{pid}").exists() and not is_zombie(pid):
                await asyncio.sleep(0.1)
            await asyncio.sleep(self.args.temporal_down)
            self.journal.log("Temporal dev server: `local_stack.sh up`")
            if await self.stack_up():
                self.journal.counters.temporal_restarts += 1
                self.journal.log("Temporal dev server: back")

    async def run(self, first_start: float) -> None:
        """The restarts, at their times after `first_start`, one at a time, while runs are open."""
        plan = [
            (self.args.api_restart_at + i * self.args.restart_spacing, self.restart_api_server)
            for i in range(self.args.api_restarts)
        ] + [
            (self.args.temporal_restart_at + i * self.args.restart_spacing, self.restart_temporal)
            for i in range(self.args.temporal_restarts)
        ]
        for at, restart in sorted(plan, key=lambda item: item[0]):
            await asyncio.sleep(max(0.0, first_start + at - time.time()))
            if not self.runs_open():
                self.journal.log(f"no run open any more: {restart.__name__} skipped")
                continue
            await restart()


def temporal_pid() -> int | None:
    """The stack's Temporal dev server pid, if that process is alive and really is it."""
    try:
        pid = int((STATE / "temporal.pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if any(b"temporal" in part for part in cmdline[:1]) and b"start-dev" in cmdline else None


def is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return False
