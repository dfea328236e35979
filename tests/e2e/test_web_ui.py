"""What a user sees of a real run in the Temporal Web UI, checked in headless Chromium.

Each assertion looks for text that only this project puts on the page: the workflow summary,
the activity summaries (without them the UI shows only `launch_task`, `down_cluster`, ...) and
the failure message. The runs are the screenshot script's (the `pictures` fixture): that script
also fails unless a running step's heartbeat in the UI shows its phase, job id and a log line.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid

import pytest
from playwright.async_api import Page, expect
from temporalio.client import Client

from e2e.conftest import Pictures
from e2e.test_pipeline_e2e import result_of, stored_history_bytes
from skypilot_temporal.naming import cluster_prefix_for
from testing import ROOT
from testing.browser import browser_page, wait_for_user_metadata, workflow_url
from testing.local_stack import Stack

pytestmark = pytest.mark.e2e

QUERY_WINDOW_HEIGHT = 4000


def step_summaries(prefix: str) -> list[str]:
    return [
        f"fetch tasks from {ROOT}@HEAD",
        f"launch preprocess on {prefix}-preprocess",
        f"down {prefix}-preprocess",
        f"launch train on {prefix}-train",
        f"exec eval on {prefix}-train",
        f"down {prefix}-train",
    ]


async def open_run(page: Page, temporal: Client, workflow_id: str, tab: str = "history") -> None:
    run_id = (await temporal.get_workflow_handle(workflow_id).describe()).run_id
    await page.goto(workflow_url(workflow_id, run_id, tab))
    await expect(page.get_by_text(workflow_id).first).to_be_visible()


async def run_progress_query(page: Page) -> None:
    """The Queries tab, as a user uses it: `progress` is preselected; press Run Query.

    The answer is shown in a code editor that renders only the lines near the window, so the
    window is made tall enough for the whole answer to be on the page.
    """
    await page.set_viewport_size({"width": 1440, "height": QUERY_WINDOW_HEIGHT})
    await page.goto(page.url.replace("/history", "/query"))
    await page.get_by_role("button", name="Run Query").click()
    await expect(page.get_by_role("button", name="Refresh Query")).to_be_visible()


async def test_a_completed_run_shows_its_summary_and_six_steps(pictures: Pictures, temporal: Client):
    assert pictures.returncode == 0, pictures.output
    workflow_id = pictures.runs["succeeded"]
    prefix = cluster_prefix_for(workflow_id)
    async with browser_page() as page:
        await open_run(page, temporal, workflow_id)
        await expect(page.get_by_text("Completed", exact=True).first).to_be_visible()
        await expect(page.get_by_text(f"SkyPilot pipeline: {ROOT}@HEAD").first).to_be_visible()
        for summary in step_summaries(prefix):
            await expect(page.get_by_text(summary, exact=True).first).to_be_attached()
        # User Metadata: the summary and details, and the current details (step list, commit).
        commit = (await result_of(temporal, workflow_id))["commit_sha"]
        await page.goto(page.url.replace("/history", "/user-metadata"))
        await wait_for_user_metadata(
            page,
            f"SkyPilot pipeline: {ROOT}@HEAD",
            f"commit {commit[:12]}",
            f"✓ exec eval on {prefix}-train — job 2",
        )
        await page.goto(page.url.replace("/user-metadata", "/history"))
        # The progress query answers from the Queries tab: every step, its job and status.
        await run_progress_query(page)
        body = page.locator("body")
        await expect(body).to_contain_text('"status": "succeeded"')
        for summary in step_summaries(prefix):
            await expect(body).to_contain_text(f'"summary": "{summary}"')
        await expect(body).to_contain_text(f'"cluster_name": "{prefix}-train"')
        await expect(body).to_contain_text('"job_status": "SUCCEEDED"')


async def test_a_failed_run_shows_the_failing_step_and_its_cleanup(pictures: Pictures, temporal: Client):
    assert pictures.returncode == 0, pictures.output  # the script checks this run failed (exit 1)
    workflow_id = pictures.runs["failed"]
    prefix = cluster_prefix_for(workflow_id)
    started = time.monotonic()
    async with browser_page() as page:
        await open_run(page, temporal, workflow_id)
        await expect(page.get_by_text("Failed", exact=True).first).to_be_visible()
        body = page.locator("body")
        await expect(body).to_contain_text(f"step 'train' on cluster {prefix}-train failed")
        await expect(body).to_contain_text("exit code 3")
        await expect(body).to_contain_text("training diverged")
        await expect(page.get_by_text(f"cleanup: down {prefix}-train", exact=True).first).to_be_attached()
        await run_progress_query(page)
        await expect(body).to_contain_text('"job_status": "FAILED"')
        await expect(body).to_contain_text(f'"summary": "cleanup: down {prefix}-train"')
    assert time.monotonic() - started < 120


async def test_payloads_are_encrypted_and_only_the_codec_server_shows_them(stack: Stack):
    """The history Temporal stores holds no env value, task text or log line in clear; the Web UI
    shows the decoded failure through the local stack's codec server, and without it cannot."""
    marker = f"marker-{uuid.uuid4().hex[:8]}"
    rc, stdout, stderr, workflow_id = await stack.start_pipeline(
        "--env", f"SECRETISH={marker}", "--train-yaml", f"tasks/{marker}.yaml"
    )
    assert rc == 1 and f"task file 'tasks/{marker}.yaml' not found" in stdout + stderr, stdout + stderr
    raw = await stored_history_bytes(workflow_id)
    assert marker.encode() not in raw and b"binary/encrypted" in raw
    async with browser_page() as page:
        await open_run(page, stack.temporal, workflow_id)
        body = page.locator("body")
        await expect(body).to_contain_text(f"task file 'tasks/{marker}.yaml' not found", timeout=30_000)
        codec_pid = int((ROOT / ".state" / "codec.pid").read_text())
        os.kill(codec_pid, signal.SIGTERM)
        try:
            await page.reload()
            # With its codec server gone the UI waits out the failed codec calls before it draws
            # the run; on a loaded 2-core machine that took over 5 s.
            await expect(page.get_by_text(workflow_id).first).to_be_visible(timeout=30_000)
            await asyncio.sleep(5)
            assert marker not in await body.inner_text(), "decoded without the codec server"
        finally:
            proc = await asyncio.create_subprocess_exec(
                "bash", str(ROOT / "scripts" / "local_stack.sh"), "up", stdout=asyncio.subprocess.DEVNULL
            )
            assert await proc.wait() == 0, "could not restart the codec server"
