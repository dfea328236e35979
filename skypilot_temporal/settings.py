"""The worker's settings: one typed object, read from the environment once.

`WorkerSettings.from_env()` reads every WORKER_*, REAPER_*, AUTODOWN_* and LOG_* variable and
refuses a bad value in one line naming it; a platform's own worker may build `WorkerSettings(...)`
in code instead. Settings that other tools define keep their own names and readers: Temporal's
(TEMPORAL_*: `temporalio.envconfig`), the payload codec's (trust/codec.py), OpenTelemetry's
(OTEL_*: operations/tracing.py). The lists at the end name every variable this project reads; a
test holds the code, .env.example and docs/configuration.md to them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from skypilot_temporal import config
from skypilot_temporal.bounds import ENV_NAME
from skypilot_temporal.errors import ConfigError
from skypilot_temporal.operations import deployment
from skypilot_temporal.operations.deployment import Versioning
from skypilot_temporal.trust.task_policy import TaskPolicy

DEFAULT_CHECKOUT_ROOT = Path("~/.cache/skypilot-temporal/checkouts")
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9464"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
POLICY_DIRECTORY_SETTINGS = (
    "WORKER_ALLOWED_UPLOAD_DIRS",
    "WORKER_ALLOWED_LOCAL_REPOS",
    "WORKER_ALLOWED_HOST_PATHS",
)


@dataclass(frozen=True)
class WorkerSettings:
    """What one worker process is allowed and how it behaves (docs/configuration.md)."""

    task_queue: str = config.DEFAULT_TASK_QUEUE
    # Task checkouts: where, and how long an unused one is kept.
    checkout_root: Path = DEFAULT_CHECKOUT_ROOT
    checkout_ttl_hours: int = 24
    max_concurrent_activities: int = 100
    # A step holds two threads while its request runs (the log stream and the result) and one
    # while it follows its job; look-ups between take one more. None: 3 per activity + 4.
    sdk_threads: int | None = None
    # Heartbeats reach Temporal this often, so a cancel reaches a step this fast.
    heartbeat_interval_seconds: float = 5.0
    # How long a step rides out an unreachable SkyPilot API server before it fails.
    skypilot_outage_seconds: float = 1200.0
    # SkyPilot's own safety net: a cluster idle this long goes down (0: off).
    autodown_idle_minutes: int = 60
    # The leak reaper's period (0: no reaper) and how old a cluster must be to be reaped.
    reaper_period_seconds: int = 300
    reaper_grace_seconds: int = 120
    shutdown_grace_seconds: int = 10
    # The operator's limits on task authors: no workflow input can widen them.
    policy: TaskPolicy = field(default_factory=TaskPolicy)
    # Worker versioning (operations/deployment.py): runs stay on the code they started on.
    worker_versioning: bool = True
    deployment_name: str = ""  # "": named after the task queue
    build_id: str = ""  # "": a hash of the workflow code this worker runs
    make_current: str = "auto"  # or "never": an operator makes a new version current
    allow_insecure_git: bool = False
    metrics_address: str = DEFAULT_METRICS_ADDRESS  # "off": no Prometheus endpoint
    log_level: str = "INFO"
    log_file: Path | None = None
    log_max_mb: int = 50
    log_backups: int = 3

    def versioning(self, workflows: Iterable[type], task_queue: str | None = None) -> Versioning | None:
        """The deployment and build a worker of these workflows on `task_queue` (default: this
        setting's) joins; None: unversioned."""
        if not self.worker_versioning:
            return None
        return Versioning(
            self.deployment_name or deployment.deployment_name_for(task_queue or self.task_queue),
            self.build_id or deployment.code_build_id(workflows),
            self.make_current,
        )

    @property
    def sdk_thread_count(self) -> int:
        return self.sdk_threads or 3 * self.max_concurrent_activities + 4

    @classmethod
    def from_env(cls, default_local_repos: Sequence[str | Path] = ()) -> WorkerSettings:
        """The settings of this process's environment (.env already loaded). Local repositories are
        allowed from `default_local_repos` unless WORKER_ALLOWED_LOCAL_REPOS says otherwise."""
        env_int = config.env_int
        level = config.env_str("LOG_LEVEL", "INFO").upper()
        if level not in LOG_LEVELS:
            raise ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level.lower()!r}")
        log_file = config.env_str("WORKER_LOG_FILE")
        deployment_name = config.env_str("WORKER_DEPLOYMENT_NAME")
        versioned = deployment_name.lower() != "off"
        build_id = config.env_str("WORKER_BUILD_ID")
        make_current = config.env_str("WORKER_MAKE_CURRENT", "auto").lower()
        deployment.check_settings(deployment_name if versioned else "", build_id, make_current)
        max_activities = env_int("WORKER_MAX_CONCURRENT_ACTIVITIES", 100, minimum=1, maximum=10_000)
        return cls(
            task_queue=config.task_queue(),
            checkout_root=Path(config.env_str("WORKER_CHECKOUT_ROOT", str(DEFAULT_CHECKOUT_ROOT))),
            checkout_ttl_hours=env_int("WORKER_CHECKOUT_TTL_HOURS", 24, minimum=1, maximum=24 * 365),
            max_concurrent_activities=max_activities,
            sdk_threads=env_int("WORKER_SDK_THREADS", 3 * max_activities + 4, minimum=1, maximum=100_000),
            heartbeat_interval_seconds=float(
                env_int("WORKER_HEARTBEAT_INTERVAL_SECONDS", 5, minimum=1, maximum=600)
            ),
            skypilot_outage_seconds=float(
                env_int("WORKER_SKYPILOT_OUTAGE_SECONDS", 1200, maximum=7 * 24 * 3600)
            ),
            autodown_idle_minutes=env_int("AUTODOWN_IDLE_MINUTES", 60, maximum=30 * 24 * 60),
            reaper_period_seconds=env_int("REAPER_PERIOD_SECONDS", 300, maximum=7 * 24 * 3600),
            reaper_grace_seconds=env_int("REAPER_GRACE_SECONDS", 120, maximum=7 * 24 * 3600),
            shutdown_grace_seconds=env_int("WORKER_SHUTDOWN_GRACE_SECONDS", 10, maximum=24 * 3600),
            policy=task_policy_from_env(default_local_repos),
            allow_insecure_git=config.env_bool("WORKER_ALLOW_INSECURE_GIT"),
            worker_versioning=versioned,
            deployment_name=deployment_name if versioned else "",
            build_id=build_id,
            make_current=make_current,
            metrics_address=config.env_str("WORKER_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS),
            log_level=level,
            log_file=Path(log_file) if log_file else None,
            log_max_mb=max(1, env_int("WORKER_LOG_MAX_MB", 50)),
            log_backups=max(1, env_int("WORKER_LOG_BACKUPS", 3)),
        )


def task_policy_from_env(default_local_repos: Sequence[str | Path] = ()) -> TaskPolicy:
    """The operator's limits on task authors (WORKER_ALLOWED_*): only the worker's environment
    sets them, never a workflow input."""
    secrets = config.env_list("WORKER_ALLOWED_SECRETS")
    managed = config.env_list("WORKER_ALLOWED_MANAGED_SECRETS")
    for setting, names in (("WORKER_ALLOWED_SECRETS", secrets), ("WORKER_ALLOWED_MANAGED_SECRETS", managed)):
        if bad := [n for n in names if not ENV_NAME.fullmatch(n)]:
            raise ConfigError(f"{setting}: {bad[0]!r} is not a variable name")
    directories = {setting: config.env_list(setting) for setting in POLICY_DIRECTORY_SETTINGS}
    # Unset: the default (the project's own repository); "none": off.
    local_repos = directories["WORKER_ALLOWED_LOCAL_REPOS"]
    if not config.env_str("WORKER_ALLOWED_LOCAL_REPOS"):
        local_repos.extend(map(str, default_local_repos))
    elif local_repos == ["none"]:
        local_repos.clear()
    for setting, listed in directories.items():
        for directory in listed:
            if not Path(directory).expanduser().is_absolute():
                raise ConfigError(f"{setting}: {directory!r} is not an absolute path")
    return TaskPolicy.from_settings(
        directories["WORKER_ALLOWED_UPLOAD_DIRS"],
        secrets,
        managed,
        allow_task_config=config.env_bool("WORKER_ALLOW_TASK_CONFIG"),
        local_repo_dirs=local_repos,
        host_path_dirs=directories["WORKER_ALLOWED_HOST_PATHS"],
    )


WORKER_SETTINGS = (
    "TEMPORAL_TASK_QUEUE",
    "WORKER_CHECKOUT_ROOT",
    "WORKER_CHECKOUT_TTL_HOURS",
    "WORKER_MAX_CONCURRENT_ACTIVITIES",
    "WORKER_SDK_THREADS",
    "WORKER_HEARTBEAT_INTERVAL_SECONDS",
    "WORKER_SKYPILOT_OUTAGE_SECONDS",
    "AUTODOWN_IDLE_MINUTES",
    "REAPER_PERIOD_SECONDS",
    "REAPER_GRACE_SECONDS",
    "WORKER_SHUTDOWN_GRACE_SECONDS",
    "WORKER_ALLOWED_SECRETS",
    "WORKER_ALLOWED_MANAGED_SECRETS",
    *POLICY_DIRECTORY_SETTINGS,
    "WORKER_ALLOW_TASK_CONFIG",
    "WORKER_ALLOW_INSECURE_GIT",
    "WORKER_DEPLOYMENT_NAME",
    "WORKER_BUILD_ID",
    "WORKER_MAKE_CURRENT",
    "WORKER_METRICS_ADDRESS",
    "LOG_LEVEL",
    "WORKER_LOG_FILE",
    "WORKER_LOG_MAX_MB",
    "WORKER_LOG_BACKUPS",
)
# Read by temporalio.envconfig (TEMPORAL_TLS_* has more: see Temporal's docs), but the UI URL.
TEMPORAL_SETTINGS = (
    "TEMPORAL_ADDRESS",
    "TEMPORAL_NAMESPACE",
    "TEMPORAL_API_KEY",
    "TEMPORAL_TLS_CLIENT_CERT_PATH",
    "TEMPORAL_TLS_CLIENT_KEY_PATH",
    "TEMPORAL_PROFILE",
    "TEMPORAL_CONFIG_FILE",
    "TEMPORAL_UI_URL",
)
CODEC_SETTINGS = (
    "PAYLOAD_CODEC_KEYS",
    "PAYLOAD_CODEC_KEY_FILE",
    "CODEC_SERVER_HOST",
    "CODEC_SERVER_PORT",
    "CODEC_SERVER_TOKEN",
    "CODEC_SERVER_CORS_ORIGINS",
    "CODEC_SERVER_ALLOWED_HOSTS",
)
TRACING_SETTINGS = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_SERVICE_NAME",
)
SKYPILOT_SETTINGS = ("SKYPILOT_API_SERVER_ENDPOINT", "SKYPILOT_SERVICE_ACCOUNT_TOKEN")
# The starter's defaults for its options (run_workflow.py --help).
STARTER_SETTINGS = (
    "PIPELINE_REPO_URL",
    "PIPELINE_REF",
    "PIPELINE_PREPROCESS_YAML",
    "PIPELINE_TRAIN_YAML",
    "PIPELINE_EVAL_YAML",
    "PIPELINE_INFRA",
    "PIPELINE_ENV",
    "PIPELINE_SECRETS",
    "PIPELINE_CLUSTER_PREFIX",
    "PIPELINE_KEEP_CLUSTERS_ON_FAILURE",
    "PIPELINE_OVERLAP_PROVISIONING",
    "PIPELINE_MANAGED_TRAIN",
    "PIPELINE_FILE",
    "PIPELINE_FAIRNESS_KEY",
    "ENV_FILE",
)
ALL_SETTINGS = (
    *WORKER_SETTINGS,
    *TEMPORAL_SETTINGS,
    *CODEC_SETTINGS,
    *TRACING_SETTINGS,
    *SKYPILOT_SETTINGS,
    *STARTER_SETTINGS,
)
