"""A starter's option values, checked where they are typed: KEY=VALUE env overrides, sweep axes,
step timeouts, a sweep's variants and a run's workflow id.

The parsers raise argparse.ArgumentTypeError (argparse turns it into one usage line); the
builders raise ConfigError. run_workflow.py wires them to its flags; a platform's own starter can
check its input with the same rules.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import math
import posixpath
import re
import uuid
from collections.abc import Sequence
from urllib.parse import urlsplit

from temporalio.common import Priority

from skypilot_temporal.bounds import (
    ENV_NAME,
    MAX_HEARTBEAT_SECONDS,
    MAX_STEP_TIMEOUT_SECONDS,
    MAX_SWEEP_VARIANTS,
    sweep_problems,
)
from skypilot_temporal.errors import ConfigError
from skypilot_temporal.naming import CLUSTER_MARKER, MAX_PREFIX_LENGTH, cluster_prefix_for
from skypilot_temporal.payloads import PipelineInput, StepTimeouts, SweepInput

STEP_NAME = re.compile(r"[a-z][a-z0-9-]{0,62}")
DEFAULT_MAX_PARALLEL, DEFAULT_SELECT = 4, "eval_accuracy:max"
TIMEOUT_FIELDS = tuple(f.name for f in dataclasses.fields(StepTimeouts) if f.name != "steps")
RUN_WIDE_TIMEOUTS = ("fetch_tasks", "teardown", "heartbeat", "other_steps")
# Temporal's defaults: priority keys 1 (first) to 5, 3 when unset; fairness keys of at most 64 bytes.
MAX_PRIORITY, MAX_FAIRNESS_KEY_BYTES = 5, 64


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def sweep_values(text: str) -> tuple[str, list[str]]:
    key, sep, values = text.partition("=")
    if not sep or not ENV_NAME.fullmatch(key.strip()):
        raise argparse.ArgumentTypeError(f"expected NAME=V1,V2,... with NAME a variable name, got {text!r}")
    values_list = [v.strip() for v in values.split(",")]
    if not all(values_list):
        raise argparse.ArgumentTypeError(f"{text!r} has an empty value")
    return key.strip(), values_list


def step_timeout(text: str) -> tuple[str, int]:
    """STEP=SECONDS: a StepTimeouts field (train, eval, heartbeat, ...), or any other step's name
    (a pipeline file's steps)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    field = key.replace("-", "_")
    if not sep or not (field in TIMEOUT_FIELDS or STEP_NAME.fullmatch(key)):
        raise argparse.ArgumentTypeError(
            f"expected STEP=SECONDS (STEP: {', '.join(TIMEOUT_FIELDS)}, or a pipeline file's step), "
            f"got {text!r}"
        )
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"timeout for {key!r} must be whole seconds") from None
    limit = MAX_HEARTBEAT_SECONDS if key == "heartbeat" else MAX_STEP_TIMEOUT_SECONDS
    if not 1 <= seconds <= limit:
        raise argparse.ArgumentTypeError(f"timeout for {key!r} must be between 1 and {limit} seconds")
    return (field if field in TIMEOUT_FIELDS else key), seconds


def step_timeouts(given: Sequence[tuple[str, int]] | None, pipeline_file: bool) -> StepTimeouts:
    """The --timeout values as StepTimeouts; a name that is no field is a pipeline file's step.
    In a pipeline file's run every name but the run-wide ones is a step of the file (one named
    `train` too: the run's value for it must win over the file's)."""
    named = dict(given or [])
    fields = RUN_WIDE_TIMEOUTS if pipeline_file else TIMEOUT_FIELDS
    timeouts = StepTimeouts(
        **{k: v for k, v in named.items() if k in fields},
        steps={k: v for k, v in named.items() if k not in fields},
    )
    if timeouts.steps and not pipeline_file:
        raise ConfigError(
            f"--timeout: unknown step {next(iter(timeouts.steps))!r} (one of: {', '.join(TIMEOUT_FIELDS)}; "
            "other names are a pipeline file's steps, with --pipeline)"
        )
    return timeouts


def sweep_of(
    pipeline: PipelineInput,
    axes: Sequence[tuple[str, list[str]]],
    max_parallel: int | None,
    select: str | None,
    fail_fast: bool,
) -> SweepInput:
    """The cartesian product of the sweep axes' values, in the order given."""
    names = [name for name, _ in axes]
    twice = [name for i, name in enumerate(names) if name in names[:i]]
    if twice:
        raise ConfigError(f"--sweep gives {twice[0]!r} twice: give all its values in one")
    count = math.prod(len(values) for _, values in axes)
    if count > MAX_SWEEP_VARIANTS:
        raise ConfigError(f"--sweep makes {count} variants: at most {MAX_SWEEP_VARIANTS}")
    combinations = itertools.product(*(values for _, values in axes))
    metric, _, direction = (select or DEFAULT_SELECT).partition(":")
    sweep = SweepInput(
        pipeline,
        variants=[dict(zip(names, combo, strict=True)) for combo in combinations],
        max_parallel=DEFAULT_MAX_PARALLEL if max_parallel is None else max_parallel,
        select_metric=metric,
        select_direction=direction or "max",
        fail_fast=fail_fast,
    )
    if problems := sweep_problems(sweep):
        raise ConfigError("; ".join(problems))
    return sweep


def workflow_id_for(cluster_prefix: str | None, workflow_id: str | None) -> str:
    """A run's workflow id. Its clusters are named after it (naming.cluster_prefix_for), so a
    fixed cluster prefix is a fixed workflow id: Temporal refuses a second running one."""
    if cluster_prefix:
        if workflow_id:
            raise ConfigError("give --cluster-prefix or --workflow-id, not both")
        fixed = CLUSTER_MARKER + cluster_prefix.removeprefix(CLUSTER_MARKER)
        if cluster_prefix_for(fixed) != fixed:
            raise ConfigError(
                f"--cluster-prefix {cluster_prefix!r}: use lowercase letters, digits and single '-' "
                f"(at most {MAX_PREFIX_LENGTH - len(CLUSTER_MARKER)} characters)"
            )
        return fixed
    return workflow_id or f"{CLUSTER_MARKER}{uuid.uuid4().hex[:8]}"


def priority_key(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= MAX_PRIORITY:
        raise argparse.ArgumentTypeError(f"expected 1 (runs first) to {MAX_PRIORITY}, got {text!r}")
    return int(text)


def run_priority(priority: int | None, fairness_key: str, repo_url: str) -> Priority:
    """Temporal's Priority for a run, its steps and its sweep's variants (they inherit it):
    `priority` (None: Temporal's default, 3), and a fairness key that shares a task queue's
    backlog between teams: `fairness_key`, else the task repository's owner (host and first path
    part), so one team's big sweep cannot starve another team's run."""
    key = fairness_key.strip() or fairness_key_of(repo_url)
    if len(key.encode()) > MAX_FAIRNESS_KEY_BYTES:
        raise ConfigError(f"--fairness-key: at most {MAX_FAIRNESS_KEY_BYTES} bytes, got {len(key.encode())}")
    return Priority(priority_key=priority, fairness_key=key or None)


def fairness_key_of(repo_url: str) -> str:
    """A repository's owner as a fairness key: `github.com/acme` for any acme repository (a local
    path: its parent directory), cut to what Temporal takes. Never user info or a query."""
    if "://" in repo_url:
        try:
            parts = urlsplit(repo_url)
            owner = f"{parts.hostname or ''}/{parts.path.strip('/').split('/')[0]}"
        except ValueError:
            owner = ""
    elif "@" in repo_url and ":" in repo_url:  # user@host:owner/repo
        host, _, path = repo_url.rsplit("@", 1)[-1].partition(":")
        owner = f"{host}/{path.strip('/').split('/')[0]}"
    else:
        owner = posixpath.dirname(repo_url.rstrip("/")) or repo_url
    return owner.encode()[:MAX_FAIRNESS_KEY_BYTES].decode(errors="ignore")
