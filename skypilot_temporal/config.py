"""Settings shared by the worker and the starter: .env loading and the Temporal connection.

Temporal connection settings follow Temporal's own tools (TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
TEMPORAL_API_KEY, TEMPORAL_TLS*, or a TOML profile), so the same .env works for a local dev
server, a self-hosted cluster and Temporal Cloud. Payloads are encrypted when a codec key is
configured (PAYLOAD_CODEC_KEYS, PAYLOAD_CODEC_KEY_FILE or ~/.config/skypilot-temporal/codec.keys;
see trust/codec.py).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from dotenv import load_dotenv
from temporalio.client import Client, Plugin
from temporalio.envconfig import ClientConfig
from temporalio.runtime import Runtime

from skypilot_temporal.errors import ConfigError, clean_message

DEFAULT_TEMPORAL_ADDRESS = "localhost:7233"
DEFAULT_TASK_QUEUE = "skypilot-task-queue"
DEFAULT_UI_URL = "http://localhost:8233"


def load_env(default_file: Path | str = ".env") -> None:
    """Load $ENV_FILE, else `default_file`, without overriding variables already set."""
    load_dotenv(os.environ.get("ENV_FILE") or default_file, override=False)


def env_str(name: str, default: str = "") -> str:
    return os.environ.get(name, "").strip() or default


def env_int(name: str, default: int, minimum: int = 0, maximum: int = 10**9) -> int:
    raw = env_str(name)
    try:
        value = int(raw) if raw else default
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def env_list(name: str) -> list[str]:
    """A comma-separated setting, blanks dropped."""
    return [item.strip() for item in env_str(name).split(",") if item.strip()]


def env_bool(name: str, default: bool = False) -> bool:
    raw = env_str(name).lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def task_queue() -> str:
    return env_str("TEMPORAL_TASK_QUEUE", DEFAULT_TASK_QUEUE)


def temporal_target() -> tuple[dict, str]:
    """Client.connect keyword arguments and a printable 'address/namespace' for messages."""
    try:
        connect_config = dict(ClientConfig.load_client_connect_config())
    except Exception as err:
        raise ConfigError(f"invalid Temporal client configuration: {err}") from None
    connect_config.setdefault("target_host", DEFAULT_TEMPORAL_ADDRESS)
    connect_config.setdefault("namespace", "default")
    return connect_config, f"{connect_config['target_host']} (namespace {connect_config['namespace']})"


def check_temporal_settings() -> None:
    """Raise ConfigError for a bad Temporal or payload-key setting, before anything connects."""
    from skypilot_temporal.trust import codec  # here, not at the top: codec imports this module

    temporal_target()
    codec.configured_data_converter()


async def connect_temporal(runtime: Runtime | None = None, plugins: Sequence[Plugin] = ()) -> Client:
    """Connect with the standard settings; `runtime` None is temporalio's default runtime.

    The client (and so every worker built on it) encrypts payloads with the configured codec keys,
    and applies `plugins` (e.g. SkyPilotPlugin: its codec, its tracing).
    """
    from skypilot_temporal.trust import codec  # here, not at the top: codec imports this module

    connect_config, where = temporal_target()
    converter = codec.configured_data_converter()
    try:
        return await Client.connect(
            **connect_config, data_converter=converter, runtime=runtime, plugins=plugins
        )
    except Exception as err:
        raise ConfigError(f"cannot reach Temporal at {where}: {one_line(err)}") from None


def encryption_status() -> str:
    """One line for the start banner: whether payloads are encrypted, with which key, from where."""
    from skypilot_temporal.trust import codec

    keys, source = codec.find_codec_keys(os.environ)
    if not keys:
        return (
            f"payloads NOT encrypted: set {codec.KEY_FILE_SETTING} or {codec.KEYS_SETTING}, or create "
            f"{codec.DEFAULT_KEY_FILE} (python -m skypilot_temporal new-key)"
        )
    count = f"{len(keys)} key{'s' if len(keys) > 1 else ''}"
    return f"payloads encrypted (key {next(iter(keys))}, {count}, from {source})"


def workflow_ui_url(namespace: str, workflow_id: str, run_id: str | None = None) -> str:
    url = _ui_url(namespace, "workflows", workflow_id)
    return f"{url}/{run_id}/history" if run_id else url


def schedule_ui_url(namespace: str, schedule_id: str) -> str:
    return _ui_url(namespace, "schedules", schedule_id)


def _ui_url(namespace: str, kind: str, name: str) -> str:
    base = env_str("TEMPORAL_UI_URL", DEFAULT_UI_URL).rstrip("/")
    return f"{base}/namespaces/{quote(namespace, safe='')}/{kind}/{quote(name, safe='')}"


def one_line(err: BaseException) -> str:
    return clean_message(err, limit=500)
