"""Read a Prometheus endpoint as a test or benchmark does: every sample by name and labels."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from skypilot_temporal.operations.metrics import prometheus_runtime
from testing import free_port


async def serving_metrics(env: WorkflowEnvironment) -> tuple[WorkflowEnvironment, str]:
    """`env`'s server through a client whose runtime serves Prometheus metrics, as run_worker.py's
    does (workers on it record there), and the address to scrape."""
    address = f"127.0.0.1:{free_port()}"
    client = await Client.connect(
        env.client.service_client.config.target_host,
        runtime=prometheus_runtime(address),
        data_converter=env.client.data_converter,
    )
    return WorkflowEnvironment.from_client(client), address


def scrape(address: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Sample name -> [(labels, value)] from http://`address`/metrics (the endpoint of a runtime
    created a moment ago may take a little while to listen)."""
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as response:
                text = response.read().decode()
            break
        except urllib.error.URLError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((dict(sample.labels), sample.value))
    return samples


def value(samples: dict[str, list[tuple[dict[str, str], float]]], name: str, **labels: str) -> float:
    """The sum of `name`'s samples whose labels include `labels` (0 when there is none)."""
    return sum(v for sample_labels, v in samples.get(name, []) if labels.items() <= sample_labels.items())


def slow_workflow_tasks(address: str) -> tuple[float, float]:
    """Workflow tasks a worker serving metrics at `address` has run so far, and how many of
    them took over 1 s (Temporal's `workflow_task_execution_latency`)."""
    samples = scrape(address)
    total = value(samples, "temporal_workflow_task_execution_latency_count")
    return total, total - value(samples, "temporal_workflow_task_execution_latency_bucket", le="1")
