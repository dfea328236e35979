"""The data that travels between the starter, the workflow and the activities.

Plain dataclasses (JSON in the workflow history). They live in their own module so the workflow
sandbox passes them through instead of re-creating them for every workflow run.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

CLUSTER_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_PREFIX_LENGTH = 24
# Every cluster this project launches is named "<CLUSTER_MARKER>...": the leak reaper only ever
# looks at clusters with this marker.
CLUSTER_MARKER = "skypilot-"
# The label every cluster a pipeline launches carries (owner_token of its workflow id): a run
# adopts a job on, execs on or tears down only a cluster whose label is its own.
OWNER_LABEL = "skypilot-temporal-owner"
# A cluster's role, the part of its name after the prefix: no "-", so a name's owner is exact.
CLUSTER_ROLE = re.compile(r"[a-z][a-z0-9]*")
# Workflow types whose runs own clusters; the reaper keeps clusters of their open runs.
CLUSTER_OWNER_WORKFLOW_TYPES = ("SkyPilotWorkflow", "SweepWorkflow", "SweepVariantWorkflow")
# How a step's status shows in the Web UI and the starter's output: plain symbols, not emoji
# (a browser without an emoji font shows emoji as empty boxes), with an ASCII fallback.
STATUS_MARKS = {
    "pending": "○",
    "running": "▶",
    "retrying": "↻",
    "succeeded": "✓",
    "failed": "✗",
    "cancelled": "⊘",
}
ASCII_STATUS_MARKS = {
    "pending": ".",
    "running": ">",
    "retrying": "~",
    "succeeded": "+",
    "failed": "x",
    "cancelled": "-",
}


@dataclass
class StepTimeouts:
    """How long each step may take in all, retries included (seconds)."""

    fetch_tasks: int = 300
    preprocess: int = 3600
    train: int = 4 * 3600
    eval: int = 3600
    # Per teardown attempt; teardown itself is retried until it succeeds.
    teardown: int = 900
    # No heartbeat for this long means the worker died: the step moves to another worker.
    heartbeat: int = 30


@dataclass
class PipelineInput:
    repo_url: str
    ref: str = "main"
    preprocess_yaml: str = "data_preprocessing.yaml"
    train_yaml: str = "train.yaml"
    eval_yaml: str = "eval.yaml"
    # Read only by runs started before cluster names came from the workflow id alone (they keep
    # the names their clusters already have); a new run refuses it: use a workflow id instead.
    cluster_prefix: str = ""
    env_overrides: dict[str, str] = field(default_factory=dict)
    # Names of variables the worker reads from its own environment and passes as SkyPilot
    # secrets: their values never enter the workflow history.
    secret_names: list[str] = field(default_factory=list)
    # e.g. "slurm", "aws", "k8s": replaces the tasks' cloud/region/zone.
    infra: str = ""
    # For debugging only: keep the clusters of a FAILED run up for `keep_clusters_minutes`
    # (the run stays open meanwhile; the `release_clusters` signal or a cancel ends it early),
    # then tear them down. A cancelled run is cleaned up at once.
    keep_clusters_on_failure: bool = False
    keep_clusters_minutes: int = 60
    # Bring the train cluster up while preprocess runs. The train job still starts only after
    # preprocess succeeded; the early cluster is torn down with the rest if the run fails.
    overlap_provisioning: bool = False
    # Run train as a SkyPilot managed job: the jobs controller relaunches it when its cluster
    # is preempted or lost. Eval then runs on a cluster of its own (see README "Managed train").
    managed_train: bool = False
    timeouts: StepTimeouts = field(default_factory=StepTimeouts)
    retry_initial_interval_seconds: float = 5.0


@dataclass
class PipelineResult:
    repo_url: str
    commit_sha: str
    steps: list[StepResult]


@dataclass
class StepProgress:
    name: str
    summary: str
    status: str = "pending"  # pending | running | retrying | succeeded | failed | cancelled
    cluster_name: str = ""
    job_id: int | None = None
    job_status: str = ""
    duration_seconds: float | None = None
    error: str = ""
    # A managed job step: how many times SkyPilot relaunched the job after losing its cluster.
    recoveries: int = 0


@dataclass
class VariantProgress:
    """One variant of a sweep: its parameters, its child workflow and how it went."""

    variant_id: str
    params: dict[str, str]
    status: str = "pending"  # pending | running | succeeded | failed | cancelled
    workflow_id: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    duration_seconds: float | None = None
    error: str = ""


@dataclass
class PipelineProgress:
    status: str  # running | cleaning up | succeeded | failed | cancelled
    commit_sha: str
    steps: list[StepProgress]
    clusters_up: list[str]
    # A sweep's variants (empty for a single pipeline).
    variants: list[VariantProgress] = field(default_factory=list)


@dataclass
class SweepInput:
    """Preprocess once, then train + eval each variant (env overrides) on its own cluster."""

    pipeline: PipelineInput
    variants: list[dict[str, str]]
    max_parallel: int = 4
    # The metric that picks the best variant (a task prints `METRIC <name>=<number>`), and
    # whether the best is its "max" or its "min".
    select_metric: str = "eval_accuracy"
    select_direction: str = "max"
    # Fail the sweep (and cancel the other variants) at the first failed variant.
    fail_fast: bool = False


@dataclass
class SweepResult:
    repo_url: str
    commit_sha: str
    preprocess: StepResult
    variants: list[VariantProgress]
    # The variant with the best `select_metric`; None when no variant reported it.
    best: VariantProgress | None
    select: str


@dataclass
class RunTasks:
    """What step 1 produced, handed to a child workflow so it runs the same tasks (its steps read
    the task files from the checkout at the commit: `yaml_texts` is empty for a child)."""

    commit_sha: str
    yaml_texts: dict[str, str]
    checkout_name: str


@dataclass
class VariantInput:
    """One sweep variant: a child workflow that trains and evaluates on its own cluster."""

    pipeline: PipelineInput
    variant_id: str
    tasks: RunTasks


# Bounds of the numeric inputs: anything outside is refused where it enters (the starter, and
# the workflow's first step for any other client), never left to overflow a timedelta.
MAX_STEP_TIMEOUT_SECONDS = 30 * 24 * 3600
MAX_HEARTBEAT_SECONDS = 3600
MAX_KEEP_CLUSTERS_MINUTES = 7 * 24 * 60
MAX_RETRY_INTERVAL_SECONDS = 3600.0
MAX_ENV_OVERRIDES_BYTES = 64 * 1024
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def input_problems(input: PipelineInput) -> list[str]:
    """What is wrong with a pipeline input, one short phrase per problem (empty: nothing)."""
    problems = []
    if not isinstance(input.repo_url, str) or not input.repo_url.strip():
        problems.append("repo_url is empty")
    for name, value in vars(input.timeouts).items():
        limit = MAX_HEARTBEAT_SECONDS if name == "heartbeat" else MAX_STEP_TIMEOUT_SECONDS
        if not _number_between(value, 1, limit):
            problems.append(f"timeouts.{name} must be between 1 and {limit} seconds")
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
# MAX_SWEEP_VARIANTS in tests/test_sweep.py).
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


def cluster_prefix_for(workflow_id: str) -> str:
    """The cluster-name prefix of the run with `workflow_id`: one workflow id, one prefix.

    Clusters are named "<prefix>-<role>", so the prefix is a reservation Temporal enforces: no two
    running workflows share an id. An id that is already a valid prefix without "--"
    ("skypilot-3fa2b1c9") is used as is; any other id becomes the marker, a short slug, "--" and
    32 bits of a hash of the whole id ("skypilot-night--0d3928ab"). So no id used as is equals
    another id's hashed prefix; two hashed ids share a prefix only if their hashes collide, and
    then the owner label (OWNER_LABEL) still keeps each run off the other's clusters.
    """
    if (
        workflow_id.startswith(CLUSTER_MARKER)
        and len(workflow_id) <= MAX_PREFIX_LENGTH
        and CLUSTER_NAME.fullmatch(workflow_id)
        and "--" not in workflow_id
    ):
        return workflow_id
    digest = hashlib.sha256(workflow_id.encode()).hexdigest()[:8]
    room = MAX_PREFIX_LENGTH - len(CLUSTER_MARKER) - len(digest) - 2
    slug = re.sub(r"[^a-z0-9]+", "-", workflow_id.lower()).strip("-")[:room].strip("-")
    return f"{CLUSTER_MARKER}{slug}--{digest}" if slug else f"{CLUSTER_MARKER}-{digest}"


def cluster_prefix_v1_for(workflow_id: str) -> str:
    """The prefix of runs started before cluster_prefix_for became injective (an id like
    "skypilot-nightly-0d3928" was both used as is and the hash of "nightly run 1")."""
    if (
        workflow_id.startswith(CLUSTER_MARKER)
        and len(workflow_id) <= MAX_PREFIX_LENGTH
        and CLUSTER_NAME.fullmatch(workflow_id)
    ):
        return workflow_id
    room = MAX_PREFIX_LENGTH - len(CLUSTER_MARKER) - 7
    slug = re.sub(r"[^a-z0-9]+", "-", workflow_id.lower()).strip("-")[:room].strip("-")
    digest = hashlib.sha256(workflow_id.encode()).hexdigest()[:6]
    return f"{CLUSTER_MARKER}{slug}-{digest}" if slug else f"{CLUSTER_MARKER}{digest}"


def owner_token(workflow_id: str) -> str:
    """The value of OWNER_LABEL on the clusters of the runs with `workflow_id`."""
    return hashlib.sha256(workflow_id.encode()).hexdigest()[:16]


def legacy_cluster_prefix_for(workflow_id: str) -> str:
    """The prefix of runs started before the CLUSTER_MARKER (so their cleanup finds their clusters)."""
    if len(workflow_id) <= MAX_PREFIX_LENGTH and CLUSTER_NAME.fullmatch(workflow_id):
        return workflow_id
    slug = re.sub(r"[^a-z0-9]+", "-", workflow_id.lower()).strip("-")[: MAX_PREFIX_LENGTH - 9]
    digest = hashlib.sha256(workflow_id.encode()).hexdigest()[:6]
    return f"{slug.rstrip('-') or 'run'}-{digest}" if slug[:1].isalpha() else f"p-{slug}-{digest}"


def job_name_for(prefix: str, run_id: str, step: str) -> str:
    """The SkyPilot job name of `step` in one workflow run: unique per run, found again on retry.

    The run token is a hash of the whole run id: run ids are time-ordered UUIDs whose leading
    digits are the same for runs started within a minute of each other.
    """
    return f"{prefix}-{run_token(run_id)}-{step}"


def run_token(run_id: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()[:8]


# ---------------------------------------------------------------- activity inputs and results


@dataclass
class FetchTasksInput:
    """Clone `repo_url` at `ref` into a fresh checkout and read the task YAMLs at `yaml_paths`."""

    repo_url: str
    ref: str
    yaml_paths: list[str]
    # Relative to the worker's checkout root; unique per workflow run.
    checkout_name: str
    env_overrides: dict[str, str] = field(default_factory=dict)
    secret_names: list[str] = field(default_factory=list)


@dataclass
class FetchTasksResult:
    commit_sha: str
    yaml_texts: dict[str, str]


@dataclass
class TaskSpec:
    """One SkyPilot task: its YAML (read from the run's checkout at `yaml_path`, so large task
    files stay out of workflow history; `yaml_text` when given) and everything applied on top."""

    step: str
    job_name: str
    yaml_text: str
    env_overrides: dict[str, str] = field(default_factory=dict)
    # Names only: values are read from the worker's environment, never stored in history.
    secret_names: list[str] = field(default_factory=list)
    # The run's checkout, where a task's relative `workdir` and file mounts point.
    checkout_name: str = ""
    repo_url: str = ""
    commit_sha: str = ""
    # The task file's path in the checkout, read when `yaml_text` is empty.
    yaml_path: str = ""


@dataclass
class LaunchInput:
    cluster_name: str
    task: TaskSpec
    infra: str = ""
    # Bring the cluster up and run only the task's setup (as a job, if it has one); the run
    # comes later with `reuse_provisioned`. Lets provisioning overlap earlier steps.
    provision_only: bool = False
    # The cluster was provisioned (and set up) for this task: skip both (sky.launch fast=True).
    reuse_provisioned: bool = False
    # The workflow run that launched the cluster (StepResult.cluster_created_by_run), if known.
    cluster_created_by_run: str = ""


@dataclass
class ExecInput:
    cluster_name: str
    task: TaskSpec
    # The workflow run that launched the cluster (StepResult.cluster_created_by_run), if known:
    # when it is this run, a first attempt has no earlier run's job to look for on it.
    cluster_created_by_run: str = ""


@dataclass
class DownInput:
    cluster_name: str
    # In-flight launch/exec requests on the cluster whose job name starts with this are
    # cancelled before the teardown (the run's own abandoned launches); others are left alone.
    job_name_prefix: str = ""
    # A pipeline's own teardown: leave the cluster alone if another workflow's label is on it.
    # (The reaper tears down what it found orphaned, whoever launched it.)
    check_owner: bool = False


@dataclass
class RemoveCheckoutInput:
    checkout_name: str


@dataclass
class ReaperInput:
    # Clusters launched less than this long ago are never reaped (their run may not be
    # visible in Temporal's list yet).
    grace_seconds: int = 120


@dataclass
class ReaperResult:
    reaped: list[str]
    kept: list[str]
    # Ids of managed jobs whose run is gone: to cancel (found), cancelled (the result).
    cancelled_jobs: list[int] = field(default_factory=list)


@dataclass
class StepResult:
    step: str
    cluster_name: str
    job_id: int | None = None
    job_status: str = ""
    # The task's own exit code when SkyPilot reports it, else SkyPilot's (0, 100 failed, 103 cancelled).
    exit_code: int | None = None
    duration_seconds: float = 0.0
    log_tail: str = ""
    # What the job reported with `METRIC <name>=<number>` lines (see job_log.py). Last, with a
    # default: histories recorded before it still decode.
    metrics: dict[str, float] = field(default_factory=dict)
    # A managed job: times SkyPilot relaunched it after losing its cluster.
    recoveries: int = 0
    # A launch that found no cluster and created it: the id of the workflow run it belongs to.
    cluster_created_by_run: str = ""


@dataclass
class ManagedJobInput:
    """Submit `task` as a SkyPilot managed job named `task.job_name` (or find the one submitted)."""

    task: TaskSpec
    infra: str = ""


@dataclass
class FollowManagedJobInput:
    """Follow managed job `job_id` (the step `task`) to its end."""

    job_id: int
    task: TaskSpec


@dataclass
class CancelManagedJobInput:
    # None: cancel every job named `job_name` (the run never learned the id).
    job_id: int | None
    job_name: str


@dataclass
class JobProgress:
    """Heartbeat details: what a retried attempt needs to re-attach, and what the UI shows."""

    phase: str
    cluster_name: str
    job_name: str = ""
    request_id: str = ""
    job_id: int | None = None
    last_log_line: str = ""
    # Managed jobs: the job's status on the jobs controller, and its recoveries so far.
    job_status: str = ""
    recoveries: int = 0
