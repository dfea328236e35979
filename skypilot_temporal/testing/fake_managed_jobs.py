"""The fake of `sky.jobs` (SkyPilot managed jobs) that `FakeSky.jobs` serves, as measured against
a real API server with the jobs controller consolidated into it:
- `launch(task, name=...)` returns a request id at once; the job has no row until the request
  is done (`launch_seconds`); its result is `([job_id], None)` once the controller has the job
  (PENDING); the job then starts (STARTING) and runs (RUNNING);
- `queue_v2` returns `(records, total, status_counts, total_no_filter)`; `name_match` is a
  substring match, as the real SQL LIKE '%...%';
- `launch` blocks in the client first, like `sky.launch` (`FakeSky.hold_uploads`);
- `tail_logs(job_id=, follow=True)` streams the job's lines (again from the start after a
  recovery) and returns 0 / 100 / 103 once the job ends; with `preload_content=False` it is an
  iterator of lines with None heartbeats while the job is silent;
- `cancel(job_ids=)` moves a job through CANCELLING to CANCELLED;
- `preempt()` (for tests) loses the job's cluster: RECOVERING, then RUNNING again. Like the real
  controller's emergency path, it leaves `recovery_count` at 0 unless told otherwise.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import sky
from sky.jobs.state import ManagedJobStatus

if TYPE_CHECKING:
    from skypilot_temporal.testing.fake_sky import FakeRequest, FakeSky, JobPlan

TERMINAL = {s.value for s in ManagedJobStatus.terminal_statuses()}
EXIT_CODES = {"SUCCEEDED": 0, "CANCELLED": 103}


API_TOKEN_VARIABLE = "SKYPILOT_SERVICE_ACCOUNT_TOKEN"


@dataclass
class FakeManagedJob:
    job_id: int
    job_name: str
    plan: JobPlan
    status: str = "PENDING"
    envs: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    recovery_count: int = 0
    recoveries: int = 0  # what really happened (the fake's own count)
    failure_reason: str = ""
    submitted_at: float = field(default_factory=time.time)
    # Its task's labels: the queue shows them while the job has a cluster (not once it ended).
    labels: dict[str, str] = field(default_factory=dict)
    done: threading.Event = field(default_factory=threading.Event)


class FakeManagedJobs:
    def __init__(self, server: FakeSky) -> None:
        self._server = server
        self.launch_seconds = 0.0  # the launch request in flight before the job has a row
        self.start_seconds = 0.0  # PENDING/STARTING before RUNNING
        # An API server with service accounts on (ENABLE_SERVICE_ACCOUNTS=true) gives every managed
        # job whose task does not say `api_server_access: false` a token of the launching user.
        self.service_accounts = True
        self.managed: list[FakeManagedJob] = []
        self._ids = itertools.count(1)

    # ------------------------------------------------------------------ helpers for tests

    def named(self, suffix: str) -> list[FakeManagedJob]:
        return [j for j in self.managed if j.job_name.endswith(f"-{suffix}") or j.job_name == suffix]

    def wait_for(self, suffix: str, status: str = "RUNNING", timeout: float = 20) -> FakeManagedJob:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = [j for j in self.named(suffix) if j.status == status]
            if jobs:
                return jobs[-1]
            time.sleep(0.02)
        raise AssertionError(f"no {status} managed job {suffix!r}; jobs: {self.managed}")

    def preempt(self, job: FakeManagedJob, recovery_seconds: float = 0.3, counted: bool = False) -> None:
        """The job's cluster is lost: the controller relaunches it after `recovery_seconds`."""
        job.status, job.recoveries = "RECOVERING", job.recoveries + 1

        def recover() -> None:
            time.sleep(recovery_seconds)
            if job.status == "RECOVERING":
                job.recovery_count += counted
                job.status = "RUNNING"

        threading.Thread(target=recover, daemon=True).start()

    # ------------------------------------------------------------------ the SDK surface

    def launch(self, task: sky.Task, name: str | None = None, **kwargs: Any) -> str:
        self._server._record("jobs.launch", (task.name, name))
        self._server._upload("jobs.launch")
        return self._server._start(
            "jobs.launch",
            None,
            lambda req: self._do_launch(req, task, name or task.name or ""),
            task_name=task.name or "",
        )

    def queue_v2(
        self,
        refresh: bool,
        skip_finished: bool = False,
        all_users: bool = False,
        job_ids: list[int] | None = None,
        fields: Any = None,
        name_match: str | None = None,
        **kwargs: Any,
    ) -> str:
        self._server._record("jobs.queue_v2", (job_ids, name_match))

        def run(req: FakeRequest) -> tuple[list[Any], int, dict[str, int], int]:
            records = [
                SimpleNamespace(
                    job_id=j.job_id,
                    job_name=j.job_name,
                    status=ManagedJobStatus(j.status),
                    recovery_count=j.recovery_count,
                    failure_reason=j.failure_reason or None,
                    submitted_at=j.submitted_at,
                    labels=None if j.status in TERMINAL else dict(j.labels),
                )
                for j in list(self.managed)
                if (job_ids is None or j.job_id in job_ids)
                and (name_match is None or name_match in j.job_name)
            ]
            return records, len(records), {}, len(self.managed)

        return self._server._start("jobs.queue_v2", None, run)

    def tail_logs(
        self,
        name: str | None = None,
        job_id: int | None = None,
        follow: bool = True,
        output_stream: Any = None,
        *,
        preload_content: bool = True,
        **kwargs: Any,
    ) -> Any:
        self._server._record("jobs.tail_logs", job_id)
        self._server._delay()
        self._server._maybe_raise("jobs.tail_logs")
        job = next((j for j in self.managed if j.job_id == job_id), None)
        lines = self._log_stream(job, follow)
        if not preload_content:
            return lines
        for line in lines:
            if line is not None and output_stream is not None:
                output_stream.write(line)
        if job is None:
            return 102  # JobExitCode.NOT_FOUND
        return EXIT_CODES.get(job.status, 100)

    def _log_stream(self, job: FakeManagedJob | None, follow: bool) -> Iterator[str | None]:
        server = self._server
        with server.lock:
            server.log_followers += 1
        try:
            if job is None:
                return
            for line in job.plan.logs:
                yield f"({job.job_name}, pid=1) {line}\n"
            deadline = time.monotonic() + 60
            while follow and not job.done.wait(server.log_heartbeat_seconds):
                if time.monotonic() > deadline:
                    raise AssertionError(f"managed job {job.job_name} never finished")
                yield None
        finally:
            with server.lock:
                server.log_followers -= 1

    def cancel(
        self,
        name: str | None = None,
        job_ids: Any = None,
        all: bool = False,
        all_users: bool = False,
        **kwargs: Any,
    ) -> str:
        ids = list(job_ids or [])
        self._server._record("jobs.cancel", ids)

        def run(req: FakeRequest) -> None:
            for job in self.managed:
                if job.job_id in ids and job.status not in TERMINAL:
                    job.status = "CANCELLING"
                    threading.Timer(0.05, self._finish, (job, "CANCELLED")).start()

        return self._server._start("jobs.cancel", None, run)

    # ------------------------------------------------------------------ the "controller"

    def _do_launch(self, request: FakeRequest, task: sky.Task, name: str) -> tuple[list[int], None]:
        if request.cancelled.wait(self.launch_seconds):
            raise sky.exceptions.RequestCancelled(f"Request {request.request_id} cancelled")
        plan = self._server.plan_for(task)
        job = FakeManagedJob(
            next(self._ids),
            name,
            plan,
            envs=dict(task.envs),
            secrets={k: v if isinstance(v, str) else v.get_secret_value() for k, v in task.secrets.items()},
            labels=next((dict(r.labels or {}) for r in task.resources), {}),
        )
        if self.service_accounts and task.api_server_access:
            job.secrets[API_TOKEN_VARIABLE] = f"sky_job-token-of-{request.user}"
        self.managed.append(job)

        def run() -> None:
            job.status = "STARTING"
            if job.done.wait(self.start_seconds):
                return
            job.status = "RUNNING"
            if plan.until_cancelled:
                job.done.wait(60)
                return
            if job.done.wait(plan.seconds):
                return
            while job.status == "RECOVERING" and not job.done.is_set():
                time.sleep(0.01)
            self._finish(job, plan.status)

        threading.Thread(target=run, daemon=True).start()
        return [job.job_id], None

    @staticmethod
    def _finish(job: FakeManagedJob, status: str) -> None:
        if not job.done.is_set():
            job.status = status
            if status.startswith("FAILED"):
                job.failure_reason = f"the task exited with a failure ({status})"
            job.done.set()
