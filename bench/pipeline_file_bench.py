"""Pipeline files on the fake SDK: parallelism, orchestration cost per step, the largest graph.

    .venv/bin/python -m bench.pipeline_file_bench            # ~3 min
    .venv/bin/python -m bench.pipeline_file_bench --quick    # one sample per row
    .venv/bin/python -m bench.pipeline_file_bench --real     # row 2 on the real stack too (~12 min)

Every job and provisioning takes STEP seconds on the fake SDK, so a graph's critical path is
known; the ratios are measured side by side in one run (absolute times move between days):
1. the diamond (tasks/diamond.yaml) against its critical path (goal: within 1.1x);
2. the diamond against the same steps one after another (max_parallel: 1);
3. the generic workflow's orchestration cost per step (tasks/pipeline.yaml, the six steps) against
   SkyPilotWorkflow's on the same steps and Temporal's floor (no-op activities; goal: 1.3x), and
   where that time goes, read from both runs' histories;
4. the largest graph the bounds allow, 200 steps: its history and its slowest workflow task
   (goal: no workflow task over 1 s);
5. with --real: row 2 on the real local stack (Slurm), each file started with run_workflow.py
   as a user starts it (the stack is brought up if it is not; it is left up).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import time
import uuid
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment

from bench.floor import no_op_chain
from bench.report import machine_lines, met_mark, print_table
from skypilot_temporal.payloads import PipelineFileInput, PipelineInput
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.workflow.pipeline_file_workflow import PipelineFileWorkflow
from testing import ROOT
from testing.in_process import benchmark_worker, make_git_repo, start_dev_server
from workflows import SkyPilotWorkflow

STEP = 0.5  # seconds of every simulated job and provisioning
# The diamond's critical path: prepare (provision + job), train-large (provision + job), eval
# on its cluster (job), compare (provision + job); one after another it is all nine.
DIAMOND_CRITICAL_PATH, DIAMOND_SERIAL = 7 * STEP, 9 * STEP
SIX_STEP_ACTIVITIES = 7  # fetch, 3 jobs, 2 teardowns, checkout removal
LARGEST = """
max_parallel: 32
matrices:
  chains: {CHAIN: [%s]}
steps:
%s
"""


def largest_graph() -> str:
    """20 chains of 10 steps (200), each chain on one cluster: the first launches, nine exec."""
    layers = []
    for layer in range(10):
        needs = f", needs: [l{layer - 1}]" if layer else ""
        layers.append(f"  l{layer}: {{task: tasks/train.yaml, matrix: chains, cluster: c{needs}}}")
    return LARGEST % (", ".join(str(n) for n in range(20)), "\n".join(layers))


async def run_file(
    env: WorkflowEnvironment, repo: Path, path: str, fake: FakeSky, workflow: Any = PipelineFileWorkflow
) -> tuple[float, WorkflowHistory]:
    task_queue = f"pfb-{uuid.uuid4().hex[:8]}"
    async with benchmark_worker(env, fake, task_queue, threads=150, concurrency=100):
        pipeline = PipelineInput(
            repo_url=str(repo),
            ref="main",
            retry_initial_interval_seconds=0.1,
            preprocess_yaml="tasks/data_preprocessing.yaml",
            train_yaml="tasks/train.yaml",
            eval_yaml="tasks/eval.yaml",
        )
        run = PipelineFileInput(path, pipeline) if workflow is PipelineFileWorkflow else pipeline
        started = time.monotonic()
        handle = await env.client.start_workflow(
            workflow.run, run, id=f"pfb-{uuid.uuid4().hex[:10]}", task_queue=task_queue
        )
        await handle.result()
        return time.monotonic() - started, await handle.fetch_history()


def simulated() -> FakeSky:
    """Every job and provisioning STEP seconds; the metrics the diamond's compare reads."""
    fake = FakeSky(provision_seconds=STEP)
    reported = {
        "train-small": ["METRIC train_loss=0.2"],
        "train-large": ["METRIC train_loss=0.1"],
        "eval-large": ["METRIC eval_accuracy=0.9"],
    }
    steps = ("prepare", "train-small", "train-large", "eval-large", "compare", "preprocess", "train", "eval")
    for step in steps:
        fake.plan(step, seconds=STEP, logs=reported.get(step, ["done"]))
    return fake


# What the simulated SDK spends inside each activity type of tasks/pipeline.yaml (seconds).
SIMULATED_IN = {"launch_task": 2 * STEP, "exec_task": STEP}
SPENT_IN = {
    "workflow task (history: started -> completed)": ("workflow task",),
    "step 1: checkout, pipeline file, 3 task checks": ("fetch_pipeline",),
    "a job step's activity beyond its simulated SDK time": ("launch_task", "exec_task"),
    "a teardown or checkout removal activity": ("down_cluster", "remove_checkout"),
}


def milliseconds_spent(histories: list[WorkflowHistory]) -> dict[str, list[float]]:
    """Each workflow task's and activity's own time in `histories` (by activity type, minus what
    the simulated SDK spends in it), in ms: where a run's time beyond its jobs goes."""
    spent: dict[str, list[float]] = {}
    for history in histories:
        begun: dict[int, float] = {}
        activity_types: dict[int, str] = {}
        for event in history.events:
            at = event.event_time.ToDatetime().timestamp()
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
                begun[event.event_id] = at
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                started = begun[event.workflow_task_completed_event_attributes.started_event_id]
                spent.setdefault("workflow task", []).append((at - started) * 1000)
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
                scheduled = event.activity_task_scheduled_event_attributes
                activity_types[event.event_id] = scheduled.activity_type.name
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                begun[event.event_id] = at
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
                attributes = event.activity_task_completed_event_attributes
                kind = activity_types[attributes.scheduled_event_id]
                own = at - begun[attributes.started_event_id] - SIMULATED_IN.get(kind, 0.0)
                spent.setdefault(kind, []).append(own * 1000)
    return spent


def median_of(spent: dict[str, list[float]], kinds: tuple[str, ...]) -> float:
    return statistics.median([ms for kind in kinds for ms in spent.get(kind, [])])


def slowest_workflow_task(history: WorkflowHistory) -> float:
    started: dict[int, float] = {}
    slowest = 0.0
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED:
            started[event.event_id] = event.event_time.ToDatetime().timestamp()
        elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
            attributes = event.workflow_task_completed_event_attributes
            begun = started.get(attributes.started_event_id)
            if begun is not None:
                slowest = max(slowest, event.event_time.ToDatetime().timestamp() - begun)
    return slowest


def task_repository(scratch: Path) -> Path:
    """This repository's tasks in a git repository of their own, with the diamond's serial twin
    (tasks/diamond-serial.yaml) and the largest graph (tasks/largest.yaml) beside them."""
    files = {f"tasks/{p.name}": p.read_text() for p in (ROOT / "tasks").glob("*.yaml")}
    files["tasks/diamond-serial.yaml"] = "max_parallel: 1\n" + files["tasks/diamond.yaml"]
    files["tasks/largest.yaml"] = largest_graph()
    return make_git_repo(scratch / "repo", files)


async def real_row(scratch: Path, repo: Path) -> tuple[float, float]:
    """Row 5: the diamond and its serial twin on the real stack, one run of each (seconds)."""
    from bench.real_stack import Starter
    from testing.local_stack import local_stack_up, start_worker_process

    log = scratch / "stack.log"
    print(f"  real stack: bringing it up (log {log})", flush=True)
    local_stack_up(log)
    task_queue = f"pfb-real-{uuid.uuid4().hex[:6]}"
    worker = await asyncio.to_thread(
        start_worker_process, task_queue, scratch / "worker.log", scratch / "checkouts"
    )
    try:
        start = Starter(task_queue, scratch)
        diamond, _ = await start("--repo", str(repo), "--pipeline", "tasks/diamond.yaml")
        print(f"  real stack: diamond {diamond:.0f} s", flush=True)
        serial, _ = await start("--repo", str(repo), "--pipeline", "tasks/diamond-serial.yaml")
        print(f"  real stack: one after another {serial:.0f} s", flush=True)
        return diamond, serial
    finally:
        worker.kill(signal.SIGTERM)


async def main(quick: bool, real: bool) -> None:
    runs = 1 if quick else 3
    env = await start_dev_server()
    with TemporaryDirectory() as scratch:
        repo = task_repository(Path(scratch))
        walls: dict[str, list[float]] = {"diamond": [], "serial": [], "generic": [], "six": [], "floor": []}
        histories: dict[str, list[WorkflowHistory]] = {"generic": [], "floor": []}
        for _ in range(runs):
            walls["diamond"].append((await run_file(env, repo, "tasks/diamond.yaml", simulated()))[0])
            walls["serial"].append((await run_file(env, repo, "tasks/diamond-serial.yaml", simulated()))[0])
            for name, (wall, history) in (
                ("generic", await run_file(env, repo, "tasks/pipeline.yaml", simulated())),
                ("floor", await no_op_chain(env, SIX_STEP_ACTIVITIES)),
            ):
                walls[name].append(wall)
                histories[name].append(history)
            walls["six"].append((await run_file(env, repo, "", simulated(), SkyPilotWorkflow))[0])
        largest_wall, largest = await run_file(env, repo, "tasks/largest.yaml", FakeSky())
        await env.shutdown()
        real_diamond, real_serial = await real_row(Path(scratch), repo) if real else (0.0, 0.0)

    median = {k: statistics.median(v) for k, v in walls.items()}
    six_simulated = 5 * STEP  # 2 provisionings + 3 jobs
    per_step = {k: (median[k] - six_simulated) / 6 * 1000 for k in ("generic", "six")}
    floor = median["floor"] / SIX_STEP_ACTIVITIES * 1000
    events = len(largest.events)
    size = sum(e.ByteSize() for e in largest.events)
    slowest = slowest_workflow_task(largest)
    ratio = median["diamond"] / DIAMOND_CRITICAL_PATH
    print(
        "\n".join(
            ["", "python -m bench.pipeline_file_bench" + (" --quick" if quick else ""), *machine_lines()]
        )
    )
    rows = [
        (
            1,
            f"diamond vs its critical path ({STEP:g} s steps, median of {runs})",
            f"{median['diamond']:.1f} s",
            f"{DIAMOND_CRITICAL_PATH:.1f} s",
            f"{ratio:.2f}x",
            "<= 1.1x",
            met_mark(ratio <= 1.1),
        ),
        (
            2,
            "diamond vs the same steps one after another",
            f"{median['diamond']:.1f} s",
            f"{median['serial']:.1f} s",
            f"{median['diamond'] / median['serial']:.2f}x",
            f"~{DIAMOND_CRITICAL_PATH / DIAMOND_SERIAL:.2f}x",
            "",
        ),
        (
            3,
            "orchestration per step: pipeline file (six steps)",
            f"{per_step['generic']:.1f} ms",
            f"{per_step['six']:.1f} ms (SkyPilotWorkflow)",
            f"{per_step['generic'] / per_step['six']:.2f}x",
            "",
            "",
        ),
        (
            3,
            "  against Temporal's floor",
            f"{per_step['generic']:.1f} ms",
            f"{floor:.1f} ms (no-op activity)",
            f"{per_step['generic'] / floor:.2f}x",
            "<= 1.3x",
            met_mark(per_step["generic"] <= 1.3 * floor),
        ),
        (
            4,
            "200 steps (20 chains of 10 on 20 clusters, 32 at once)",
            f"{largest_wall:.1f} s",
            f"{events} events, {size / 1e6:.2f} MB history",
            f"slowest workflow task {slowest * 1000:.0f} ms",
            "< 1 s",
            met_mark(slowest < 1.0),
        ),
    ]
    if real:
        rows.append(
            (
                5,
                "real stack (Slurm): diamond vs the same steps one after another, one run each",
                f"{real_diamond:.0f} s",
                f"{real_serial:.0f} s",
                f"{real_diamond / real_serial:.2f}x",
                "",
                "",
            )
        )
    print_table(["row", "measure", "result", "baseline", "ratio", "goal", "met"], rows)

    ours, floors = milliseconds_spent(histories["generic"]), milliseconds_spent(histories["floor"])
    print("\nWhere row 3's time goes (medians, ms): each piece of the six-step pipeline file's run")
    print("against the same piece of Temporal's floor (its workflow task; its no-op activity)")
    breakdown = []
    for piece, kinds in SPENT_IN.items():
        floor_kinds = kinds if kinds == ("workflow task",) else ("no_op",)
        mine, theirs = median_of(ours, kinds), median_of(floors, floor_kinds)
        breakdown.append((piece, f"{mine:.1f}", f"{theirs:.1f}", f"{mine / theirs:.2f}x"))
    print_table(["piece", "pipeline file", "floor", "ratio"], breakdown)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one sample per row")
    parser.add_argument("--real", action="store_true", help="row 2 on the real local stack too (row 5)")
    options = parser.parse_args()
    asyncio.run(main(options.quick, options.real))
