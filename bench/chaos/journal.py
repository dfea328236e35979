"""What the soak writes down: every event (timed, in events.log and on stdout), the problems it
saw under faults (listed under the table), its counts, and the output of the commands it runs."""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from testing import ROOT


@dataclass
class Counters:
    kills: int = 0
    worker_restarts: int = 0
    worker_exits: int = 0  # exits we did not cause
    api_restarts: int = 0
    temporal_restarts: int = 0

    def kills_text(self) -> str:
        extra = f", {self.worker_exits} other worker exits" if self.worker_exits else ""
        return f"{self.kills} ({self.worker_restarts} restarts{extra})"


class Journal:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.started = time.time()
        self.notes: list[str] = []
        self.counters = Counters()
        self._events = (out / "events.log").open("a")

    def log(self, message: str) -> None:
        line = f"[chaos {time.time() - self.started:7.1f}s] {message}"
        print(line, flush=True)
        self._events.write(line + "\n")
        self._events.flush()

    def note(self, message: str) -> None:
        """A problem seen under faults: logged now, listed under the table."""
        self.notes.append(message)
        self.log(f"NOTE: {message}")

    async def command(
        self, argv: list[str], log_name: str, timeout: float, env: dict[str, str] | None = None
    ) -> int:
        """Run a command, output appended to `log_name` in the output directory; its exit status."""
        with (self.out / log_name).open("ab") as log:
            log.write(f"$ {' '.join(argv)}\n".encode())
            log.flush()
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a Ctrl-C must not cut `local_stack.sh up` in half
            )
            try:
                return await asyncio.wait_for(proc.wait(), timeout)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                return -1
