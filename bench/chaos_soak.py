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

The parts, by concern, are in bench/chaos/ (see its __init__); this module runs them in order.
"""

from __future__ import annotations

import asyncio
import importlib
import os
import random
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from bench.chaos import cleanup
from bench.chaos.connection import TemporalConnection
from bench.chaos.journal import Journal
from bench.chaos.observe import Observer
from bench.chaos.plan import parse_args, planned_runs, prepare_code
from bench.chaos.results import Measured, Results
from bench.chaos.runs import Pipelines
from bench.chaos.servers import ServerFaults
from bench.chaos.workers import WorkerFleet
from testing.local_stack import SKY_API, TEMPORAL_ADDRESS, point_sdk_at_local_stack

# The soak's own SDK calls: never start a local API server, only ever talk to the stack's.
point_sdk_at_local_stack()


class Soak:
    def __init__(self, args: Any, out: Path, sky: Any, code: Path, repo_args: list[str]) -> None:
        self.args = args
        self.sky = sky
        self.task_queue = f"chaos-{uuid.uuid4().hex[:8]}"
        self.journal = Journal(out)
        self.temporal = TemporalConnection()
        self.runs = planned_runs(args, code, uuid.uuid4().hex[:6])
        self.observer = Observer(sky, {r.prefix: r.workflow_id for r in self.runs})
        self.pipelines = Pipelines(
            args, self.journal, self.temporal, self.runs, code, repo_args, self.task_queue
        )
        rng = random.Random(args.seed)
        self.workers = WorkerFleet(args, self.journal, self.task_queue, code, self.pipelines.any_open, rng)
        self.servers = ServerFaults(args, self.journal, self.pipelines.any_open)
        self.results = Results(args, self.journal, self.runs, self.observer)
        self.faults: asyncio.Task[None] | None = None

    async def run(self) -> int:
        background: list[asyncio.Task[None]] = []
        measured: Measured | None = None
        code = 1
        try:
            await self.workers.start_all()
            await self.begin(background)
            await self.pipelines.wait_until_closed()
            await self.stop_faults()
            await self.wait_for_leftovers()
            measured = await self.results.measure()
        except asyncio.CancelledError:
            self.journal.log("interrupted: cleaning up")
            task = asyncio.current_task()
            if task:
                task.uncancel()
            code = 130
        except Exception as err:
            self.journal.note(f"the soak itself failed: {type(err).__name__}: {err}")
        finally:
            await self.stop_faults()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            self.observer.close()
            downed = await self.clean_up()
            self.results.write_observations(self.task_queue)
        if measured is None:
            for note in self.journal.notes:
                print(f"  note: {note}")
            return code
        return self.results.report(measured, downed)

    async def begin(self, background: list[asyncio.Task[None]]) -> None:
        """Start the watchers, the pipelines and, from the first start on, the faults.

        Fills `background` as it goes (so an interrupt still stops what was started)."""
        for watcher in (self.workers.supervise(), self.observe(), self.pipelines.watch()):
            background.append(asyncio.create_task(watcher))
        starting = asyncio.create_task(self.pipelines.start_all())
        background.append(starting)
        while self.pipelines.first_start is None and not starting.done():
            await asyncio.sleep(0.5)
        background.append(asyncio.create_task(self.workers.kill_at_random()))
        for run in self.runs:
            if run.role in ("terminate", "cancel"):
                background.append(asyncio.create_task(self.pipelines.act_mid_train(run, self.observer)))
        if self.pipelines.first_start is not None:
            self.faults = asyncio.create_task(self.servers.run(self.pipelines.first_start))
        await starting

    async def stop_faults(self) -> None:
        """Skip restarts still to come; one under way finishes (never leave a server down)."""
        if self.faults is None:
            return
        if not self.servers.lock.locked():
            self.faults.cancel()
        await asyncio.gather(self.faults, return_exceptions=True)

    async def observe(self) -> None:
        down_since: float | None = None
        while True:
            began = time.monotonic()
            ok = await self.observer.poll()
            if not ok and down_since is None:
                down_since = time.time()
                self.journal.log(f"SkyPilot not answering: {self.observer.last_error}")
            elif ok and down_since is not None:
                self.journal.log(f"SkyPilot answering again after {time.time() - down_since:.0f} s")
                down_since = None
            await asyncio.sleep(max(0.5, self.args.poll_every - (time.monotonic() - began)))

    async def wait_for_leftovers(self) -> None:
        """Up to two reaper periods for the soak's clusters to go (the reaper's job, if any)."""
        deadline = time.time() + 2 * self.args.reaper_period
        if self.observer.current:
            leftovers = " ".join(sorted(self.observer.current))
            self.journal.log(f"waiting up to {2 * self.args.reaper_period} s for leftovers: {leftovers}")
        while time.time() < deadline:
            fresh = (self.observer.last_ok_at or 0) > time.time() - 2 * self.args.poll_every
            if fresh and not self.observer.current:
                return
            await asyncio.sleep(1)

    async def clean_up(self) -> list[str]:
        """Bring back a server we stopped, end our open runs, stop workers, down our clusters."""
        if self.servers.dirty:
            self.journal.log("a server we stopped may be down: `local_stack.sh up`")
            await self.servers.stack_up()
        await self.pipelines.end_open()
        await self.workers.stop_all()
        await cleanup.delete_own_schedules(self.temporal, self.task_queue, self.journal)
        downed = await cleanup.down_own_clusters(self.sky, self.observer, self.journal)
        for slot in self.workers.slots:
            shutil.rmtree(slot.checkout_root, ignore_errors=True)
        return downed


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
    soak.journal.log(
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
