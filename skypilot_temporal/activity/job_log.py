"""The log of a SkyPilot request or job, as the worker reads it: `JobLogSink`.

The SDK writes a job's output into the sink; the sink logs the lines (a bounded share of them),
keeps a bounded tail for the step's result, shows the last line in the heartbeat, hides
secrets, and picks up what the job reports: its task's exit code, and its metrics.
`drain_log` feeds a job's log stream into a sink and stops when told to, even while the job is
silent: a step that lost its attempt never leaves a thread following the job to its end.

A job reports a metric with a line `METRIC <name>=<number>` (anywhere in the line: SkyPilot
prefixes job output, e.g. `(eval, pid=1234) METRIC eval_accuracy=0.91`); the last value of a
name wins, at most MAX_METRICS names are kept.
"""

from __future__ import annotations

import collections
import math
import re
import threading
import time
from collections.abc import Callable, Iterator

from skypilot_temporal.errors import strip_ansi
from skypilot_temporal.payloads import JobProgress
from skypilot_temporal.trust.redaction import Redactor

# Payloads stay far below Temporal's 2 MB limit whatever a job prints.
LOG_TAIL_BYTES = 4096
# The worker's log gets at most this many lines of one job at once, refilled per second;
# SkyPilot keeps the job's whole log (`sky logs CLUSTER JOB`).
LOG_LINES_BURST, LOG_LINES_PER_SECOND = 200, 5.0
MAX_LOGGED_LINE_CHARS = 2000
# A line still being written (no newline yet) is kept up to this size, so the sink stays linear.
MAX_PARTIAL_LINE_CHARS = 64 * 1024
MAX_METRICS = 50

# SkyPilot's report of the task's own exit codes, e.g. "Job 1 failed with return code list: [3]",
# or of its setup's: "Job 1's setup failed with return code 3 (pid=9047)" (Slurm), "Job 1's setup
# failed. Failed workers: (pid=9047, returncode=3)" (VMs and Kubernetes).
_RETURN_CODES = re.compile(
    r"return code list: \[([-\d, ]+)\]|setup failed with return code (-?\d+)"
    r"|setup failed\. Failed workers: \(pid=\d+, returncode=(-?\d+)\)"
)
# SkyPilot's last line of a job's log stream: "✓ Job finished (status: FAILED_SETUP)."
_JOB_FINISHED = re.compile(r"✓ Job finished \(status: ([A-Z_]+)\)\.")
_METRIC = re.compile(r"\bMETRIC ([A-Za-z_][A-Za-z0-9_.-]{0,63})=(\S+)")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


class JobLogSink:
    """A write()-able stream for the SDK: logs lines, keeps a bounded tail, hides secrets.

    It must never raise: the SDK treats an exception from its output stream as a transient
    error and retries the stream forever. It is thread-safe: a request's log stream may still
    be ending in the background while the job's log starts. The worker's log gets a bounded
    share of a chatty job (a burst, then a few lines a second, with a count of what was
    skipped); the tail, the heartbeat and the metrics see every line.
    """

    def __init__(
        self,
        log_line: Callable[[str], None],
        secrets: list[str],
        progress: JobProgress,
        max_tail_bytes: int = LOG_TAIL_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log_line = log_line
        self.redact = Redactor(secrets)
        self._progress = progress
        self._max_tail_bytes = max_tail_bytes
        self._partial = ""
        self._tail: collections.deque[str] = collections.deque()
        self._tail_bytes = 0
        self._clock = clock
        self._log_budget = float(LOG_LINES_BURST)
        self._budget_at = clock()
        self.lines_not_logged = 0
        self.task_exit_code: int | None = None
        self.metrics: dict[str, float] = {}
        self._lock = threading.RLock()

    def write(self, text: str) -> int:
        with self._lock:
            return self._write(text)

    def _write(self, text: str) -> int:
        try:
            if "\n" not in text:
                self._partial = _last_carriage_segment(self._partial + text)[:MAX_PARTIAL_LINE_CHARS]
                return len(text)
            first, *middle, rest = (self._partial + text).split("\n")
            for line in (first, *middle):
                self._add_line(line)
            self._partial = _last_carriage_segment(rest)[:MAX_PARTIAL_LINE_CHARS]
            return len(text)
        except Exception:
            return 0

    def flush(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        try:
            if self._partial:
                self._add_line(self._partial)
                self._partial = ""
        except Exception:
            pass

    def clear_tail(self) -> None:
        """Forget the tail and the metrics: the job's log is about to be read from its start."""
        with self._lock:
            self._flush()
            self._tail.clear()
            self._tail_bytes = 0
            self.metrics.clear()

    def tail(self) -> str:
        with self._lock:
            self._flush()
            if self.lines_not_logged:
                self._log_line(
                    f"({self.lines_not_logged} more lines not logged here; "
                    "SkyPilot keeps the job's whole log)"
                )
                self.lines_not_logged = 0
            return "\n".join(self._tail)

    def _add_line(self, raw: str) -> None:
        line = self.redact(strip_ansi(raw).rstrip("\r").split("\r")[-1].rstrip())
        if not line:
            return
        self._log(line)
        if codes := _RETURN_CODES.search(line):
            listed = codes.group(1) or codes.group(2) or codes.group(3)
            self.task_exit_code = next((int(c) for c in listed.split(",") if int(c)), 0)
        if "METRIC " in line:
            add_metrics(self.metrics, line)
        self._progress.last_log_line = line[:200]
        line = line[: self._max_tail_bytes]
        self._tail.append(line)
        self._tail_bytes += len(line) + 1
        while self._tail_bytes > self._max_tail_bytes and len(self._tail) > 1:
            self._tail_bytes -= len(self._tail.popleft()) + 1

    def _log(self, line: str) -> None:
        now = self._clock()
        self._log_budget = min(
            float(LOG_LINES_BURST), self._log_budget + (now - self._budget_at) * LOG_LINES_PER_SECOND
        )
        self._budget_at = now
        if self._log_budget < 1:
            self.lines_not_logged += 1
            return
        self._log_budget -= 1
        if self.lines_not_logged:
            self._log_line(
                f"({self.lines_not_logged} lines not logged here; SkyPilot keeps the job's whole log)"
            )
            self.lines_not_logged = 0
        if len(line) > MAX_LOGGED_LINE_CHARS:
            line = f"{line[:MAX_LOGGED_LINE_CHARS]}... ({len(line)} chars)"
        self._log_line(line)


def add_metrics(metrics: dict[str, float], line: str) -> None:
    """Add the `METRIC <name>=<number>` reports in `line` (ANSI codes already stripped) to
    `metrics`: a finite number only, the last value of a name wins, at most MAX_METRICS names."""
    for match in _METRIC.finditer(line):
        name, value = match.groups()
        if not _NUMBER.fullmatch(value) or (name not in metrics and len(metrics) >= MAX_METRICS):
            continue
        number = float(value)
        if math.isfinite(number):  # 1e999 is a number too large for a float
            metrics[name] = number


def _last_carriage_segment(text: str) -> str:
    """A progress bar redraws its line with \\r: only the text after the last one is kept."""
    cut = text.rfind("\r", 0, len(text) - 1) if len(text) > 1 else -1
    return text[cut + 1 :] if cut >= 0 else text


def drain_log(
    open_stream: Callable[[], Iterator[str | None]], sink: JobLogSink, stop: threading.Event
) -> str:
    """Write a job's log stream into `sink` until the stream ends or `stop` is set (blocking: run
    it in a pool thread, and set `stop` when the step no longer wants the log). Returns the job's
    final status when SkyPilot's own "Job finished (status: ...)" line ended the stream ("" if
    another line did: a job's output cannot pass for it unless nothing followed it).

    `stop` is checked at every line, and at every heartbeat (None) the API server sends while
    the job prints nothing (every 30 s), so a stopped thread ends soon even on a silent job;
    closing the stream closes its HTTP connection and the server's side of it.
    """
    status = ""
    lines = open_stream()
    try:
        for line in lines:
            if stop.is_set():
                return ""
            if line is None:
                continue
            sink.write(line)
            finished = _JOB_FINISHED.match(strip_ansi(line).lstrip()) if "Job finished" in line else None
            status = finished.group(1) if finished else ""
    finally:
        close = getattr(lines, "close", None)
        if close is not None:
            close()
    return status
