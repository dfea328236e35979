"""What SkyPilot reports during the chaos soak (python -m bench.chaos_soak): clusters, jobs, leaks.

`Observer.poll()` asks the SkyPilot API server for every cluster (`sky.status(all_users=True)`)
and, for each UP cluster of the soak, its job queue (`sky.queue(cluster, all_users=True)`: on a
Slurm cluster a remote command, so at most one request per cluster and two in all are in flight,
beside the status polls). Every SDK call runs in a thread with a timeout, and a failed call (API
server down, restarting, slow) is counted and skipped: the soak goes on while a server is away.

A job is identified by (cluster, job id, submitted_at): job ids restart at 1 on a cluster that
was torn down and launched again. A DUPLICATE is a second such job for the same (workflow id,
step) on any cluster. Job names are `<cluster prefix>-<step>`, or
`<cluster prefix>-<8 hex run token>-<step>`; both are understood.

A short-lived cluster (preprocess) may come and go between two answers of a slow `sky.queue`,
so `submissions()` adds a second, after-the-fact count from the API server's request records:
succeeded `sky.launch` / `sky.exec` requests per (workflow id, step), by the task name in their
body. It misses a submission whose request failed after the job was queued; the queue sees those.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

RUN_TOKEN = re.compile(r"[0-9a-f]{8}-")
# SkyPilot answers `sky.queue` only for these (INIT: "skipped ... only allowed for UP").
QUERYABLE = ("UP", "AUTOSTOPPING")


@dataclass
class ClusterSeen:
    name: str
    workflow_id: str
    first_seen: float
    last_seen: float
    status: str
    name_on_cloud: str = ""


@dataclass(frozen=True)
class JobKey:
    cluster: str
    job_id: int
    submitted_at: float


@dataclass
class JobSeen:
    workflow_id: str
    step: str
    key: JobKey
    job_name: str
    status: str
    first_seen: float
    last_seen: float
    running_since: float | None = None


def record_field(record: Any, name: str) -> Any:
    """A field of an SDK record, whether the SDK returned a model or a plain dict."""
    return record[name] if isinstance(record, dict) else getattr(record, name, None)


def enum_text(value: Any) -> str:
    return str(getattr(value, "value", value) or "")


class Observer:
    def __init__(
        self, sky: Any, prefixes: dict[str, str], call_timeout: float = 30.0, queue_timeout: float = 120.0
    ) -> None:
        self.sky = sky
        # Cluster prefix -> workflow id; longest first, so "a-1" never claims "a-10-...".
        self.prefixes = dict(sorted(prefixes.items(), key=lambda item: -len(item[0])))
        self.call_timeout = call_timeout
        # `sky.queue` runs a command on the cluster: slow under load, and never asked twice at once.
        self.queue_timeout = queue_timeout
        self.clusters: dict[str, ClusterSeen] = {}
        self.jobs: dict[JobKey, JobSeen] = {}
        # The soak's clusters in the last successful `sky.status`, and when it was asked.
        self.current: set[str] = set()
        self.last_ok_at: float | None = None
        self.polls_ok = 0
        self.polls_failed = 0
        self.last_error = ""
        self.slowest_poll = 0.0
        self.queue_ok = 0
        self.queue_failures: Counter[str] = Counter()  # exception type -> count
        self.slowest_queue = 0.0
        self._pool = concurrent.futures.ThreadPoolExecutor(8, thread_name_prefix="observer")
        self._queue_slots = asyncio.Semaphore(2)  # at most two queue requests at once
        self._querying: dict[str, asyncio.Task[None]] = {}

    # ------------------------------------------------------------------ names

    def owner(self, name: str) -> tuple[str, str] | None:
        """(workflow id, prefix) of a cluster or job name of the soak, else None."""
        for prefix, workflow_id in self.prefixes.items():
            if name.startswith(prefix + "-"):
                return workflow_id, prefix
        return None

    def step_of(self, job_name: str) -> tuple[str, str] | None:
        """(workflow id, step) of a job name of the soak: `<prefix>-[<run token>-]<step>`."""
        owner = self.owner(job_name or "")
        if not owner:
            return None
        workflow_id, prefix = owner
        rest = job_name[len(prefix) + 1 :]
        token = RUN_TOKEN.match(rest)
        if token and len(rest) > token.end():
            rest = rest[token.end() :]
        return workflow_id, rest

    # ------------------------------------------------------------------ polling

    async def _call(self, fn: Callable[..., Any], *args: Any, timeout: float = 0, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, lambda: self.sky.get(fn(*args, **kwargs)))
        return await asyncio.wait_for(future, timeout or self.call_timeout)

    async def poll(self) -> bool:
        """One look at SkyPilot; False when the API server did not answer."""
        asked = time.time()
        try:
            records = await self._call(self.sky.status, all_users=True)
        except Exception as err:
            self.polls_failed += 1
            self.last_error = f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
            return False
        ours = [r for r in records if self.owner(str(record_field(r, "name")))]
        self.current = {str(record_field(r, "name")) for r in ours}
        self.last_ok_at = asked
        for record in ours:
            self._saw_cluster(record, asked)
        for record in ours:
            name = str(record_field(record, "name"))
            if enum_text(record_field(record, "status")) in QUERYABLE and name not in self._querying:
                self._querying[name] = asyncio.create_task(self._poll_queue(name))
        self.polls_ok += 1
        self.slowest_poll = max(self.slowest_poll, time.time() - asked)
        return True

    async def fresh_look(self) -> bool:
        """A successful poll that started now (retried for up to a minute)."""
        for _ in range(20):
            if await self.poll():
                return True
            await asyncio.sleep(3)
        return False

    def close(self) -> None:
        """Stop the queue requests still in flight."""
        for task in list(self._querying.values()):
            task.cancel()

    def _saw_cluster(self, record: Any, asked: float) -> None:
        name = str(record_field(record, "name"))
        seen = self.clusters.get(name)
        if seen is None:
            owner = self.owner(name)
            assert owner
            seen = self.clusters[name] = ClusterSeen(name, owner[0], asked, asked, "")
        seen.last_seen = asked
        seen.status = enum_text(record_field(record, "status"))
        seen.name_on_cloud = str(record_field(record, "cluster_name_on_cloud") or seen.name_on_cloud)

    async def _poll_queue(self, cluster: str) -> None:
        try:
            async with self._queue_slots:
                asked = time.time()
                records = await self._call(
                    self.sky.queue, cluster, all_users=True, timeout=self.queue_timeout
                )
            self.queue_ok += 1
            self.slowest_queue = max(self.slowest_queue, time.time() - asked)
            for record in records:
                self._saw_job(cluster, record, asked)
        except Exception as err:  # e.g. the cluster is being torn down right now
            self.queue_failures[type(err).__name__] += 1
        finally:
            del self._querying[cluster]

    def _saw_job(self, cluster: str, record: Any, asked: float) -> None:
        job_name = str(record_field(record, "job_name") or "")
        owner_step = self.step_of(job_name)
        if not owner_step:
            return
        key = JobKey(
            cluster, int(record_field(record, "job_id")), float(record_field(record, "submitted_at"))
        )
        status = enum_text(record_field(record, "status"))
        job = self.jobs.get(key)
        if job is None:
            job = self.jobs[key] = JobSeen(*owner_step, key, job_name, status, asked, asked)
        job.last_seen, job.status = asked, status
        if status == "RUNNING" and job.running_since is None:
            job.running_since = asked

    # ------------------------------------------------------------------ answers

    def running_since(self, workflow_id: str, step: str) -> float | None:
        """When a job of (workflow id, step) was first seen RUNNING, if ever."""
        times = [
            j.running_since
            for j in self.jobs.values()
            if (j.workflow_id, j.step) == (workflow_id, step) and j.running_since is not None
        ]
        return min(times) if times else None

    def duplicates(self) -> dict[tuple[str, str], list[JobSeen]]:
        """(workflow id, step) -> its jobs, for every step seen with more than one job."""
        by_step: dict[tuple[str, str], list[JobSeen]] = defaultdict(list)
        for job in self.jobs.values():
            by_step[(job.workflow_id, job.step)].append(job)
        return {
            key: sorted(jobs, key=lambda j: j.first_seen) for key, jobs in by_step.items() if len(jobs) > 1
        }

    def duplicate_count(self) -> int:
        return sum(len(jobs) - 1 for jobs in self.duplicates().values())

    async def submissions(self) -> dict[tuple[str, str], list[str]]:
        """(workflow id, step) -> ids of its succeeded launch/exec requests, from the API server."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, lambda: self.sky.api_status(all_status=True))
        requests = await asyncio.wait_for(future, 120)
        found: dict[tuple[str, str], list[str]] = defaultdict(list)
        for request in requests:
            if record_field(request, "name") not in ("sky.launch", "sky.exec"):
                continue
            if enum_text(record_field(request, "status")) != "SUCCEEDED":
                continue
            if not self.owner(str(record_field(request, "cluster_name") or "")):
                continue
            for name in set(task_names(record_field(request, "request_body"))):  # DAG name = task name
                owner_step = self.step_of(name)
                if owner_step:
                    found[owner_step].append(str(record_field(request, "request_id")))
        return dict(found)

    def leaked_seconds(self, workflow_id: str, closed_at: float) -> float:
        """Cluster-seconds the run's clusters were still seen after the run closed."""
        return sum(
            max(0.0, c.last_seen - closed_at) for c in self.clusters.values() if c.workflow_id == workflow_id
        )

    def clusters_of(self, workflow_id: str) -> list[ClusterSeen]:
        return [c for c in self.clusters.values() if c.workflow_id == workflow_id]


def task_names(request_body: Any) -> list[str]:
    """The task names in a launch/exec request's body (its `task` is the DAG as YAML)."""
    try:
        body = json.loads(request_body) if isinstance(request_body, str) else request_body
        docs = yaml.safe_load_all(body.get("task") or "")
        return [str(doc["name"]) for doc in docs if isinstance(doc, dict) and doc.get("name")]
    except Exception:
        return []
