"""Temporal activities that run SkyPilot tasks through the SkyPilot client SDK.

Every activity is a method of `SkyPilotActivities`, which holds the one seam to SkyPilot
(`sky_sdk`: the `sky` module in production, a fake in unit tests) and a bounded thread pool.
All blocking SDK calls run in that pool; the event loop only heartbeats and waits.

Launch and exec share `_run_task`: build the task, find or submit its job, follow the job to
the end, and turn a failed job into a non-retryable `ApplicationError`. A retried attempt
re-attaches to the job of the attempt before it instead of submitting a second one.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import functools
import json
import os
import re
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from temporalio import activity
from temporalio.exceptions import ApplicationError

from redaction import Redactor, redact_url_credentials
from shared import (
    DownInput,
    ExecInput,
    FetchTasksInput,
    FetchTasksResult,
    JobProgress,
    LaunchInput,
    RemoveCheckoutInput,
    StepResult,
    TaskSpec,
)
from task_policy import (
    TaskPolicy,
    check_built_task,
    check_managed_secrets,
    check_secret_names,
    check_task_keys,
    confine_local_paths,
    load_task_yaml,
    refuse,
)

T = TypeVar("T")

# Payloads stay far below Temporal's 2 MB limit whatever a job prints.
LOG_TAIL_BYTES = 4096
# Task YAMLs travel through workflow history: keep them far below the 2 MB payload limit.
MAX_TASK_FILE_BYTES = 256 * 1024
DEFAULT_HEARTBEAT_INTERVAL_SECONDS = 5.0
# How long a cancelled activity waits for SkyPilot to confirm the cancel before giving up.
CANCEL_CONFIRM_TIMEOUT_SECONDS = 60.0
# How long a step waits for an unreachable SkyPilot API server before the attempt fails.
DEFAULT_OUTAGE_BUDGET_SECONDS = 20 * 60.0
OUTAGE_POLL_MAX_SECONDS = 15.0
# The worker's log gets at most this many lines of one job at once, refilled per second;
# SkyPilot keeps the job's whole log (`sky logs CLUSTER JOB`).
LOG_LINES_BURST, LOG_LINES_PER_SECOND = 200, 5.0
MAX_LOGGED_LINE_CHARS = 2000
# A line still being written (no newline yet) is kept up to this size, so the sink stays linear.
MAX_PARTIAL_LINE_CHARS = 64 * 1024

# tail_logs exit codes (sky.exceptions.JobExitCode).
EXIT_SUCCEEDED, EXIT_FAILED, EXIT_NOT_FINISHED, EXIT_NOT_FOUND, EXIT_CANCELLED = 0, 100, 101, 102, 103
TERMINAL_JOB_STATUSES = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_DRIVER", "CANCELLED"}
IN_FLIGHT_REQUEST_STATUSES = {"PENDING", "RUNNING"}
SUBMIT_REQUEST_NAMES = {"sky.launch", "sky.exec"}

# SkyPilot exception class names (matched along the MRO, most specific first) whose cause is
# the request itself: retrying cannot help. Everything else (API server unreachable, network,
# a vanished allocation, ...) is retried with backoff by the workflow's retry policy.
NON_RETRYABLE_SKY_ERRORS = frozenset(
    {
        "ClusterDoesNotExist",
        "ClusterNotUpError",
        "ResourcesUnavailableError",
        "ResourcesMismatchError",
        "NoCloudAccessError",
        "InvalidCloudConfigs",
        "InvalidCloudCredentials",
        "CloudUserIdentityError",
        "ClusterOwnerIdentityMismatchError",
        "InvalidSkyPilotConfigError",
        "InvalidClusterNameError",
        "NotSupportedError",
        "ProvisionPrechecksError",
        "UserRequestRejectedByPolicy",
        "StorageSpecError",
        "PermissionDeniedError",
        "ApiServerAuthenticationError",
        "APIVersionMismatchError",
        "APINotSupportedError",
        "ValueError",
        "TypeError",
        "KeyError",
    }
)
RETRYABLE_SKY_ERRORS = frozenset(
    {
        "KubeAPIUnreachableError",
        "ApiServerConnectionError",
        "ServerTemporarilyUnavailableError",
        "RequestCancelled",
        "RequestInterruptedError",
        "CommandError",
        "ClusterSetUpError",
        "FetchClusterInfoError",
        "NetworkError",
        "SkyletUnavailableError",
    }
)

# libyaml's parser when PyYAML has it (several times faster than the pure-Python one).
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
# SkyPilot's report of the task's own exit codes, e.g. "Job 1 failed with return code list: [3]".
_RETURN_CODES = re.compile(r"return code list: \[([-\d, ]+)\]")
_GIT_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_GIT_SHA = re.compile(r"[0-9a-f]{7,40}")
# What git may speak (GIT_ALLOW_PROTOCOL): "file" is a local path.
SECURE_GIT_SCHEMES = frozenset({"https", "ssh", "git+ssh", "ssh+git", "file"})
INSECURE_GIT_SCHEMES = frozenset({"git", "http"})
SECURE_GIT_PROTOCOLS = "file:https:ssh"
INSECURE_GIT_PROTOCOLS = "file:https:ssh:git:http"
_GIT_REMOTE_HELPER = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")
# What SkyPilot raises when its API server cannot be reached (a restarting server included:
# the SDK then claims that no endpoint is configured).
_UNREACHABLE_ERRORS = frozenset(
    {"ApiServerConnectionError", "ConnectionError", "ServerTemporarilyUnavailableError", "Timeout"}
)
_UNREACHABLE_MESSAGES = ("no skypilot api server endpoint is configured", "could not connect to skypilot")
_TRANSIENT_GIT_ERRORS = (
    "could not resolve host",
    "connection refused",
    "connection timed out",
    "operation timed out",
    "early eof",
    "the remote end hung up",
)


# ---------------------------------------------------------------- log handling


class JobLogSink:
    """A write()-able stream for the SDK: logs lines, keeps a bounded tail, hides secrets.

    It must never raise: the SDK treats an exception from its output stream as a transient
    error and retries the stream forever. The worker's log gets a bounded share of a chatty job
    (a burst, then a few lines a second, with a count of what was skipped); the tail and the
    heartbeat see every line.
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

    def write(self, text: str) -> int:
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
        try:
            if self._partial:
                self._add_line(self._partial)
                self._partial = ""
        except Exception:
            pass

    def clear_tail(self) -> None:
        self.flush()
        self._tail.clear()
        self._tail_bytes = 0

    def tail(self) -> str:
        self.flush()
        if self.lines_not_logged:
            self._log_line(
                f"({self.lines_not_logged} more lines not logged here; SkyPilot keeps the job's whole log)"
            )
            self.lines_not_logged = 0
        return "\n".join(self._tail)

    def _add_line(self, raw: str) -> None:
        line = self.redact(_ANSI_ESCAPE.sub("", raw).rstrip("\r").split("\r")[-1].rstrip())
        if not line:
            return
        self._log(line)
        if codes := _RETURN_CODES.search(line):
            self.task_exit_code = next((int(c) for c in codes.group(1).split(",") if int(c)), 0)
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


def _last_carriage_segment(text: str) -> str:
    """A progress bar redraws its line with \\r: only the text after the last one is kept."""
    cut = text.rfind("\r", 0, len(text) - 1) if len(text) > 1 else -1
    return text[cut + 1 :] if cut >= 0 else text


def clean_message(exc: BaseException) -> str:
    """One readable line from an exception: ANSI codes stripped, first meaningful line."""
    text = redact_url_credentials(_ANSI_ESCAPE.sub("", str(exc))).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines)[:1000] if lines else type(exc).__name__


def is_server_unreachable(exc: BaseException) -> bool:
    """The SkyPilot API server could not be reached: wait for it, the request may not exist."""
    if _is_named(exc, *_UNREACHABLE_ERRORS):
        return True
    return any(marker in str(exc).lower() for marker in _UNREACHABLE_MESSAGES)


def is_retryable(exc: BaseException) -> bool:
    if is_server_unreachable(exc):
        return True
    for klass in type(exc).__mro__:
        if klass.__name__ in NON_RETRYABLE_SKY_ERRORS:
            return False
        if klass.__name__ in RETRYABLE_SKY_ERRORS:
            return True
    return True


def to_application_error(exc: BaseException, what: str, always_retry: bool = False) -> ApplicationError:
    """Classify a SkyPilot SDK exception as a retryable or non-retryable ApplicationError."""
    if isinstance(exc, ApplicationError):
        return exc
    return ApplicationError(
        f"{what}: {type(exc).__name__}: {clean_message(exc)}",
        type=type(exc).__name__,
        non_retryable=not (always_retry or is_retryable(exc)),
    )


# ---------------------------------------------------------------- git


async def _git(
    *args: str, cwd: str | None = None, timeout: float = 300, protocols: str = SECURE_GIT_PROTOCOLS
) -> str:
    """Run git with an argument list (never a shell) and no way to prompt for credentials."""
    env = {
        **os.environ,
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_ASKPASS": "true",
        "GIT_ALLOW_PROTOCOL": protocols,
        "LC_ALL": "C",
    }
    proc = await asyncio.create_subprocess_exec(
        "git",
        *args,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    except (TimeoutError, asyncio.CancelledError):
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        message = stderr.decode(errors="replace").strip() or f"git {args[0]} failed"
        raise GitError(redact_url_credentials(message))
    return stdout.decode(errors="replace").strip()


class GitError(Exception):
    pass


def validate_ref(ref: str) -> None:
    if not _GIT_REF.fullmatch(ref) or ".." in ref or ref.endswith((".", "/", ".lock")):
        raise ApplicationError(
            f"invalid git ref {ref!r}: use a branch, tag or commit SHA", type="InvalidRef", non_retryable=True
        )


def resolve_inside(root: Path, relative: str, what: str) -> Path:
    """`root/relative`, refusing absolute paths and anything that escapes `root`."""
    try:
        candidate = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL, a name too long
        raise refuse(f"{what} {relative!r}: {clean_message(exc)}", "PathOutsideRepository") from None
    if Path(relative).is_absolute() or not candidate.is_relative_to(root.resolve()):
        raise ApplicationError(
            f"{what} {relative!r} is outside the task repository",
            type="PathOutsideRepository",
            non_retryable=True,
        )
    return candidate


def check_repo_url(repo_url: str, allow_insecure: bool = False) -> str:
    """The git protocols a fetch of `repo_url` may use; refuses a URL the worker will not fetch.

    https, ssh (also `user@host:path`) and local paths always; unencrypted git:// and http://
    only when the operator allows them (WORKER_ALLOW_INSECURE_GIT).
    """
    # `transport::address` hands the URL to a git remote helper (ext:: runs a command).
    if not repo_url or repo_url.startswith("-") or "\0" in repo_url or _GIT_REMOTE_HELPER.match(repo_url):
        raise refuse(f"invalid repository {redact_url_credentials(repo_url)!r}", "InvalidRepository")
    scheme = repo_url.split("://", 1)[0].lower() if "://" in repo_url else ""
    if scheme in INSECURE_GIT_SCHEMES and not allow_insecure:
        raise refuse(
            f"repository {redact_url_credentials(repo_url)!r} uses unencrypted {scheme}://: use https or "
            "ssh (the worker's operator can allow it with WORKER_ALLOW_INSECURE_GIT=true)",
            "InsecureRepositoryUrl",
        )
    if scheme and scheme not in SECURE_GIT_SCHEMES | INSECURE_GIT_SCHEMES:
        raise refuse(
            f"repository {redact_url_credentials(repo_url)!r}: {scheme}:// is not supported "
            "(use https, ssh or a local path)",
            "InvalidRepository",
        )
    return INSECURE_GIT_PROTOCOLS if allow_insecure else SECURE_GIT_PROTOCOLS


async def checkout_repo(
    repo_url: str, ref: str, checkout_dir: Path, replace: bool = False, allow_insecure: bool = False
) -> str:
    """Check out `ref` of `repo_url` (that commit only, no history) at `checkout_dir`; return its SHA.

    The checkout is made in a temporary directory and renamed into place, so a directory at
    `checkout_dir` is always complete, and two activities recreating it at once both succeed.
    An existing checkout is kept unless `replace`.
    """
    validate_ref(ref)
    protocols = check_repo_url(repo_url, allow_insecure)
    checkout_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = checkout_dir.with_name(f".{checkout_dir.name}.{uuid.uuid4().hex[:8]}")
    try:
        await _git("init", "--quiet", str(staging))
        sha = await _fetch_commit(repo_url, ref, staging, protocols)
        await _git("checkout", "--quiet", "--detach", sha, cwd=str(staging))
        if replace:
            await asyncio.to_thread(shutil.rmtree, checkout_dir, True)
        try:
            staging.rename(checkout_dir)
        except OSError:
            if not (checkout_dir / ".git").is_dir():
                raise
            # Another activity put the same commit there first: use theirs.
        return sha
    finally:
        await asyncio.to_thread(shutil.rmtree, staging, True)


async def _fetch_commit(repo_url: str, ref: str, repo_dir: Path, protocols: str) -> str:
    """Fetch the one commit `ref` names into `repo_dir` (shallow); return its SHA."""
    cwd = str(repo_dir)
    try:
        await _git(
            "fetch",
            "--quiet",
            "--depth",
            "1",
            "--end-of-options",
            repo_url,
            ref,
            cwd=cwd,
            protocols=protocols,
        )
    except GitError as err:
        message = str(err).lower()
        missing_ref = "couldn't find remote ref" in message
        refused_sha = "unadvertised object" in message or "not our ref" in message
        if not (missing_ref or refused_sha):
            raise _clone_error(repo_url, str(err)) from None
        if not _GIT_SHA.fullmatch(ref):
            raise _ref_not_found(repo_url, ref) from None
        # An abbreviated SHA (or a server that refuses SHAs): fetch everything, then resolve.
        try:
            await _git(
                "fetch",
                "--quiet",
                "--end-of-options",
                repo_url,
                "+refs/*:refs/fetched/*",
                cwd=cwd,
                protocols=protocols,
            )
        except GitError as err2:
            raise _clone_error(repo_url, str(err2)) from None
        try:
            return await _git(
                "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}", cwd=cwd
            )
        except GitError:
            raise _ref_not_found(repo_url, ref) from None
    return await _git("rev-parse", "--verify", "--end-of-options", "FETCH_HEAD^{commit}", cwd=cwd)


def _clone_error(repo_url: str, message: str) -> ApplicationError:
    transient = any(marker in message.lower() for marker in _TRANSIENT_GIT_ERRORS)
    return ApplicationError(
        f"cannot clone repository {redact_url_credentials(repo_url)!r}: {' '.join(message.split())}",
        type="RepositoryUnavailable" if transient else "RepositoryNotFound",
        non_retryable=not transient,
    )


def _ref_not_found(repo_url: str, ref: str) -> ApplicationError:
    return ApplicationError(
        f"ref {ref!r} not found in repository {redact_url_credentials(repo_url)!r}",
        type="RefNotFound",
        non_retryable=True,
    )


# ---------------------------------------------------------------- activities


class SkyPilotActivities:
    """The pipeline's activities. `sky_sdk` is the seam: the `sky` module, or a fake in tests."""

    def __init__(
        self,
        sky_sdk: Any,
        executor: concurrent.futures.ThreadPoolExecutor,
        checkout_root: Path,
        heartbeat_interval_seconds: float = DEFAULT_HEARTBEAT_INTERVAL_SECONDS,
        environ: Mapping[str, str] | None = None,
        outage_budget_seconds: float = DEFAULT_OUTAGE_BUDGET_SECONDS,
        autodown_idle_minutes: int | None = None,
        policy: TaskPolicy | None = None,
        allow_insecure_git: bool = False,
    ) -> None:
        self._sky = sky_sdk
        self._executor = executor
        self._checkout_root = checkout_root.resolve()
        self._heartbeat_interval = heartbeat_interval_seconds
        self._environ = os.environ if environ is None else environ
        self._outage_budget = outage_budget_seconds
        # SkyPilot's own safety net where the infra has it: a cluster idle this long goes down.
        self._autodown_idle_minutes = autodown_idle_minutes
        # The operator's limits on task authors: no workflow input can widen them.
        self._policy = policy or TaskPolicy()
        self._allow_insecure_git = allow_insecure_git
        self._checkout_locks: collections.defaultdict[Path, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )

    # -------------------------------------------------------------- step 1: fetch the tasks

    @activity.defn
    async def fetch_tasks(self, input: FetchTasksInput) -> FetchTasksResult:
        """Step 1: check out the tasks and check each against the worker's policy, so a bad or
        hostile task fails the run before any cluster exists."""
        redact = Redactor(self._secret_values(input.secret_names))
        try:
            check_secret_names(input.secret_names, self._policy)
            checkout_dir = self._checkout_dir(input.checkout_name)
            async with self._checkout_locks[checkout_dir]:
                sha = await checkout_repo(
                    input.repo_url,
                    input.ref,
                    checkout_dir,
                    replace=True,
                    allow_insecure=self._allow_insecure_git,
                )
                _mark_used(checkout_dir)
            yaml_texts = {path: _read_task_file(checkout_dir, path, input) for path in input.yaml_paths}
            for relative, text in yaml_texts.items():
                spec = TaskSpec(
                    step=relative,
                    job_name="validate",
                    yaml_text=text,
                    env_overrides=input.env_overrides,
                    secret_names=input.secret_names,
                    checkout_name=input.checkout_name,
                )
                await self._blocking(self._build_task, spec, "")
        except ApplicationError as err:
            raise _masked(err, redact) from None
        activity.logger.info("Checked out %s at %s", redact_url_credentials(input.repo_url), sha)
        return FetchTasksResult(commit_sha=sha, yaml_texts=yaml_texts)

    @activity.defn
    async def remove_checkout(self, input: RemoveCheckoutInput) -> None:
        checkout_dir = self._checkout_dir(input.checkout_name)
        await asyncio.to_thread(shutil.rmtree, checkout_dir, True)
        if checkout_dir.parent != self._checkout_root:
            with contextlib.suppress(OSError):  # the workflow's folder, once its last run is gone
                checkout_dir.parent.rmdir()

    # -------------------------------------------------------------- launch, exec, down

    @activity.defn
    async def launch_task(self, input: LaunchInput) -> StepResult:
        def launch(task: Any) -> Any:
            if input.provision_only:
                task.run = None  # SkyPilot then runs only the task's setup, as a job (if it has one)
            return self._sky.launch(
                task, cluster_name=input.cluster_name, fast=input.reuse_provisioned, **self._autodown(task)
            )

        return await self._run_task(
            input.cluster_name,
            input.task,
            input.infra,
            launch,
            submit_phase="provisioning",
            expect_job=not input.provision_only,
        )

    @activity.defn
    async def exec_task(self, input: ExecInput) -> StepResult:
        def exec_(task: Any) -> Any:
            return self._sky.exec(task, cluster_name=input.cluster_name)

        return await self._run_task(input.cluster_name, input.task, "", exec_)

    @activity.defn
    async def down_cluster(self, input: DownInput) -> StepResult:
        """Tear the cluster down. Every error but "no such cluster" is retryable: the workflow
        keeps trying (and says so) until SkyPilot confirms, whatever the cause."""
        started = time.monotonic()
        progress = JobProgress(phase="tearing down", cluster_name=input.cluster_name)
        sink = self._sink(f"[down {input.cluster_name}]", [], progress)
        what = f"tearing down {input.cluster_name}"

        async def down() -> str:
            # A launch abandoned by a timed-out or dead attempt of this run could still create
            # the cluster after we tear it down: cancel the run's in-flight requests on it first.
            await self._cancel_own_requests(input.cluster_name, input.job_name_prefix)
            request_id = await self._blocking(self._sky.down, input.cluster_name)
            progress.request_id = str(request_id)
            try:
                await self._blocking(self._sky.stream_and_get, request_id, output_stream=sink)
            except Exception as exc:
                if not _is_named(exc, "ClusterDoesNotExist"):
                    raise
                return "ALREADY_GONE"
            return "TERMINATED"

        # A cancelled teardown is not undone on SkyPilot: the workflow's cleanup runs it again.
        async with self._skypilot_step(progress, what, cancel_skypilot=False, always_retry=True):
            try:
                outcome = await self._riding_outages(progress, down)
            except Exception as exc:
                if not _is_named(exc, "ClusterDoesNotExist"):
                    raise
                outcome = "ALREADY_GONE"
        activity.logger.info("Cluster %s: %s", input.cluster_name, outcome)
        return StepResult(
            step="down",
            cluster_name=input.cluster_name,
            job_status=outcome,
            duration_seconds=round(time.monotonic() - started, 3),
        )

    async def _cluster_creator(self, cluster: str) -> str | None:
        """The name of the task that created `cluster` ("" if unknown), None if there is none."""
        request_id = await self._blocking(self._sky.status, cluster_names=[cluster])
        records = [r for r in await self._blocking(self._sky.get, request_id) if _field(r, "name") == cluster]
        if not records:
            return None
        try:
            created_with = yaml.load(_field(records[0], "last_creation_yaml") or "", Loader=_YAML_LOADER)
        except yaml.YAMLError:
            return ""
        return str(created_with.get("name") or "") if isinstance(created_with, dict) else ""

    async def cluster_launch_times(self) -> dict[str, float]:
        """Every cluster SkyPilot knows (all users) -> when it was launched (epoch seconds;
        0 when SkyPilot has no time for it yet)."""
        records = await self._blocking(self._sky.get, await self._blocking(self._sky.status, all_users=True))
        return {
            str(_field(r, "name")): float(_field(r, "launched_at") or _field(r, "status_updated_at") or 0)
            for r in records
        }

    # -------------------------------------------------------------- the shared launch/exec helper

    async def _run_task(
        self,
        cluster: str,
        spec: TaskSpec,
        infra: str,
        submit: Callable[[Any], Any],
        submit_phase: str = "submitting",
        expect_job: bool = True,
    ) -> StepResult:
        """Build the task, submit it with `submit` (or re-attach to its job), follow the job."""
        started = time.monotonic()
        what = f"{spec.step} on {cluster}"
        progress = JobProgress(phase="preparing", cluster_name=cluster, job_name=spec.job_name)
        sink = self._sink(f"[{spec.step} {cluster}]", self._secret_values(spec.secret_names), progress)
        status, exit_code = "UP", None
        async with self._skypilot_step(progress, what, redact=sink.redact):
            await self._ensure_checkout(spec)
            # Parsing may consult cloud catalogs: keep it off the event loop too.
            task = await self._blocking(self._build_task, spec, infra)

            passes = 0

            async def find_or_submit() -> int | None:
                # Looked for on every attempt (and after an outage): a retry, a reset or a new run
                # of the same workflow id never puts a second job for this step on the cluster.
                nonlocal passes
                passes += 1
                job_id = await self._reattach(cluster, spec, progress, first_look=passes == 1)
                if job_id is None:
                    progress.phase = submit_phase
                    job_id = await self._submit(task, cluster, submit, progress, sink, expect_job)
                return job_id

            job_id = await self._riding_outages(progress, find_or_submit)
            if job_id is not None:
                progress.job_id = job_id
                progress.phase = "running"
                exit_code, status = await self._riding_outages(
                    progress, lambda: self._follow_job(cluster, job_id, sink)
                )
                if sink.task_exit_code is not None and exit_code != EXIT_CANCELLED:
                    exit_code = sink.task_exit_code
        result = StepResult(
            step=spec.step,
            cluster_name=cluster,
            job_id=job_id,
            job_status=status,
            exit_code=exit_code,
            log_tail=sink.tail(),
            duration_seconds=round(time.monotonic() - started, 3),
        )
        if status not in ("SUCCEEDED", "UP"):
            raise ApplicationError(
                f"{what}: job {job_id} ({spec.job_name}) {status}, exit code {exit_code}",
                result,
                type=f"Job{status.title().replace('_', '')}",
                non_retryable=True,
            )
        return result

    def _build_task(self, spec: TaskSpec, infra: str) -> Any:
        what = f"task {spec.step!r}"
        checkout_dir = self._checkout_dir(spec.checkout_name) if spec.checkout_name else None
        try:
            config = load_task_yaml(spec.yaml_text, what)
            check_task_keys(config, what, self._policy)
            check_managed_secrets(config, what, self._policy)
            confine_local_paths(config, what, checkout_dir, self._policy)
        except ApplicationError:
            raise
        except Exception as exc:  # whatever a hostile task makes the checks trip on: never retried
            raise refuse(f"{what} is invalid: {clean_message(exc)}", "InvalidTask") from None
        try:
            task = self._sky.Task.from_yaml_config(
                config,
                env_overrides=list(spec.env_overrides.items()) or None,
                secrets_overrides=list(self._secrets_for(spec).items()) or None,
            )
            if infra:
                task.set_resources_override({"infra": infra, "cloud": None, "region": None, "zone": None})
            task.name = spec.job_name
            # Again on what SkyPilot built: it substitutes $VARS into paths after the checks above.
            check_built_task(task, what, checkout_dir, self._policy)
        except ApplicationError:
            raise
        except Exception as exc:
            raise ApplicationError(
                f"{what} is invalid: {clean_message(exc)}", type="InvalidTask", non_retryable=True
            ) from None
        return task

    async def _reattach(
        self, cluster: str, spec: TaskSpec, progress: JobProgress, first_look: bool = True
    ) -> int | None:
        """The job of this step already on the cluster, if any: submitted by an earlier attempt
        of this run (found by its name), or still running from an earlier run of this workflow
        id (a reset, or a new run after a terminated one)."""
        info = activity.info()
        previous = info.heartbeat_details[0] if info.attempt > 1 and info.heartbeat_details else {}
        previous_job_id = previous.get("job_id") if isinstance(previous, dict) else None
        if previous_job_id is not None:
            activity.logger.info("Re-attaching to job %s on %s", previous_job_id, cluster)
            return int(previous_job_id)
        progress.phase = "looking for an earlier job"
        if info.attempt == 1 and first_look:
            # A first attempt can only find a job of an earlier run, and only on a cluster that
            # run created. Asking who created the cluster is a database read on the API server;
            # listing its jobs is a round trip to the cluster.
            creator = await self._cluster_creator(cluster)
            if creator is None or creator.startswith(spec.job_name.removesuffix(spec.step)):
                return None
        # Let a submission of ours still in flight on the API server finish, so its job is visible.
        await self._wait_for_own_requests(cluster, spec.job_name)
        try:
            request_id = await self._blocking(self._sky.queue, cluster, all_users=True)
            records = await self._blocking(self._sky.get, request_id)
        except Exception as exc:
            if _is_named(exc, "ClusterDoesNotExist", "ClusterNotUpError"):
                return None
            raise
        mine = [int(_field(r, "job_id")) for r in records if _field(r, "job_name") == spec.job_name]
        same_step = _same_step_other_runs(spec)
        unfinished_earlier = [
            int(_field(r, "job_id"))
            for r in records
            if same_step.fullmatch(str(_field(r, "job_name")))
            and _status_name(_field(r, "status")) not in TERMINAL_JOB_STATUSES
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
        submit: Callable[[Any], Any],
        progress: JobProgress,
        sink: JobLogSink,
        expect_job: bool,
    ) -> int | None:
        request_id = await self._blocking(submit, task)
        progress.request_id = str(request_id)
        activity.heartbeat(dataclasses.asdict(progress))
        job_id, _handle = await self._blocking(self._sky.stream_and_get, request_id, output_stream=sink)
        if job_id is None and expect_job:
            raise ApplicationError(
                f"{task.name} on {cluster}: SkyPilot returned no job id",
                type="NoJobSubmitted",
                non_retryable=True,
            )
        if job_id is not None:
            activity.logger.info("Submitted job %s (%s) on %s", job_id, task.name, cluster)
        return None if job_id is None else int(job_id)

    async def _follow_job(self, cluster: str, job_id: int, sink: JobLogSink) -> tuple[int, str]:
        """Stream the job's log until it ends; return its exit code and final status."""
        sink.clear_tail()
        exit_code = EXIT_NOT_FINISHED
        while exit_code == EXIT_NOT_FINISHED:
            exit_code = await self._blocking(
                self._sky.tail_logs, cluster, job_id, follow=True, output_stream=sink
            )
        if exit_code == EXIT_SUCCEEDED:
            return exit_code, "SUCCEEDED"
        # A failure could be FAILED, FAILED_SETUP or FAILED_DRIVER: ask for the status.
        request_id = await self._blocking(self._sky.job_status, cluster, job_ids=[job_id])
        statuses = await self._blocking(self._sky.get, request_id)
        status = statuses.get(job_id) or statuses.get(str(job_id))
        status_name = getattr(status, "value", None) or (str(status) if status else "")
        if status_name not in TERMINAL_JOB_STATUSES:
            status_name = {
                EXIT_SUCCEEDED: "SUCCEEDED",
                EXIT_CANCELLED: "CANCELLED",
                EXIT_NOT_FOUND: "NOT_FOUND",
            }.get(exit_code, "FAILED")
        return int(exit_code), status_name

    # -------------------------------------------------------------- cancellation

    async def _cancel_on_skypilot_if_requested(self, cluster: str, progress: JobProgress) -> None:
        """Cancel the SkyPilot side when the workflow asked for it.

        Not on worker shutdown or a heartbeat timeout: then the next attempt re-attaches.
        """
        details = activity.cancellation_details()
        if details is None or not details.cancel_requested:
            return
        progress.phase = "cancelling"
        try:
            await asyncio.wait_for(
                self._cancel_on_skypilot(cluster, progress), CANCEL_CONFIRM_TIMEOUT_SECONDS
            )
        except Exception as exc:
            activity.logger.warning("Cancelling %s on SkyPilot failed: %s", cluster, clean_message(exc))

    async def _cancel_on_skypilot(self, cluster: str, progress: JobProgress) -> None:
        job_id = progress.job_id
        if job_id is None and progress.request_id:
            activity.logger.info("Cancelling request %s", progress.request_id)
            await self._blocking(self._sky.api_cancel, [progress.request_id])
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
        requests = await self._blocking(self._sky.api_status, cluster_name=cluster)
        return [
            r
            for r in requests
            if _field(r, "cluster_name") == cluster  # old API servers ignore the filter
            and _field(r, "status") in IN_FLIGHT_REQUEST_STATUSES
            and _field(r, "name") in SUBMIT_REQUEST_NAMES
            and _submitted_by(r, job_name_prefix)
        ]

    async def _wait_for_own_requests(self, cluster: str, job_name: str) -> None:
        for request in await self._own_requests(cluster, job_name):
            with contextlib.suppress(Exception):
                await self._blocking(self._sky.get, _field(request, "request_id"))

    async def _cancel_own_requests(self, cluster: str, job_name_prefix: str) -> None:
        request_ids = [_field(r, "request_id") for r in await self._own_requests(cluster, job_name_prefix)]
        if request_ids:
            activity.logger.info("Cancelling in-flight requests on %s: %s", cluster, request_ids)
            await self._blocking(self._sky.api_cancel, request_ids)

    async def _riding_outages(self, progress: JobProgress, step: Callable[[], Awaitable[T]]) -> T:
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

    # -------------------------------------------------------------- plumbing

    async def _blocking(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run a blocking SDK call in the bounded pool, keeping the activity context."""
        context = contextvars.copy_context()
        future = self._executor.submit(context.run, functools.partial(fn, *args, **kwargs))
        return await asyncio.wrap_future(future)

    @contextlib.asynccontextmanager
    async def _skypilot_step(
        self,
        progress: JobProgress,
        what: str,
        cancel_skypilot: bool = True,
        always_retry: bool = False,
        redact: Callable[[str], str] = redact_url_credentials,
    ) -> AsyncIterator[None]:
        """Around every SkyPilot step: heartbeat `progress`; on a cancel the workflow asked for,
        cancel the SkyPilot side too; turn SDK exceptions into classified ApplicationErrors with
        secrets masked (the original exception is not chained: its text could hold them)."""

        async def beat() -> None:
            while True:
                activity.heartbeat(dataclasses.asdict(progress))
                await asyncio.sleep(self._heartbeat_interval)

        heartbeat_task = asyncio.create_task(beat())
        try:
            yield
        except asyncio.CancelledError:
            if cancel_skypilot:
                await self._cancel_on_skypilot_if_requested(progress.cluster_name, progress)
            raise
        except Exception as exc:
            raise _masked(to_application_error(exc, what, always_retry), redact) from None
        finally:
            heartbeat_task.cancel()

    async def _ensure_checkout(self, spec: TaskSpec) -> None:
        """A retry on another worker host may lack the run's checkout: recreate it at the SHA."""
        if spec.checkout_name and spec.repo_url:
            checkout_dir = self._checkout_dir(spec.checkout_name)
            async with self._checkout_locks[checkout_dir]:
                if not checkout_dir.is_dir():
                    await checkout_repo(
                        spec.repo_url, spec.commit_sha, checkout_dir, allow_insecure=self._allow_insecure_git
                    )
                _mark_used(checkout_dir)

    def _autodown(self, task: Any) -> dict[str, Any]:
        """sky.launch options for SkyPilot's autodown, on infra that supports it."""
        if self._autodown_idle_minutes is None:
            return {}
        return {"idle_minutes_to_autostop": self._autodown_idle_minutes, "down": True}

    def _checkout_dir(self, checkout_name: str) -> Path:
        return resolve_inside(self._checkout_root, checkout_name, "checkout")

    def _secrets_for(self, spec: TaskSpec) -> dict[str, str]:
        check_secret_names(spec.secret_names, self._policy)
        missing = [name for name in spec.secret_names if name not in self._environ]
        if missing:
            raise ApplicationError(
                f"secret(s) {', '.join(missing)} not set in the worker's environment",
                type="MissingSecret",
                non_retryable=True,
            )
        return {name: self._environ[name] for name in spec.secret_names}

    def _secret_values(self, names: list[str]) -> list[str]:
        return [self._environ.get(name, "") for name in names if name in self._policy.secret_names]

    @staticmethod
    def _sink(prefix: str, secrets: list[str], progress: JobProgress) -> JobLogSink:
        logger = activity.logger
        return JobLogSink(lambda line: logger.info("%s %s", prefix, line), secrets, progress)


def _read_task_file(checkout_dir: Path, relative: str, input: FetchTasksInput) -> str:
    path = resolve_inside(checkout_dir, relative, "task file")
    if not path.is_file():
        raise refuse(
            f"task file {relative!r} not found in {redact_url_credentials(input.repo_url)!r} "
            f"at {input.ref!r}",
            "TaskFileNotFound",
        )
    if path.stat().st_size > MAX_TASK_FILE_BYTES:
        raise refuse(
            f"task file {relative!r} is larger than {MAX_TASK_FILE_BYTES // 1024} KB", "TaskFileTooLarge"
        )
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise refuse(f"task file {relative!r} is not UTF-8 text", "InvalidTaskYaml") from None


def _masked(err: ApplicationError, redact: Callable[[str], str]) -> ApplicationError:
    """`err` with secrets masked in its message (its details are masked where they are made)."""
    message = redact(err.message)
    if message == err.message:
        return err
    return ApplicationError(
        message,
        *err.details,
        type=err.type,
        non_retryable=err.non_retryable,
        next_retry_delay=err.next_retry_delay,
    )


def prune_checkouts(checkout_root: Path, max_age_seconds: float) -> list[Path]:
    """Remove run checkouts (`<root>/<prefix>/<run id>`) unused for `max_age_seconds`.

    Bounds the checkout cache of every worker host, whichever host ran the run's cleanup: a
    step that needs a removed checkout recreates it at its commit.
    """
    removed = []
    cutoff = time.time() - max_age_seconds
    for run_dir in sorted(checkout_root.glob("*/*")):
        with contextlib.suppress(OSError):
            if run_dir.is_dir() and run_dir.stat().st_mtime < cutoff:
                shutil.rmtree(run_dir, ignore_errors=True)
                removed.append(run_dir)
    for prefix_dir in checkout_root.glob("*"):
        with contextlib.suppress(OSError):
            prefix_dir.rmdir()  # only when empty
    return removed


def _mark_used(checkout_dir: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(checkout_dir)


def _same_step_other_runs(spec: TaskSpec) -> re.Pattern[str]:
    """Job names of `spec.step` in any run of the same workflow id (see shared.job_name_for)."""
    stem = spec.job_name.removesuffix(f"-{spec.step}")[:-9]
    return re.compile(re.escape(stem) + r"-[0-9a-f]{8}-" + re.escape(spec.step))


def _submitted_by(request: Any, job_name_prefix: str) -> bool:
    """Whether a launch/exec request on one of the run's clusters is the run's own.

    With authentication on, the API server shows a request's body only to its owner: a body we
    cannot read is another worker's submission for this run (the cluster name is reserved for
    the run's workflow id), so it counts as ours.
    """
    body = _field(request, "request_body")
    if not body:
        return True
    names = _task_names(body)
    return not names or any(name.startswith(job_name_prefix) for name in names)


def _task_names(request_body: Any) -> list[str]:
    """The task names in a launch/exec request's body (its `task` is the DAG as YAML)."""
    try:
        dag_yaml = json.loads(request_body).get("task") or ""
        return [
            str(doc["name"])
            for doc in yaml.load_all(dag_yaml, Loader=_YAML_LOADER)
            if isinstance(doc, dict) and doc.get("name")
        ]
    except Exception:
        return []


def _status_name(status: Any) -> str:
    return str(getattr(status, "value", status) or "")


def _is_named(exc: BaseException, *names: str) -> bool:
    return any(klass.__name__ in names for klass in type(exc).__mro__)


def _field(record: Any, name: str) -> Any:
    return record.get(name) if isinstance(record, Mapping) else getattr(record, name, None)
