"""What a task author may ask of the worker host: the checks a task YAML passes before SkyPilot
sees it.

A task YAML comes from whoever can push to a task repository; the worker that runs it holds
the platform's credentials. So a task may upload only files of its own run's checkout (or of
directories the worker's operator allows), may mount a directory of the cluster's host only
where the operator allows, may receive only the worker secrets the operator lists, and cannot
make the worker expand a YAML alias bomb. A run's repository may be a local path only inside
directories the operator allows. The policy is the worker's own setting: nothing in a workflow
input can widen it.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from temporalio.exceptions import ApplicationError

from skypilot_temporal.errors import clean_message, refuse

# Deeper nesting than this is no task file a person wrote.
MAX_YAML_DEPTH = 64
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
# An exception quoted in a refusal is cut shorter than the refusal itself.
QUOTED_ERROR_CHARS = 300


@dataclass(frozen=True)
class TaskPolicy:
    """The worker operator's limits on task authors (see .env.example, "Trust boundaries")."""

    # Local directories outside a run's checkout that tasks may upload (resolved, absolute).
    upload_dirs: tuple[Path, ...] = ()
    # Variables of the worker's environment a run may pass to its tasks as SkyPilot secrets.
    secret_names: frozenset[str] = field(default_factory=frozenset)
    # SkyPilot-managed secrets (stored on the API server) a task YAML may reference by name.
    managed_secret_names: frozenset[str] = field(default_factory=frozenset)
    # A task's `config:` block overrides the API server's SkyPilot config for that task (e.g.
    # kubernetes.remote_identity, the workspace): off unless the operator allows it.
    allow_task_config: bool = False
    # Directories of the worker host whose git repositories runs may use as a local `repo_url`.
    local_repo_dirs: tuple[Path, ...] = ()
    # Directories of the clusters' hosts a task may mount with an inline host_path volume (Slurm):
    # paths on those hosts, compared as written (normalized), never resolved on the worker.
    host_path_dirs: tuple[str, ...] = ()

    @classmethod
    def from_settings(
        cls,
        upload_dirs: Iterable[str],
        secret_names: Iterable[str],
        managed_secret_names: Iterable[str],
        allow_task_config: bool = False,
        local_repo_dirs: Iterable[str] = (),
        host_path_dirs: Iterable[str] = (),
    ) -> TaskPolicy:
        return cls(
            upload_dirs=tuple(Path(d).expanduser().resolve() for d in upload_dirs if d),
            secret_names=frozenset(n for n in secret_names if n),
            managed_secret_names=frozenset(n for n in managed_secret_names if n),
            allow_task_config=allow_task_config,
            local_repo_dirs=tuple(Path(d).expanduser().resolve() for d in local_repo_dirs if d),
            host_path_dirs=tuple(posixpath.normpath(d) for d in host_path_dirs if d),
        )


def load_task_yaml(text: str, what: str, document: int = 0) -> dict[str, Any]:
    """Parse a task file, refusing YAML aliases (an alias bomb expands exponentially) and absurd
    nesting before anything is built from it. `document` > 0: the task is that YAML document of
    the file (a SkyPilot multi-task file: a `name:` document, then the tasks)."""
    depth = 0
    try:
        for event in yaml.parse(text, Loader=_YAML_LOADER):
            if isinstance(event, yaml.AliasEvent):
                raise refuse(
                    f"{what} uses a YAML alias (*{event.anchor}): aliases are not allowed in task files",
                    "InvalidTaskYaml",
                )
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise refuse(f"{what} is nested deeper than {MAX_YAML_DEPTH} levels", "InvalidTaskYaml")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        if document:
            documents = list(yaml.load_all(text, Loader=_YAML_LOADER))
            config = documents[document] if document < len(documents) else None
        else:
            config = yaml.load(text, Loader=_YAML_LOADER)
    except ApplicationError:
        raise
    except Exception as exc:  # YAMLError, and e.g. ValueError for a timestamp like 2001-13-45
        raise refuse(f"{what} is not valid YAML: {_quoted(exc)}", "InvalidTaskYaml") from None
    if not isinstance(config, dict):
        raise refuse(f"{what} must be a YAML mapping", "InvalidTaskYaml")
    return config


# The task YAML keys a task author may use; SkyPilot's internal ones are refused:
# file_mounts_mapping (the API server rewrites upload paths with it), volume_mounts (with it
# SkyPilot skips its own volume checks: a forged mount of any host path), _metadata, ...
TASK_KEYS = frozenset(
    {"name", "workdir", "num_nodes", "resources", "file_mounts", "setup", "run", "envs", "secrets"}
    | {"managed_secrets", "volumes", "inputs", "outputs", "config", "service", "pool", "api_server_access"}
)


def check_task_keys(config: Mapping[str, Any], what: str, policy: TaskPolicy) -> None:
    """Parts of a task YAML this worker does not run: services and pools (their TLS key files are
    uploaded from the worker host), SkyPilot's internal keys (`file_mounts_mapping`, `_...` in
    resources and storage: `_cluster_config_overrides` would bypass the `config:` rule), and
    per-task SkyPilot config unless the operator allows it."""
    if config.get("api_server_access", False) is not False:
        raise refuse(
            f"{what}: `api_server_access:` may only be false here (a managed job would call the "
            "SkyPilot API server as this worker)",
            "InvalidTask",
        )
    unknown = sorted(str(k) for k in config if k not in TASK_KEYS)
    if unknown:
        raise refuse(
            f"{what}: key(s) {', '.join(map(repr, unknown))} are not allowed in a task", "InvalidTask"
        )
    for section in ("resources", "file_mounts"):
        if internal := _internal_key(config.get(section)):
            raise refuse(
                f"{what}: `{section}` may not set SkyPilot's internal key {internal!r}", "InvalidTask"
            )
    for key in ("service", "pool"):
        if key in config:
            raise refuse(f"{what}: `{key}:` is not supported here (the pipeline runs jobs)", "InvalidTask")
    if "config" in config and not policy.allow_task_config:
        raise refuse(
            f"{what}: a task's `config:` block is not allowed on this worker (its operator can allow it "
            "with WORKER_ALLOW_TASK_CONFIG=true)",
            "InvalidTask",
        )


def check_volumes(volumes: Any, what: str, policy: TaskPolicy) -> None:
    """`volumes:` may name SkyPilot volumes (whose access SkyPilot checks) and ephemeral ones; an
    inline `host_path` mounts a directory of the cluster's host, which on Slurm (and on the local
    stack) is a machine the platform runs: only inside a directory the operator allows."""
    if volumes is None:
        return
    if not isinstance(volumes, Mapping):
        raise refuse(f"{what}: volumes must be a mapping of mount path to volume", "InvalidTask")
    for target, volume in volumes.items():
        if not isinstance(volume, Mapping) or "host_path" not in volume:
            continue
        host_path = volume["host_path"]
        where = f"{what}: volume {target}: host_path {host_path!r}"
        if not isinstance(host_path, str) or not posixpath.isabs(host_path) or "\0" in host_path:
            raise refuse(f"{where} must be an absolute path", "PathNotAllowed")
        normalized = posixpath.normpath(host_path)
        if not any(
            normalized == d or normalized.startswith(d.rstrip("/") + "/") for d in policy.host_path_dirs
        ):
            raise refuse(
                f"{where} is not allowed (the worker's operator can allow a directory of the clusters' "
                "hosts with WORKER_ALLOWED_HOST_PATHS)",
                "PathNotAllowed",
            )


def check_secret_names(names: Iterable[str], policy: TaskPolicy) -> None:
    refused = sorted({n for n in names if n not in policy.secret_names})
    if refused:
        raise refuse(
            f"secret(s) {', '.join(map(repr, refused))} not allowed on this worker "
            "(its operator lists the secrets tasks may receive in WORKER_ALLOWED_SECRETS)",
            "SecretNotAllowed",
        )


def check_managed_secrets(config: Mapping[str, Any], what: str, policy: TaskPolicy) -> None:
    """A task YAML may name SkyPilot-managed secrets (`secrets: [NAME]`, `secrets: {NAME: null}`,
    `managed_secrets:`): the API server hands them out with the worker's identity."""
    names: list[str] = []
    secrets = config.get("secrets")
    if isinstance(secrets, list):
        names += [str(s) for s in secrets]
    elif isinstance(secrets, dict):
        names += [str(k) for k, v in secrets.items() if v is None]
    for entry in config.get("managed_secrets") or []:
        names += [str(k) for k in entry] if isinstance(entry, dict) else [str(entry)]
    refused = sorted({n for n in names if _managed_secret_name(n) not in policy.managed_secret_names})
    if refused:
        raise refuse(
            f"{what} references SkyPilot secret(s) {', '.join(map(repr, refused))} not allowed on this "
            "worker (see WORKER_ALLOWED_MANAGED_SECRETS)",
            "SecretNotAllowed",
        )


def confine_local_paths(
    config: dict[str, Any], what: str, checkout_dir: Path | None, policy: TaskPolicy
) -> None:
    """Point the task's local paths (workdir, file-mount and storage sources) at absolute paths
    inside the run's checkout, in place; refuse any that leaves it (absolute, `~`, `..`, a
    symlink) unless it is inside a directory the operator allows. Cloud URLs pass unchanged."""
    workdir = config.get("workdir")
    if isinstance(workdir, str):  # always a local path to SkyPilot, whatever it looks like
        config["workdir"] = _confined(workdir, f"{what}: workdir", checkout_dir, policy, may_be_url=False)
    elif workdir is not None and not isinstance(workdir, dict):  # {url, ref}: cloned on the cluster
        raise refuse(f"{what}: workdir must be a path or a git {{url, ref}}", "InvalidTask")
    file_mounts = config.get("file_mounts")
    if file_mounts is None:
        return
    if not isinstance(file_mounts, dict):
        raise refuse(f"{what}: file_mounts must be a mapping", "InvalidTask")
    for target, source in file_mounts.items():
        where = f"{what}: file mount {target}"
        if isinstance(source, str):
            file_mounts[target] = _confined(source, where, checkout_dir, policy)
        elif isinstance(source, dict) and "source" in source:
            sources = source["source"]
            if isinstance(sources, str):
                source["source"] = _confined(
                    sources, where, checkout_dir, policy, may_be_url=_is_storage_url(sources)
                )
            elif isinstance(sources, list):  # every entry of a list is a local path to SkyPilot
                source["source"] = [
                    _confined(str(s), where, checkout_dir, policy, may_be_url=False) for s in sources
                ]
            elif sources is not None:
                raise refuse(f"{where}: source must be a path, a URL or a list of them", "InvalidTask")


def check_built_task(task: Any, what: str, checkout_dir: Path | None, policy: TaskPolicy) -> None:
    """Check the local paths of the task SkyPilot built, as SkyPilot will read them: after it
    substituted `$VARS` from envs and overrides, made relative paths absolute against the
    worker's working directory and decided what is a cloud URL (a URL with a host)."""
    check_volumes(getattr(task, "volumes", None), what, policy)
    if getattr(task, "volume_mounts", None) is not None:
        raise refuse(f"{what}: volume mounts are SkyPilot's own (use `volumes:`)", "InvalidTask")
    local: list[tuple[str, str]] = []
    if isinstance(task.workdir, str):
        local.append(("workdir", task.workdir))
    for target, source in (task.file_mounts or {}).items():
        if isinstance(source, str) and not _is_url(source):
            local.append((f"file mount {target}", source))
    for target, storage in (getattr(task, "storage_mounts", None) or {}).items():
        sources = getattr(storage, "source", None)
        if isinstance(sources, str) and not _is_storage_url(sources):
            local.append((f"file mount {target}", sources))
        elif isinstance(sources, list):
            local += [(f"file mount {target}", str(s)) for s in sources]
    root = checkout_dir.resolve() if checkout_dir is not None else None
    for where, path in local:
        try:
            resolved = Path(os.path.abspath(os.path.expanduser(path))).resolve()
            inside = root if root is not None and resolved.is_relative_to(root) else None
            inside = inside or next((d for d in policy.upload_dirs if resolved.is_relative_to(d)), None)
            if inside is None:
                raise refuse(
                    f"{what}: {where}: {path!r} is outside the task repository (the worker's operator "
                    "can allow a directory with WORKER_ALLOWED_UPLOAD_DIRS)",
                    "PathNotAllowed",
                )
            _refuse_symlinks_out(resolved, f"{what}: {where}", inside, policy)
        except (OSError, RuntimeError, ValueError) as exc:
            raise refuse(
                f"{what}: {where}: cannot check {path!r}: {_quoted(exc)}", "PathNotAllowed"
            ) from None


def _confined(
    path: str, where: str, checkout_dir: Path | None, policy: TaskPolicy, may_be_url: bool = True
) -> str:
    try:
        return _confined_path(path, where, checkout_dir, policy, may_be_url)
    except (OSError, RuntimeError, ValueError) as exc:  # too long, a symlink loop, unreadable
        raise refuse(f"{where}: cannot check {path!r}: {_quoted(exc)}", "PathNotAllowed") from None


def _confined_path(
    path: str, where: str, checkout_dir: Path | None, policy: TaskPolicy, may_be_url: bool
) -> str:
    if path.lower().startswith("file:"):
        raise refuse(
            f"{where}: {path!r}: file:// URLs are not allowed (use a path in the repository)",
            "PathNotAllowed",
        )
    if may_be_url and _is_url(path):
        return path
    if "\0" in path:
        raise refuse(f"{where}: the path contains a NUL character", "PathNotAllowed")
    relative = not path.startswith(("/", "~"))
    if checkout_dir is not None and relative:
        root = checkout_dir.resolve()
        resolved = (root / path).resolve()
        if resolved.is_relative_to(root):
            _refuse_symlinks_out(resolved, where, root, policy)
            return str(resolved)
    else:
        try:
            resolved = Path(path).expanduser().resolve()
        except (RuntimeError, OSError):  # ~nosuchuser
            raise refuse(f"{where}: {path!r} is outside the task repository", "PathNotAllowed") from None
    allowed = next((d for d in policy.upload_dirs if resolved.is_relative_to(d)), None)
    if allowed is None:
        raise refuse(
            f"{where}: {path!r} is outside the task repository (the worker's operator can allow a "
            "directory with WORKER_ALLOWED_UPLOAD_DIRS)",
            "PathNotAllowed",
        )
    _refuse_symlinks_out(resolved, where, allowed, policy)
    return str(resolved)


def _refuse_symlinks_out(path: Path, where: str, root: Path, policy: TaskPolicy) -> None:
    """A symlink under an uploaded directory that points outside it (and outside every allowed
    directory) would upload what it points at."""
    if not path.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(path):
        if ".git" in dirnames:
            dirnames.remove(".git")
        for name in dirnames + filenames:
            entry = Path(dirpath, name)
            if not entry.is_symlink():
                continue
            target = entry.resolve()
            if not (target.is_relative_to(root) or any(target.is_relative_to(d) for d in policy.upload_dirs)):
                shown = entry.relative_to(path) if entry.is_relative_to(path) else entry
                raise refuse(
                    f"{where}: symlink {str(shown)!r} points outside the task repository", "PathNotAllowed"
                )


def _internal_key(value: Any) -> str:
    """The first mapping key starting with `_` anywhere in `value` ('' if none)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            if str(key).startswith("_"):
                return str(key)
            if found := _internal_key(item):
                return found
    elif isinstance(value, list):
        for item in value:
            if found := _internal_key(item):
                return found
    return ""


def _is_storage_url(source: str) -> bool:
    """SkyPilot's storage takes a source with no scheme as a local path (`//home/x` is /home/x)."""
    try:
        parts = urlsplit(source)
    except ValueError:
        return False
    return bool(parts.scheme and parts.netloc)


def _is_url(path: str) -> bool:
    """SkyPilot's own test (data_utils.is_cloud_store_url): a URL with a host. `x:///../etc` is
    a local path to SkyPilot, so it is one here too."""
    try:
        return bool(urlsplit(path).netloc)
    except ValueError:  # e.g. an unclosed [ in the host
        return False


def _managed_secret_name(raw: str) -> str:
    name = raw.removeprefix("secrets:")
    for scope in ("personal.", "workspace.", "global."):
        name = name.removeprefix(scope)
    return name


def _quoted(exc: BaseException) -> str:
    """An exception's text as quoted in a refusal: one line, cut shorter than the refusal."""
    return clean_message(exc, limit=QUOTED_ERROR_CHARS)
