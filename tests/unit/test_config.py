"""Configuration: Temporal's standard client settings, .env parsing, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from skypilot_temporal import config
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
