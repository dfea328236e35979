"""Operating it on the real stack: a schedule triggered once runs the real pipeline; the run is
found by its search attributes (CLI and Web UI) while it trains; the worker's metrics endpoint
shows the run, and its spans reach an OTLP/HTTP collector."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import pytest
from aiohttp import web
from playwright.async_api import expect

from skypilot_temporal.naming import cluster_prefix_for
from skypilot_temporal.payloads import PipelineResult
from testing import ROOT, free_port
from testing.browser import browser_page, workflows_url
from testing.in_process import TEMPORAL_CLI, git
from testing.local_stack import (
    TEMPORAL_ADDRESS,
    Stack,
    process_env,
    slurm_allocations,
    start_worker_process,
)
from testing.prometheus import scrape, value
from testing.waiting import eventually

pytestmark = pytest.mark.e2e

SIX_STEPS = ["fetch-tasks", "preprocess", "preprocess-down", "train", "eval", "train-down"]


def temporal_cli(*args: str) -> str:
    """The `temporal` CLI as the README tells an operator to use it, against the local stack."""
    done = subprocess.run(
        [str(TEMPORAL_CLI), *args, "--address", TEMPORAL_ADDRESS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


def listed(query: str) -> list[str]:
    rows = json.loads(temporal_cli("workflow", "list", "--query", query, "--output", "json") or "[]")
    return [row["execution"]["workflowId"] for row in rows]


@contextlib.asynccontextmanager
async def otlp_collector() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An OTLP/HTTP endpoint that keeps the bodies POSTed to /v1/traces."""
    received: list[bytes] = []

    async def traces(request: web.Request) -> web.Response:
        received.append(await request.read())
        return web.Response(status=200, content_type="application/x-protobuf")

    app = web.Application()
    app.router.add_post("/v1/traces", traces)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}", received
    finally:
        await runner.cleanup()


async def test_a_triggered_schedule_runs_the_real_pipeline_findable_and_measured(
    temporal, sky_sdk, tmp_path: Path
):
    async with otlp_collector() as (endpoint, spans):
        await scheduled_run_found_measured_traced(temporal, sky_sdk, tmp_path, endpoint, spans)


async def scheduled_run_found_measured_traced(
    temporal, sky_sdk, tmp_path: Path, otlp_endpoint: str, spans: list[bytes]
) -> None:
    task_queue = f"e2e-ops-{uuid.uuid4().hex[:6]}"
    metrics_address = f"127.0.0.1:{free_port()}"
    worker = start_worker_process(
        task_queue,
        tmp_path / "worker.log",
        tmp_path / "checkouts",
        WORKER_METRICS_ADDRESS=metrics_address,
        OTEL_EXPORTER_OTLP_ENDPOINT=otlp_endpoint,
        OTEL_BSP_SCHEDULE_DELAY="1000",  # export spans every second
    )
    schedule_id = f"e2e-nightly-{uuid.uuid4().hex[:6]}"
    try:
        assert f"Metrics: Prometheus at http://{metrics_address}/metrics" in worker.log()
        assert f"Tracing: OTLP to {otlp_endpoint}" in worker.log()
        assert (
            "Search attributes: PipelineStep, TaskRepo, CommitSha, PipelineKind, PipelineOutcome"
            in worker.log()
        )
        schedule = ["--schedule", "0 3 * * *", "--schedule-id", schedule_id, "--env", "EPOCHS=40"]
        created = subprocess.run(
            [
                sys.executable,
                str(ROOT / "run_workflow.py"),
                *schedule,
                "--infra",
                "slurm",
                "--task-queue",
                task_queue,
            ],
            capture_output=True,
            text=True,
            env=process_env(),
            timeout=120,
            check=False,
        )
        assert created.returncode == 0, (created.stdout, created.stderr)
        assert created.stdout.startswith(f"Created schedule {schedule_id}: cron '0 3 * * *' (UTC)")
        temporal_cli("schedule", "trigger", "--schedule-id", schedule_id)
        scheduled = f"TemporalScheduledById='{schedule_id}'"
        run_ids = await eventually(lambda: asyncio.to_thread(listed, scheduled), "the triggered run", 60)
        assert len(run_ids) == 1
        workflow_id = run_ids[0]
        assert workflow_id.startswith(f"{schedule_id}-")

        sha = git("rev-parse", "HEAD", cwd=ROOT)
        training_now = f"PipelineStep='train' AND CommitSha='{sha}'"

        def training() -> bool:
            return workflow_id in listed(training_now)

        await eventually(lambda: asyncio.to_thread(training), training_now, 300)
        async with browser_page() as page:  # the Web UI's run list, filtered on the same query
            await page.goto(f"{workflows_url()}?query={quote(training_now)}")
            await expect(page.get_by_text(workflow_id).first).to_be_visible(timeout=30_000)

        run = temporal.get_workflow_handle(workflow_id, result_type=PipelineResult)
        result = await asyncio.wait_for(run.result(), 900)
        assert [step.job_status for step in result.steps] == ["SUCCEEDED"] * 3
        assert listed(f"PipelineOutcome='succeeded' AND CommitSha='{sha}' AND {scheduled}") == [workflow_id]
        assert listed(training_now) == [] or workflow_id not in listed(training_now)

        samples = scrape(metrics_address)
        for step in SIX_STEPS:
            labels = dict(step=step, outcome="succeeded", task_queue=task_queue)
            assert value(samples, "skypilot_step_duration_seconds_count", **labels) == 1, step
        assert value(samples, "skypilot_step_duration_seconds_sum", step="train", task_queue=task_queue) > 5
        assert value(samples, "skypilot_runs_total", outcome="succeeded", task_queue=task_queue) == 1
        assert value(samples, "temporal_workflow_task_execution_latency_count", task_queue=task_queue) > 0
        assert value(samples, "temporal_activity_execution_latency_count", activity_type="launch_task") == 2

        def traced() -> bool:
            sent = b"".join(spans)
            names = (b"RunWorkflow:SkyPilotWorkflow", b"RunActivity:launch_task", b"RunActivity:down_cluster")
            return all(name in sent for name in names) and workflow_id.encode() in sent

        await eventually(lambda: asyncio.to_thread(traced), "the run's spans at the OTLP collector", 60)

        prefix = cluster_prefix_for(workflow_id)
        assert Stack(temporal, sky_sdk, task_queue, tmp_path).clusters(prefix) == []
        assert slurm_allocations(prefix) == {}
    finally:
        subprocess.run(
            [
                str(TEMPORAL_CLI),
                "schedule",
                "delete",
                "--schedule-id",
                schedule_id,
                "--address",
                TEMPORAL_ADDRESS,
            ],
            capture_output=True,
            check=False,
        )
        worker.kill(signal.SIGTERM)
