"""What a worker process does before its Worker runs: logging, start checks and the start banner.

Each check either passes, warns in one line, or raises ConfigError naming the problem: a worker
never starts half-configured and never prints a traceback for a setting.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re

from temporalio import activity
from temporalio.client import Client
from temporalio.runtime import Runtime
from temporalio.service import RPCError

from skypilot_temporal import config
from skypilot_temporal.activity.sdk import SkyPilotSDK
from skypilot_temporal.errors import ConfigError, clean_message, is_credentials_refused
from skypilot_temporal.operations import search_attributes
from skypilot_temporal.operations.metrics import prometheus_runtime
from skypilot_temporal.plugin import PACKAGE, SkyPilotPlugin
from skypilot_temporal.settings import WorkerSettings
from skypilot_temporal.trust.redaction import hide_credentials

log = logging.getLogger(PACKAGE)

# The first API version that knows a task's `api_server_access` (sky/server/constants.py).
MIN_API_VERSION = 42


def check_skypilot_api_server(sky_sdk: SkyPilotSDK) -> str:
    """Return the API server's URL and version, or raise ConfigError naming the problem."""
    from sky.server import common as server_common

    url = server_common.redact_url_password(server_common.get_server_url())
    token = os.environ.get("SKYPILOT_SERVICE_ACCOUNT_TOKEN", "")
    if token and not token.startswith("sky_"):
        raise ConfigError(
            "SKYPILOT_SERVICE_ACCOUNT_TOKEN is not a SkyPilot service-account token (they start with sky_)"
        )
    try:
        info = sky_sdk.api_info()
    except Exception as err:
        if is_credentials_refused(err):
            raise ConfigError(
                f"SkyPilot API server at {url} refused this worker's credentials ({clean_message(err)}): "
                "set SKYPILOT_SERVICE_ACCOUNT_TOKEN to a service-account token it knows, not expired "
                "or revoked (docs/configuration.md)"
            ) from None
        errno = re.search(r"\[Errno -?\d+\] [^'\")\]]+", str(err))
        reason = errno.group(0) if errno else clean_message(err)
        raise ConfigError(
            f"SkyPilot API server not reachable at {url}: {reason} "
            "(start one with `sky api start`, or set SKYPILOT_API_SERVER_ENDPOINT)"
        ) from None
    status = getattr(info, "status", None)
    if str(getattr(status, "value", status)).lower() != "healthy":
        raise ConfigError(f"SkyPilot API server at {url} is not healthy: {status}")
    api_version = str(getattr(info, "api_version", None) or "")
    if api_version.isdigit() and int(api_version) < MIN_API_VERSION:
        raise ConfigError(
            f"SkyPilot API server at {url} speaks API version {api_version}; this worker needs "
            f"{MIN_API_VERSION} or newer (its tasks set api_server_access: false, which older servers "
            "refuse): upgrade the server"
        )
    return f"{url} (SkyPilot {getattr(info, 'version', '?')})"


def metrics_runtime(address: str) -> tuple[Runtime | None, str]:
    """A runtime serving Prometheus metrics at `address` (WORKER_METRICS_ADDRESS; "off": none),
    and a line saying where. An address in use costs the metrics, not the worker."""
    if address.lower() in ("off", "none", "0"):
        return None, "off (WORKER_METRICS_ADDRESS=off)"
    try:
        return prometheus_runtime(address), f"Prometheus at http://{address}/metrics"
    except ValueError as err:
        if "in use" not in str(err):
            raise ConfigError(f"WORKER_METRICS_ADDRESS {address!r}: {err}") from None
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
            "them (register each: %s; docs/deploying-and-operating.md)",
            client.namespace,
            ", ".join(missing),
            search_attributes.registration_command("NAME"),
        )
    else:
        log.info("Search attributes: %s", ", ".join(key.name for key in search_attributes.ALL_KEYS))


def log_started(
    settings: WorkerSettings, plugin: SkyPilotPlugin, api_server: str, metrics_status: str
) -> None:
    """The start banner: where the worker listens, and every limit it enforces."""
    policy = settings.policy
    log.info(
        "Worker started: task queue %r on Temporal %s, SkyPilot API server %s",
        settings.task_queue,
        config.temporal_target()[1],
        api_server,
    )
    log.info("Payload codec: %s", config.encryption_status())
    log.log(
        logging.WARNING if metrics_status.startswith(("off", "NOT")) else logging.INFO,
        "Metrics: %s",
        metrics_status,
    )
    if not settings.worker_versioning:
        log.warning(
            "Worker versioning: off (WORKER_DEPLOYMENT_NAME=off): a deploy changes the code under "
            "runs in flight"
        )
    log.info("Tracing: %s", f"OTLP to {plugin.tracing_endpoint}" if plugin.tracing_endpoint else "off")
    log.info(
        "Task policy: secrets tasks may receive: %s; upload directories beyond the checkout: %s; "
        "local repositories from: %s; host paths clusters may mount: %s; git:// and http:// "
        "repositories: %s",
        ", ".join(sorted(policy.secret_names)) or "none",
        ", ".join(map(str, policy.upload_dirs)) or "none",
        ", ".join(map(str, policy.local_repo_dirs)) or "none",
        ", ".join(policy.host_path_dirs) or "none",
        "allowed" if settings.allow_insecure_git else "refused",
    )


def configure_logging(settings: WorkerSettings) -> None:
    """Our own and Temporal's workflow/activity logs at LOG_LEVEL; libraries only warnings.

    With WORKER_LOG_FILE the log goes to that file, rotated at WORKER_LOG_MAX_MB (keeping
    WORKER_LOG_BACKUPS old files), so a chatty job can never fill the disk.
    """
    handler: logging.Handler = logging.StreamHandler()
    if settings.log_file:
        try:
            handler = logging.handlers.RotatingFileHandler(
                settings.log_file.expanduser(),
                maxBytes=settings.log_max_mb * 2**20,
                backupCount=settings.log_backups,
            )
        except OSError as err:
            raise ConfigError(f"WORKER_LOG_FILE '{settings.log_file}': {err.strerror or err}") from None
    handler.addFilter(hide_credentials)
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(message)s", handlers=[handler]
    )
    for name in (PACKAGE, "temporalio.activity", "temporalio.workflow"):
        logging.getLogger(name).setLevel(settings.log_level)
    # Each line already names its step and cluster (and so its run); skip the info dict.
    activity.logger.activity_info_on_message = False
