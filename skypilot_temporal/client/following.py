"""Following a run from a terminal: one line per step and per sweep variant as it starts and
ends, Temporal outages waited out, and how the run ended (a sweep: its table of variants).

Plain text only, so the output reads the same in a terminal and in a file.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
from collections.abc import Awaitable, Callable, Collection
from datetime import timedelta
from typing import Any, TextIO, TypeVar

from temporalio.api.enums.v1 import EventType
from temporalio.client import (
    WorkflowExecutionDescription,
    WorkflowExecutionStatus,
    WorkflowFailureError,
    WorkflowHandle,
)
from temporalio.converter import DataConverter
from temporalio.exceptions import ApplicationError, CancelledError, TerminatedError
from temporalio.exceptions import TimeoutError as WorkflowTimeoutError
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError, RPCStatusCode

from skypilot_temporal.payloads import (
    ASCII_STATUS_MARKS,
    STATUS_MARKS,
    PipelineProgress,
    PipelineResult,
    StepProgress,
    SweepResult,
    VariantProgress,
)

# The starter asks a run for its progress when its history shows it may have changed (a workflow
# task completed, or the run ended), at most this often, and at least every SAFETY_POLL_SECONDS.
MIN_POLL_SECONDS = 0.2
SAFETY_POLL_SECONDS = 15.0
WAKE_EVENTS = frozenset(
    {
        EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_COMPLETED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_FAILED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CANCELED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TERMINATED,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_TIMED_OUT,
        EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW,
    }
)
RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS = 1.0, 10.0
# A query waits for a worker to answer it; with no worker running it would wait ~30 s per poll.
QUERY_TIMEOUT = timedelta(seconds=10)
# What the server not answering looks like. Besides UNAVAILABLE, tonic reports a connection that
# dropped mid-call as UNKNOWN (or CANCELLED) "transport error".
OUTAGE_CODES = frozenset({RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED})
TRANSPORT_CODES = frozenset({RPCStatusCode.UNKNOWN, RPCStatusCode.CANCELLED})
TRANSPORT_WORDS = ("transport", "connect", "broken pipe", "h2 protocol")

T = TypeVar("T")
RunHandle = WorkflowHandle[Any, Any]


def status_marks(stream: TextIO) -> dict[str, str]:
    """The marks of step lines, in ASCII when the output can't encode the symbols."""
    try:
        "".join(STATUS_MARKS.values()).encode(stream.encoding or "ascii")
        return STATUS_MARKS
    except (UnicodeEncodeError, LookupError):
        return ASCII_STATUS_MARKS


def step_line(step: StepProgress, marks: dict[str, str]) -> str:
    """`▶ name summary` when a step starts; `✓ name status cluster job duration` when it ends."""
    if step.status == "running":
        return f"  {marks['running']} {step.name:<16} {step.summary}"
    parts = [f"{step.status:<9}"]
    if step.cluster_name:
        parts.append(f"cluster {step.cluster_name}")
    if step.job_id is not None:
        failed = step.job_status if step.job_status not in ("", "SUCCEEDED") else ""
        managed = "managed " if step.summary.startswith("managed") else ""
        parts.append(f"{managed}job {step.job_id} {failed}".rstrip())
    if step.recoveries:
        parts.append(recoveries_text(step.recoveries))
    if step.duration_seconds is not None:
        parts.append(f"{step.duration_seconds:.0f}s")
    return f"  {marks.get(step.status, marks['failed'])} {step.name:<16} " + "  ".join(parts)


def recoveries_text(count: int) -> str:
    return f"{count} recovery" if count == 1 else f"{count} recoveries"


def variant_line(variant: VariantProgress, marks: dict[str, str]) -> str:
    """`▶ v1 LR=0.1 (workflow ID)` when a sweep variant starts; its status and metrics when it ends."""
    params = " ".join(f"{k}={v}" for k, v in variant.params.items())
    if variant.status == "running":
        return (
            f"  {marks['running']} variant {variant.variant_id:<5} {params}  (workflow {variant.workflow_id})"
        )
    parts = [f"{variant.status:<9}", *(f"{k}={v:g}" for k, v in variant.metrics.items())]
    if variant.duration_seconds is not None:
        parts.append(f"{variant.duration_seconds:.0f}s")
    if variant.error:
        parts.append(variant.error.splitlines()[0][:200])
    mark = marks.get(variant.status, marks["failed"])
    return f"  {mark} variant {variant.variant_id:<5} {params}  " + "  ".join(parts)


def quiet_runtime() -> Runtime:
    """A Temporal runtime whose core logs errors only.

    The default one logs a WARN line for each retried RPC: a flood while Temporal is down, which
    the starter reports in one line of its own instead.
    """
    quiet = TelemetryFilter(core_level="ERROR", other_level="ERROR")
    return Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=quiet)))


def is_outage(err: RPCError, codes: Collection[RPCStatusCode] = OUTAGE_CODES) -> bool:
    """Whether `err` means the server did not answer (down, unreachable, connection dropped)."""
    if err.status in codes:
        return True
    message = str(err).lower()
    return err.status in TRANSPORT_CODES and any(word in message for word in TRANSPORT_WORDS)


class Reconnecting:
    """Calls to Temporal that wait out an outage instead of failing: the run goes on without us."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def call(
        self, request: Callable[[], Awaitable[T]], outage_codes: Collection[RPCStatusCode] = OUTAGE_CODES
    ) -> T:
        """`await request()`, retried with backoff while the server does not answer.

        One line when the connection is lost and one when it is back, never one per retry.
        """
        delay, lost = RECONNECT_MIN_SECONDS, False
        while True:
            try:
                answer = await request()
            except RPCError as err:
                if not is_outage(err, outage_codes):
                    raise
                if not lost:
                    lost = True
                    print(
                        f"Lost connection to Temporal at {self.address}: reconnecting (the run goes on)...",
                        file=sys.stderr,
                        flush=True,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            if lost:
                print("Reconnected to Temporal.", file=sys.stderr, flush=True)
            return answer


async def query_progress(handle: RunHandle, temporal: Reconnecting) -> PipelineProgress | None:
    """The run's progress query; None when no worker answers it (none running, or not yet).

    A failed query alone never reports a lost connection: a busy server also answers a query no
    worker takes with UNAVAILABLE. The describe call decides: it waits out a real outage (saying
    so), and then the query is asked once more.
    """
    for attempt in range(2):
        try:
            return await handle.query("progress", result_type=PipelineProgress, rpc_timeout=QUERY_TIMEOUT)
        except RPCError as err:
            if attempt or not is_outage(err, {RPCStatusCode.UNAVAILABLE}):
                return None
            await temporal.call(handle.describe)
    return None


def print_new_steps(
    progress: PipelineProgress | None, printed: dict[str, str], marks: dict[str, str]
) -> None:
    """Print the step starts and ends not printed yet; `printed` maps summary -> last status."""
    if progress and progress.heading and "heading" not in printed:
        printed["heading"] = progress.heading
        print(progress.heading.replace("`", ""), flush=True)
    for step in progress.steps if progress else []:
        if step.status in ("pending", "skipped") or printed.get(step.summary) == step.status:
            continue
        if step.status != "running" and step.summary not in printed:  # started and ended
            print(step_line(dataclasses.replace(step, status="running"), marks), flush=True)
        printed[step.summary] = step.status
        print(step_line(step, marks), flush=True)
    for variant in progress.variants if progress else []:
        key = f"variant {variant.variant_id}"
        if variant.status == "pending" or printed.get(key) == variant.status:
            continue
        if variant.status != "running" and key not in printed:
            print(variant_line(dataclasses.replace(variant, status="running"), marks), flush=True)
        printed[key] = variant.status
        print(variant_line(variant, marks), flush=True)


async def watch_history(handle: RunHandle, changed: asyncio.Event) -> None:
    """Set `changed` whenever the run's history records a workflow task completed or the run's
    end: the only moments its progress can change. A long poll on the server: no worker is
    involved and nothing is sent while the run waits on a step. Runs until cancelled; an outage
    or a new run (a reset) starts it over."""
    while True:
        try:
            async for event in handle.fetch_history_events(wait_new_event=True):
                if event.event_type in WAKE_EVENTS:
                    changed.set()
        except Exception:  # a hint only: the follow loop's own calls report an outage
            pass
        changed.set()
        await asyncio.sleep(RECONNECT_MIN_SECONDS)


async def print_pauses(
    handle: RunHandle,
    description: WorkflowExecutionDescription,
    progress: PipelineProgress | None,
    printed: dict[str, str],
    marks: dict[str, str],
    converter: DataConverter,
) -> None:
    """A line when an operator pauses a step (`temporal activity pause`, the Web UI) and when it
    resumes. The workflow is not told of a pause, so its progress query cannot say it: the run's
    pending activities do, and its history names each one's step."""
    pending = description.raw_description.pending_activities
    paused = {a.activity_id for a in pending if a.paused}
    known = {key.removeprefix("paused "): name for key, name in printed.items() if key.startswith("paused ")}
    for activity_id in known.keys() - paused:
        del printed[f"paused {activity_id}"]
        if any(a.activity_id == activity_id for a in pending):  # else it ended: its own line says how
            print(f"  {marks['running']} {known[activity_id]:<16} resumed", flush=True)
    if not paused - known.keys():
        return
    names = {step.summary: step.name for step in progress.steps} if progress else {}
    try:  # each newly paused activity's scheduled event: its step's summary
        scheduled = [
            event
            async for event in handle.fetch_history_events()
            if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
            and event.activity_task_scheduled_event_attributes.activity_id in paused - known.keys()
        ]
    except RPCError:
        return  # a hint only: the next poll asks again, and the follow loop reports an outage
    for event in scheduled:
        activity_id = event.activity_task_scheduled_event_attributes.activity_id
        name = event.activity_task_scheduled_event_attributes.activity_type.name
        if event.user_metadata.HasField("summary"):
            [summary] = await converter.decode([event.user_metadata.summary], [str])
            name = names.get(summary, name)
        printed[f"paused {activity_id}"] = name
        print(
            f"  {marks['paused']} {name:<16} paused by an operator: its SkyPilot job keeps running "
            f"(resume: temporal activity unpause -w {handle.id} -a {activity_id})",
            flush=True,
        )


async def follow(
    handle: RunHandle, temporal: Reconnecting, converter: DataConverter = DataConverter.default
) -> PipelineProgress | None:
    """Print one line per step as it starts and ends (cleanup included) until the run ends.

    Plain text only, so the output reads the same in a terminal and in a file. Returns what the
    ended run's progress query reports (None: no answer). The run is queried when its history
    moves, not on a timer: a query is a workflow task on the worker. `converter`: the client's
    (it reads a paused step's name from the history).
    """
    marks = status_marks(sys.stdout)
    printed: dict[str, str] = {}  # summaries are unique
    changed = asyncio.Event()
    watcher = asyncio.create_task(watch_history(handle, changed))
    try:
        while True:
            changed.clear()
            description = await temporal.call(handle.describe)
            # Queried after the describe, so the progress of an ended run is its final state.
            progress = await query_progress(handle, temporal)
            print_new_steps(progress, printed, marks)
            await print_pauses(handle, description, progress, printed, marks, converter)
            if description.status not in (None, WorkflowExecutionStatus.RUNNING):
                return progress
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), SAFETY_POLL_SECONDS)
            await asyncio.sleep(MIN_POLL_SECONDS)
    finally:
        watcher.cancel()


def print_sweep_table(workflow_id: str, result: SweepResult, url: str) -> None:
    """The sweep's variants, one row each: parameters, status, metrics; the best one starred."""
    best = result.best.variant_id if result.best else None
    print(
        f"Sweep {workflow_id} succeeded (commit {result.commit_sha[:12]}); "
        f"best by {result.select}: {best or 'none (no variant reported the metric)'}"
    )
    params = list(dict.fromkeys(k for v in result.variants for k in v.params))
    select_metric = result.select.rpartition(":")[0]
    metrics = list(dict.fromkeys([select_metric, *(k for v in result.variants for k in v.metrics)]))
    header = ["variant", *params, "status", *metrics, "time"]
    rows = [
        [
            ("* " if v.variant_id == best else "  ") + v.variant_id,
            *(v.params.get(k, "") for k in params),
            v.status,
            *(f"{v.metrics[k]:g}" if k in v.metrics else "-" for k in metrics),
            f"{v.duration_seconds:.0f}s" if v.duration_seconds is not None else "-",
        ]
        for v in result.variants
    ]
    widths = [
        max(len(row[i]) for row in [["  " + header[0], *header[1:]], *rows]) for i in range(len(header))
    ]
    for row in [["  " + header[0], *header[1:]], *rows]:
        print("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())
    print(f"  Web UI: {url}")


def print_success(workflow_id: str, result: PipelineResult, url: str) -> None:
    print(f"Workflow {workflow_id} succeeded (commit {result.commit_sha[:12]})")
    width = max([10, *(len(step.step) for step in result.steps)])
    for step in result.steps:
        metrics = "".join(f"  {k}={v:g}" for k, v in step.metrics.items())
        where = step.cluster_name or "managed"
        recovered = f" after {recoveries_text(step.recoveries)}" if step.recoveries else ""
        print(
            f"  {step.step:<{width}} {where}: job {step.job_id} {step.job_status}{recovered} "
            f"in {step.duration_seconds:.0f}s{metrics}"
        )
    if result.steps:  # the last step's last lines (the six steps': eval's)
        last = result.steps[-1]
        for line in last.log_tail.splitlines()[-3:]:
            print(f"  {last.step}> {line}")
    print(f"  Web UI: {url}")


def print_failure(workflow_id: str, message: str, url: str) -> None:
    first_line, *log_lines = message.splitlines()
    print(f"Workflow {workflow_id} {first_line}", file=sys.stderr)
    for line in log_lines:  # "last log lines:" and the failing job's log tail
        print(f"  {line}" if line == "last log lines:" else f"    {line}", file=sys.stderr)
    print(f"  Web UI: {url}", file=sys.stderr)


def end_message(err: WorkflowFailureError, progress: PipelineProgress | None) -> str:
    """How the run ended, its first line followed by what its progress query says of clusters."""
    cause = err.cause
    if isinstance(cause, CancelledError):
        outcome = "was cancelled"
    elif isinstance(cause, TerminatedError):
        outcome = "was terminated"
    elif isinstance(cause, WorkflowTimeoutError):
        outcome = "timed out"
    elif isinstance(cause, ApplicationError):
        outcome = f"failed: {cause.message}"
    else:
        outcome = f"failed: {cause or err}"
    first_line, *rest = outcome.splitlines()
    return "\n".join([first_line + clusters_note(cause, progress), *rest])


def clusters_note(cause: BaseException | None, progress: PipelineProgress | None) -> str:
    """Which clusters the ended run reports up: never a cleanup the workflow did not report."""
    if progress is None:
        if isinstance(cause, TerminatedError):
            return ": no cleanup ran; the reaper removes its clusters (check `sky status`)"
        return "; cleanup state unknown"
    if progress.clusters_up:
        return f"; clusters still up: {', '.join(progress.clusters_up)} (check `sky status`)"
    still_running = [v.variant_id for v in progress.variants if v.status == "running"]
    if still_running:  # a terminated sweep: each variant gets a cancel and cleans up by itself
        return f"; variants {', '.join(still_running)} are still cleaning up (check `sky status`)"
    if isinstance(cause, (CancelledError, TerminatedError, WorkflowTimeoutError)):
        return "; no cluster left"
    return ""  # a failed run names its clusters only when some are up
