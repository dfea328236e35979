"""Sweep benchmarks: rows 10 and 11 of the table `python -m bench.run` prints.

    .venv/bin/python -m bench.sweep_bench               # both rows (row 11 on the real stack, ~10 min)
    .venv/bin/python -m bench.sweep_bench --simulated   # row 10 only (~1 min)

Row 10: a sweep of 50 variants, at most 10 at once, over the simulated SDK (testing/fake_sky.py),
against the ideal: the sweep's shared part (fetch, preprocess, its teardown) plus ceil(50/10)
times one variant, both measured in the same run with a one-variant sweep.
Row 11: a real 3-variant sweep (2 at once) against the same three variants run as pipelines one
after another, on the local stack.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from skypilot_temporal.payloads import PipelineInput, SweepInput, SweepResult
from skypilot_temporal.testing.fake_sky import FakeSky
from testing.in_process import benchmark_worker, make_task_repo, start_dev_server
from workflows import SweepWorkflow

SIMULATED_STEP_SECONDS = 0.3  # each provisioning and each job
VARIANTS, MAX_PARALLEL = 50, 10
REAL_VALUES = ("0.1", "0.01", "0.001")


async def simulated_sweep(
    env: Any, repo: Path, variants: int, max_parallel: int
) -> tuple[float, SweepResult]:
    fake = FakeSky(provision_seconds=SIMULATED_STEP_SECONDS)
    for step in ("preprocess", "train", "eval"):
        fake.plan(step, seconds=SIMULATED_STEP_SECONDS, logs=["METRIC eval_accuracy=0.9"])
    task_queue = f"bench-sweep-{uuid.uuid4().hex[:8]}"
    async with benchmark_worker(env, fake, task_queue, threads=8 * max_parallel + 8):
        started = time.monotonic()
        result = await env.client.execute_workflow(
            SweepWorkflow.run,
            SweepInput(
                PipelineInput(repo_url=str(repo), ref="main", retry_initial_interval_seconds=0.1),
                [{"LR": str(n)} for n in range(variants)],
                max_parallel=max_parallel,
            ),
            id=f"bench-sweep-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
        return time.monotonic() - started, result


async def simulated_row(repo: Path, env: Any | None = None) -> dict[str, Any]:
    """Row 10's figures: the 50-variant sweep's wall time and the ideal beside it."""
    own_env = env is None
    env = env or await start_dev_server()
    try:
        one_wall, one = await simulated_sweep(env, repo, 1, 1)
        wall, result = await simulated_sweep(env, repo, VARIANTS, MAX_PARALLEL)
    finally:
        if own_env:
            await env.shutdown()
    assert all(v.status == "succeeded" for v in result.variants), result.variants
    variant_seconds = one.variants[0].duration_seconds or 0.0
    ideal = (one_wall - variant_seconds) + math.ceil(VARIANTS / MAX_PARALLEL) * variant_seconds
    return {
        "measure": f"simulated sweep: {VARIANTS} variants, {MAX_PARALLEL} at once, vs the ideal "
        f"(shared part + ceil({VARIANTS}/{MAX_PARALLEL}) x one variant of {variant_seconds:.1f} s)",
        "ours": wall,
        "ideal": ideal,
    }


async def real_row(run_pipeline: Callable[..., Awaitable[tuple[float, str]]]) -> dict[str, Any]:
    """Row 11's figures; `run_pipeline(*args)` runs `run_workflow.py` on the stack, returns
    (seconds, workflow id)."""
    sweep, _ = await run_pipeline(
        "--sweep", f"LR={','.join(REAL_VALUES)}", "--env", "EPOCHS=1", "--max-parallel", "2"
    )
    one_by_one = 0.0
    for value in REAL_VALUES:
        seconds, _ = await run_pipeline("--env", "EPOCHS=1", "--env", f"LR={value}")
        one_by_one += seconds
    return {
        "measure": "real stack: 3-variant sweep (2 at once) vs the 3 pipelines one after another",
        "ours": sweep,
        "ideal": one_by_one,
    }


async def standalone_real_row(scratch: Path) -> dict[str, Any]:
    from bench.real_stack import Starter
    from testing.local_stack import local_stack_up, start_worker_process

    local_stack_up(scratch / "stack.log")
    task_queue = f"bench-sweep-{uuid.uuid4().hex[:6]}"
    worker = await asyncio.to_thread(start_worker_process, task_queue, scratch / "worker.log")

    run_pipeline = Starter(task_queue, scratch)

    try:
        return await real_row(run_pipeline)
    finally:
        worker.kill()


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--simulated", action="store_true", help="row 10 only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as scratch_dir:
        scratch = Path(scratch_dir)
        rows = [(10, await simulated_row(make_task_repo(scratch / "tasks-repo")))]
        if not args.simulated:
            rows.append((11, await standalone_real_row(scratch)))
    print("| row | measure | ours | baseline | ratio |")
    print("|---|---|---|---|---|")
    for number, row in rows:
        ratio = row["ours"] / row["ideal"]
        print(f"| {number} | {row['measure']} | {row['ours']:.1f} s | {row['ideal']:.1f} s | {ratio:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
