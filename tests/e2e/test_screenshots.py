"""scripts/screenshots.py (`python -m scripts.screenshots`): one command makes every picture
the README and docs/ show."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import pytest

from e2e.conftest import Pictures
from testing import ROOT

pytestmark = pytest.mark.e2e

PICTURES = {
    "terminal-waiting.png",
    "terminal-failed.png",
    "ui-runs.png",
    "ui-completed-run.png",
    "ui-summary-and-details.png",
    "ui-running-step.png",
    "ui-progress-query.png",
    "ui-failed-run.png",
    "terminal-diamond.png",
    "ui-diamond.png",
}


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", header[16:24])


def test_the_docs_show_every_picture_in_assets():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    picture = re.compile(r"\]\((?:\.\./)?assets/([\w.-]+\.png)\)")
    shown = {name for page in pages for name in picture.findall(page.read_text())}
    assert shown == PICTURES
    assert {path.name for path in (ROOT / "assets").glob("*.png")} == PICTURES


def test_one_command_regenerates_every_picture(pictures: Pictures):
    assert pictures.returncode == 0, pictures.output
    assert {path.name for path in pictures.out.iterdir()} == PICTURES
    for name in PICTURES:
        width, height = png_size(pictures.out / name)
        assert width >= 900 and height >= 200, (name, width, height)
