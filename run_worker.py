"""Start a Temporal worker that runs SkyPilotWorkflow and its activities.

    python run_worker.py

Reads .env (see .env.example). Exits with a one-line error if Temporal or the SkyPilot API
server cannot be reached. SIGINT/SIGTERM stop it gracefully: running steps are handed back to
Temporal, and the next worker re-attaches to their SkyPilot jobs instead of starting new ones.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import logging.handlers
import os
import re
import signal
import sys
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any, cast

from temporalio import activity
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import RPCError
from temporalio.worker import Worker

import config
import search_attributes
import tracing
from activities import SkyPilotActivities
from errors import clean_message
from git_checkout import prune_checkouts
from metrics import prometheus_runtime
from reaper import ClusterReaperWorkflow, ReaperActivities, ensure_reaper_schedule
from redaction import redact_url_credentials
from shared import ENV_NAME
from sky_sdk import SkyPilotSDK
from task_policy import TaskPolicy
from workflows import SkyPilotWorkflow, SweepVariantWorkflow, SweepWorkflow

log = logging.getLogger("skypilot-worker")
DEFAULT_METRICS_ADDRESS = "127.0.0.1:9464"


def check_skypilot_api_server(sky_sdk: SkyPilotSDK) -> str:
    """Return the API server's URL and version, or raise ConfigError naming the problem."""
    from sky.server import common as server_common

    url = server_common.redact_url_password(server_common.get_server_url())
    try:
        info = sky_sdk.api_info()
    except Exception as err:
        errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", str(err))
        reason = errno.group(0) if errno else clean_message(err)
        raise config.ConfigError(
            f"SkyPilot API server not reachable at {url}: {reason} "
            "(start one with `sky api start`, or set SKYPILOT_API_SERVER_ENDPOINT)"
        ) from None
    status = getattr(info, "status", None)
    if str(getattr(status, "value", status)).lower() != "healthy":
        raise config.ConfigError(f"SkyPilot API server at {url} is not healthy: {status}")
    return f"{url} (SkyPilot {getattr(info, 'version', '?')})"


def create_worker(
    client: Client,
    activities: SkyPilotActivities,
    task_queue: str,
    heartbeat_interval: float,
    **options: Any,
) -> Worker:
    """The workflows and every activity on one task queue (SkyPilot state stays in one place)."""
    reaper = ReaperActivities(activities, client)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[SkyPilotWorkflow, SweepWorkflow, SweepVariantWorkflow, ClusterReaperWorkflow],
        activities=[
            activities.fetch_tasks,
            activities.launch_task,
            activities.exec_task,
            activities.down_cluster,
            activities.remove_checkout,
            activities.submit_managed_job,
            activities.follow_managed_job,
            activities.cancel_managed_job,
            reaper.find_orphan_clusters,
        ],
        # Heartbeats reach Temporal this often, so a cancel reaches the activity this fast.
        max_heartbeat_throttle_interval=timedelta(seconds=heartbeat_interval),
        default_heartbeat_throttle_interval=timedelta(seconds=heartbeat_interval),
        **options,
    )


async def run_worker() -> None:
    config.load_env()
    # Never let an SDK call quietly start a local API server: an unreachable server is an error.
    os.environ.setdefault("SKYPILOT_DISABLE_LOCAL_API_SERVER", "1")
    max_activities = config.env_int("WORKER_MAX_CONCURRENT_ACTIVITIES", 100, minimum=1, maximum=10_000)
    # A step holds two threads while its request runs (the log stream and the result) and one
    # while it follows its job; look-ups between take one more. Cancels have a pool of their own.
    sdk_threads = config.env_int("WORKER_SDK_THREADS", 3 * max_activities + 4, minimum=1, maximum=100_000)
    heartbeat_interval = float(config.env_int("WORKER_HEARTBEAT_INTERVAL_SECONDS", 5, minimum=1, maximum=600))
    outage_budget = config.env_int("WORKER_SKYPILOT_OUTAGE_SECONDS", 1200, maximum=7 * 24 * 3600)
    autodown_minutes = config.env_int("AUTODOWN_IDLE_MINUTES", 60, maximum=30 * 24 * 60)
    reaper_period = config.env_int("REAPER_PERIOD_SECONDS", 300, maximum=7 * 24 * 3600)
    reaper_grace = config.env_int("REAPER_GRACE_SECONDS", 120, maximum=7 * 24 * 3600)
    checkout_ttl_hours = config.env_int("WORKER_CHECKOUT_TTL_HOURS", 24, minimum=1, maximum=24 * 365)
    checkout_root = Path(
        config.env_str("WORKER_CHECKOUT_ROOT", "~/.cache/skypilot-temporal/checkouts")
    ).expanduser()
    policy = task_policy_from_env()
    allow_insecure_git = config.env_bool("WORKER_ALLOW_INSECURE_GIT")
    config.check_temporal_settings()  # a bad setting is reported before any server is tried

    import sky  # heavy (seconds): imported only by the worker, never by the starter

    # The module itself is the seam (tests/test_sky_sdk.py checks it provides every call).
    sky_sdk = cast(SkyPilotSDK, sky)
    api_server = await asyncio.to_thread(check_skypilot_api_server, sky_sdk)
    runtime, metrics_status = metrics_runtime_from_env()
    traced = tracing.otlp_tracing(os.environ)
    client = await config.connect_temporal(runtime, interceptors=[traced[0]] if traced else [])
    await report_search_attributes(client)
    executor = concurrent.futures.ThreadPoolExecutor(sdk_threads, thread_name_prefix="skypilot-sdk")
    # A cancelled step's SkyPilot cancel, never queued behind the steps that fill `executor`. An
    # activity makes its cancel's calls one at a time, so this many threads always suffice (a
    # pool starts its threads only as calls need them).
    cancel_executor = concurrent.futures.ThreadPoolExecutor(
        max_activities, thread_name_prefix="skypilot-cancel"
    )
    activities = SkyPilotActivities(
        sky_sdk,
        executor,
        checkout_root=checkout_root,
        heartbeat_interval_seconds=heartbeat_interval,
        outage_budget_seconds=outage_budget,
        autodown_idle_minutes=autodown_minutes or None,
        policy=policy,
        allow_insecure_git=allow_insecure_git,
        cancel_executor=cancel_executor,
    )
    worker = create_worker(
        client,
        activities,
        config.task_queue(),
        heartbeat_interval=heartbeat_interval,
        max_concurrent_activities=max_activities,
        graceful_shutdown_timeout=timedelta(seconds=config.env_int("WORKER_SHUTDOWN_GRACE_SECONDS", 10)),
    )
    if reaper_period > 0:
        try:
            schedule_id = await ensure_reaper_schedule(
                client, config.task_queue(), timedelta(seconds=reaper_period), timedelta(seconds=reaper_grace)
            )
            log.info("Cluster reaper: schedule %s, every %d s", schedule_id, reaper_period)
        except RPCError as err:
            log.warning("Cluster reaper NOT scheduled (%s): terminated runs may leak clusters", err.message)
    else:
        log.warning("REAPER_PERIOD_SECONDS=0: no cluster reaper (terminated runs may leak clusters)")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info(
        "Worker started: task queue %r on Temporal %s, SkyPilot API server %s",
        config.task_queue(),
        config.temporal_target()[1],
        api_server,
    )
    log.info("Payload codec: %s", config.encryption_status())
    log.log(logging.INFO if runtime else logging.WARNING, "Metrics: %s", metrics_status)
    log.info("Tracing: %s", f"OTLP to {tracing.otlp_endpoint(os.environ)}" if traced else "off")
    log.info(
        "Task policy: secrets tasks may receive: %s; upload directories beyond the checkout: %s; "
        "local repositories from: %s; host paths clusters may mount: %s; git:// and http:// "
        "repositories: %s",
        ", ".join(sorted(policy.secret_names)) or "none",
        ", ".join(map(str, policy.upload_dirs)) or "none",
        ", ".join(map(str, policy.local_repo_dirs)) or "none",
        ", ".join(policy.host_path_dirs) or "none",
        "allowed" if allow_insecure_git else "refused",
    )
    pruning = asyncio.create_task(prune_checkouts_forever(checkout_root, checkout_ttl_hours * 3600.0))
    async with worker:
        await stop.wait()
        pruning.cancel()
        log.info("Shutting down: unfinished steps will be resumed by another worker")
    # Threads still following jobs must not keep the process alive: the jobs keep running on
    # SkyPilot and the next attempt re-attaches to them.
    executor.shutdown(wait=False, cancel_futures=True)
    cancel_executor.shutdown(wait=False, cancel_futures=True)
    if traced:
        traced[1].shutdown()  # sends the last spans


def metrics_runtime_from_env() -> tuple[Runtime | None, str]:
    """A runtime serving Prometheus metrics at WORKER_METRICS_ADDRESS (off: none), and a line
    saying where. An address in use costs the metrics, not the worker (the start banner warns)."""
    address = config.env_str("WORKER_METRICS_ADDRESS", DEFAULT_METRICS_ADDRESS)
    if address.lower() in ("off", "none", "0"):
        return None, "off (WORKER_METRICS_ADDRESS=off)"
    try:
        return prometheus_runtime(address), f"Prometheus at http://{address}/metrics"
    except ValueError as err:
        if "in use" not in str(err):
            raise config.ConfigError(f"WORKER_METRICS_ADDRESS {address!r}: {err}") from None
        return None, f"NOT served: {address} is in use (set WORKER_METRICS_ADDRESS to another port)"


async def report_search_attributes(client: Client) -> None:
    """One line if the namespace lacks the search attributes (runs still work, unsearchable)."""
    try:
        missing = await search_attributes.missing(client)
    except RPCError as err:
        log.warning("Search attributes: could not check (%s)", err.message)
        return
    if missing:
        log.warning(
            "Search attributes NOT registered in namespace %s: %s; runs work but cannot be found by "
            "them (register each: %s; README 'Operating it')",
            client.namespace,
            ", ".join(missing),
            search_attributes.registration_command("NAME"),
        )
    else:
        log.info("Search attributes: %s", ", ".join(key.name for key in search_attributes.ALL_KEYS))


def task_policy_from_env() -> TaskPolicy:
    """The operator's limits on task authors (WORKER_ALLOWED_*): only the worker's environment
    sets them, never a workflow input."""
    secrets = config.env_list("WORKER_ALLOWED_SECRETS")
    managed = config.env_list("WORKER_ALLOWED_MANAGED_SECRETS")
    for setting, names in (("WORKER_ALLOWED_SECRETS", secrets), ("WORKER_ALLOWED_MANAGED_SECRETS", managed)):
        if bad := [n for n in names if not ENV_NAME.fullmatch(n)]:
            raise config.ConfigError(f"{setting}: {bad[0]!r} is not a variable name")
    directories = {
        setting: config.env_list(setting)
        for setting in (
            "WORKER_ALLOWED_UPLOAD_DIRS",
            "WORKER_ALLOWED_LOCAL_REPOS",
            "WORKER_ALLOWED_HOST_PATHS",
        )
    }
    # Unset: this project's own repository (its example tasks, the starter's default); "none": off.
    local_repos = directories["WORKER_ALLOWED_LOCAL_REPOS"]
    if not config.env_str("WORKER_ALLOWED_LOCAL_REPOS"):
        local_repos.append(str(config.PROJECT_DIR))
    elif local_repos == ["none"]:
        local_repos.clear()
    for setting, listed in directories.items():
        for directory in listed:
            if not Path(directory).expanduser().is_absolute():
                raise config.ConfigError(f"{setting}: {directory!r} is not an absolute path")
    return TaskPolicy.from_settings(
        directories["WORKER_ALLOWED_UPLOAD_DIRS"],
        secrets,
        managed,
        allow_task_config=config.env_bool("WORKER_ALLOW_TASK_CONFIG"),
        local_repo_dirs=directories["WORKER_ALLOWED_LOCAL_REPOS"],
        host_path_dirs=directories["WORKER_ALLOWED_HOST_PATHS"],
    )


async def prune_checkouts_forever(checkout_root: Path, max_age_seconds: float) -> None:
    """Keep this host's checkout cache bounded: now, then every hour."""
    while True:
        removed = await asyncio.to_thread(prune_checkouts, checkout_root, max_age_seconds)
        if removed:
            log.info("Removed %d checkouts unused for %.0f h", len(removed), max_age_seconds / 3600)
        await asyncio.sleep(3600)


def configure_logging() -> None:
    """Our own and Temporal's workflow/activity logs at LOG_LEVEL; libraries only warnings.

    With WORKER_LOG_FILE the log goes to that file, rotated at WORKER_LOG_MAX_MB (keeping
    WORKER_LOG_BACKUPS old files), so a chatty job can never fill the disk.
    """
    level = config.env_str("LOG_LEVEL", "INFO").upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise config.ConfigError(f"LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {level.lower()!r}")
    handler: logging.Handler = logging.StreamHandler()
    log_file = config.env_str("WORKER_LOG_FILE")
    if log_file:
        try:
            handler = logging.handlers.RotatingFileHandler(
                Path(log_file).expanduser(),
                maxBytes=max(1, config.env_int("WORKER_LOG_MAX_MB", 50)) * 2**20,
                backupCount=max(1, config.env_int("WORKER_LOG_BACKUPS", 3)),
            )
        except OSError as err:
            raise config.ConfigError(f"WORKER_LOG_FILE {log_file!r}: {err.strerror or err}") from None
    handler.addFilter(_hide_url_credentials)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", handlers=[handler]
    )
    for name in (log.name, "temporalio.activity", "temporalio.workflow"):
        logging.getLogger(name).setLevel(level)
    # Each line already names its step and cluster (and so its run); skip the info dict.
    activity.logger.activity_info_on_message = False


def _hide_url_credentials(record: logging.LogRecord) -> bool:
    """No log line shows a password or token of a URL (a repository, the API server endpoint)."""
    message = record.getMessage()
    if "@" in message:
        record.msg, record.args = redact_url_credentials(message), None
    return True


def main() -> None:
    code = 0
    try:
        config.load_env()
        configure_logging()
        asyncio.run(run_worker())
    except config.ConfigError as err:
        print(f"run_worker.py: error: {err}", file=sys.stderr)
        code = 2
    except Exception:  # a bug: its traceback, then the same quick exit as below
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: SDK threads may still be blocked on the API server, and the
    # Temporal client's native threads can crash a normal exit (PyGILState_Release).
    os._exit(code)


if __name__ == "__main__":
    main()
