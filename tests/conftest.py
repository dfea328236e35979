"""Shared fixtures: the fake SkyPilot SDK, the activities over it, and a task repository."""

from __future__ import annotations

import concurrent.futures
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from activities import SkyPilotActivities  # noqa: E402
from fake_sky import FakeSky  # noqa: E402

TASK_FILES = ("data_preprocessing.yaml", "train.yaml", "eval.yaml")


@pytest.fixture
def fake_sky() -> FakeSky:
    return FakeSky()


@pytest.fixture
def executor() -> Iterator[concurrent.futures.ThreadPoolExecutor]:
    pool = concurrent.futures.ThreadPoolExecutor(16, thread_name_prefix="test-sdk")
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


@pytest.fixture
def activities(fake_sky: FakeSky, executor, tmp_path: Path) -> SkyPilotActivities:
    return SkyPilotActivities(fake_sky, executor, checkout_root=tmp_path / "checkouts",
                              heartbeat_interval_seconds=0.05,
                              environ={"HF_TOKEN": "s3cr3t-value"})


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture
def task_repo(tmp_path: Path) -> Path:
    """A git repository holding this project's example tasks at its root, on branch main."""
    repo = tmp_path / "task-repo"
    repo.mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=repo)
    for name in TASK_FILES:
        (repo / name).write_text((ROOT / "tasks" / name).read_text())
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "tasks", cwd=repo)
    return repo
