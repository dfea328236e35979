"""The Temporal Web UI in a real headless browser: Debian's `chromium`, driven by Playwright.

Used by tests/e2e/test_web_ui.py and scripts/screenshots.py. Playwright launches the system
Chromium (nothing is downloaded) with a fresh profile each time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator

from playwright.async_api import Page, async_playwright

UI_URL = os.environ.get("E2E_TEMPORAL_UI", "http://localhost:8233").rstrip("/")
CHROMIUM_ARGS = [
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("chromium is not installed: apt-get install chromium")
    return path


@contextlib.asynccontextmanager
async def browser_page(width: int = 1440, height: int = 900) -> AsyncIterator[Page]:
    """A page in a fresh headless Chromium, closed afterwards."""
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = await browser.new_context(viewport={"width": width, "height": height})
            page = await context.new_page()
            page.set_default_timeout(30_000)
            yield page
        finally:
            await browser.close()


def workflow_url(workflow_id: str, run_id: str, tab: str = "history", namespace: str = "default") -> str:
    return f"{UI_URL}/namespaces/{namespace}/workflows/{workflow_id}/{run_id}/{tab}"


def workflows_url(namespace: str = "default") -> str:
    return f"{UI_URL}/namespaces/{namespace}/workflows"


async def wait_for_user_metadata(page: Page, *texts: str, timeout: float = 60) -> str:
    """The User Metadata tab's text once it shows each of `texts`.

    The UI renders summary, details and current details as markdown in sandboxed iframes, so
    their text is not part of the page's own body.
    """
    deadline = time.monotonic() + timeout
    while True:
        parts = []
        for frame in page.frames:
            with contextlib.suppress(Exception):  # frames come and go while the UI refreshes
                parts.append(await frame.locator("body").inner_text(timeout=1_000))
        shown = "\n".join(parts)
        if all(text in shown for text in texts):
            return shown
        if time.monotonic() > deadline:
            missing = [text for text in texts if text not in shown]
            raise AssertionError(f"User Metadata never showed {missing}; it shows:\n{shown[-2000:]}")
        await asyncio.sleep(0.5)
