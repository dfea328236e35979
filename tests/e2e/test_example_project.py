"""examples/acme_pipelines as a platform team uses the package: the package built as a wheel and
installed in a fresh venv with the example project (its own pyproject), the example's own tests
over the fake SDK there, then the example's own worker running its own pipeline shape on the real
stack. Nothing of this repository is importable in that venv but the installed wheel."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from skypilot_temporal.payloads import PipelineResult
from testing import ROOT, VENV_BIN
from testing.local_stack import Stack, process_env, slurm_allocations

pytestmark = pytest.mark.e2e

EXAMPLE = ROOT / "examples" / "acme_pipelines"
# The example's own tasks, in this repository at HEAD (the worker allows it as a local repository).
TASKS = "examples/acme_pipelines/tasks"


def run(*command: str | Path, cwd: Path, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(c) for c in command], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert done.returncode == 0, f"{command}: {done.stdout[-3000:]}{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def platform(tmp_path_factory) -> tuple[Path, Path]:
    """(the fresh venv, the example project's copy): the wheel built from a copy of the package's
    sources, installed with the example under the repository's pins (requirements.txt)."""
    tmp = tmp_path_factory.mktemp("platform")
    source = tmp / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    shutil.copytree(ROOT / "skypilot_temporal", source / "skypilot_temporal", ignore=ignore)
    example = tmp / "acme_pipelines"
    shutil.copytree(EXAMPLE, example, ignore=ignore)
    run(
        VENV_BIN / "pip",
        "wheel",
        "-q",
        "--no-deps",
        "--no-build-isolation",
        "-w",
        tmp / "dist",
        source,
        cwd=tmp,
    )
    [wheel] = (tmp / "dist").glob("skypilot_temporal-*.whl")
    venv = tmp / "venv"
    run(sys.executable, "-m", "venv", venv, cwd=tmp)
    pip = [venv / "bin" / "pip", "install", "-q", "--disable-pip-version-check"]
    run(*pip, "-c", ROOT / "requirements.txt", f"skypilot-temporal[testing] @ {wheel.as_uri()}", cwd=tmp)
    run(*pip, "-c", ROOT / "requirements.txt", f"{example}[test]", cwd=tmp)
    return venv, example


def test_the_example_installs_from_the_wheel_and_its_own_tests_pass(platform):
    venv, example = platform
    python = venv / "bin" / "python"
    # From outside both source trees: what imports is what pip installed.
    where = run(
        python,
        "-c",
        "import skypilot_temporal, acme_pipelines as a; print(skypilot_temporal.__file__, a.__file__)",
        cwd=venv,
    )
    assert all(path.startswith(str(venv)) for path in where.split()), where
    assert "py.typed" in run(
        python,
        "-c",
        "import importlib.resources as r; print([f.name for f in r.files('skypilot_temporal').iterdir()])",
        cwd=example,
    )
    # The pipeline file's schema ships in the wheel: the installed loader reads it.
    loaded = "from skypilot_temporal.pipeline_file.load import schema; print(schema()['title'])"
    assert run(python, "-c", loaded, cwd=example).strip()
    key = run(venv / "bin" / "skypilot-temporal", "new-key", "k1", cwd=example)
    assert key.startswith("k1:"), key
    assert "1 passed" in run(python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests", cwd=example)


async def test_the_examples_own_worker_runs_its_own_pipeline_on_the_real_stack(
    platform, temporal, sky_sdk, tmp_path: Path
):
    venv, example = platform
    task_queue = f"acme-{uuid.uuid4().hex[:8]}"
    log_path = tmp_path / "acme-worker.log"
    env = process_env(TEMPORAL_TASK_QUEUE=task_queue, WORKER_CHECKOUT_ROOT=str(tmp_path / "checkouts"))
    with log_path.open("w") as log:
        worker = subprocess.Popen(
            [str(venv / "bin" / "python"), "-m", "acme_pipelines.worker"],
            cwd=example,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 90
        while "acme worker on task queue" not in log_path.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log_path.read_text()
            await asyncio.sleep(0.2)
        workflow_id = f"acme-{uuid.uuid4().hex[:8]}"
        pipeline = {
            "repo_url": str(ROOT),
            "ref": "HEAD",
            "train_yaml": f"{TASKS}/train.yaml",
            "eval_yaml": f"{TASKS}/eval.yaml",
            "infra": "slurm",
        }
        result = await temporal.execute_workflow(
            "TrainTwiceEvaluated",
            {"pipeline": pipeline, "stress_eval_yaml": f"{TASKS}/stress_eval.yaml"},
            id=workflow_id,
            task_queue=task_queue,
            result_type=PipelineResult,
        )
    finally:
        worker.terminate()
        worker.wait(30)
    assert [(s.step, s.job_status) for s in result.steps] == [
        ("train", "SUCCEEDED"),
        ("eval", "SUCCEEDED"),
        ("stress-eval", "SUCCEEDED"),
    ], log_path.read_text()[-3000:]
    assert result.steps[1].metrics == {"accuracy": 0.91}
    assert result.steps[2].metrics == {"stress_accuracy": 0.74}
    cluster = result.steps[0].cluster_name
    assert Stack(temporal, sky_sdk, task_queue, tmp_path).clusters(cluster) == []
    assert slurm_allocations(cluster) == {}
