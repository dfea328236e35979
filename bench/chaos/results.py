"""The soak's measurement after its runs closed, the table it prints (and the exit status it
decides), and observations.json."""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from dataclasses import asdict, dataclass
from typing import Any

from bench.chaos.journal import Journal
from bench.chaos.observe import Observer
from bench.chaos.plan import ROLES, Run
from bench.report import machine_lines, met_mark, print_table


@dataclass
class Measured:
    left: list[str]  # the soak's clusters still listed by `sky status`
    slurm_ours: list[tuple[str, str]]  # (job id, name) of the soak's Slurm jobs still queued
    slurm_all: list[tuple[str, str]]
    submissions: dict[tuple[str, str], list[str]] | None  # None: the API server did not answer
    wall: float


class Results:
    def __init__(
        self, args: argparse.Namespace, journal: Journal, runs: list[Run], observer: Observer
    ) -> None:
        self.args = args
        self.journal = journal
        self.runs = runs
        self.observer = observer

    async def measure(self) -> Measured:
        fresh = await self.observer.fresh_look()
        left = sorted(self.observer.current) if fresh else ["(unknown: SkyPilot did not answer)"]
        slurm_all = squeue()
        clouds = {c.name_on_cloud for c in self.observer.clusters.values() if c.name_on_cloud}
        slurm_ours = [(i, n) for i, n in slurm_all if n in clouds or self.observer.owner(n)]
        for run in self.runs:
            if run.closed_at is not None:
                run.leaked = self.observer.leaked_seconds(run.workflow_id, run.closed_at)
        try:
            submissions = await self.observer.submissions()
        except Exception as err:
            self.journal.log(f"API server request records not available: {type(err).__name__}")
            submissions = None
        return Measured(left, slurm_ours, slurm_all, submissions, time.time() - self.journal.started)

    def write_observations(self, task_queue: str) -> None:
        data = {
            "task_queue": task_queue,
            "runs": [asdict(r) for r in self.runs],
            "clusters": [asdict(c) for c in self.observer.clusters.values()],
            "jobs": [asdict(j) for j in self.observer.jobs.values()],
            "counters": asdict(self.journal.counters),
            "notes": self.journal.notes,
        }
        (self.journal.out / "observations.json").write_text(json.dumps(data, indent=1, default=str))

    def report(self, measured: Measured, downed: list[str]) -> int:
        """Each run, duplicates, what cleanup did, then the table; the soak's exit status."""
        rows, ok = self.table_rows(measured)
        print()
        started = self.journal.started
        for run in self.runs:
            leaked = "" if run.leaked is None else f", leaked {run.leaked:.0f} cluster-s"
            clusters = ", ".join(
                f"{c.name} seen {c.first_seen - started:.0f}-{c.last_seen - started:.0f}s"
                for c in self.observer.clusters_of(run.workflow_id)
            )
            print(f"  {run.workflow_id:<16} {run.role:<9} -> {run.outcome()}{leaked}; {clusters}")
        for (workflow_id, step), jobs in self.observer.duplicates().items():
            ids = ", ".join(f"{j.key.cluster} job {j.key.job_id} ({j.job_name}, {j.status})" for j in jobs)
            print(f"  DUPLICATE {workflow_id} {step}: {ids}")
        for (workflow_id, step), request_ids in (measured.submissions or {}).items():
            if len(request_ids) > 1:
                print(f"  DUPLICATE SUBMISSION {workflow_id} {step}: requests {', '.join(request_ids)}")
        others = [f"{i} {n}" for i, n in measured.slurm_all if (i, n) not in measured.slurm_ours]
        if others:
            print(f"  Slurm jobs not of this soak (left alone): {', '.join(others)}")
        seen = self.observer
        failures = ", ".join(f"{n} {kind}" for kind, n in seen.queue_failures.most_common()) or "none"
        print(
            f"  SkyPilot: {seen.polls_ok} status polls ok, {seen.polls_failed} failed, slowest "
            f"{seen.slowest_poll:.1f} s; {seen.queue_ok} queue requests ok (slowest "
            f"{seen.slowest_queue:.1f} s), failed: {failures}"
        )
        if downed:
            print(f"  cleanup tore down: {', '.join(downed)}")
        for note in self.journal.notes:
            print(f"  note: {note}")
        print(
            f"\npython -m bench.chaos_soak{' --quick' if self.args.quick else ''} (output {self.journal.out})"
        )
        print("\n".join(machine_lines(with_load=True)))
        print_table(["measure", "result", "goal", "met"], rows)
        return 0 if ok else 1

    def table_rows(self, measured: Measured) -> tuple[list[list[str]], bool]:
        """The table, and whether every goal that decides the exit status was met."""
        count = [r.outcome() for r in self.runs].count
        planned = {role: sum(r.role == role for r in self.runs) for role in ROLES}
        normal_ok = all(r.outcome() == "succeeded" for r in self.runs if r.role == "normal")
        other = count("failed (other)") + count("still running") + count("not started")
        duplicates = self.observer.duplicate_count()
        submitted = measured.submissions
        extra = None if submitted is None else sum(len(ids) - 1 for ids in submitted.values())
        left, slurm = measured.left, [name for _, name in measured.slurm_ours]
        leak_row, leak_ok = self.leak_row(self.args.reaper_grace + self.args.reaper_period + 60)
        counters = self.journal.counters
        rows = [
            row("pipelines started", len(self.runs) - count("not started"), len(self.runs)),
            row("succeeded", count("succeeded"), planned["normal"], normal_ok),
            row("failed (by design: FAIL_TRAINING=1)", count("failed (by design)"), planned["fail"]),
            row("failed (other), timed out, still running or not started", other, 0),
            row("cancelled (mid-train, by design)", count("cancelled"), planned["cancel"]),
            row("terminated (mid-train, by design)", count("terminated"), planned["terminate"]),
            row("worker kills survived (SIGKILL + restart)", counters.kills_text()),
            row("SkyPilot API server restarts", counters.api_restarts, self.args.api_restarts),
            row("Temporal dev server restarts", counters.temporal_restarts, self.args.temporal_restarts),
            row("duplicate jobs (sky queue: same run and step, any cluster)", duplicates, 0),
            row(
                "duplicate submissions (API server: succeeded launch/exec per run and step beyond one)",
                "n/a (API server did not answer)" if extra is None else extra,
                0,
                extra == 0 if extra is not None else None,
            ),
            row("clusters left (sky status)", " ".join([str(len(left)), *left]), 0, not left),
            row("Slurm jobs left (squeue)", " ".join([str(len(slurm)), *slurm]), 0, not slurm),
            leak_row,
            row("wall time", f"{measured.wall:.0f} s"),
        ]
        ok = normal_ok and duplicates == 0 and not extra and not left and not slurm
        return rows, ok and leak_ok is not False

    def leak_row(self, bound: float) -> tuple[list[str], bool | None]:
        closed = [r for r in self.runs if r.leaked is not None]
        goal = f"0; terminated <= {bound:.0f} s"
        if not closed:
            return row("leaked cluster-seconds after a run closed (max)", "n/a", goal), None
        worst = max(closed, key=lambda r: r.leaked or 0.0)
        met = all((r.leaked or 0.0) <= (bound if r.status == "TERMINATED" else 0.0) for r in closed)
        value = f"{worst.leaked:.0f} s ({worst.workflow_id}, {worst.outcome()})"
        return row("leaked cluster-seconds after a run closed (max)", value, goal, met), met


def row(measure: str, result: Any, goal: Any = "", met: bool | None = None) -> list[str]:
    """A table row; with a numeric goal and no `met`, met means result == goal."""
    if met is None and isinstance(goal, int) and isinstance(result, int):
        met = result == goal
    return [measure, str(result), str(goal), met_mark(met)]


def squeue() -> list[tuple[str, str]]:
    """(job id, job name) of every Slurm job; empty if squeue cannot answer."""
    try:
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    jobs = []
    for line in out.splitlines():
        job_id, _, name = line.strip().partition(" ")
        if job_id:
            jobs.append((job_id, name))
    return jobs
