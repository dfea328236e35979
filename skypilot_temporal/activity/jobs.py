"""SkyPilot job mechanics inside a Temporal activity: find a step's job or submit it, follow it
to its end, cancel it, tear clusters down, ride out API server outages.

`SkyPilotJobs` reaches SkyPilot only through the `SkyPilotSDK` seam, and makes every blocking
SDK call through `blocking` (the worker's bounded thread pool): the event loop only heartbeats
and waits. Its methods run in an activity's context: they heartbeat, read the attempt and the
earlier attempt's heartbeat details, and log with the activity's logger. A retry re-attaches to
the job of the attempt before it instead of submitting a second one.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import re
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, TypeVar

from temporalio import activity
from temporalio.exceptions import ApplicationError

from skypilot_temporal.activity.job_log import JobLogSink, drain_log
from skypilot_temporal.activity.sdk import (
    RequestId,
    SkyPilotSDK,
    record_field,
    request_task_names,
    status_name,
)
from skypilot_temporal.errors import (
    clean_message,
    is_named,
    is_server_unreachable,
    masked,
    refuse,
    to_application_error,
)
from skypilot_temporal.naming import OWNER_LABEL
from skypilot_temporal.operations import metrics
from skypilot_temporal.payloads import JobProgress, TaskSpec
from skypilot_temporal.trust.redaction import redact_credentials

T = TypeVar("T")
# Runs a blocking SDK call in the worker's bounded thread pool and returns its result.
Blocking = Callable[..., Awaitable[Any]]
# True while a step cancels its work on SkyPilot: its SDK calls then run in the worker's cancel
# pool, which steps following long jobs cannot fill, so the cancel lands within its window. A task
# started inside a cancel inherits it: start none that outlives the cancel.
cancelling: contextvars.ContextVar[bool] = contextvars.ContextVar("cancelling", default=False)

DEFAULT_HEARTBEAT_INTERVAL_SECONDS = 5.0
# How long a cancelled activity waits for SkyPilot to confirm the cancel before giving up.
CANCEL_CONFIRM_TIMEOUT_SECONDS = 60.0
# How long a step waits for an unreachable SkyPilot API server before the attempt fails.
DEFAULT_OUTAGE_BUDGET_SECONDS = 20 * 60.0
OUTAGE_POLL_MAX_SECONDS = 15.0

# tail_logs exit codes (sky.exceptions.JobExitCode), reported for a job's final status.
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_NOT_FOUND, EXIT_CANCELLED = 0, 100, 102, 103
TERMINAL_JOB_STATUSES = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_DRIVER", "CANCELLED"}
EXIT_CODES = {"SUCCEEDED": EXIT_SUCCEEDED, "CANCELLED": EXIT_CANCELLED, "NOT_FOUND": EXIT_NOT_FOUND}
# A job's log stream that ended while the job still runs (an API server restart) is opened
# again after this pause.
REFOLLOW_PAUSE_SECONDS = 1.0
# WAITING: parked between tries (a retry backoff, a pause), still able to create the cluster.
IN_FLIGHT_REQUEST_STATUSES = {"PENDING", "WAITING", "RUNNING"}
SUBMIT_REQUEST_NAMES = {"sky.launch", "sky.exec"}


@dataclasses.dataclass
class JobOutcome:
    job_id: int | None  # None: the launch submitted no job (a provision without setup)
    status: str  # the job's final status; "UP" when there is no job
    exit_code: int | None  # the task's own exit code when SkyPilot printed it, else tail_logs'
    # This attempt found no cluster and launched it: no earlier run's job can be on it.
    created_cluster: bool = False


class SkyPilotJobs:
    """The SkyPilot side of the pipeline's steps, over the SDK seam."""

    def __init__(
        self,
        sky_sdk: SkyPilotSDK,
        blocking: Blocking,
        heartbeat_interval_seconds: float = DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
        outage_budget_seconds: float = DEFAULT_OUTAGE_BUDGET_SECONDS,
    ) -> None:
        self._sky = sky_sdk
        self._blocking = blocking
        self._heartbeat_interval = heartbeat_interval_seconds
        self._outage_budget = outage_budget_seconds

    @contextlib.asynccontextmanager
    async def step(
        self,
        progress: JobProgress,
        what: str,
        cancel_skypilot: bool = True,
        always_retry: bool = False,
        redact: Callable[[str], str] = redact_credentials,
        cancel_with: Callable[[JobProgress], Awaitable[None]] | None = None,
    ) -> AsyncIterator[None]:
        """Around every SkyPilot step: heartbeat `progress`; on a cancel the workflow asked for,
        cancel the SkyPilot side too (the cluster's request and job, or `cancel_with`); turn SDK
        exceptions into classified ApplicationErrors with secrets masked (the original exception
        is not chained: its text could hold them)."""

        async def beat() -> None:
            while True:
                activity.heartbeat(dataclasses.asdict(progress))
                await asyncio.sleep(self._heartbeat_interval)

        heartbeat_task = asyncio.create_task(beat())
        try:
            yield
        except asyncio.CancelledError:
            if cancel_skypilot:
                await self._cancel_on_skypilot_if_requested(progress, cancel_with or self._cancel_cluster_job)
            raise
        except Exception as exc:
            raise masked(to_application_error(exc, what, always_retry), redact) from None
        finally:
            heartbeat_task.cancel()

    async def run(
        self,
        task: Any,
        cluster: str,
        spec: TaskSpec,
        submit: Callable[[Any], RequestId],
        progress: JobProgress,
        sink: JobLogSink,
        submit_phase: str = "submitting",
        expect_job: bool = True,
        cluster_is_this_runs: bool = False,
        owner: str = "",
    ) -> JobOutcome:
        """Find this step's job on `cluster` or submit `task` with `submit`; follow the job to
        its end. `cluster_is_this_runs`: this workflow run launched the cluster. `owner`: the
        cluster's OWNER_LABEL must be this (or absent), else the step refuses to touch it."""
        passes = 0
        created_cluster = False

        async def find_or_submit() -> int | None:
            # Looked for on every attempt (and after an outage): a retry, a reset or a new run
            # of the same workflow id never puts a second job for this step on the cluster.
            nonlocal passes, created_cluster
            passes += 1
            info = activity.info()
            if passes == 1 and info.attempt == 1 and not info.heartbeat_details:
                job_id, created_cluster = await self._fresh_start_look(
                    cluster, spec, progress, cluster_is_this_runs, owner
                )
            else:
                job_id = await self._reattach(cluster, spec, progress, owner)
            if job_id is not None:
                if passes == 1:  # not this attempt finding its own job again after an outage
                    metrics.job_reattached("cluster")
                return job_id
            progress.phase = submit_phase
            return await self._submit(task, cluster, submit, progress, sink, expect_job)

        job_id = await self.riding_outages(progress, find_or_submit)
        if job_id is None:
            return JobOutcome(job_id=None, status="UP", exit_code=None, created_cluster=created_cluster)
        progress.job_id = job_id
        progress.phase = "running"
        status = await self.riding_outages(progress, lambda: self._follow_job(cluster, job_id, sink))
        exit_code = EXIT_CODES.get(status, EXIT_FAILED)
        if sink.task_exit_code is not None and status != "CANCELLED":
            exit_code = sink.task_exit_code
        return JobOutcome(job_id=job_id, status=status, exit_code=exit_code, created_cluster=created_cluster)

    async def tear_down(
        self, cluster: str, job_name_prefix: str, progress: JobProgress, sink: JobLogSink, owner: str = ""
    ) -> str:
        """Tear `cluster` down: "TERMINATED", "ALREADY_GONE" when there is no such cluster, or
        "NOT_OURS" when `owner` is given and the cluster carries another workflow's label."""

        async def down() -> str:
            if owner and await self._owned_by_another(cluster, owner):
                activity.logger.warning("Not tearing down %s: another workflow launched it", cluster)
                return "NOT_OURS"
            # A launch abandoned by a timed-out or dead attempt of this run could still create
            # the cluster after we tear it down: cancel the run's in-flight requests on it first.
            await self._cancel_own_requests(cluster, job_name_prefix)
            request_id = await self._blocking(self._sky.down, cluster)
            progress.request_id = str(request_id)
            try:
                await self.request_result(request_id, sink)
            except Exception as exc:
                if not is_named(exc, "ClusterDoesNotExist"):
                    raise
                return "ALREADY_GONE"
            return "TERMINATED"

        try:
            return await self.riding_outages(progress, down)
        except Exception as exc:
            if not is_named(exc, "ClusterDoesNotExist"):
                raise
            return "ALREADY_GONE"

    async def request_result(self, request_id: RequestId, sink: JobLogSink) -> Any:
        """The result of request `request_id`, its log streaming into `sink` meanwhile.

        The API server's log stream notices that a long request (launch, exec, down) ended on a
        1 s poll, its /api/get on a 0.1 s one: the result comes from whichever call ends first.
        `get` sends nothing until the request ends (a proxy's idle timeout can cut it) while the
        stream sends heartbeats: when `get` fails, the stream's own outcome counts. Lines the
        stream passes on after the result stay in SkyPilot's request log only: by then the
        sink has moved on (to the job's log)."""
        request_log = _UntilResult(sink)
        stream = asyncio.ensure_future(
            self._blocking(self._sky.stream_and_get, request_id, output_stream=request_log)
        )
        result = asyncio.ensure_future(self._blocking(self._sky.get, request_id))
        for call in (stream, result):
            call.add_done_callback(_ignore_outcome)  # whichever is not awaited ends on its own
        try:
            done, _ = await asyncio.wait({stream, result}, return_when=asyncio.FIRST_COMPLETED)
            if stream in done and stream.exception() is None:
                return stream.result()
            try:
                return await result
            except Exception:
                return await stream
        finally:
            request_log.close()

    async def cluster_launch_times(self) -> dict[str, float]:
        """Every cluster SkyPilot knows (all users), managed jobs' aside -> when it was launched
        (epoch seconds; 0 when SkyPilot has no time for it yet)."""
        records = await self._blocking(self._sky.get, await self._blocking(self._sky.status, all_users=True))
        return {
            str(record_field(r, "name")): float(
                record_field(r, "launched_at") or record_field(r, "status_updated_at") or 0
            )
            for r in records
            # A managed job's cluster is its jobs controller's (listed when the controller runs
            # inside the API server): the reaper cancels the job instead.
            if not record_field(r, "is_managed")
        }

    async def riding_outages(self, progress: JobProgress, step: Callable[[], Awaitable[T]]) -> T:
        """Run `step`; while the SkyPilot API server is unreachable, wait for it (heartbeats go
        on, a cancel still lands) and run `step` again, for up to the outage budget."""
        down_since: float | None = None
        delay = min(1.0, self._outage_budget / 20)
        while True:
            try:
                return await step()
            except Exception as exc:
                if not is_server_unreachable(exc):
                    raise
                now = time.monotonic()
                if down_since is None:
                    down_since = now
                    activity.logger.warning(
                        "SkyPilot API server unreachable (%s); waiting up to %.0f s for it",
                        clean_message(exc),
                        self._outage_budget,
                    )
                if now - down_since >= self._outage_budget:
                    raise ApplicationError(
                        f"SkyPilot API server unreachable for {now - down_since:.0f} s: {clean_message(exc)}",
                        type="ApiServerUnreachable",
                    ) from None
                phase, progress.phase = progress.phase, "waiting for the SkyPilot API server"
                await asyncio.sleep(min(delay, self._outage_budget - (now - down_since)))
                progress.phase = phase
                delay = min(delay * 2, OUTAGE_POLL_MAX_SECONDS)

    # -------------------------------------------------------------- find, submit, follow

    async def _fresh_start_look(
        self, cluster: str, spec: TaskSpec, progress: JobProgress, cluster_is_this_runs: bool, owner: str
    ) -> tuple[int | None, bool]:
        """A step's first look, on its first attempt: its job (or None), and whether this attempt
        is about to create the cluster. Listing the cluster's jobs is a round trip to the cluster
        (~3 s on the local stack): it is skipped where no job of this step can be, on a cluster
        that does not exist, or on one this run launched that no launch/exec of this step (of
        any run) was ever sent to, as the API server's request records say (while they still
        hold the cluster's launch)."""
        progress.phase = "looking for an earlier job"
        record = await self._cluster_record(cluster, owner)
        if record is None or not owner_label(record):  # absent, or still being created
            in_flight = await self._submit_requests(cluster, in_flight_only=True)
            if record is None and not in_flight:
                return None, True  # this attempt creates the cluster
            # Another launch of the cluster is on its way (an earlier attempt's or run's, or, should
            # two workflow ids ever share a prefix, another workflow's): let it end, then look again,
            # so this launch never lands on a cluster someone else is creating.
            for request in in_flight:
                with contextlib.suppress(Exception):
                    await self._blocking(self._sky.get, record_field(request, "request_id"))
            if in_flight and await self._cluster_record(cluster, owner) is None:
                return None, False
        if cluster_is_this_runs:
            records = await self._submit_requests(cluster)
            same_step = same_step_other_runs(spec)
            if _remembers_launch(records) and not any(
                _maybe_for_step(r, spec.job_name, same_step) for r in records
            ):
                return None, False
        return await self._reattach(cluster, spec, progress, owner, checked=True), False

    async def _submit_requests(self, cluster: str, in_flight_only: bool = False) -> list[Any]:
        """The API server's records of launch/exec requests on `cluster`: in any status, or
        only those still in flight."""
        requests = await self._blocking(
            self._sky.api_status, all_status=not in_flight_only, cluster_name=cluster
        )
        return [
            r
            for r in requests
            if record_field(r, "cluster_name") == cluster  # old API servers ignore the filter
            and record_field(r, "name") in SUBMIT_REQUEST_NAMES
            # The server lists only requests in flight without all_status; checked again all the same.
            and (not in_flight_only or record_field(r, "status") in IN_FLIGHT_REQUEST_STATUSES)
        ]

    async def _cluster_record(self, cluster: str, owner: str) -> Any | None:
        """SkyPilot's record of `cluster`, whoever launched it (a worker on another host is another
        SkyPilot user), or None; refuses a cluster another workflow launched (its OWNER_LABEL
        is not `owner`): never adopt a job on it, exec on it or launch onto it."""
        request_id = await self._blocking(self._sky.status, cluster_names=[cluster], all_users=True)
        records = await self._blocking(self._sky.get, request_id)
        record = next((r for r in records if record_field(r, "name") == cluster), None)
        if record is not None and owner and owner_label(record) not in ("", owner):
            raise refuse(
                f"cluster {cluster} was launched for another workflow (its {OWNER_LABEL} label is not "
                "this workflow's): this run does not touch it",
                "ClusterOwnedByAnotherRun",
            )
        return record

    async def _owned_by_another(self, cluster: str, owner: str) -> bool:
        try:
            await self._cluster_record(cluster, owner)
        except ApplicationError as err:
            if err.type == "ClusterOwnedByAnotherRun":
                return True
            raise
        return False

    async def _reattach(
        self, cluster: str, spec: TaskSpec, progress: JobProgress, owner: str, checked: bool = False
    ) -> int | None:
        """The job of this step already on the cluster, if any: submitted by an earlier attempt
        of this run (found by its name), or still running from an earlier run of this workflow
        id (a reset, or a new run after a terminated one). Only on a cluster of this workflow's
        (`checked`: the caller proved that already)."""
        info = activity.info()
        previous = info.heartbeat_details[0] if info.attempt > 1 and info.heartbeat_details else {}
        previous_job_id = previous.get("job_id") if isinstance(previous, dict) else None
        if previous_job_id is not None:
            activity.logger.info("Re-attaching to job %s on %s", previous_job_id, cluster)
            return int(previous_job_id)
        progress.phase = "looking for an earlier job"
        if not checked:
            await self._cluster_record(cluster, owner)
        # Let a submission of ours still in flight on the API server finish, so its job is visible.
        await self._wait_for_own_requests(cluster, spec.job_name)
        try:
            request_id = await self._blocking(self._sky.queue, cluster, all_users=True)
            records = await self._blocking(self._sky.get, request_id)
        except Exception as exc:
            if is_named(exc, "ClusterDoesNotExist", "ClusterNotUpError"):
                return None
            raise
        mine = [
            int(record_field(r, "job_id")) for r in records if record_field(r, "job_name") == spec.job_name
        ]
        same_step = same_step_other_runs(spec)
        unfinished_earlier = [
            int(record_field(r, "job_id"))
            for r in records
            if same_step.fullmatch(str(record_field(r, "job_name")))
            and status_name(record_field(r, "status")) not in TERMINAL_JOB_STATUSES
        ]
        if mine:
            activity.logger.info("Re-attaching to job %s (%s) on %s", max(mine), spec.job_name, cluster)
            return max(mine)
        if unfinished_earlier:
            activity.logger.warning(
                "Adopting job %s on %s: an earlier run of this workflow started step %s and it is "
                "still running",
                max(unfinished_earlier),
                cluster,
                spec.step,
            )
            return max(unfinished_earlier)
        return None

    async def _submit(
        self,
        task: Any,
        cluster: str,
        submit: Callable[[Any], RequestId],
        progress: JobProgress,
        sink: JobLogSink,
        expect_job: bool,
    ) -> int | None:
        request_id = await self.submitted(lambda: submit(task), progress)
        job_id, _handle = await self.request_result(request_id, sink)
        if job_id is None and expect_job:
            raise ApplicationError(
                f"{task.name} on {cluster}: SkyPilot returned no job id",
                type="NoJobSubmitted",
                non_retryable=True,
            )
        if job_id is not None:
            activity.logger.info("Submitted job %s (%s) on %s", job_id, task.name, cluster)
        return None if job_id is None else int(job_id)

    async def submitted(self, send: Callable[[], RequestId], progress: JobProgress) -> RequestId:
        """Send a request whose client call blocks (launch and exec validate the task and upload
        its workdir before the API server has a request); its id goes into `progress` (and the
        heartbeat) for a retry or a cancel to find. A cancel during the client call waits for
        the call to end, so the request it sends has an id the cancel can reach, instead of
        running on with no one to own it."""
        call = asyncio.ensure_future(self._blocking(send))
        try:
            request_id = await asyncio.shield(call)
        except asyncio.CancelledError:
            while not call.done():  # a second cancel must not lose the request either
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.shield(call)
            if not call.cancelled() and call.exception() is None:
                progress.request_id = str(call.result())
            raise
        progress.request_id = str(request_id)
        activity.heartbeat(dataclasses.asdict(progress))
        return request_id

    async def follow_log(self, open_stream: Callable[[], Iterator[str | None]], sink: JobLogSink) -> str:
        """Stream a job's log into `sink` until it ends; the final status SkyPilot's last line
        states ("" if none). When the step stops waiting (a cancel, a lost attempt), the thread
        stops too, at the next line or server heartbeat, instead of following the job to its end."""
        stop = threading.Event()
        try:
            return await self._blocking(drain_log, open_stream, sink, stop)
        finally:
            stop.set()

    async def _follow_job(self, cluster: str, job_id: int, sink: JobLogSink) -> str:
        """Stream the job's log until it ends; return its final status."""
        sink.clear_tail()
        while True:
            status = await self.follow_log(
                lambda: self._sky.tail_logs(cluster, job_id, follow=True, preload_content=False), sink
            )
            if status == "SUCCEEDED":
                return status
            # A failure (job_status tells which), or a stream that did not end on SkyPilot's own
            # last line (a failed log request, a restarted API server): ask SkyPilot.
            request_id = await self._blocking(self._sky.job_status, cluster, job_ids=[job_id])
            statuses = await self._blocking(self._sky.get, request_id)
            status = status_name(statuses.get(job_id) or statuses.get(str(job_id)))
            if status in TERMINAL_JOB_STATUSES:
                return status
            if not status:
                return "NOT_FOUND"
            await asyncio.sleep(REFOLLOW_PAUSE_SECONDS)  # still running: follow again

    # -------------------------------------------------------------- cancellation

    async def _cancel_on_skypilot_if_requested(
        self, progress: JobProgress, cancel: Callable[[JobProgress], Awaitable[None]]
    ) -> None:
        """Cancel the SkyPilot side when the workflow asked for it.

        Not on worker shutdown or a heartbeat timeout: then the next attempt re-attaches.
        """
        details = activity.cancellation_details()
        if details is None or not details.cancel_requested:
            return
        progress.phase = "cancelling"
        token = cancelling.set(True)
        try:
            await asyncio.wait_for(cancel(progress), CANCEL_CONFIRM_TIMEOUT_SECONDS)
        except Exception as exc:
            what = progress.cluster_name or progress.job_name
            activity.logger.warning("Cancelling %s on SkyPilot failed: %s", what, clean_message(exc))
        finally:
            cancelling.reset(token)

    async def _cancel_cluster_job(self, progress: JobProgress) -> None:
        cluster, job_id = progress.cluster_name, progress.job_id
        if job_id is None and progress.request_id:
            activity.logger.info("Cancelling request %s", progress.request_id)
            await self.cancel_requests([progress.request_id])
            # The request may have submitted its job just before the cancel landed.
            with contextlib.suppress(Exception):
                job_id, _ = await self._blocking(self._sky.get, progress.request_id)
        if job_id is not None:
            activity.logger.info("Cancelling job %s on %s", job_id, cluster)
            request_id = await self._blocking(self._sky.cancel, cluster, job_ids=[job_id])
            await self._blocking(self._sky.get, request_id)

    async def _own_requests(self, cluster: str, job_name_prefix: str) -> list[Any]:
        """In-flight launch/exec requests on `cluster` whose task's name starts with
        `job_name_prefix`: what this run submitted, never another client's requests."""
        if not job_name_prefix:
            return []
        return [
            r
            for r in await self._submit_requests(cluster, in_flight_only=True)
            if _submitted_by(r, job_name_prefix)
        ]

    async def _wait_for_own_requests(self, cluster: str, job_name: str) -> None:
        for request in await self._own_requests(cluster, job_name):
            with contextlib.suppress(Exception):
                await self._blocking(self._sky.get, record_field(request, "request_id"))

    async def _cancel_own_requests(self, cluster: str, job_name_prefix: str) -> None:
        request_ids = [
            record_field(r, "request_id") for r in await self._own_requests(cluster, job_name_prefix)
        ]
        if request_ids:
            activity.logger.info("Cancelling in-flight requests on %s: %s", cluster, request_ids)
            await self.cancel_requests(request_ids)
            for request_id in request_ids:  # ended (cancelled, or done before the cancel landed)
                with contextlib.suppress(Exception):
                    await self._blocking(self._sky.get, request_id)

    async def cancel_requests(self, request_ids: list[str]) -> list[str]:
        """Cancel these requests still in flight on the API server, whichever of the fleet's
        workers sent them (each host is its own SkyPilot user), and wait until the cancel landed:
        the ids it cancelled. An API server with authentication lets a caller that is not an
        admin cancel only its own requests (docs: one service account for the fleet)."""
        if not request_ids:  # api_cancel without ids cancels every request in flight
            return []
        request_id = await self._blocking(self._sky.api_cancel, request_ids, all_users=True)
        return list(await self._blocking(self._sky.get, request_id) or [])


class _UntilResult:
    """A request's log on its way into the step's sink, until the step has the request's result."""

    def __init__(self, sink: JobLogSink) -> None:
        self._sink: JobLogSink | None = sink

    def write(self, text: str) -> int:
        sink = self._sink
        return sink.write(text) if sink is not None else len(text)

    def flush(self) -> None:
        if (sink := self._sink) is not None:
            sink.flush()

    def close(self) -> None:
        self._sink = None


def owner_label(record: Any) -> str:
    """The OWNER_LABEL of a cluster's record ("" for a cluster launched without it)."""
    labels = record_field(record, "labels")
    return str(labels.get(OWNER_LABEL) or "") if isinstance(labels, dict) else ""


def _remembers_launch(records: list[Any]) -> bool:
    """Whether the API server still holds a launch of the cluster. It forgets the requests that
    finished more than its retention period ago (api_server.requests_retention_hours, 24 by
    default); a cluster's launch finishes before any step is sent to it, so while the launch is
    there, theirs are too. (A step that started longer ago than that lists the jobs: safe.)"""
    return any(record_field(r, "name") == "sky.launch" for r in records)


def _maybe_for_step(request: Any, job_name: str, same_step: re.Pattern[str]) -> bool:
    """Whether a launch/exec request may have submitted `job_name`'s step (of any run of the
    workflow id); a request whose body we cannot read may have."""
    names = request_task_names(request)
    return not names or any(name == job_name or same_step.fullmatch(name) for name in names)


def _ignore_outcome(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: asyncio then does not log it as never retrieved


def same_step_other_runs(spec: TaskSpec) -> re.Pattern[str]:
    """Job names of `spec.step` in any run of the same workflow id (see naming.job_name_for)."""
    stem = spec.job_name.removesuffix(f"-{spec.step}")[:-9]
    return re.compile(re.escape(stem) + r"-[0-9a-f]{8}-" + re.escape(spec.step))


def _submitted_by(request: Any, job_name_prefix: str) -> bool:
    """Whether a launch/exec request on one of the run's clusters is the run's own.

    With authentication on, the API server shows a request's body only to its owner: a body we
    cannot read is another worker's submission for this run (the cluster name is reserved for
    the run's workflow id), so it counts as ours.
    """
    body = record_field(request, "request_body")
    if not body:
        return True
    names = request_task_names(request)
    return not names or any(name.startswith(job_name_prefix) for name in names)
