"""The soak's command line, the runs it plans and the code its workers and starters run."""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

from testing import ROOT

ROLES = ("normal", "fail", "terminate", "cancel")
# Defaults that --quick changes: flag -> (full run, --quick).
SCALE = {
    "pipelines": (8, 3),
    "workers": (3, 2),
    "max_kills": (0, 1),
    "api_restarts": (1, 0),
    "temporal_restarts": (1, 0),
    "fail": (1, 1),
    "terminate": (1, 1),
    "cancel": (1, 0),
    "timeout": (25 * 60, 15 * 60),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Chaos soak of the pipeline on the local stack (see bench/chaos_soak.py)."
    )
    add = parser.add_argument
    add("--quick", action="store_true", help="3 pipelines, 2 workers, one kill, no server restarts")
    add("--pipelines", type=int, help="pipelines to start (8; quick 3)")
    add("--workers", type=int, help="worker processes (3; quick 2)")
    add("--kill-every", type=float, default=40, help="seconds between worker SIGKILLs, +-25%% (40)")
    add("--max-kills", type=int, help="stop killing after this many, 0 = no limit (0; quick 1)")
    add("--api-restarts", type=int, help="SkyPilot API server restarts (1; quick 0)")
    add("--api-restart-at", type=float, default=150, help="first API restart, s after the first start (150)")
    add("--api-down", type=float, default=25, help="seconds the API server stays stopped (25)")
    add("--temporal-restarts", type=int, help="Temporal dev server restarts (1; quick 0)")
    add(
        "--temporal-restart-at",
        type=float,
        default=300,
        help="first Temporal restart, s after the first start (300)",
    )
    add("--temporal-down", type=float, default=10, help="seconds Temporal stays down (10)")
    add("--restart-spacing", type=float, default=150, help="seconds between restarts of one server (150)")
    add("--fail", type=int, help="pipelines run with FAIL_TRAINING=1 (1)")
    add("--terminate", type=int, help="pipelines terminated mid-train (1)")
    add("--cancel", type=int, help="pipelines cancelled mid-train (1; quick 0)")
    add("--act-after", type=float, default=10, help="terminate/cancel this long into train (10 s)")
    add("--epochs", type=int, default=75, help="train epochs, about a second each (75)")
    add("--stagger", type=float, default=5, help="seconds between pipeline starts (5)")
    add("--poll-every", type=float, default=3, help="seconds between looks at SkyPilot (3)")
    add("--reaper-period", type=int, default=60, help="REAPER_PERIOD_SECONDS for the workers (60)")
    add("--reaper-grace", type=int, default=60, help="REAPER_GRACE_SECONDS for the workers (60)")
    add("--timeout", type=float, help="stop waiting for the runs after this many s (1500; quick 900)")
    add("--ref", default="", help="run workers and starters from `git archive REF` (default: working tree)")
    add("--out", type=Path, help="output directory (default: /tmp/chaos-soak-<random>)")
    add("--seed", type=int, help="random seed (worker choice, kill jitter)")
    args = parser.parse_args(argv)
    for name, (full, quick) in SCALE.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    special = args.fail + args.terminate + args.cancel
    if args.pipelines < 1 or args.workers < 1 or special > args.pipelines:
        parser.error(
            "need at least one pipeline and one worker, and --fail + --terminate + --cancel <= --pipelines"
        )
    return args


@dataclass
class Run:
    index: int
    workflow_id: str
    prefix: str
    role: str  # normal | fail | terminate | cancel
    started_at: float | None = None
    start_error: str = ""
    status: str = ""  # Temporal's: RUNNING, COMPLETED, FAILED, CANCELED, TERMINATED, TIMED_OUT
    closed_at: float | None = None
    failure_type: str = ""
    failure: str = ""
    acted_at: float | None = None
    leaked: float | None = None

    @property
    def open(self) -> bool:
        return not self.start_error and self.closed_at is None

    def outcome(self) -> str:
        if self.start_error:
            return "not started"
        return {
            "COMPLETED": "succeeded",
            "FAILED": "failed (by design)"
            if self.role == "fail" and self.failure_type == "JobFailed"
            else "failed (other)",
            "CANCELED": "cancelled",
            "TERMINATED": "terminated",
            "TIMED_OUT": "failed (other)",
        }.get(self.status, "still running")


def roles(args: argparse.Namespace) -> list[str]:
    """Role of each pipeline: the special ones first, so they reach train while others run."""
    special = ["fail"] * args.fail + ["terminate"] * args.terminate + ["cancel"] * args.cancel
    normal = ["normal"] * (args.pipelines - len(special))
    # One normal run first: the soak's earliest finisher, and a pipeline no action touches.
    return (normal[:1] + special + normal[1:]) if normal else special


def planned_runs(args: argparse.Namespace, code: Path, token: str) -> list[Run]:
    planned = roles(args)
    workflow_ids = [f"chaos-{i}-{token}" for i in range(len(planned))]
    prefixes = cluster_prefixes(code, workflow_ids)
    return [Run(i, workflow_ids[i], prefixes[i], role) for i, role in enumerate(planned)]


def prepare_code(args: argparse.Namespace, out: Path) -> tuple[Path, list[str]]:
    """Where the workers and starters run from, and the task repository arguments for the starter."""
    if not args.ref:
        return ROOT, []
    commit = subprocess.run(
        ["git", "rev-parse", "--verify", f"{args.ref}^{{commit}}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    archive, code = out / "code.tar", out / "code"
    subprocess.run(["git", "archive", "--format=tar", "-o", str(archive), commit], cwd=ROOT, check=True)
    with tarfile.open(archive) as tar:
        tar.extractall(code, filter="data")
    archive.unlink()
    return code, ["--repo", str(ROOT), "--ref", commit]


def cluster_prefixes(code: Path, workflow_ids: list[str]) -> list[str]:
    """`cluster_prefix_for` of each workflow id, as the code the workers run computes it (it may
    change: always ask it). With --ref that is another tree: a Python in that tree asks its own
    modules, never the ones this process imported (trees before the package had `shared.py`)."""
    script = (
        "import sys\n"
        "try:\n    from skypilot_temporal.naming import cluster_prefix_for\n"
        "except ImportError:\n    from shared import cluster_prefix_for\n"
        "print(*map(cluster_prefix_for, sys.argv[1:]), sep='\\n')"
    )
    answer = subprocess.run(
        [sys.executable, "-c", script, *workflow_ids], cwd=code, capture_output=True, text=True, check=True
    )
    prefixes = answer.stdout.split()
    if len(prefixes) != len(workflow_ids):
        raise RuntimeError(f"cluster_prefix_for in {code} answered {answer.stdout!r}")
    return prefixes
