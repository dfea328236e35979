"""The task repository on the worker host: git checkouts of one commit, and the task files in them.

git runs with an argument list (never a shell), no way to prompt for credentials and only the
transports the worker's operator allows. A checkout holds one commit (shallow), is built in a
temporary directory and renamed into place, and is pruned once unused for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from temporalio.exceptions import ApplicationError

from skypilot_temporal.errors import clean_message, one_line, refuse
from skypilot_temporal.trust.redaction import redact_credentials

# Task YAMLs travel through workflow history: keep them far below the 2 MB payload limit.
MAX_TASK_FILE_BYTES = 256 * 1024

_GIT_REF = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]*")
_GIT_SHA = re.compile(r"[0-9a-f]{7,40}")
# What git may speak (GIT_ALLOW_PROTOCOL): "file" only for a local repository the operator allows.
SECURE_GIT_SCHEMES = frozenset({"https", "ssh", "git+ssh", "ssh+git", "file"})
INSECURE_GIT_SCHEMES = frozenset({"git", "http"})
SECURE_GIT_PROTOCOLS = "https:ssh"
INSECURE_GIT_PROTOCOLS = "https:ssh:git:http"
LOCAL_GIT_PROTOCOLS = "file"
_GIT_REMOTE_HELPER = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*::")
_TRANSIENT_GIT_ERRORS = (
    "could not resolve host",
    "connection refused",
    "connection timed out",
    "operation timed out",
    "early eof",
    "the remote end hung up",
)


class GitError(Exception):
    pass


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
        raise GitError(redact_credentials(message))
    return stdout.decode(errors="replace").strip()


def validate_ref(ref: str) -> None:
    if not _GIT_REF.fullmatch(ref) or ".." in ref or ref.endswith((".", "/", ".lock")):
        raise refuse(f"invalid git ref {ref!r}: use a branch, tag or commit SHA", "InvalidRef")


def resolve_inside(root: Path, relative: str, what: str) -> Path:
    """`root/relative`, refusing absolute paths and anything that escapes `root`."""
    try:
        candidate = (root / relative).resolve()
    except (OSError, RuntimeError, ValueError) as exc:  # a symlink loop, a NUL, a name too long
        raise refuse(f"{what} {relative!r}: {clean_message(exc)}", "PathOutsideRepository") from None
    if Path(relative).is_absolute() or not candidate.is_relative_to(root.resolve()):
        raise refuse(f"{what} {relative!r} is outside the task repository", "PathOutsideRepository")
    return candidate


def check_repo_url_syntax(repo_url: str) -> str:
    """The URL's scheme ("" for a local path or `user@host:path`); refuses what git must never
    be handed, or what is no URL at all. Needs no worker setting: the starter checks it too."""
    shown = redact_credentials(repo_url)
    # `transport::address` hands the URL to a git remote helper (ext:: runs a command).
    if not repo_url or repo_url.startswith("-") or "\0" in repo_url or _GIT_REMOTE_HELPER.match(repo_url):
        raise refuse(f"invalid repository {shown!r}", "InvalidRepository")
    if "://" not in repo_url:
        return ""
    scheme = repo_url.split("://", 1)[0].lower()
    if scheme not in SECURE_GIT_SCHEMES | INSECURE_GIT_SCHEMES:
        raise refuse(
            f"repository {shown!r}: {scheme}:// is not supported (use https, ssh or a local path)",
            "InvalidRepository",
        )
    try:
        parts = urlsplit(repo_url)
        parts.port  # noqa: B018 (parses the port)
    except ValueError as exc:
        raise refuse(f"repository {shown!r} is not a valid URL: {exc}", "InvalidRepository") from None
    if scheme != "file" and not parts.hostname:
        raise refuse(f"repository {shown!r} has no host", "InvalidRepository")
    return scheme


def local_repo_path(repo_url: str) -> str | None:
    """The local path a repository URL names, as git reads it (a path, or file://PATH with its
    %-escapes decoded), or None for a remote repository (`scheme://...`, or scp-like
    `[user@]host:path`)."""
    if repo_url.lower().startswith("file://"):
        return unquote(repo_url[len("file://") :])
    if "://" in repo_url:
        return None
    colon, slash = repo_url.find(":"), repo_url.find("/")
    if colon > 0 and (slash < 0 or colon < slash):
        return None
    return repo_url


class RepoSource(NamedTuple):
    """What git fetches (the URL, or for a local repository the resolved path that was checked),
    and the protocols it may speak doing so (GIT_ALLOW_PROTOCOL)."""

    fetch_from: str
    protocols: str


def check_repo_url(
    repo_url: str,
    allow_insecure: bool = False,
    local_repo_dirs: Sequence[Path] = (),
    checkout_root: Path | None = None,
) -> RepoSource:
    """Where and how a fetch of `repo_url` goes; refuses a URL the worker will not fetch.

    https and ssh (also `user@host:path`) always; unencrypted git:// and http:// only when the
    operator allows them (WORKER_ALLOW_INSECURE_GIT); a local repository (a path or file://)
    only inside a directory the operator allows (WORKER_ALLOWED_LOCAL_REPOS), and never inside
    the worker's checkouts (another run's tasks). git is handed the path that was checked, never
    the text it would decode again (`file:///allowed/%2e%2e/...`).
    """
    scheme = check_repo_url_syntax(repo_url)
    shown = redact_credentials(repo_url)
    local = local_repo_path(repo_url)
    if local is not None:
        checked = _check_local_repo(local, shown, local_repo_dirs, checkout_root)
        return RepoSource(str(checked), LOCAL_GIT_PROTOCOLS)
    if scheme in INSECURE_GIT_SCHEMES and not allow_insecure:
        raise refuse(
            f"repository {shown!r} uses unencrypted {scheme}://: use https or "
            "ssh (the worker's operator can allow it with WORKER_ALLOW_INSECURE_GIT=true)",
            "InsecureRepositoryUrl",
        )
    return RepoSource(repo_url, INSECURE_GIT_PROTOCOLS if allow_insecure else SECURE_GIT_PROTOCOLS)


def _check_local_repo(
    path: str, shown: str, allowed_dirs: Sequence[Path], checkout_root: Path | None
) -> Path:
    if not os.path.isabs(path):
        raise refuse(
            f"repository {shown!r}: a local repository must be an absolute path", "InvalidRepository"
        )
    try:
        resolved = Path(path).resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise refuse(f"repository {shown!r}: {clean_message(exc)}", "InvalidRepository") from None
    if checkout_root is not None and resolved.is_relative_to(checkout_root.resolve()):
        raise refuse(
            f"repository {shown!r} is inside the worker's checkouts: never a task repository",
            "LocalRepositoryNotAllowed",
        )
    if not any(resolved.is_relative_to(d) for d in allowed_dirs):
        raise refuse(
            f"repository {shown!r} is a local path: this worker takes local repositories only from "
            "the directories its operator lists in WORKER_ALLOWED_LOCAL_REPOS",
            "LocalRepositoryNotAllowed",
        )
    return resolved


async def checkout_repo(
    repo_url: str,
    ref: str,
    checkout_dir: Path,
    replace: bool = False,
    allow_insecure: bool = False,
    local_repo_dirs: Sequence[Path] = (),
    checkout_root: Path | None = None,
) -> str:
    """Check out `ref` of `repo_url` (that commit only, no history) at `checkout_dir`; return its SHA.

    The checkout is made in a temporary directory and renamed into place, so a directory at
    `checkout_dir` is always complete, and two activities recreating it at once both succeed.
    An existing checkout is kept unless `replace`.
    """
    validate_ref(ref)
    source = check_repo_url(repo_url, allow_insecure, local_repo_dirs, checkout_root)
    checkout_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = checkout_dir.with_name(f".{checkout_dir.name}.{uuid.uuid4().hex[:8]}")
    try:
        await _git("init", "--quiet", str(staging))
        sha = await _fetch_commit(source, repo_url, ref, staging)
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


async def _fetch_commit(source: RepoSource, repo_url: str, ref: str, repo_dir: Path) -> str:
    """Fetch the one commit `ref` names from `source` into `repo_dir` (shallow); return its SHA
    (`repo_url`, as given, names the repository in messages)."""
    cwd, protocols = str(repo_dir), source.protocols
    try:
        await _git(
            "fetch",
            "--quiet",
            "--depth",
            "1",
            "--end-of-options",
            source.fetch_from,
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
                source.fetch_from,
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
        one_line(f"cannot clone repository {redact_credentials(repo_url)!r}: {message}"),
        type="RepositoryUnavailable" if transient else "RepositoryNotFound",
        non_retryable=not transient,
    )


def _ref_not_found(repo_url: str, ref: str) -> ApplicationError:
    return refuse(f"ref {ref!r} not found in repository {redact_credentials(repo_url)!r}", "RefNotFound")


def read_task_file(
    checkout_dir: Path, relative: str, repo_url: str, ref: str, kind: str = "task file"
) -> str:
    """The task file (or pipeline file: `kind`) at `relative` in the checkout of `repo_url` at
    `ref`, as text."""
    path = resolve_inside(checkout_dir, relative, kind)
    if not path.is_file():
        raise refuse(
            f"{kind} {relative!r} not found in {redact_credentials(repo_url)!r} at {ref!r}",
            "TaskFileNotFound",
        )
    if path.stat().st_size > MAX_TASK_FILE_BYTES:
        raise refuse(
            f"{kind} {relative!r} is larger than {MAX_TASK_FILE_BYTES // 1024} KB", "TaskFileTooLarge"
        )
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise refuse(f"{kind} {relative!r} is not UTF-8 text", "InvalidTaskYaml") from None


def mark_used(checkout_dir: Path) -> None:
    """Touch the checkout: `prune_checkouts` removes the ones unused for a while."""
    with contextlib.suppress(OSError):
        os.utime(checkout_dir)


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
