"""Benchmarks: what durability costs, side by side, printed as one table.

    .venv/bin/python -m bench.run               # simulated rows (~8 min)
    .venv/bin/python -m bench.run --quick       # simulated rows, fewer repetitions (~3 min)
    .venv/bin/python -m bench.run --real-only   # real-stack rows, 3 repetitions (~50 min)
    .venv/bin/python -m bench.run --all         # both

Run from the repository root. Rows 1-4, 9 and 10 run the real workflow and activity code on a real
Temporal dev server with a simulated SkyPilot SDK (testing/fake_sky.py) whose calls take a fixed
time. Rows 5-8, 11 and 12 run on the real local stack (scripts/local_stack.sh: Temporal dev server,
SkyPilot API server, one-node Slurm). Rows 10 and 11 (sweeps) also run alone:
`python -m bench.sweep_bench`; row 12 (managed train preempted) `python -m bench.managed_bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import resource
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.client import Client, WorkflowFailureError
from temporalio.testing import WorkflowEnvironment

from bench.floor import no_op_chain_seconds
from bench.managed_bench import real_row as managed_real_row
from bench.real_stack import Starter, hand_run, in_skypilot_requests
from bench.report import machine_lines, met_mark, print_table
from bench.sweep_bench import real_row as sweep_real_row
from bench.sweep_bench import simulated_row as sweep_simulated_row
from skypilot_temporal.activity.activities import SkyPilotActivities
from skypilot_temporal.naming import cluster_prefix_for
from skypilot_temporal.operations.search_attributes import at_start
from skypilot_temporal.payloads import PipelineInput, StepTimeouts
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.trust.codec import configured_data_converter
from testing.in_process import benchmark_worker, make_task_repo, start_dev_server
from testing.local_stack import (
    SKY_CLI,
    TEMPORAL_ADDRESS,
    WorkerProcess,
    local_stack_up,
    point_sdk_at_local_stack,
    process_env,
    start_worker_process,
)
from testing.prometheus import scrape, serving_metrics, slow_workflow_tasks, value
from workflows import SkyPilotWorkflow

SIMULATED_STEP_SECONDS = 0.2  # row 1: each provisioning and each job takes this long
PIPELINE_ACTIVITIES = 7  # six steps and the checkout removal
REALISTIC_CALL_SECONDS = 1.0  # row 2: every SDK call blocks its caller this long
BLOCKING_CALL_SECONDS = 0.05  # row 2, side by side with the baseline
HEARTBEAT_INTERVAL = 5.0  # the worker default
HEARTBEAT_TIMEOUT = StepTimeouts().heartbeat


@dataclass
class Row:
    number: int
    measure: str
    ours: str
    baseline: str = ""
    ratio: str = ""
    goal: str = ""
    met: bool | None = None


@dataclass
class Bench:
    quick: bool
    repo: Path
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        print(
            f"  row {row.number}: {row.measure}: {row.ours}"
            + (f" (baseline {row.baseline})" if row.baseline else ""),
            flush=True,
        )


class BlockingActivities(SkyPilotActivities):
    """The upstream example's pattern: blocking SDK calls straight inside `async def` activities."""

    async def _blocking(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


# ---------------------------------------------------------------------------- simulated rows


async def run_simulated(
    env: WorkflowEnvironment,
    fake: FakeSky,
    repo: Path,
    count: int,
    activities_class: type[SkyPilotActivities] = SkyPilotActivities,
    on_started: Callable[[list], Awaitable[None]] | None = None,
    **input_fields: Any,
) -> tuple[float, list]:
    """Run `count` pipelines at once on one in-process worker; return wall seconds and outcomes."""
    task_queue = f"bench-{uuid.uuid4().hex[:8]}"
    threads, concurrency = 2 * max(count, 1) * 2 + 8, max(100, 2 * count)
    async with benchmark_worker(
        env, fake, task_queue, threads, concurrency, activities_class=activities_class
    ):
        fields = dict(repo_url=str(repo), ref="main", retry_initial_interval_seconds=0.1)
        fields.update(input_fields)
        started = time.monotonic()
        handles = await asyncio.gather(
            *(
                env.client.start_workflow(
                    SkyPilotWorkflow.run,
                    PipelineInput(**fields),
                    id=f"bench-{uuid.uuid4().hex[:10]}",
                    task_queue=task_queue,
                    search_attributes=at_start(SkyPilotWorkflow.__name__, str(repo)),  # as real runs
                )
                for _ in range(count)
            )
        )
        if on_started:
            await on_started(handles)
        outcomes = await asyncio.gather(*(h.result() for h in handles), return_exceptions=True)
        wall = time.monotonic() - started
    return wall, list(zip(handles, outcomes, strict=True))


async def row_overhead(bench: Bench, env: WorkflowEnvironment) -> None:
    """Row 1, and beside it the same with the worker serving Prometheus metrics (run_worker.py's
    default): runs alternate between the two, so both see the same machine."""
    runs = 3 if bench.quick else 7
    measured, address = await serving_metrics(env)
    simulated = 5 * SIMULATED_STEP_SECONDS  # 2 provisionings + 3 jobs
    walls: dict[str, list[float]] = {"off": [], "on": [], "floor": []}
    for _ in range(runs):
        for metrics, run_env in (("off", env), ("on", measured)):
            fake = FakeSky(provision_seconds=SIMULATED_STEP_SECONDS)
            for step in ("preprocess", "train", "eval"):
                fake.plan(step, seconds=SIMULATED_STEP_SECONDS)
            wall, [(_, outcome)] = await run_simulated(run_env, fake, bench.repo, 1)
            assert not isinstance(outcome, BaseException), outcome
            walls[metrics].append(wall)
        # Temporal's floor: as many no-op activities as a pipeline runs (six steps and the
        # checkout removal), on the same server, between the same runs.
        walls["floor"].append(await no_op_chain_seconds(env, PIPELINE_ACTIVITIES) + simulated)
    assert value(scrape(address), "skypilot_runs_total", outcome="succeeded") == runs
    per_step = {k: (statistics.median(v) - simulated) / 6 * 1000 for k, v in walls.items()}
    spread = (max(walls["off"]) - min(walls["off"])) / 6 * 1000  # run-to-run, per step
    bench.add(
        Row(
            1,
            "orchestration overhead per step (6-step pipeline, median of "
            f"{runs}; includes the real git clone)",
            f"{per_step['off']:.1f} ms",
            baseline=f"{per_step['floor']:.1f} ms (Temporal's floor: {PIPELINE_ACTIVITIES} no-op activities)",
            ratio=f"{per_step['off'] / per_step['floor']:.2f}x the floor",
            goal="<= 15 ms",
            met=per_step["off"] <= 15,
        )
    )
    cost = per_step["on"] - per_step["off"]
    bench.add(
        Row(
            1,
            "  the same, worker serving Prometheus metrics (SDK + skypilot_*)",
            f"{per_step['on']:.1f} ms",
            baseline=f"{per_step['off']:.1f} ms",
            ratio=f"{cost:+.1f} ms/step (run-to-run spread {spread:.1f} ms)",
            goal="within the spread",
            met=abs(cost) <= spread,
        )
    )


async def row_codec(bench: Bench, env: WorkflowEnvironment) -> None:
    """Payload encryption: AES-GCM encode + decode of the payloads one step produces."""
    from bench.codec_bench import measure

    figures = await asyncio.to_thread(measure, 500 if bench.quick else 2000)
    bench.add(
        Row(
            9,
            f"payload encryption per step ({figures['payloads_per_step']} payloads, "
            f"{figures['plain_bytes_per_step'] / 1024:.1f} KB; CPU {figures['cpu_ms_per_step']:.2f} ms)",
            f"{figures['ms_per_step']:.2f} ms",
            goal="< 1 ms",
            met=figures["ms_per_step"] < 1,
        )
    )


async def concurrency_ratios(
    env: WorkflowEnvironment,
    repo: Path,
    call_seconds: float,
    counts: list[int],
    activities_class: type[SkyPilotActivities] = SkyPilotActivities,
    metrics_address: str = "",
) -> tuple[dict[int, float], dict[int, tuple[float, float]]]:
    """Wall time of `count` pipelines at once, relative to one pipeline, for each count; and,
    when `env`'s client serves metrics at `metrics_address`, each count's workflow tasks
    (all of them, those over 1 s)."""
    walls, slow = {}, {}
    for count in counts:
        before = slow_workflow_tasks(metrics_address) if metrics_address else (0.0, 0.0)
        walls[count], outcomes = await run_simulated(
            env, FakeSky(call_seconds=call_seconds), repo, count, activities_class=activities_class
        )
        assert all(not isinstance(o, BaseException) for _, o in outcomes)
        if metrics_address:
            after = slow_workflow_tasks(metrics_address)
            slow[count] = (after[0] - before[0], after[1] - before[1])
    return {count: walls[count] / walls[1] for count in counts}, slow


async def row_concurrency(bench: Bench, env: WorkflowEnvironment) -> None:
    # Realistic: a real SkyPilot SDK call blocks for a second or more (API round trips; launch
    # and tail_logs for minutes). Here every call blocks for REALISTIC_CALL_SECONDS.
    counts = [1, 10, 50] if bench.quick else [1, 10, 50, 200]
    measured, address = await serving_metrics(env)
    ours, slow = await concurrency_ratios(
        measured,
        bench.repo,
        REALISTIC_CALL_SECONDS,
        counts,
        metrics_address=address,
    )
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    for count in counts[1:]:
        bench.add(
            Row(
                2,
                f"{count} pipelines at once on one worker vs one (SDK calls block "
                f"{REALISTIC_CALL_SECONDS:.0f} s)",
                f"{ours[count]:.2f}x",
                goal="<= 1.25x" if count == 50 else "",
                met=(ours[count] <= 1.25) if count == 50 else None,
            )
        )
        tasks, over = slow[count]
        bench.add(
            Row(
                2,
                f"  workflow tasks over 1 s with {count} pipelines at once (of {tasks:.0f})",
                f"{over:.0f}",
                goal="0",
                met=over == 0,
            )
        )
    bench.add(Row(2, f"peak memory of the worker process (with {counts[-1]} pipelines)", f"{peak_mb:.0f} MB"))
    # Side by side with the upstream pattern (blocking calls inside async def activities). Short
    # calls keep the baseline's serialised runs to about a minute; they also expose our own CPU
    # cost per pipeline, which short calls cannot hide.
    short = [1, 10, 50]
    ours_short, _ = await concurrency_ratios(env, bench.repo, BLOCKING_CALL_SECONDS, short)
    baseline, _ = await concurrency_ratios(
        env, bench.repo, BLOCKING_CALL_SECONDS, short, activities_class=BlockingActivities
    )
    for count in short[1:]:
        bench.add(
            Row(
                2,
                f"{count} pipelines at once vs one, SDK calls block {BLOCKING_CALL_SECONDS * 1000:.0f} ms",
                f"{ours_short[count]:.2f}x",
                baseline=f"{baseline[count]:.2f}x",
                ratio=f"{baseline[count] / ours_short[count]:.1f}x faster",
            )
        )


async def row_cleanup(bench: Bench, env: WorkflowEnvironment) -> None:
    latencies, leftovers = [], 0.0
    for _ in range(3 if bench.quick else 5):
        fake = FakeSky()
        fake.plan("train", status="FAILED", seconds=0.2)
        _, [(handle, outcome)] = await run_simulated(env, fake, bench.repo, 1)
        ended = time.monotonic()
        assert isinstance(outcome, WorkflowFailureError)
        train_cluster = f"{cluster_prefix_for(handle.id)}-train"
        failed_at = fake.jobs_named("train")[0].finished_at
        down_at = min(t for t, method, args in fake.timeline if method == "down" and args == train_cluster)
        latencies.append(down_at - failed_at)
        leftovers += len(fake.clusters) * (time.monotonic() - ended)
    worst = max(latencies)
    bench.add(
        Row(
            3,
            f"cleanup: failed job -> teardown request reaches SkyPilot (worst of {len(latencies)})",
            f"{worst * 1000:.0f} ms",
            goal="< 1 s",
            met=worst < 1,
        )
    )
    bench.add(
        Row(
            3,
            "cluster-seconds left running after the workflow ends",
            f"{leftovers:.0f}",
            goal="0",
            met=leftovers == 0,
        )
    )


async def row_cancel(bench: Bench, env: WorkflowEnvironment) -> None:
    latencies = []
    for _ in range(2 if bench.quick else 3):
        fake = FakeSky()
        fake.plan("train", until_cancelled=True)
        cancelled_at: list[float] = []

        async def cancel_during_train(
            handles: list, fake: FakeSky = fake, cancelled_at: list = cancelled_at
        ) -> None:
            await asyncio.to_thread(fake.wait_for_job, "train")
            await asyncio.sleep(1.7)  # land between two heartbeats
            cancelled_at.append(time.monotonic())
            await handles[0].cancel()

        await run_simulated(env, fake, bench.repo, 1, on_started=cancel_during_train)
        cancel_call = min(t for t, method, _ in fake.timeline if method == "cancel")
        latencies.append(cancel_call - cancelled_at[0])
    worst = max(latencies)
    bench.add(
        Row(
            4,
            f"cancel: workflow cancel request -> sky.cancel reaches SkyPilot (worst of {len(latencies)}, "
            f"heartbeat every {HEARTBEAT_INTERVAL:.0f} s)",
            f"{worst:.1f} s",
            goal=f"<= {2 * HEARTBEAT_INTERVAL:.0f} s",
            met=worst <= 2 * HEARTBEAT_INTERVAL,
        )
    )


# ---------------------------------------------------------------------------- real-stack rows

REAL_REPEATS = 3


def median_range(values: list[float], unit: str = "", digits: int = 0) -> str:
    """`median (min-max)` of `values`, e.g. "93 s (90-101)"."""
    low, high = min(values), max(values)
    return f"{statistics.median(values):.{digits}f}{unit} ({low:.{digits}f}-{high:.{digits}f})"


@dataclass
class RealSamples:
    """Rows 5-8's samples, one per repetition."""

    failover: list[float] = field(default_factory=list)
    hand: list[float] = field(default_factory=list)
    ours: list[float] = field(default_factory=list)
    run_seconds: list[float] = field(default_factory=list)  # `ours` from the run's history
    in_requests: list[float] = field(default_factory=list)  # of `run_seconds`: in SkyPilot requests
    overlapped: list[float] = field(default_factory=list)
    both: list[float] = field(default_factory=list)
    both_by_hand: list[float] = field(default_factory=list)


async def real_rows(bench: Bench, scratch: Path, repeats: int = REAL_REPEATS) -> None:
    point_sdk_at_local_stack()  # in_skypilot_requests asks the API server
    log = scratch / "real.log"
    print(f"  real stack: bringing it up (log {log})", flush=True)
    local_stack_up(log)
    client = await Client.connect(TEMPORAL_ADDRESS, data_converter=configured_data_converter())
    task_queue = f"bench-real-{uuid.uuid4().hex[:6]}"
    worker = await asyncio.to_thread(
        start_worker_process, task_queue, scratch / "worker1.log", scratch / "checkouts"
    )
    pipeline = Starter(task_queue, scratch)
    samples = RealSamples()
    try:
        # Each repetition takes one sample of every row, so drift on the machine reaches all rows.
        for repetition in range(repeats):
            worker = await failover_sample(client, pipeline, worker, scratch, repetition, samples)
            samples.hand.append(await asyncio.to_thread(hand_run, scratch, log))
            seconds, workflow_id = await pipeline()
            samples.ours.append(seconds)
            run_seconds, covered = await in_skypilot_requests(client, workflow_id)
            samples.run_seconds.append(run_seconds)
            samples.in_requests.append(covered)
            samples.overlapped.append((await pipeline("--overlap-provisioning"))[0])
            started = time.monotonic()
            await asyncio.gather(pipeline(), pipeline())
            samples.both.append(time.monotonic() - started)
            started = time.monotonic()
            await asyncio.gather(*(asyncio.to_thread(hand_run, scratch, log) for _ in range(2)))
            samples.both_by_hand.append(time.monotonic() - started)
            print(f"  real stack: repetition {repetition + 1} of {repeats} done", flush=True)
        for row in real_stack_table(samples):
            bench.add(row)

        # Row 11: a 3-variant sweep against the same variants one after another (once: ~8 min).
        figures = await sweep_real_row(pipeline)
        bench.add(sweep_row(11, figures, goal=""))

        # Row 12: a managed train whose Slurm allocation is cancelled mid-train (once: ~5 min).
        import sky as sky_sdk

        managed = await managed_real_row(pipeline, client, sky_sdk)
        bench.add(
            Row(
                12,
                managed["measure"],
                f"{managed['recovery_seconds']:.0f} s",
                baseline=f"first start {managed['first_running_seconds']:.0f} s",
                ratio=f"{managed['recoveries']} recovery, train {managed['status']}",
            )
        )
    finally:
        worker.kill(signal.SIGTERM)


async def failover_sample(
    client: Client,
    pipeline: Starter,
    worker: WorkerProcess,
    scratch: Path,
    repetition: int,
    samples: RealSamples,
) -> WorkerProcess:
    """Row 5: start a long train on `worker`, start a second worker, SIGKILL the first; the
    seconds until the step runs again on the second go to `samples`. Returns the second worker."""
    _, workflow_id = await pipeline("--env", "EPOCHS=600", "--no-wait")
    handle = client.get_workflow_handle(workflow_id)
    train = f"{cluster_prefix_for(workflow_id)}-train"
    deadline = time.monotonic() + 600
    while not await _train_job_running(train, scratch / "queue.log"):
        if time.monotonic() > deadline:
            raise RuntimeError(f"row 5: {train}'s job never ran")
        await asyncio.sleep(2)
    second = await asyncio.to_thread(
        start_worker_process,
        pipeline.task_queue,
        scratch / f"worker{repetition + 2}.log",
        scratch / "checkouts",
    )
    try:
        killed_at = time.monotonic()
        worker.kill(signal.SIGKILL)
        while True:
            description = await handle.describe()
            if any(
                p.attempt >= 2 and p.last_started_time.seconds and p.activity_type.name == "launch_task"
                for p in description.raw_description.pending_activities
            ):
                break
            if time.monotonic() - killed_at > 300:
                raise RuntimeError("row 5: the step never resumed on the second worker")
            await asyncio.sleep(0.5)
        samples.failover.append(time.monotonic() - killed_at)
        await handle.cancel()
        with contextlib.suppress(WorkflowFailureError):
            await handle.result()
    except BaseException:
        second.kill()
        raise
    return second


def against_hand(number: int, measure: str, ours: list[float], hand: list[float], goal: float) -> Row:
    """A real-stack row: our seconds against the hand-runs' of the same repetitions, as the
    median (range) of their ratios, with its goal."""
    ratios = [a / b for a, b in zip(ours, hand, strict=True)]
    return Row(
        number,
        measure,
        median_range(ours, " s"),
        baseline=median_range(hand, " s"),
        ratio=median_range(ratios, digits=2),
        goal=f"<= {goal}",
        met=statistics.median(ratios) <= goal,
    )


def real_stack_table(samples: RealSamples) -> list[Row]:
    """Rows 5-8 from their samples: medians and ranges of the ratios, each taken within one
    repetition (side by side), so the machine's drift between repetitions cancels out."""
    count = len(samples.hand)

    def ratios(ours: list[float], baseline: list[float]) -> list[float]:
        return [a / b for a, b in zip(ours, baseline, strict=True)]

    orchestration = [
        run - covered for run, covered in zip(samples.run_seconds, samples.in_requests, strict=True)
    ]
    orchestration_share = [100 * o / r for o, r in zip(orchestration, samples.run_seconds, strict=True)]
    row8 = ratios(samples.both, samples.ours)
    row8_hand = ratios(samples.both_by_hand, samples.hand)
    row8_vs_hand = ratios(samples.both, samples.both_by_hand)
    return [
        Row(
            5,
            f"failover: worker SIGKILLed mid-train -> step resumes on the second worker ({count} runs)",
            median_range(samples.failover, " s"),
            baseline=f"{StepTimeouts().train} s (start-to-close alone)",
            goal=f"<= {HEARTBEAT_TIMEOUT + 5} s",
            met=max(samples.failover) <= HEARTBEAT_TIMEOUT + 5,
        ),
        against_hand(
            6,
            f"real stack: full pipeline vs the six operations by hand (sky CLI), {count} runs each",
            samples.ours,
            samples.hand,
            0.85,
        ),
        Row(
            6,
            "  of which in SkyPilot requests (the physical limit here) / orchestration outside them",
            median_range(orchestration, " s", 1) + " orchestration",
            baseline=median_range(samples.in_requests, " s") + " in requests",
            ratio=median_range(orchestration_share, "%", 1) + " of the run",
            goal="<= 3%",
            met=statistics.median(orchestration_share) <= 3,
        ),
        against_hand(
            7,
            "real stack: pipeline with --overlap-provisioning vs by hand",
            samples.overlapped,
            samples.hand,
            0.65,
        ),
        Row(
            8,
            "real stack: two pipelines at once on one worker, vs one pipeline "
            "(baseline: two hand-runs at once, vs one hand-run)",
            median_range(row8, "x", 2),
            baseline=median_range(row8_hand, "x", 2),
            ratio=median_range(row8_vs_hand, digits=2) + " of the hand-runs' time",
            goal="<= 1.3x, and <= the hand-runs",
            met=statistics.median(row8) <= 1.3 and statistics.median(row8_vs_hand) <= 1.0,
        ),
    ]


def sweep_row(number: int, figures: dict[str, Any], goal: str) -> Row:
    ratio = figures["ours"] / figures["ideal"]
    return Row(
        number,
        figures["measure"],
        f"{figures['ours']:.1f} s",
        baseline=f"{figures['ideal']:.1f} s",
        ratio=f"{ratio:.2f}x",
        goal=goal,
        met=(ratio <= float(goal.split()[-1].rstrip("x"))) if goal else None,
    )


async def row_sweep(bench: Bench, env: WorkflowEnvironment) -> None:
    bench.add(sweep_row(10, await sweep_simulated_row(bench.repo, env), goal="<= 1.2x"))


async def _train_job_running(cluster: str, out: Path) -> bool:
    with out.open("w") as handle:
        proc = await asyncio.create_subprocess_exec(
            str(SKY_CLI), "queue", cluster, stdout=handle, stderr=handle, env=process_env()
        )
        await proc.wait()
    return "RUNNING" in out.read_text()


# ---------------------------------------------------------------------------- output


def print_rows(rows: list[Row]) -> None:
    header = ["#", "measure", "ours", "baseline", "ratio", "goal", "met"]
    print_table(
        header, [[r.number, r.measure, r.ours, r.baseline, r.ratio, r.goal, met_mark(r.met)] for r in rows]
    )


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="simulated rows, fewer repetitions")
    parser.add_argument("--real-only", action="store_true", help="the real-stack rows only")
    parser.add_argument("--all", action="store_true", help="simulated and real-stack rows")
    parser.add_argument(
        "--repeats", type=int, default=REAL_REPEATS, help="real-stack repetitions (default 3)"
    )
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    simulated, real = not args.real_only, args.real_only or args.all
    # Failed steps are part of rows 3-4: keep Temporal's per-failure warnings out of the table.
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        bench = Bench(quick=args.quick, repo=make_task_repo(scratch / "tasks-repo"))
        print("\n".join(machine_lines()), flush=True)
        if simulated:
            # As the worker runs on this machine: encrypting payloads when a codec key is set.
            env = await start_dev_server(extra_args=["--dynamic-config-value", "frontend.rps=10000"])
            try:
                for row in (row_overhead, row_concurrency, row_cleanup, row_cancel, row_codec, row_sweep):
                    await row(bench, env)
            finally:
                await env.shutdown()
        if real:
            await real_rows(bench, scratch, args.repeats)
    print(f"\npython -m bench.run {' '.join(sys.argv[1:])} ({time.monotonic() - started:.0f} s)")
    print("\n".join(machine_lines()))
    print_rows(bench.rows)
    return 0


if __name__ == "__main__":
    code = asyncio.run(main())
    sys.stdout.flush()
    os._exit(code)
