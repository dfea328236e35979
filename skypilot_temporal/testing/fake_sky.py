"""A fake of the SkyPilot client SDK (the `sky` module), for fast tests at the one seam.

It models what the activities rely on, as measured against a real API server (SkyPilot 0.14.1):
- every call returns a request id at once; the request then runs on the "server" (a thread),
  whether or not the client ever waits for it; `get`/`stream_and_get` wait and re-raise;
- `launch`/`exec`/`jobs.launch` block in the client first (SkyPilot validates the task and
  uploads its workdir before the server has a request): `hold_uploads` holds them there;
- launch/exec return (job_id, handle) when the job is SUBMITTED; the job then runs on its own;
- `tail_logs(follow=True)` streams the job's lines and returns its exit code (0/100/103); with
  `preload_content=False` it is an iterator of lines that yields None as the server's heartbeat
  while the job is silent, and ends with SkyPilot's own "Job finished (status: ...)" line;
- launch on an UP cluster reuses it and submits a NEW job; `queue` lists jobs by name;
- a launch whose task has no `run` submits a job for its `setup` alone (no job without one);
  `launch(fast=True)` on an UP cluster skips provisioning and setup (the job runs `run` only);
- a cluster keeps the labels of the launch that created it (`resources.labels`); `status` shows
  them once the cluster is up (not while it is being created);
- `api_cancel` is a request of its own: the cancel lands on the server a moment later
  (`cancel_seconds`), not when the call returns; `cancel` cancels a running job; `down` of a
  missing cluster raises ClusterDoesNotExist;
- users: each `FakeSky` is one client, `user`, of one shared server (`as_user` makes another).
  As in SkyPilot, `status` and `queue` show only the caller's clusters and jobs unless
  `all_users=True`, and `api_cancel` cancels only the caller's requests unless `all_users=True`.
  With `auth` on, a caller that is not an admin sees and cancels only its own requests whatever
  it asks, and an admin sees other users' requests without their bodies;
- `jobs` is the fake of `sky.jobs`, managed jobs (testing/fake_managed_jobs.py).
Task parsing is the real `sky.Task`: it is local, deterministic and part of what we test.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import sky
from sky import exceptions

from skypilot_temporal.testing.fake_managed_jobs import FakeManagedJobs

EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 100, "FAILED_SETUP": 100, "FAILED_DRIVER": 100, "CANCELLED": 103}
SAFETY_TIMEOUT = 60.0  # nothing in a test should wait this long: fail instead of hanging
DEFAULT_USER = "worker-a"
_RUN_TOKEN = re.compile(r"-[0-9a-f]{8}-")


@dataclass
class JobPlan:
    """How a job named `<prefix>-<step>` behaves."""

    status: str = "SUCCEEDED"
    logs: list[str] = field(default_factory=lambda: ["working...", "done"])
    seconds: float = 0.0
    until_cancelled: bool = False


@dataclass
class FakeJob:
    job_id: int
    job_name: str
    plan: JobPlan
    status: str = "RUNNING"
    user: str = DEFAULT_USER
    started_at: float = field(default_factory=time.monotonic)
    finished_at: float | None = None
    envs: dict[str, str] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    ran_setup: bool = False
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class FakeCluster:
    name: str
    status: str = "INIT"
    owner: str = DEFAULT_USER
    labels: dict[str, str] = field(default_factory=dict)
    jobs: list[FakeJob] = field(default_factory=list)
    launched_at: float = field(default_factory=time.time)


# The statuses the API server lists without all_status (RequestStatus.active_statuses()).
ACTIVE_REQUEST_STATUSES = ("PENDING", "WAITING", "RUNNING")


@dataclass
class FakeRequest:
    request_id: str
    name: str
    cluster_name: str | None
    user: str = DEFAULT_USER
    # The name of the task a launch/exec request carries (the real body holds the whole DAG).
    task_name: str = ""
    status: str = "RUNNING"
    result: Any = None
    error: BaseException | None = None
    logs: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)
    cancelled: threading.Event = field(default_factory=threading.Event)


class FakeServer:
    """The API server's state and the tests' knobs, shared by every client (`FakeSky`)."""

    def __init__(self, provision_seconds: float, call_seconds: float) -> None:
        self.provision_seconds = provision_seconds
        # Added to every SDK call, like the real SDK's HTTP round trips (blocks the caller).
        self.call_seconds = call_seconds
        self.down_seconds = 0.0  # how long a teardown takes on the "server"
        # How long after `api_cancel` returns the cancel lands on its requests.
        self.cancel_seconds = 0.02
        # The server's heartbeat on a silent log stream (30 s on a real API server).
        self.log_heartbeat_seconds = 0.02
        # Raised, in order, by job log streams after their first line (the server killed or
        # restarted mid-stream: the SDK does not retry a stream it already handed over).
        self.stream_errors: list[BaseException] = []
        self.plans: dict[str, JobPlan] = {}
        # method name -> exceptions raised by its next requests, in order
        self.errors: dict[str, list[BaseException]] = {}
        # step (the job name's last part) -> exception its launches raise while provisioning
        self.launch_errors: dict[str, BaseException] = {}
        # An API server with authentication: users who are not admins see and cancel only their
        # own requests; admins see everyone's, without other users' request bodies.
        self.auth = False
        self.admins: set[str] = set()
        # A request's log stream ends once this is set, after its request ended (set: at once).
        self.streams_may_end = threading.Event()
        self.streams_may_end.set()
        # method ("launch", "exec", "jobs.launch") -> its client calls (validate, upload the
        # workdir) return once this is set (see FakeSky.hold_uploads).
        self.upload_gates: dict[str, threading.Event] = {}
        # A proxy in front of the API server cuts a wait that receives no bytes (its idle
        # timeout): `get` on a launch/exec/down still running fails; the log stream, which sends
        # heartbeats, does not.
        self.proxy_cuts_silent_waits = False
        self.clusters: dict[str, FakeCluster] = {}
        self.requests: dict[str, FakeRequest] = {}
        self.calls: list[tuple[str, Any]] = []
        self.timeline: list[tuple[float, str, Any]] = []  # (time.monotonic(), method, args)
        self.submitted: list[FakeJob] = []
        self.ever_launched: set[str] = set()
        self.log_followers = 0  # log streams (tail_logs) open right now
        self.ids = itertools.count(1)
        self.lock = threading.RLock()
        self.jobs: FakeManagedJobs | None = None


class FakeSky:
    """One client of the fake API server, as the SkyPilot user `user`.

    Every attribute but `user` and `server` is the server's: `fake.provision_seconds = 30` or
    `fake.clusters` reach the same state from every client."""

    Task = sky.Task
    exceptions = exceptions
    user: str
    server: FakeServer

    def __init__(
        self,
        provision_seconds: float = 0.0,
        call_seconds: float = 0.0,
        *,
        user: str = DEFAULT_USER,
        server: FakeServer | None = None,
    ) -> None:
        object.__setattr__(self, "user", user)
        object.__setattr__(self, "server", server or FakeServer(provision_seconds, call_seconds))
        if self.server.jobs is None:
            self.server.jobs = FakeManagedJobs(self)  # sky.jobs

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.server, name, value)

    def as_user(self, user: str) -> FakeSky:
        """Another client of the same server: a worker on another host is another user."""
        return FakeSky(user=user, server=self.server)

    # ------------------------------------------------------------------ helpers for tests

    def plan(self, step: str, **kwargs: Any) -> JobPlan:
        self.plans[step] = JobPlan(**kwargs)
        return self.plans[step]

    def fail_next(self, method: str, *errors: BaseException) -> None:
        self.errors.setdefault(method, []).extend(errors)

    def called(self, method: str) -> list[Any]:
        return [args for name, args in self.calls if name == method]

    def hold_uploads(self, method: str) -> threading.Event:
        """Hold the client calls of `method` ("launch", "exec", "jobs.launch") in their upload,
        before the server has a request, until the returned event is set."""
        gate = self.upload_gates[method] = threading.Event()
        return gate

    def forget_finished_requests(self) -> None:
        """The API server's request GC after its retention period: finished requests are gone."""
        with self.lock:
            for request_id, request in list(self.requests.items()):
                if request.status not in ACTIVE_REQUEST_STATUSES:
                    del self.requests[request_id]

    def jobs_named(self, suffix: str) -> list[FakeJob]:
        return [j for j in self.submitted if j.job_name.endswith(f"-{suffix}") or j.job_name == suffix]

    def wait_for_job(self, suffix: str, status: str = "RUNNING", timeout: float = 20) -> FakeJob:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            jobs = [j for j in self.jobs_named(suffix) if j.status == status]
            if jobs:
                return jobs[-1]
            time.sleep(0.02)
        raise AssertionError(f"no {status} job {suffix!r}; jobs: {self.submitted}")

    def add_job(
        self,
        cluster_name: str,
        job_name: str,
        status: str = "SUCCEEDED",
        logs: list[str] | None = None,
        labels: dict[str, str] | None = None,
    ) -> FakeJob:
        """Put a job on a cluster as if an earlier attempt had submitted it (the cluster, if new,
        is this client's, with `labels`)."""
        with self.lock:
            cluster = self.clusters.setdefault(
                cluster_name, FakeCluster(cluster_name, "UP", owner=self.user, labels=dict(labels or {}))
            )
            cluster.status = "UP"
            job = FakeJob(
                len(cluster.jobs) + 1,
                job_name,
                JobPlan(status=status, logs=logs or []),
                status=status,
                user=self.user,
            )
            if status in EXIT_CODES:
                job.done.set()
            cluster.jobs.append(job)
            self.submitted.append(job)
            return job

    # ------------------------------------------------------------------ the SDK surface

    def launch(self, task: sky.Task, cluster_name: str | None = None, **kwargs: Any) -> str:
        cluster_name = _named(cluster_name)
        self._record("launch", (task.name, cluster_name, kwargs))
        self._upload("launch")
        self.ever_launched.add(cluster_name)
        fast = bool(kwargs.get("fast"))
        return self._start(
            "sky.launch",
            cluster_name,
            lambda req: self._do_launch(req, task, cluster_name, fast),
            task_name=task.name or "",
        )

    def exec(self, task: sky.Task, cluster_name: str | None = None, **kwargs: Any) -> str:
        cluster_name = _named(cluster_name)
        self._record("exec", (task.name, cluster_name))
        self._upload("exec")
        return self._start(
            "sky.exec", cluster_name, lambda req: self._do_exec(task, cluster_name), task_name=task.name or ""
        )

    def down(self, cluster_name: str, purge: bool = False) -> str:
        self._record("down", cluster_name)
        return self._start("sky.down", cluster_name, lambda req: self._do_down(cluster_name))

    def status(self, cluster_names: list[str] | None = None, all_users: bool = False, **kwargs: Any) -> str:
        self._record("status", cluster_names)
        user = self.user

        def run(req: FakeRequest) -> list[Any]:
            with self.lock:
                return [
                    SimpleNamespace(
                        name=c.name,
                        status=c.status,
                        launched_at=c.launched_at,
                        is_managed=False,
                        # The record has the labels once the cluster has its handle (UP here).
                        labels=dict(c.labels) if c.status == "UP" else {},
                        user_hash=c.owner,
                        user_name=c.owner,
                    )
                    for c in self.clusters.values()
                    if (cluster_names is None or c.name in cluster_names) and (all_users or c.owner == user)
                ]

        return self._start("sky.status", None, run)

    def queue(self, cluster_name: str, skip_finished: bool = False, all_users: bool = False) -> str:
        self._record("queue", cluster_name)
        user = self.user
        return self._start(
            "sky.queue", cluster_name, lambda req: self._do_queue(cluster_name, None if all_users else user)
        )

    def job_status(self, cluster_name: str, job_ids: list[int] | None = None) -> str:
        self._record("job_status", (cluster_name, job_ids))

        def run(req: FakeRequest) -> dict[int, Any]:
            cluster = self._cluster_up(cluster_name)
            found = {j.job_id: sky.JobStatus(j.status) for j in cluster.jobs}
            return {job_id: found.get(job_id) for job_id in job_ids} if job_ids is not None else found

        return self._start("sky.job_status", cluster_name, run)

    def cancel(
        self, cluster_name: str, all: bool = False, job_ids: list[int] | None = None, **kwargs: Any
    ) -> str:
        self._record("cancel", (cluster_name, job_ids))

        def run(req: FakeRequest) -> None:
            for job in self._cluster_up(cluster_name).jobs:
                if (all or job.job_id in (job_ids or [])) and not job.done.is_set():
                    job.status = "CANCELLED"
                    job.done.set()

        return self._start("sky.cancel", cluster_name, run)

    def api_cancel(self, request_ids: Any = None, all_users: bool = False, silent: bool = False) -> str:
        ids = (
            None
            if request_ids is None
            else [request_ids]
            if isinstance(request_ids, str)
            else list(request_ids)
        )
        self._record("api_cancel", ids)
        # The server binds a caller who is not an admin to its own requests (role_filter).
        scope = None if all_users else self.user
        if self.auth and self.user not in self.admins:
            scope = self.user

        def run(req: FakeRequest) -> list[str]:
            time.sleep(self.cancel_seconds)
            with self.lock:
                targets = (
                    ids
                    if ids is not None
                    else [r.request_id for r in self.requests.values() if r.name != "sky.api_cancel"]
                )
                cancelled = []
                for request_id in targets:
                    request = self.requests.get(request_id)
                    if request is None or request.done.is_set() or request.request_id == req.request_id:
                        continue
                    if scope is not None and request.user != scope:
                        continue
                    request.cancelled.set()
                    cancelled.append(request_id)
                return cancelled

        return self._start("sky.api_cancel", None, run)

    def api_status(
        self,
        request_ids: Any = None,
        all_status: bool = False,
        cluster_name: str | None = None,
        **kwargs: Any,
    ) -> list[Any]:
        self._record("api_status", cluster_name)
        self._delay()
        sees_everyone = not self.auth or self.user in self.admins
        with self.lock:
            return [
                SimpleNamespace(
                    request_id=r.request_id,
                    name=r.name,
                    status=r.status,
                    cluster_name=r.cluster_name,
                    # With auth, the API server shows a request's body only to its owner.
                    request_body=None
                    if self.auth and r.user != self.user
                    else json.dumps({"task": f"name: {r.task_name}\n"} if r.task_name else {}),
                )
                for r in self.requests.values()
                if (all_status or r.status in ACTIVE_REQUEST_STATUSES)
                and (cluster_name is None or r.cluster_name == cluster_name)
                and (sees_everyone or r.user == self.user)
            ]

    def api_info(self) -> Any:
        return SimpleNamespace(status="healthy", version="fake", api_version="62")

    def get(self, request_id: str) -> Any:
        self._record("get", request_id)
        request = self.requests[request_id]
        if (
            self.proxy_cuts_silent_waits
            and request.name in ("sky.launch", "sky.exec", "sky.down")
            and not request.done.wait(0.05)
        ):
            raise RuntimeError("Failed to get request: 504 Gateway Time-out")
        return self._wait(request_id)

    def stream_and_get(self, request_id: str, output_stream: Any = None, **kwargs: Any) -> Any:
        self._record("stream_and_get", request_id)
        request = self.requests[request_id]
        if output_stream is not None:
            for line in request.logs:
                output_stream.write(line + "\n")
        try:
            return self._wait(request_id)
        finally:
            # The real stream notices the request's end on a 1 s poll: tests hold it longer.
            if not self.streams_may_end.wait(SAFETY_TIMEOUT):
                raise AssertionError(f"the log stream of {request_id} was held too long")

    def tail_logs(
        self,
        cluster_name: str,
        job_id: int | None,
        follow: bool = True,
        tail: int = 0,
        output_stream: Any = None,
        *,
        preload_content: bool = True,
        **kwargs: Any,
    ) -> Any:
        self._record("tail_logs", (cluster_name, job_id))
        self._delay()
        self._maybe_raise("tail_logs")
        try:
            job = next((j for j in self._cluster_up(cluster_name).jobs if j.job_id == job_id), None)
        except (exceptions.ClusterDoesNotExist, exceptions.ClusterNotUpError) as err:
            if preload_content:
                raise
            return iter([f"{type(err).__name__}: {err}\n"])  # the server streams its error, then ends
        lines = self.log_stream(job, follow, job_id)
        if not preload_content:
            return lines
        for line in lines:
            if line is not None and output_stream is not None:
                output_stream.write(line)
        return 102 if job is None else EXIT_CODES.get(job.status, 101)

    # ------------------------------------------------------------------ the "server"

    def log_stream(self, job: Any, follow: bool, job_id: int | None) -> Iterator[str | None]:
        """A job's log as the API server streams it: its lines, a None heartbeat while it is
        silent, and SkyPilot's own last line once it ended."""
        with self.lock:
            self.log_followers += 1
        try:
            if job is None:
                yield f"Job {job_id} not found.\n"
                return
            for number, line in enumerate(job.plan.logs):
                yield line + "\n"
                if number == 0:
                    with self.lock:
                        broken = self.stream_errors.pop(0) if self.stream_errors else None
                    if broken is not None:
                        raise broken
            deadline = time.monotonic() + SAFETY_TIMEOUT
            while follow and not job.done.wait(self.log_heartbeat_seconds):
                if time.monotonic() > deadline:
                    raise AssertionError(f"job {job.job_name} never finished")
                yield None
            if job.done.is_set():
                yield f"\x1b[0m\x1b[32m✓ Job finished (status: {job.status}).\x1b[0m\n"
        finally:
            with self.lock:
                self.log_followers -= 1

    def _start(
        self, name: str, cluster_name: str | None, work: Callable[[FakeRequest], Any], task_name: str = ""
    ) -> str:
        self._delay()
        request = FakeRequest(f"req-{next(self.ids)}", name, cluster_name, self.user, task_name)
        with self.lock:
            self.requests[request.request_id] = request
        method = name.removeprefix("sky.")

        def serve() -> None:
            try:
                self._maybe_raise(method)
                request.result = work(request)
                request.status = "SUCCEEDED"
            except BaseException as err:
                request.error = err
                request.status = "CANCELLED" if isinstance(err, exceptions.RequestCancelled) else "FAILED"
            finally:
                request.done.set()

        threading.Thread(target=serve, daemon=True, name=f"fake-{request.request_id}").start()
        return request.request_id

    def _upload(self, method: str) -> None:
        """The client side of a launch or exec before the server has a request: validate, upload."""
        gate = self.upload_gates.get(method)
        if gate is not None and not gate.wait(SAFETY_TIMEOUT):
            raise AssertionError(f"a {method} client call was held too long")

    def _wait(self, request_id: str) -> Any:
        request = self.requests[request_id]
        if not request.done.wait(SAFETY_TIMEOUT):
            raise AssertionError(f"request {request_id} ({request.name}) never finished")
        self._delay()
        if request.error is not None:
            raise request.error
        return request.result

    def _do_launch(
        self, request: FakeRequest, task: sky.Task, cluster_name: str, fast: bool
    ) -> tuple[int | None, Any]:
        labels = next((dict(r.labels or {}) for r in task.resources), {})
        with self.lock:
            cluster = self.clusters.setdefault(
                cluster_name, FakeCluster(cluster_name, owner=request.user, labels=labels)
            )
        request.logs.append(f"\x1b[1mLaunching\x1b[0m {cluster_name}")
        skip_setup = fast and cluster.status == "UP"
        error = self.launch_errors.get((task.name or "").rsplit("-", 1)[-1])
        if error is not None:
            raise error
        if cluster.status != "UP":
            if request.cancelled.wait(self.provision_seconds):
                raise exceptions.RequestCancelled(f"Request {request.request_id} cancelled")
            cluster.status = "UP"
        if request.cancelled.is_set():
            raise exceptions.RequestCancelled(f"Request {request.request_id} cancelled")
        handle = SimpleNamespace(cluster_name=cluster_name)
        if task.run is None and (task.setup is None or skip_setup):
            return None, handle  # nothing to run: SkyPilot submits no job
        ran_setup = task.setup is not None and not skip_setup
        return self._submit(cluster, task, request.user, ran_setup), handle

    def _do_exec(self, task: sky.Task, cluster_name: str) -> tuple[int, Any]:
        return self._submit(self._cluster_up(cluster_name), task, self.user, ran_setup=False), None

    def _do_down(self, cluster_name: str) -> None:
        time.sleep(self.down_seconds)
        with self.lock:
            cluster = self.clusters.pop(cluster_name, None)
        if cluster is None:
            raise exceptions.ClusterDoesNotExist(f"Cluster {cluster_name!r} does not exist.")
        for job in cluster.jobs:
            if not job.done.is_set():
                job.status = "CANCELLED"
                job.done.set()

    def _do_queue(self, cluster_name: str, user: str | None) -> list[Any]:
        return [
            SimpleNamespace(job_id=j.job_id, job_name=j.job_name, status=sky.JobStatus(j.status))
            for j in self._cluster_up(cluster_name).jobs
            if user is None or j.user == user
        ]

    def plan_for(self, task: sky.Task) -> JobPlan:
        """How the job of `task` (named "<prefix>-<run token>-<step>") behaves: the plan of its
        step (a step with "-" in its name: of the whole name, else of its last part), or of its
        step in one sweep variant (fake.plan("train@v2", ...))."""
        name = task.name or ""
        # The last "-<8 hex>-": a prefix may end in 8 hex, sharing its "-" with the run token.
        tokens = [i for i in range(len(name)) if _RUN_TOKEN.match(name, i)]
        steps = [name[tokens[-1] + 10 :]] if tokens else []
        steps.append(name.rsplit("-", 1)[-1])
        variant = task.envs.get("VARIANT_ID")
        for step in steps:
            if plan := self.plans.get(f"{step}@{variant}") or self.plans.get(step):
                return plan
        return JobPlan()

    def _submit(self, cluster: FakeCluster, task: sky.Task, user: str, ran_setup: bool) -> int:
        plan = self.plan_for(task)
        with self.lock:
            job = FakeJob(
                len(cluster.jobs) + 1,
                task.name or "",
                plan,
                user=user,
                envs=dict(task.envs),
                secrets={
                    k: v if isinstance(v, str) else v.get_secret_value() for k, v in task.secrets.items()
                },
                ran_setup=ran_setup,
            )
            cluster.jobs.append(job)
            self.submitted.append(job)

        def run() -> None:
            if plan.until_cancelled:
                job.done.wait(SAFETY_TIMEOUT)
            elif not job.done.wait(plan.seconds):
                job.status = plan.status
                job.finished_at = time.monotonic()
                job.done.set()

        threading.Thread(target=run, daemon=True).start()
        return job.job_id

    def _cluster_up(self, cluster_name: str) -> FakeCluster:
        with self.lock:
            cluster = self.clusters.get(cluster_name)
        if cluster is None:
            raise exceptions.ClusterDoesNotExist(f"Cluster {cluster_name!r} does not exist.")
        if cluster.status != "UP":
            raise exceptions.ClusterNotUpError(
                f"Cluster {cluster_name!r} is {cluster.status}.", cluster_status=None
            )
        return cluster

    def _maybe_raise(self, method: str) -> None:
        with self.lock:
            pending = self.errors.get(method)
            error = pending.pop(0) if pending else None
        if error is not None:
            raise error

    def _record(self, method: str, args: Any) -> None:
        with self.lock:
            self.calls.append((method, args))
            self.timeline.append((time.monotonic(), method, args))

    def _delay(self) -> None:
        if self.call_seconds:
            time.sleep(self.call_seconds)


def _named(cluster_name: str | None) -> str:
    if not cluster_name:
        raise ValueError("the fake SDK needs a cluster name: the worker always names its clusters")
    return cluster_name
