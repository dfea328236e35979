"""Configuration: Temporal's standard client settings, .env parsing, one-line errors."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from skypilot_temporal import WorkerSettings, config, settings
from skypilot_temporal.errors import ConfigError
from skypilot_temporal.operations.deployment import Versioning, code_build_id
from testing import ROOT


def test_defaults_point_at_a_local_dev_server(monkeypatch):
    for name in ("TEMPORAL_ADDRESS", "TEMPORAL_NAMESPACE", "TEMPORAL_API_KEY", "TEMPORAL_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TEMPORAL_CONFIG_FILE", "/nonexistent.toml")
    connect, where = config.temporal_target()
    assert connect == {"target_host": "localhost:7233", "namespace": "default"}
    assert where == "localhost:7233 (namespace default)"


def test_temporal_cloud_api_key_turns_on_tls(monkeypatch):
    monkeypatch.setenv("TEMPORAL_ADDRESS", "us-east-1.aws.api.temporal.io:7233")
    monkeypatch.setenv("TEMPORAL_NAMESPACE", "ml.a1b2c")
    monkeypatch.setenv("TEMPORAL_API_KEY", "key-123")
    connect, where = config.temporal_target()
    assert connect["api_key"] == "key-123" and connect["tls"] is True
    assert "key-123" not in where


def test_bad_numbers_and_booleans_are_one_line_errors(monkeypatch):
    monkeypatch.setenv("WORKER_SDK_THREADS", "many")
    with pytest.raises(config.ConfigError, match="WORKER_SDK_THREADS must be a whole number"):
        config.env_int("WORKER_SDK_THREADS", 4)
    monkeypatch.setenv("PIPELINE_KEEP_CLUSTERS_ON_FAILURE", "perhaps")
    with pytest.raises(config.ConfigError, match="true or false"):
        config.env_bool("PIPELINE_KEEP_CLUSTERS_ON_FAILURE")


def test_ui_url_escapes_the_workflow_id(monkeypatch):
    monkeypatch.setenv("TEMPORAL_UI_URL", "https://cloud.temporal.io/")
    assert config.workflow_ui_url("ml.a1b2c", "run 1/x", "r-1") == (
        "https://cloud.temporal.io/namespaces/ml.a1b2c/workflows/run%201%2Fx/r-1/history"
    )


def test_the_worker_log_file_rotates_and_stays_bounded(tmp_path):
    """A job that prints 50 MB must not add 100 MB to the worker's log: rotated at WORKER_LOG_MAX_MB."""
    script = (
        "import logging\n"
        "from skypilot_temporal import WorkerSettings, worker_startup\n"
        "worker_startup.configure_logging(WorkerSettings.from_env())\n"
        "for i in range(60_000):\n"
        "    logging.getLogger('temporalio.activity').info('[train c] line %d %s', i, 'x' * 100)\n"
    )
    env = {**os.environ, "WORKER_LOG_FILE": str(tmp_path / "worker.log"), "WORKER_LOG_MAX_MB": "1"}
    env["WORKER_LOG_BACKUPS"] = "2"
    subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, check=True, timeout=120)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["worker.log", "worker.log.1", "worker.log.2"]
    assert sum(p.stat().st_size for p in tmp_path.iterdir()) <= 3 * 2**20 + 4096
    assert "line 59999" in (tmp_path / "worker.log").read_text()


def clear_worker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in settings.WORKER_SETTINGS:
        monkeypatch.delenv(name, raising=False)


def test_an_empty_environment_gives_the_default_settings(monkeypatch):
    clear_worker_settings(monkeypatch)
    read = WorkerSettings.from_env()
    assert read.sdk_thread_count == WorkerSettings().sdk_thread_count == 3 * 100 + 4
    assert dataclasses.replace(read, sdk_threads=None) == WorkerSettings()


# Each worker setting, a value unlike its default, and where it must land.
SETTING_FIELDS = {
    "TEMPORAL_TASK_QUEUE": ("team-q", "task_queue", "team-q"),
    "WORKER_CHECKOUT_ROOT": ("/srv/co", "checkout_root", Path("/srv/co")),
    "WORKER_CHECKOUT_TTL_HOURS": ("7", "checkout_ttl_hours", 7),
    "WORKER_MAX_CONCURRENT_ACTIVITIES": ("11", "max_concurrent_activities", 11),
    "WORKER_SDK_THREADS": ("13", "sdk_threads", 13),
    "WORKER_HEARTBEAT_INTERVAL_SECONDS": ("17", "heartbeat_interval_seconds", 17.0),
    "WORKER_SKYPILOT_OUTAGE_SECONDS": ("19", "skypilot_outage_seconds", 19.0),
    "AUTODOWN_IDLE_MINUTES": ("23", "autodown_idle_minutes", 23),
    "REAPER_PERIOD_SECONDS": ("29", "reaper_period_seconds", 29),
    "REAPER_GRACE_SECONDS": ("31", "reaper_grace_seconds", 31),
    "WORKER_SHUTDOWN_GRACE_SECONDS": ("37", "shutdown_grace_seconds", 37),
    "WORKER_ALLOW_INSECURE_GIT": ("true", "allow_insecure_git", True),
    "WORKER_DEPLOYMENT_NAME": ("pipelines-eu", "deployment_name", "pipelines-eu"),
    "WORKER_BUILD_ID": ("build-42", "build_id", "build-42"),
    "WORKER_MAKE_CURRENT": ("never", "make_current", "never"),
    "WORKER_METRICS_ADDRESS": ("off", "metrics_address", "off"),
    "LOG_LEVEL": ("debug", "log_level", "DEBUG"),
    "WORKER_LOG_FILE": ("/var/log/w.log", "log_file", Path("/var/log/w.log")),
    "WORKER_LOG_MAX_MB": ("41", "log_max_mb", 41),
    "WORKER_LOG_BACKUPS": ("43", "log_backups", 43),
}
POLICY_FIELDS = {
    "WORKER_ALLOWED_SECRETS": ("HF_TOKEN", "secret_names", frozenset({"HF_TOKEN"})),
    "WORKER_ALLOWED_MANAGED_SECRETS": ("wandb", "managed_secret_names", frozenset({"wandb"})),
    "WORKER_ALLOW_TASK_CONFIG": ("yes", "allow_task_config", True),
    "WORKER_ALLOWED_UPLOAD_DIRS": ("/srv/data", "upload_dirs", (Path("/srv/data"),)),
    "WORKER_ALLOWED_LOCAL_REPOS": ("/srv/repos", "local_repo_dirs", (Path("/srv/repos"),)),
    "WORKER_ALLOWED_HOST_PATHS": ("/scratch", "host_path_dirs", ("/scratch",)),
}


def changed_fields(read: Any, default: Any) -> set[str]:
    return {f.name for f in dataclasses.fields(read) if getattr(read, f.name) != getattr(default, f.name)}


@pytest.mark.parametrize("name", [*SETTING_FIELDS, *POLICY_FIELDS])
def test_each_setting_lands_in_its_own_field_and_nowhere_else(monkeypatch, name):
    clear_worker_settings(monkeypatch)
    value, field, expected = {**SETTING_FIELDS, **POLICY_FIELDS}[name]
    monkeypatch.setenv(name, value)
    read = WorkerSettings.from_env()
    if name != "WORKER_SDK_THREADS":  # from_env writes out the default thread count
        read = dataclasses.replace(read, sdk_threads=None)
    if name in POLICY_FIELDS:
        assert changed_fields(read, WorkerSettings()) == {"policy"}
        read = read.policy
    assert getattr(read, field) == expected
    assert changed_fields(read, type(read)()) == {field}


def test_worker_versioning_is_on_unless_the_deployment_name_is_off(monkeypatch):
    clear_worker_settings(monkeypatch)
    assert WorkerSettings.from_env().versioning([]) == Versioning("skypilot-task-queue", code_build_id([]))
    monkeypatch.setenv("WORKER_DEPLOYMENT_NAME", "pipelines-eu")
    monkeypatch.setenv("WORKER_BUILD_ID", "build-42")
    assert WorkerSettings.from_env().versioning([]) == Versioning("pipelines-eu", "build-42")
    monkeypatch.setenv("WORKER_DEPLOYMENT_NAME", "off")
    assert WorkerSettings.from_env().versioning([]) is None


def test_each_task_queue_of_a_plugin_gets_a_deployment_named_after_it():
    settings = WorkerSettings(build_id="b1")
    names = {settings.versioning([], queue).deployment_name for queue in ("gpu.jobs", "cpu-jobs")}  # type: ignore[union-attr]
    assert names == {"gpu-jobs", "cpu-jobs"}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WORKER_DEPLOYMENT_NAME", "eu.pipelines"),
        ("WORKER_DEPLOYMENT_NAME", "eu:pipelines"),
        ("WORKER_BUILD_ID", "__internal"),
        ("WORKER_BUILD_ID", "v 2"),
        ("WORKER_MAKE_CURRENT", "sometimes"),
    ],
)
def test_a_bad_versioning_setting_is_refused_in_one_line_naming_it(monkeypatch, name, value):
    clear_worker_settings(monkeypatch)
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"^{name}") as refused:
        WorkerSettings.from_env()
    assert "\n" not in str(refused.value)


def test_every_worker_setting_has_a_field():
    assert set(settings.WORKER_SETTINGS) == {*SETTING_FIELDS, *POLICY_FIELDS}
