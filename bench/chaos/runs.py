"""The soak's pipelines: started with `run_workflow.py --no-wait` as a user starts them,
terminated or cancelled mid-train by their role, and watched in Temporal until they close."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.chaos.connection import TemporalConnection
from bench.chaos.journal import Journal
from bench.chaos.observe import Observer
from bench.chaos.plan import Run
from testing.local_stack import stack_env


@dataclass
class Pipelines:
    args: argparse.Namespace
    journal: Journal
    temporal: TemporalConnection
    runs: list[Run]
    code: Path
    repo_args: list[str]
    task_queue: str
    first_start: float | None = None

    def any_open(self) -> bool:
        return any(r.open for r in self.runs)

    async def start_all(self) -> None:
        for run in self.runs:
            await self.start(run)
            await asyncio.sleep(self.args.stagger)

    async def start(self, run: Run) -> None:
        envs = ["--env", f"EPOCHS={self.args.epochs}"]
        if run.role == "fail":
            envs += ["--env", "FAIL_TRAINING=1"]
        argv = [
            sys.executable,
            str(self.code / "run_workflow.py"),
            "--no-wait",
            "--infra",
            "slurm",
            "--task-queue",
            self.task_queue,
            "--workflow-id",
            run.workflow_id,
            *self.repo_args,
            *envs,
        ]
        for attempt in range(3):
            rc = await self.journal.command(argv, f"starter-{run.index}.log", timeout=120, env=stack_env())
            if rc == 0:
                break
            if await self.temporal.exists(run.workflow_id):  # the start went through after all
                rc = 0
                break
            await asyncio.sleep(5 * (attempt + 1))
        if rc == 0:
            run.started_at = time.time()
            self.first_start = self.first_start or run.started_at
            self.journal.log(f"{run.workflow_id}: started ({run.role}; clusters {run.prefix}-*)")
            return
        log = self.journal.out / f"starter-{run.index}.log"
        last = log.read_text(errors="replace").strip().splitlines()[-1:]
        run.start_error = f"run_workflow.py exited {rc} ({' '.join(last)[:200]}; {log.name})"
        self.journal.note(f"{run.workflow_id}: {run.start_error}")

    async def act_mid_train(self, run: Run, observer: Observer) -> None:
        """Terminate or cancel `run` once its train job has run for --act-after seconds."""
        while run.open:
            since = observer.running_since(run.workflow_id, "train")
            if since is not None and time.time() - since >= self.args.act_after:
                try:
                    handle = (await self.temporal.client()).get_workflow_handle(run.workflow_id)
                    if run.role == "terminate":
                        await asyncio.wait_for(handle.terminate(reason="chaos soak: terminate mid-train"), 15)
                    else:
                        await asyncio.wait_for(handle.cancel(), 15)
                except Exception as err:
                    self.journal.log(f"{run.workflow_id}: {run.role} failed ({type(err).__name__}); retrying")
                    self.temporal.forget()
                else:
                    run.acted_at = time.time()
                    self.journal.log(f"{run.workflow_id}: {run.role}d {time.time() - since:.0f} s into train")
                    return
            await asyncio.sleep(1)
        self.journal.note(
            f"{run.workflow_id}: closed ({run.status}) before it could be {run.role}d mid-train"
        )

    async def watch(self) -> None:
        """Each open run's status and close time, from Temporal, riding out its restarts."""
        while True:
            for run in [r for r in self.runs if r.started_at and r.open]:
                try:
                    await self.check(run)
                except Exception:
                    break  # Temporal is away: try again next round
            await asyncio.sleep(3)

    async def check(self, run: Run) -> None:
        description = await self.temporal.call(lambda c: c.get_workflow_handle(run.workflow_id).describe())
        status = description.status.name if description.status else ""
        if status == "RUNNING" or not description.close_time:
            return
        if status == "FAILED":
            run.failure_type, run.failure = await self.failure_of(run)
        run.status, run.closed_at = status, description.close_time.timestamp()
        detail = f": {run.failure}" if run.failure else ""
        self.journal.log(f"{run.workflow_id}: closed {status} ({run.role}){detail[:300]}")

    async def failure_of(self, run: Run) -> tuple[str, str]:
        from temporalio.client import WorkflowFailureError

        try:
            await self.temporal.call(lambda c: c.get_workflow_handle(run.workflow_id).result())
        except WorkflowFailureError as err:
            cause = err.cause
            while getattr(cause, "cause", None) is not None and not getattr(cause, "type", None):
                cause = cause.cause
            return str(getattr(cause, "type", "") or type(cause).__name__), " ".join(str(cause).split())[:500]
        return "", ""

    async def wait_until_closed(self) -> None:
        deadline = self.journal.started + self.args.timeout
        while self.any_open() and time.time() < deadline:
            await asyncio.sleep(1)
        still = [r.workflow_id for r in self.runs if r.open]
        if still:
            self.journal.note(f"--timeout ({self.args.timeout:.0f} s): still open: {', '.join(still)}")

    async def end_open(self, grace: float = 90) -> None:
        """Cancel our open runs (they tear their clusters down); terminate any still open after `grace`."""
        open_runs = [r for r in self.runs if r.started_at and r.open]
        if not open_runs:
            return
        for run in open_runs:
            with contextlib.suppress(Exception):
                await self.temporal.call(lambda c, run=run: c.get_workflow_handle(run.workflow_id).cancel())
                self.journal.log(f"{run.workflow_id}: cancelled (the soak ended with it open)")
        deadline = time.time() + grace
        while any(r.open for r in open_runs) and time.time() < deadline:
            for run in [r for r in open_runs if r.open]:
                with contextlib.suppress(Exception):
                    await self.check(run)
            await asyncio.sleep(3)
        for run in [r for r in open_runs if r.open]:
            with contextlib.suppress(Exception):
                await self.temporal.call(
                    lambda c, run=run: c.get_workflow_handle(run.workflow_id).terminate(
                        reason="chaos soak ended"
                    )
                )
                self.journal.log(f"{run.workflow_id}: terminated (still open {grace:.0f} s after its cancel)")
