"""SkyPilot managed jobs inside a Temporal activity: submit a step as a managed job (or find the
one already submitted), follow it to its end across recoveries, cancel it.

A managed job runs on a cluster SkyPilot's jobs controller launches for it; when that cluster is
preempted or lost, the controller relaunches the job on a new one ("recovery") and tears the
cluster down when the job ends. The worker never owns that cluster: it owns the job, found by its
name (unique per run and step), so a retry or a new worker re-attaches instead of submitting a
second job. Calls go through the `SkyPilotSDK` seam (`sky.jobs`) in the worker's thread pool, and
ride out API server outages like every other step (`SkyPilotJobs.riding_outages`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from typing import Any

from temporalio import activity
from temporalio.exceptions import ApplicationError

from skypilot_temporal.activity.job_log import JobLogSink
from skypilot_temporal.activity.jobs import (
    IN_FLIGHT_REQUEST_STATUSES,
    Blocking,
    SkyPilotJobs,
    owner_label,
    same_step_other_runs,
)
from skypilot_temporal.activity.sdk import SkyPilotSDK, record_field, request_task_names, status_name
from skypilot_temporal.errors import is_named, is_server_unreachable
from skypilot_temporal.operations import metrics
from skypilot_temporal.payloads import JobProgress, TaskSpec

TERMINAL_STATUSES = frozenset(
    {
        "SUCCEEDED",
        "CANCELLED",
        "FAILED",
        "FAILED_SETUP",
        "FAILED_PRECHECKS",
        "FAILED_NO_RESOURCE",
        "FAILED_CONTROLLER",
    }
)
RECORD_FIELDS = ["job_id", "job_name", "status", "recovery_count", "failure_reason", "submitted_at", "labels"]
# How often the job's status is read while its log streams (recoveries, the Web UI's status).
DEFAULT_STATUS_POLL_SECONDS = 10.0


@dataclasses.dataclass
class ManagedJobState:
    job_id: int
    job_name: str
    status: str
    recovery_count: int
    failure_reason: str
    submitted_at: float = 0.0  # epoch seconds
    # The OWNER_LABEL of the job's cluster, while it has one ("" otherwise).
    owner: str = ""


class ManagedJobs:
    """The managed-job side of a pipeline step, over the SDK seam."""

    def __init__(
        self,
        sky_sdk: SkyPilotSDK,
        blocking: Blocking,
        jobs: SkyPilotJobs,
        status_poll_seconds: float = DEFAULT_STATUS_POLL_SECONDS,
    ) -> None:
        self._sky = sky_sdk
        self._blocking = blocking
        self._jobs = jobs
        self._poll = status_poll_seconds

    async def find_or_submit(
        self, task: Any, spec: TaskSpec, progress: JobProgress, sink: JobLogSink, owner: str = ""
    ) -> int:
        """The id of this step's managed job: the one an earlier attempt submitted, or a new one
        (an earlier run's job is adopted only if its cluster is not labelled by another workflow)."""

        async def once() -> int:
            # This attempt's own launch request, when an outage interrupted it after submitting.
            submitted_here = bool(progress.request_id)
            job_id = await self._job_of_request(progress.request_id) if submitted_here else None
            if job_id is None:
                job_id = await self._find(spec, progress, owner)
                if job_id is not None and not submitted_here:
                    metrics.job_reattached("managed")
            if job_id is None:
                progress.phase = "submitting to the jobs controller"
                job_id = await self._submit(task, spec, progress, sink)
            return job_id

        return await self._jobs.riding_outages(progress, once)

    async def follow(self, job_id: int, progress: JobProgress, sink: JobLogSink) -> ManagedJobState:
        """Stream the job's log until the job ends, keeping `progress` (its status and recoveries)
        current meanwhile; return its final state."""
        progress.job_id, progress.phase = job_id, "running"
        watcher = asyncio.create_task(self._watch(job_id, progress))
        try:
            while True:
                sink.clear_tail()
                await self._jobs.riding_outages(
                    progress,
                    lambda: self._jobs.follow_log(
                        lambda: self._sky.jobs.tail_logs(job_id=job_id, follow=True, preload_content=False),
                        sink,
                    ),
                )
                state = await self._jobs.riding_outages(progress, lambda: self.state(job_id))
                note(state, progress)
                if state.status in TERMINAL_STATUSES:
                    return state
                # The log stream can end while the job goes on (during a recovery): follow again.
                await asyncio.sleep(self._poll)
        finally:
            watcher.cancel()

    async def cancel(self, job_id: int | None, job_name: str, progress: JobProgress) -> str:
        """Cancel managed job `job_id` (None: every job named `job_name`) and wait until the
        controller says it ended; its final status ("GONE": the controller knows no such job)."""

        async def once() -> str:
            if job_id is not None:
                ids = [job_id]
            else:  # the run never learned the id (cancelled during or as the submit ended)
                launches = await self._launch_requests(job_name)
                await self._jobs.cancel_requests(launches)
                launched = [await self._job_of_request(request_id) for request_id in launches]
                named = [r.job_id for r in await self._records(name_match=job_name) if r.job_name == job_name]
                ids = sorted({*named, *(i for i in launched if i is not None)})
            status = "GONE"
            for one in ids:
                status = await self._cancel_one(one, progress)
            return status

        return await self._jobs.riding_outages(progress, once)

    async def _cancel_one(self, job_id: int, progress: JobProgress) -> str:
        state = await self._state_if_known(job_id)
        if state is not None and state.status not in {*TERMINAL_STATUSES, "CANCELLING"}:
            activity.logger.info("Cancelling managed job %s (%s)", job_id, state.job_name)
            await self._send_cancel(job_id)
        while state is not None and state.status not in TERMINAL_STATUSES:
            note(state, progress)
            await asyncio.sleep(min(self._poll, 5.0))
            state = await self._state_if_known(job_id)
        return state.status if state else "GONE"

    async def cancel_submission(self, progress: JobProgress) -> None:
        """On a cancelled submit: cancel the launch request, and the job if it was created."""
        job_id = progress.job_id
        if job_id is None and progress.request_id:
            await self._jobs.cancel_requests([progress.request_id])
            with contextlib.suppress(Exception):  # the job may exist already
                job_id = await self._job_of_request(progress.request_id)
        if job_id is not None:
            await self._send_cancel(job_id)

    async def _send_cancel(self, job_id: int) -> None:
        await self._blocking(self._sky.get, await self._blocking(self._sky.jobs.cancel, job_ids=[job_id]))

    async def state(self, job_id: int) -> ManagedJobState:
        """The job's state; a job the controller does not know fails the step."""
        found = await self._state_if_known(job_id)
        if found is not None:
            return found
        raise ApplicationError(
            f"managed job {job_id} is not known to the jobs controller",
            type="ManagedJobNotFound",
            non_retryable=True,
        )

    async def _state_if_known(self, job_id: int) -> ManagedJobState | None:
        return next((r for r in await self._records(job_ids=[job_id]) if r.job_id == job_id), None)

    async def unfinished(self, name_part: str) -> list[ManagedJobState]:
        """Every managed job (all users) not ended yet whose name contains `name_part`."""
        return [r for r in await self._records(name_match=name_part) if r.status not in TERMINAL_STATUSES]

    # ------------------------------------------------------------------ find, submit, watch

    async def _records(self, **filters: Any) -> list[ManagedJobState]:
        request_id = await self._blocking(
            self._sky.jobs.queue_v2, refresh=False, all_users=True, fields=RECORD_FIELDS, **filters
        )
        try:
            response = await self._blocking(self._sky.get, request_id)
        except Exception as exc:
            if is_named(exc, "ClusterNotUpError"):  # no jobs controller up (it stops when idle)
                return []
            raise
        records = response[0] if isinstance(response, tuple) else response
        return [
            ManagedJobState(
                job_id=int(record_field(r, "job_id")),
                job_name=str(record_field(r, "job_name") or ""),
                status=status_name(record_field(r, "status")),
                recovery_count=int(record_field(r, "recovery_count") or 0),
                failure_reason=str(record_field(r, "failure_reason") or ""),
                submitted_at=float(record_field(r, "submitted_at") or 0),
                owner=owner_label(r),
            )
            for r in records
        ]

    async def _find(self, spec: TaskSpec, progress: JobProgress, owner: str = "") -> int | None:
        """This step's job if one was submitted: by the attempt before (its heartbeat), by any
        attempt of this run (by name), or still running from an earlier run of this workflow id."""
        info = activity.info()
        previous = info.heartbeat_details[0] if info.attempt > 1 and info.heartbeat_details else {}
        previous = previous if isinstance(previous, dict) else {}
        if previous.get("job_id") is not None:
            return int(previous["job_id"])
        if previous.get("request_id"):
            # The attempt before submitted and died before it saw the job id: its request has it.
            job_id = await self._job_of_request(str(previous["request_id"]))
            if job_id is not None:
                return job_id
        progress.phase = "looking for an earlier job"
        # A launch of this step still in flight (its heartbeat never reached Temporal): its job
        # has no row yet, so wait for the request rather than submit a second job.
        for request_id in await self._launch_requests(spec.job_name):
            job_id = await self._job_of_request(request_id)
            if job_id is not None:
                activity.logger.info(
                    "Re-attaching to managed job %s (%s) from its launch", job_id, spec.job_name
                )
                return job_id
        same_step = same_step_other_runs(spec)
        run_prefix = spec.job_name.removesuffix(f"-{spec.step}")[:-9]
        records = await self._records(name_match=run_prefix)
        mine = [r.job_id for r in records if r.job_name == spec.job_name]
        if mine:
            activity.logger.info("Re-attaching to managed job %s (%s)", max(mine), spec.job_name)
            return max(mine)
        unfinished_earlier = [
            r.job_id
            for r in records
            if same_step.fullmatch(r.job_name)
            and r.status not in TERMINAL_STATUSES
            and r.owner in ("", owner or r.owner)
        ]
        if unfinished_earlier:
            activity.logger.warning(
                "Adopting managed job %s: an earlier run of this workflow started step %s and it "
                "is still running",
                max(unfinished_earlier),
                spec.step,
            )
            return max(unfinished_earlier)
        return None

    async def _launch_requests(self, job_name: str) -> list[str]:
        """In-flight `jobs.launch` requests whose task is `job_name` (a body hidden from us, by
        an API server with auth, is another user's)."""
        requests = await self._blocking(self._sky.api_status)
        return [
            str(record_field(r, "request_id"))
            for r in requests
            if record_field(r, "name") == "jobs.launch"
            and record_field(r, "status") in IN_FLIGHT_REQUEST_STATUSES
            and job_name in request_task_names(r)
        ]

    async def _job_of_request(self, request_id: str) -> int | None:
        """The job id a `jobs.launch` request returned (waiting for it); None if it failed or
        was cancelled before submitting."""
        try:
            job_ids, _ = await self._blocking(self._sky.get, request_id)
        except Exception as exc:
            if is_server_unreachable(exc):
                raise
            return None
        return int(job_ids[0]) if job_ids else None

    async def _submit(self, task: Any, spec: TaskSpec, progress: JobProgress, sink: JobLogSink) -> int:
        request_id = await self._jobs.submitted(
            lambda: self._sky.jobs.launch(task, name=spec.job_name), progress
        )
        job_ids, _handle = await self._jobs.request_result(request_id, sink)
        if not job_ids:
            raise ApplicationError(
                f"{spec.step}: the jobs controller returned no job id",
                type="NoJobSubmitted",
                non_retryable=True,
            )
        activity.logger.info("Submitted managed job %s (%s)", job_ids[0], spec.job_name)
        return int(job_ids[0])

    async def _watch(self, job_id: int, progress: JobProgress) -> None:
        """Read the job's status every poll while its log streams; a failed read is retried at
        the next poll (the log stream itself rides out outages)."""
        while True:
            await asyncio.sleep(self._poll)
            try:
                state = await self._state_if_known(job_id)
                if state is not None:
                    note(state, progress)
            except Exception as exc:
                activity.logger.debug("Reading managed job %s's status failed: %s", job_id, exc)


def note(state: ManagedJobState, progress: JobProgress) -> None:
    """Record the job's status in `progress`, counting each recovery once.

    SkyPilot's own `recovery_count` stays 0 after some real recoveries (a lost cluster recovered
    through the controller's emergency path), so a move from RUNNING into RECOVERING counts too
    (from STARTING it is a launch retry, not a recovery).
    """
    if state.status == "RECOVERING" and progress.job_status == "RUNNING":
        progress.recoveries += 1
        activity.logger.warning("Managed job %s is recovering: SkyPilot is relaunching it", state.job_id)
    progress.recoveries = max(progress.recoveries, state.recovery_count)
    progress.job_status = state.status
