"""Regenerate the README's pictures (assets/*.png) from real runs of this pipeline.

    .venv/bin/python -m scripts.screenshots              # writes assets/
    .venv/bin/python -m scripts.screenshots --out DIR
    .venv/bin/python -m scripts.screenshots --out DIR --record runs.json   # and name the runs

Brings the local stack up (scripts/local_stack.sh up), starts its own worker on its own task
queue, runs the pipeline twice at once with run_workflow.py (one succeeds; one fails in train with
FAIL_TRAINING=1), then the pipeline file tasks/diamond.yaml, and photographs the terminal of
run_workflow.py and the Temporal Web UI in headless Chromium (testing/browser.py). About six
minutes; needs root and Debian's chromium. `--record` writes the runs' workflow ids (the end-to-end
suite checks the Web UI on these runs instead of making its own).
Run from the repository root.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import html
import json
import signal
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from playwright.async_api import Page, expect
from temporalio.client import Client

from skypilot_temporal.trust.codec import configured_data_converter
from testing import ROOT
from testing.browser import browser_page, chromium_path, wait_for_user_metadata, workflow_url, workflows_url
from testing.local_stack import (
    TEMPORAL_ADDRESS,
    WorkerProcess,
    local_stack_up,
    process_env,
    start_worker_process,
)

TIMEOUT_SECONDS = 900
SETTLE_MS = 2000  # the UI long-polls a running workflow's history, so never "network idle"

TERMINAL_PAGE = """<!doctype html><meta charset="utf-8"><style>
body {{ margin: 0; background: #f0f0f0; }}
#terminal {{ display: inline-block; margin: 16px; border-radius: 8px; overflow: hidden;
  box-shadow: 0 2px 12px rgba(0, 0, 0, .35); background: #1d1f21; min-width: 960px; }}
#title {{ background: #3a3c3e; color: #c5c8c6; font: 13px "DejaVu Sans", sans-serif;
  padding: 6px 12px; }}
pre {{ margin: 0; padding: 12px 16px 16px; color: #e6e6e6;
  font: 14px/1.45 "DejaVu Sans Mono", "Liberation Mono", monospace; }}
.prompt {{ color: #b5bd68; }}
</style><div id="terminal"><div id="title">{title}</div><pre>{text}</pre></div>"""


@dataclass
class Run:
    """One `python run_workflow.py` process and the lines it has printed so far."""

    workflow_id: str
    args: list[str]  # what the user typed (the picture shows them)
    task_queue: str
    proc: asyncio.subprocess.Process | None = None
    lines: list[str] = field(default_factory=list)

    async def start(self, env: dict[str, str]) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "run_workflow.py",
            "--workflow-id",
            self.workflow_id,
            "--task-queue",
            self.task_queue,
            *self.args,
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,  # as a terminal shows them: interleaved
        )

    async def read_until_exit(self) -> int:
        assert self.proc and self.proc.stdout
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
        return await self.proc.wait()

    async def wait_for_line(self, text: str) -> None:
        deadline = time.monotonic() + TIMEOUT_SECONDS
        while not any(text in line for line in self.lines):
            if time.monotonic() > deadline or (self.proc and self.proc.returncode is not None):
                raise SystemExit(f"screenshots.py: error: {self.workflow_id} never printed {text!r}")
            await asyncio.sleep(0.5)

    def command(self) -> str:
        return " ".join(["python run_workflow.py", *self.args])

    async def run_id(self) -> str:
        client = await Client.connect(TEMPORAL_ADDRESS, data_converter=configured_data_converter())
        return (await client.get_workflow_handle(self.workflow_id).describe()).run_id


def bring_stack_up(log_dir: Path) -> None:
    log = log_dir / "screenshots-stack.log"
    print(f"[screenshots] local stack up (log: {log})", flush=True)
    try:
        local_stack_up(log)
    except RuntimeError as err:
        raise SystemExit(f"screenshots.py: error: {err}") from None


def start_worker(task_queue: str, log_path: Path) -> WorkerProcess:
    """Our own worker, on the local stack with nothing from a .env: the pictures show this machine."""
    try:
        return start_worker_process(task_queue, log_path)
    except RuntimeError:
        raise SystemExit(f"screenshots.py: error: the worker did not start (see {log_path})") from None


async def terminal_picture(page: Page, run: Run, path: Path) -> None:
    text = f'<span class="prompt">$</span> {html.escape(run.command())}\n' + html.escape("\n".join(run.lines))
    await page.set_content(TERMINAL_PAGE.format(title="terminal — run_workflow.py", text=text))
    await page.locator("#terminal").screenshot(path=path)
    print(f"[screenshots] {path}", flush=True)


async def ui_picture(page: Page, url: str, path: Path, height: int, *wait_for_text: str) -> None:
    """The page at `url`, 1440 px wide and `height` tall, once each of `wait_for_text` shows."""
    await page.set_viewport_size({"width": 1440, "height": height})
    await page.goto(url)
    for text in wait_for_text:
        await expect(page.get_by_text(text).first).to_be_visible(timeout=60_000)
    await settled_picture(page, path)


async def settled_picture(page: Page, path: Path) -> None:
    """The page as it is once it has settled, in `path`."""
    await page.wait_for_timeout(SETTLE_MS)
    await page.screenshot(path=path)
    print(f"[screenshots] {path}", flush=True)


async def running_step_picture(page: Page, url: str, path: Path) -> None:
    """The pending train activity once its heartbeat carries its phase, job id and an epoch log
    line (the end-to-end suite relies on this check)."""
    deadline = time.monotonic() + 300  # within the 900 s the e2e fixture gives the whole script
    while True:
        await page.goto(url)
        await page.wait_for_timeout(SETTLE_MS)
        body = await page.locator("body").inner_text()
        if '"phase": "running"' in body and '"job_id": 1' in body and "epoch " in body:
            break
        if time.monotonic() > deadline:
            tail = " | ".join(body.splitlines()[-12:])
            raise SystemExit(
                "screenshots.py: error: the train step's heartbeat never showed its phase, job id and an "
                f"epoch line on {url}: {tail}"
            )
        await asyncio.sleep(2)
    await page.screenshot(path=path)
    print(f"[screenshots] {path}", flush=True)


async def take_pictures(out: Path, task_queue: str, record: Path | None = None) -> None:
    batch = f"skypilot-{uuid.uuid4().hex[:6]}"
    succeeds = Run(batch, ["--env", "EPOCHS=60"], task_queue)
    fails = Run(f"{batch}-fails", ["--env", "FAIL_TRAINING=1"], task_queue)
    env = process_env(TEMPORAL_TASK_QUEUE=task_queue)
    await succeeds.start(env)
    await fails.start(env)
    exits = asyncio.gather(succeeds.read_until_exit(), fails.read_until_exit())
    diamond = Run(f"{batch}-diamond", ["--pipeline", "tasks/diamond.yaml"], task_queue)
    if record:
        runs = {"succeeded": succeeds, "failed": fails, "diamond": diamond}
        record.write_text(json.dumps({name: run.workflow_id for name, run in runs.items()}))
    try:
        await photograph(out, succeeds, fails, exits)
        await diamond.start(env)  # after the others: the two cores are its alone
        await photograph_diamond(out, diamond)
    except BaseException:
        # Leave nothing running: cancel the runs and let the worker tear their clusters down.
        client = await Client.connect(TEMPORAL_ADDRESS, data_converter=configured_data_converter())
        for run in (succeeds, fails, diamond):
            handle = client.get_workflow_handle(run.workflow_id)
            with contextlib.suppress(Exception):
                await handle.cancel()
                await asyncio.wait_for(handle.result(), 300)
        raise


async def photograph(out: Path, succeeds: Run, fails: Run, exits: asyncio.Future[list[int]]) -> None:
    batch = succeeds.workflow_id
    async with browser_page(width=1440, height=900) as page:
        await succeeds.wait_for_line("▶ train")
        run_id = await succeeds.run_id()
        await running_step_picture(
            page,
            workflow_url(succeeds.workflow_id, run_id, "pending-activities"),
            out / "ui-running-step.png",
        )
        await terminal_picture(page, succeeds, out / "terminal-waiting.png")
        codes = await asyncio.wait_for(exits, TIMEOUT_SECONDS)
        if codes != [0, 1]:
            tail = "\n".join(succeeds.lines[-5:] + fails.lines[-5:])
            raise SystemExit(f"screenshots.py: error: expected exit codes [0, 1], got {codes}:\n{tail}")
        await terminal_picture(page, fails, out / "terminal-failed.png")
        fails_run_id = await fails.run_id()
        query = quote(f'WorkflowId STARTS_WITH "{batch}"')
        await ui_picture(page, f"{workflows_url()}?query={query}", out / "ui-runs.png", 480, f"{batch}-fails")
        await ui_picture(
            page,
            workflow_url(succeeds.workflow_id, run_id, "timeline"),
            out / "ui-completed-run.png",
            1100,
            f"exec eval on {batch}-train",
        )
        # Summary, details and current details (the step list, answered by the worker).
        await page.set_viewport_size({"width": 1440, "height": 720})
        await page.goto(workflow_url(succeeds.workflow_id, run_id, "user-metadata"))
        await wait_for_user_metadata(page, "SkyPilot pipeline: ", f"down {batch}-train")
        await settled_picture(page, out / "ui-summary-and-details.png")
        await page.set_viewport_size({"width": 1440, "height": 1100})
        await page.goto(workflow_url(succeeds.workflow_id, run_id, "query"))
        await page.get_by_role("button", name="Run Query").click()
        await expect(page.get_by_role("button", name="Refresh Query")).to_be_visible()
        await settled_picture(page, out / "ui-progress-query.png")
        await ui_picture(
            page,
            workflow_url(fails.workflow_id, fails_run_id, "timeline"),
            out / "ui-failed-run.png",
            1100,
            f"cleanup: down {batch}-fails-train",
        )


async def photograph_diamond(out: Path, diamond: Run) -> None:
    """A pipeline file's run (tasks/diamond.yaml): its terminal, and its timeline in the Web UI,
    where the two trainings run side by side."""
    code = await asyncio.wait_for(diamond.read_until_exit(), TIMEOUT_SECONDS)
    if code != 0:
        raise SystemExit("screenshots.py: error: the diamond failed:\n" + "\n".join(diamond.lines[-8:]))
    async with browser_page(width=1440, height=900) as page:
        await terminal_picture(page, diamond, out / "terminal-diamond.png")
        await ui_picture(
            page,
            workflow_url(diamond.workflow_id, await diamond.run_id(), "timeline"),
            out / "ui-diamond.png",
            1000,
            f"exec eval-large on {diamond.workflow_id}-large",
        )


def main() -> int:
    parser = argparse.ArgumentParser(description="Regenerate assets/*.png from real runs of the pipeline.")
    parser.add_argument("--out", type=Path, default=ROOT / "assets", help="where to write the pictures")
    parser.add_argument("--task-queue", default="skypilot-screenshots", help="the worker's own task queue")
    parser.add_argument("--record", type=Path, help="write the runs' workflow ids to this JSON file")
    args = parser.parse_args()
    try:
        chromium_path()
    except RuntimeError as err:
        print(f"screenshots.py: error: {err}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    state = ROOT / ".state"
    state.mkdir(exist_ok=True)
    bring_stack_up(state)
    worker = start_worker(args.task_queue, state / "screenshots-worker.log")
    try:
        asyncio.run(take_pictures(args.out.resolve(), args.task_queue, args.record))
    finally:
        worker.kill(signal.SIGTERM)
    return 0


if __name__ == "__main__":
    sys.exit(main())
