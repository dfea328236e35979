"""The bounds on what a workflow input may carry, and the checks that enforce them.

Anything outside is refused where it enters (the starter, and the workflow's first step for any
other client), never left to overflow a timedelta or a Temporal payload.
"""

from __future__ import annotations

import json
import re

from skypilot_temporal.payloads import PipelineInput, SweepInput

# Bounds of the numeric inputs: anything outside is refused where it enters (the starter, and
# the workflow's first step for any other client), never left to overflow a timedelta.
MAX_STEP_TIMEOUT_SECONDS = 30 * 24 * 3600
MAX_HEARTBEAT_SECONDS = 3600
MAX_NAMED_STEP_TIMEOUTS = 100
MAX_KEEP_CLUSTERS_MINUTES = 7 * 24 * 60
MAX_RETRY_INTERVAL_SECONDS = 3600.0
MAX_ENV_OVERRIDES_BYTES = 64 * 1024
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def input_problems(input: PipelineInput) -> list[str]:
    """What is wrong with a pipeline input, one short phrase per problem (empty: nothing)."""
    problems = []
    if not isinstance(input.repo_url, str) or not input.repo_url.strip():
        problems.append("repo_url is empty")
    timeouts = dict(vars(input.timeouts))
    by_step = timeouts.pop("steps", {})
    if not isinstance(by_step, dict) or len(by_step) > MAX_NAMED_STEP_TIMEOUTS:
        problems.append(f"timeouts.steps must map at most {MAX_NAMED_STEP_TIMEOUTS} step names to seconds")
        by_step = {}
    for name, value in [*timeouts.items(), *by_step.items()]:
        limit = MAX_HEARTBEAT_SECONDS if name == "heartbeat" else MAX_STEP_TIMEOUT_SECONDS
        if not (isinstance(name, str) and len(name) <= 63) or not _number_between(value, 1, limit):
            problems.append(f"timeouts.{str(name)[:63]} must be between 1 and {limit} seconds")
    if not _number_between(input.keep_clusters_minutes, 1, MAX_KEEP_CLUSTERS_MINUTES):
        problems.append(f"keep_clusters_minutes must be between 1 and {MAX_KEEP_CLUSTERS_MINUTES}")
    if not _number_between(input.retry_initial_interval_seconds, 0.01, MAX_RETRY_INTERVAL_SECONDS):
        problems.append(
            f"retry_initial_interval_seconds must be between 0.01 and {MAX_RETRY_INTERVAL_SECONDS:g}"
        )
    bad_keys = [k for k in input.env_overrides if not (isinstance(k, str) and ENV_NAME.fullmatch(k))]
    if bad_keys:
        problems.append(f"env override name(s) {', '.join(map(repr, bad_keys[:5]))} are not variable names")
    if any(not isinstance(v, str) or "\0" in v for v in input.env_overrides.values()):
        problems.append("env override values must be text without NUL characters")
    elif sum(len(k) + len(v) for k, v in input.env_overrides.items()) > MAX_ENV_OVERRIDES_BYTES:
        problems.append(f"env overrides are larger than {MAX_ENV_OVERRIDES_BYTES // 1024} KB")
    bad_secrets = [n for n in input.secret_names if not (isinstance(n, str) and ENV_NAME.fullmatch(n))]
    if bad_secrets:
        problems.append(f"secret name(s) {', '.join(map(repr, bad_secrets[:5]))} are not variable names")
    if input.managed_train and input.overlap_provisioning:
        problems.append(
            "overlap provisioning and a managed train do not go together "
            "(a managed train has no cluster to bring up early)"
        )
    return problems


MAX_SWEEP_VARIANTS = 1000
# A sweep's history holds its input, every variant's start input (its env overrides: the
# sweep's and its own) and result, and its own result: Temporal fails a run whose history passes
# 50 MB or any one payload 2 MB. These bound the parts that grow with the variants (tested at
# MAX_SWEEP_VARIANTS in tests/workflows/test_sweep.py).
MAX_SWEEP_PARAMS_BYTES = 256 * 1024  # every variant's own parameters together
MAX_SWEEP_VARIANT_INPUTS_BYTES = 4 * 1024 * 1024  # every variant's env overrides together
MAX_VARIANT_METRICS = 8  # metrics a variant's row keeps (the selecting one first)
MAX_VARIANT_ERROR_CHARS = 200
SWEEP_ENV = frozenset({"PIPELINE_RUN_ID", "VARIANT_ID"})
MAX_SWEEP_PARALLEL = 100
METRIC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]{0,63}")


def sweep_problems(input: SweepInput, size_bounds: bool = True) -> list[str]:
    """What is wrong with a sweep input, one short phrase per problem (empty: nothing).
    `size_bounds`: the bounds on what the variants carry (off for sweeps started before them)."""
    problems = input_problems(input.pipeline)
    if not input.variants:
        problems.append("a sweep needs at least one variant")
    elif len(input.variants) > MAX_SWEEP_VARIANTS:
        problems.append(f"a sweep has at most {MAX_SWEEP_VARIANTS} variants")
    well_formed = True
    for params in input.variants[:MAX_SWEEP_VARIANTS]:
        bad = [k for k in params if not (isinstance(k, str) and ENV_NAME.fullmatch(k))]
        if bad or any(not isinstance(v, str) or "\0" in v for v in params.values()):
            problems.append(f"variant parameters {params!r} are not NAME=value env overrides"[:200])
            well_formed = False
            break
    if size_bounds and well_formed:
        own = sum(_env_bytes(params) for params in input.variants)
        carried = own + len(input.variants) * _env_bytes(input.pipeline.env_overrides)
        if own > MAX_SWEEP_PARAMS_BYTES:
            problems.append(
                f"the variants' parameters take {own // 1024} KB in all: "
                f"at most {MAX_SWEEP_PARAMS_BYTES // 1024} KB"
            )
        elif carried > MAX_SWEEP_VARIANT_INPUTS_BYTES:
            problems.append(
                f"the variants would carry {carried / 2**20:.1f} MB of env overrides in all (each its own "
                f"and the sweep's): at most {MAX_SWEEP_VARIANT_INPUTS_BYTES // 2**20} MB; use fewer variants "
                "or smaller --env values"
            )
    # The sweep sets these for every variant: its data's run id, and the variant's own id.
    taken = sorted(SWEEP_ENV & {k for params in input.variants[:MAX_SWEEP_VARIANTS] for k in params})
    taken += sorted(SWEEP_ENV & set(input.pipeline.env_overrides))
    if taken:
        problems.append(f"{', '.join(dict.fromkeys(taken))} is set by the sweep for each variant")
    if not _number_between(input.max_parallel, 1, MAX_SWEEP_PARALLEL):
        problems.append(f"max_parallel must be between 1 and {MAX_SWEEP_PARALLEL}")
    if not isinstance(input.select_metric, str) or not METRIC_NAME.fullmatch(input.select_metric):
        problems.append(f"select metric {input.select_metric!r} is not a metric name"[:200])
    if input.select_direction not in ("max", "min"):
        problems.append("select direction must be max or min")
    return problems


def _env_bytes(env: dict[str, str]) -> int:
    """What `env` weighs in a payload: its JSON (non-ASCII text is escaped, up to 12 bytes a
    character), as temporalio's converter writes it."""
    return len(json.dumps(env)) if isinstance(env, dict) else 0


def _number_between(value: object, low: float, high: float) -> bool:
    # bool is an int, and NaN compares False with everything: both are refused here.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and low <= value <= high
