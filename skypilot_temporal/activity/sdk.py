"""The one seam to SkyPilot: the client SDK calls the worker makes, as a typed Protocol.

In production the seam is the `sky` module itself; in the fast tests it is
`testing/fake_sky.FakeSky`. `SkyPilotSDK` lists exactly the calls the code makes, with the
parameters it passes (positional where the code passes them by position, keyword-only where it
names them), and tests/unit/test_sky_sdk.py checks that both the installed SDK and the fake provide
every member, so the fake cannot drift from the real SDK.

The parameter types are what the code passes. The SDK's own annotations are narrower in two
places it does not enforce: a request id (`RequestId`, a str subclass; the worker also passes
ids it kept as plain str in heartbeat details) and an output stream (`io.TextIOBase`; the SDK
only calls write and flush). So a static type checker needs a `cast` to take the module as the
seam (run_worker.py); FakeSky conforms as it is.

This module never imports `sky` at run time: the starter imports the workflow, which imports the
activities, and SkyPilot takes seconds to import.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, runtime_checkable

import yaml

if TYPE_CHECKING:
    import sky

# The API server's id of a request (sky.server.common.RequestId is a str subclass).
RequestId = str
# libyaml's parser when PyYAML has it (several times faster than the pure-Python one).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class OutputStream(Protocol):
    """Where the SDK writes a request's or a job's log (an io.TextIOBase to SkyPilot)."""

    def write(self, text: str) -> int: ...

    def flush(self) -> None: ...


class TaskFactory(Protocol):
    """`sky.Task`, as far as the worker builds tasks with it."""

    def from_yaml_config(
        self,
        config: dict[str, Any],
        env_overrides: list[tuple[str, str]] | None = None,
        secrets_overrides: list[tuple[str, str]] | None = None,
    ) -> sky.Task: ...


class ManagedJobsSDK(Protocol):
    """`sky.jobs`, SkyPilot's managed jobs, as far as the worker uses them. A managed job runs on
    a cluster the jobs controller launches, relaunches it when the cluster is lost, and tears it
    down when the job ends."""

    def launch(self, task: sky.Task, *, name: str | None = None) -> RequestId: ...

    def queue_v2(
        self,
        *,
        refresh: bool,
        all_users: bool = False,
        job_ids: list[int] | None = None,
        fields: Sequence[str] | None = None,
        name_match: str | None = None,
    ) -> RequestId: ...

    def tail_logs(
        self, *, job_id: int | None = None, follow: bool = True, preload_content: Literal[False]
    ) -> Iterator[str | None]: ...

    def cancel(self, *, job_ids: Sequence[int] | None = None) -> RequestId: ...


@runtime_checkable
class SkyPilotSDK(Protocol):
    """The SkyPilot client SDK calls the worker makes. A call that starts a request on the API
    server returns its id at once; `get` / `stream_and_get` wait for the request's result."""

    @property
    def Task(self) -> TaskFactory: ...  # read-only: `sky.Task` is a class

    @property
    def jobs(self) -> ManagedJobsSDK: ...  # read-only: `sky.jobs` is a module

    def launch(
        self,
        task: sky.Task,
        *,
        cluster_name: str,
        fast: bool = False,
        idle_minutes_to_autostop: int | None = None,
        down: bool = False,
    ) -> RequestId: ...

    def exec(self, task: sky.Task, *, cluster_name: str) -> RequestId: ...

    def down(self, cluster_name: str) -> RequestId: ...

    def status(self, *, cluster_names: list[str] | None = None, all_users: bool = False) -> RequestId: ...

    def queue(self, cluster_name: str, *, all_users: bool = False) -> RequestId: ...

    def job_status(self, cluster_name: str, *, job_ids: list[int] | None = None) -> RequestId: ...

    def cancel(self, cluster_name: str, *, job_ids: list[int] | None = None) -> RequestId: ...

    def api_cancel(self, request_ids: list[RequestId], *, all_users: bool = False) -> RequestId: ...

    def api_status(self, *, all_status: bool = False, cluster_name: str | None = None) -> list[Any]: ...

    def api_info(self) -> Any: ...

    def get(self, request_id: RequestId) -> Any: ...

    def stream_and_get(self, request_id: RequestId, *, output_stream: OutputStream | None = None) -> Any: ...

    def tail_logs(
        self, cluster_name: str, job_id: int | None, *, follow: bool, preload_content: Literal[False]
    ) -> Iterator[str | None]: ...


def record_field(record: Any, name: str) -> Any:
    """A field of a record the SDK returns: a response object, or a dict from older API servers."""
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)


def status_name(status: Any) -> str:
    """A status enum's value (`JobStatus.RUNNING` -> "RUNNING"), or the status as text."""
    return str(getattr(status, "value", status) or "")


def request_task_names(request: Any) -> list[str]:
    """The task names in a launch/exec request record (its body's `task` is the DAG as YAML);
    [] when the body is hidden or unreadable."""
    try:
        dag_yaml = json.loads(record_field(request, "request_body")).get("task") or ""
        return [
            str(doc["name"])
            for doc in yaml.load_all(dag_yaml, Loader=_YAML_LOADER)
            if isinstance(doc, dict) and doc.get("name")
        ]
    except Exception:
        return []


def skypilot_sdk() -> SkyPilotSDK:
    """The real SkyPilot client SDK: the `sky` module itself is the seam (tests/unit/test_sky_sdk.py
    checks it provides every call). Imported here, not at the top: it takes seconds."""
    import sky

    return cast(SkyPilotSDK, sky)
