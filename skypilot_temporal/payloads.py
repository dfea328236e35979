"""The data that travels between the starter, the workflow and the activities.

Plain dataclasses (JSON in the workflow history; their field names are part of it). They live
in their own module so the workflow sandbox passes them through instead of re-creating them for
every workflow run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from skypilot_temporal.pipeline_file.graph import PipelineGraph

# How a step's status shows in the Web UI and the starter's output: plain symbols, not emoji
# (a browser without an emoji font shows emoji as empty boxes), with an ASCII fallback.
STATUS_MARKS = {
    "pending": "○",
    "running": "▶",
    "retrying": "↻",
    "succeeded": "✓",
    "failed": "✗",
    "cancelled": "⊘",
    "skipped": "–",
    "paused": "‖",
}
ASCII_STATUS_MARKS = {
    "pending": ".",
    "running": ">",
    "retrying": "~",
    "succeeded": "+",
    "failed": "x",
    "cancelled": "-",
    "skipped": "_",
    "paused": "|",
}


@dataclass
class StepTimeouts:
    """How long each step may take in all, retries included (seconds).

    A job step's timeout is `steps[name]` if set, else the field of that name for the seed's
    three steps, else `other_steps`: a new step never borrows another step's timeout."""

    fetch_tasks: int = 300
    preprocess: int = 3600
    train: int = 4 * 3600
    eval: int = 3600
    # Per teardown attempt; teardown itself is retried until it succeeds.
    teardown: int = 900
    # No heartbeat for this long means the worker died: the step moves to another worker.
    heartbeat: int = 30
    # Any other job step (a pipeline's own step names), and timeouts by step name.
    other_steps: int = 4 * 3600
    steps: dict[str, int] = field(default_factory=dict)

    def for_step(self, step: str) -> int:
        if step in self.steps:
            return self.steps[step]
        return {"preprocess": self.preprocess, "train": self.train, "eval": self.eval}.get(
            step, self.other_steps
        )


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
    # is preempted or lost. Eval then runs on a cluster of its own (docs/sweeps-and-managed-jobs.md).
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
    # pending | running | retrying | succeeded | failed | cancelled | skipped (the run ended first)
    status: str = "pending"
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
class ReleasedClusters:
    """What the `release_kept_clusters` Update released: the clusters this run now tears down,
    and (a sweep) the variant runs it passed the release on to."""

    clusters: list[str]
    variants: list[str] = field(default_factory=list)


@dataclass
class PipelineProgress:
    status: str  # running | cleaning up | succeeded | failed | cancelled
    commit_sha: str
    steps: list[StepProgress]
    clusters_up: list[str]
    # A sweep's variants (empty for a single pipeline).
    variants: list[VariantProgress] = field(default_factory=list)
    # What runs, in a line (a pipeline file's name, file and parallelism; empty for the others).
    heading: str = ""


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
class FetchPipelineInput:
    """Check out the task repository and read the pipeline file at `path` in it, with its tasks."""

    path: str
    checkout: FetchTasksInput


@dataclass
class FetchPipelineResult:
    commit_sha: str
    graph: PipelineGraph


@dataclass
class PipelineFileInput:
    """A run of the pipeline file at `path` in the task repository (`pipeline.repo_url`)."""

    path: str
    pipeline: PipelineInput


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
    # Which YAML document of the file is the task (SkyPilot's multi-task files hold several).
    yaml_document: int = 0


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
