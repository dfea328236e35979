"""What a run shows: its steps, status, clusters and variants, for the progress query and the Web
UI's current details; and the run's failure, told from the step that failed.

Workflow-side (it runs in the workflow sandbox): `StepBoard.step()` is the one place a step's
status changes, and every change redraws the Web UI's details.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError, TimeoutError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from skypilot_temporal.operations import metrics
    from skypilot_temporal.operations.search_attributes import RunAttributes
    from skypilot_temporal.payloads import STATUS_MARKS, PipelineProgress, StepProgress, VariantProgress

FETCH_TASKS = "fetch-tasks"


class StepBoard:
    """A run's visible state. `plan`: the names of the steps the run expects to take, shown as
    pending until they start and as skipped if the run ends without them; clusters are
    "<prefix>-<role>". (Plans of older code, "launch STEP [on ROLE]", "exec STEP on ROLE",
    "managed STEP", "provision ROLE", "down ROLE", are still read.)"""

    def __init__(self, prefix: str, fetch_summary: str, plan: list[str]) -> None:
        self.prefix = prefix
        self.fetch_summary = fetch_summary
        self.status = "running"
        self.commit_sha = ""
        self.search = RunAttributes()
        self.clusters_up: list[str] = []
        self.variants: list[VariantProgress] = []
        self.heading = ""  # a line under the status: what runs (a pipeline file's run)
        # The error of background work that stopped the step running then (shown as cancelled).
        self.stopped_by: BaseException | None = None
        self._steps: dict[str, StepProgress] = {}
        self._running: list[tuple[str, bool]] = []  # (name, background) of the steps running now
        self._failed_by: list[tuple[BaseException, str]] = []  # each step's failure, as raised
        for entry in plan:
            self._plan(entry)

    def progress(self) -> PipelineProgress:
        return PipelineProgress(
            status=self.status,
            commit_sha=self.commit_sha,
            steps=list(self._steps.values()),
            clusters_up=list(self.clusters_up),
            variants=list(self.variants),
            heading=self.heading,
        )

    @contextlib.asynccontextmanager
    async def step(
        self, name: str, summary: str = "", cluster: str = "", background: bool = False
    ) -> AsyncIterator[StepProgress]:
        """Keep the progress query and the Web UI's current details in step with step `name`.

        The run's current step (PipelineStep) is the latest step started of those running, a
        `background` one (alongside the pipeline's main line) only while no other runs."""
        step = self._steps.get(name) or self.add(name, summary or name, cluster)
        if step.summary == name:  # planned by name: what it does is known once it starts
            step.summary, step.cluster_name = summary or name, cluster or step.cluster_name
        step.status = "running"
        self._running.append((step.name, background))
        self._show_current_step()
        self.redraw()
        started = workflow.now()
        try:
            yield step
            step.status = "succeeded"
        except BaseException as err:
            if err is self.stopped_by or is_cancellation(err):
                # Stopped by a cancel, or by background work that failed (its own step says why).
                step.status, step.error = "cancelled", "Cancelled"
                raise
            step.status = "failed"
            step.error = str(err.cause if isinstance(err, ActivityError) and err.cause else err)
            self._failed_by.append((err, step.name))
            job = failed_job(err)
            if job:
                step.job_id, step.job_status = job
            raise
        finally:
            took = workflow.now() - started
            step.duration_seconds = round(took.total_seconds(), 3)
            metrics.step_ended(step.name, step.status, took)
            self._running.remove((step.name, background))
            self._show_current_step()
            self.redraw()

    def _show_current_step(self) -> None:
        main_line = [name for name, background in self._running if not background]
        running = main_line or [name for name, _ in self._running]
        if running:  # none: the step that just ended shows until the next starts
            self.search.step(running[-1])

    def set_commit(self, sha: str) -> None:
        self.commit_sha = sha
        self.search.commit(sha)

    def ended(self, outcome: str) -> None:
        """The run is over: its outcome shows, and is counted; a planned step that never
        started shows as skipped, never as pending forever."""
        self.status = outcome
        for step in self._steps.values():
            if step.status == "pending":
                step.status = "skipped"
        self.search.ended(outcome)
        metrics.run_ended(outcome)
        self.redraw()

    def skip(self, name: str, why: str) -> None:
        """Step `name` will not run: `why` (a condition that did not hold, a step it needs that
        did not succeed)."""
        step = self._steps.get(name) or self.add(name, name)
        step.status, step.error = "skipped", why
        self.redraw()

    def add(self, name: str, summary: str, cluster: str = "") -> StepProgress:
        self._steps[name] = StepProgress(name, summary, cluster_name=cluster)
        return self._steps[name]

    def failure(self, err: ActivityError) -> ApplicationError:
        """The run's failure: names the step, cluster and job; carries the job's log tail."""
        # The step this error failed (steps may fail in parallel), else the first that failed.
        failed = next((name for error, name in self._failed_by if error is err), None)
        step = (
            self._steps[failed]
            if failed
            else next((s for s in self._steps.values() if s.status == "failed"), None)
        )
        where = f"step '{step.name}'" if step else "a step"
        if step and step.cluster_name:
            where += f" on cluster {step.cluster_name}"
        cause = err.cause
        if isinstance(cause, TimeoutError):
            return ApplicationError(
                f"{where} timed out ({cause.type.name if cause.type else ''})",
                type="StepTimedOut",
                non_retryable=True,
            )
        if isinstance(cause, ApplicationError):
            details = list(cause.details)
            tail = details[0].get("log_tail", "") if details and isinstance(details[0], dict) else ""
            said_already = f"{step.name} on {step.cluster_name}: " if step else ""
            message = f"{where} failed: {cause.message.removeprefix(said_already)}"
            if tail:
                message += "\nlast log lines:\n" + "\n".join(tail.splitlines()[-10:])
            return ApplicationError(message, *details, type=cause.type, non_retryable=True)
        return ApplicationError(f"{where} failed: {err.cause or err}", type="StepFailed", non_retryable=True)

    def redraw(self) -> None:
        """The Web UI's current details: the status, one line per step and variant, clusters up."""
        lines = [f"**{self.status}** — commit `{self.commit_sha[:12] or '?'}`", ""]
        if self.heading:
            lines += [self.heading, ""]
        for step in self._steps.values():
            job = f" — job {step.job_id}" if step.job_id is not None else ""
            if step.job_id is not None and step.summary.startswith("managed"):
                recoveries = f", {step.recoveries} recover{'y' if step.recoveries == 1 else 'ies'}"
                job = f" — managed job {step.job_id} {step.job_status}{recoveries if step.recoveries else ''}"
            took = f" ({step.duration_seconds:.0f}s)" if step.duration_seconds is not None else ""
            summary = as_code(step.summary, step.cluster_name)
            lines.append(f"{STATUS_MARKS.get(step.status, '')} {summary}{job}{took}")
            if step.status == "retrying":
                lines.append(f"  **retrying**: {step.error[:300]}")
        if self.variants:
            lines += ["", "variants:"]
            for variant in self.variants:
                reported = ", ".join(f"{k}={v:g}" for k, v in variant.metrics.items())
                params = " ".join(f"{k}={v}" for k, v in variant.params.items())
                mark = STATUS_MARKS.get(variant.status, "")
                lines.append(f"{mark} {variant.variant_id} {params} {reported}".rstrip())
        if self.clusters_up:
            lines += ["", "clusters up: " + ", ".join(f"`{name}`" for name in self.clusters_up)]
        workflow.set_current_details("\n".join(lines))

    def _plan(self, entry: str) -> None:
        match entry.split():
            case [step] if step == FETCH_TASKS:
                self.add(FETCH_TASKS, self.fetch_summary)
            case [step]:
                self.add(step, step)
            case ["launch" | "exec" as verb, step] | ["launch" | "exec" as verb, step, "on", _]:
                cluster = f"{self.prefix}-{entry.split()[-1]}"
                self.add(step, f"{verb} {step} on {cluster}", cluster)
            case ["managed", step]:
                self.add(step, f"managed job {step}")
            case ["provision" | "down" as verb, role]:
                cluster = f"{self.prefix}-{role}"
                self.add(f"{role}-{verb}", f"{verb} {cluster}", cluster)
            case _:
                raise ValueError(
                    f"plan entry {entry!r}: a step's name (no spaces), e.g. 'train' or 'train-down'"
                )


def as_code(text: str, name: str) -> str:
    """`text` with `name` in a code span: the Web UI renders details as Markdown, which would
    show a prefix's `--` as a dash a user cannot copy back."""
    return text.replace(name, f"`{name}`") if name else text


def is_cancellation(err: BaseException) -> bool:
    return isinstance(err, asyncio.CancelledError) or (
        isinstance(err, ActivityError) and is_cancelled_exception(err)
    )


def failed_job(err: BaseException) -> tuple[int, str] | None:
    """The job id and status a failed job step's error carries (its StepResult), if any."""
    cause = err.cause if isinstance(err, ActivityError) else None
    details = list(cause.details) if isinstance(cause, ApplicationError) else []
    result = details[0] if details and isinstance(details[0], dict) else {}
    if isinstance(result.get("job_id"), int):
        return result["job_id"], str(result.get("job_status", ""))
    return None
