"""The project's own metrics, served with the Temporal SDK's from the worker's Prometheus endpoint.

Recorded through Temporal's metric meters, so they go wherever the SDK's metrics go, carry the
same labels (namespace, task_queue, workflow_type or activity_type), and workflow-side ones are
never recorded twice when a workflow replays. With no metrics configured the meters do nothing.

    skypilot_step_duration_seconds{step, outcome}   histogram: a pipeline step, from start to end
    skypilot_runs_total{outcome}                     runs ended: succeeded, failed, cancelled (a
                                                     sweep's variants count too: workflow_type says)
    skypilot_jobs_reattached_total{kind}             step attempts that found their SkyPilot job
    skypilot_teardown_retries_total                  teardown attempts after the first
    skypilot_reaper_clusters_removed_total           clusters the leak safety net tore down
    skypilot_reaper_jobs_cancelled_total             managed jobs the leak safety net cancelled
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import MetricMeter
from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

STEP_DURATION = "skypilot_step_duration_seconds"
RUNS = "skypilot_runs_total"
JOBS_REATTACHED = "skypilot_jobs_reattached_total"
TEARDOWN_RETRIES = "skypilot_teardown_retries_total"
REAPER_CLUSTERS_REMOVED = "skypilot_reaper_clusters_removed_total"
REAPER_JOBS_CANCELLED = "skypilot_reaper_jobs_cancelled_total"
# Steps last from seconds (a teardown) to a day (a long train).
STEP_DURATION_BUCKETS = (0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)


def prometheus_runtime(bind_address: str) -> Runtime:
    """A Temporal runtime serving every metric at http://`bind_address`/metrics, durations in
    seconds (Prometheus' convention)."""
    return Runtime(
        telemetry=TelemetryConfig(
            metrics=PrometheusConfig(
                bind_address=bind_address,
                durations_as_seconds=True,
                histogram_bucket_overrides={STEP_DURATION: list(map(float, STEP_DURATION_BUCKETS))},
            )
        )
    )


# ------------------------------------------------------------------ workflow side


def step_ended(step: str, outcome: str, duration: timedelta) -> None:
    workflow.metric_meter().create_histogram_float(
        STEP_DURATION, "How long a pipeline step took, by step and outcome", "s"
    ).record(duration.total_seconds(), {"step": step, "outcome": outcome})


def run_ended(outcome: str) -> None:
    counter = workflow.metric_meter().create_counter(RUNS, "Pipeline runs ended, by outcome")
    counter.add(1, {"outcome": outcome})


def reaped(clusters: int, managed_jobs: int) -> None:
    meter = workflow.metric_meter()
    if clusters:
        meter.create_counter(REAPER_CLUSTERS_REMOVED, "Clusters torn down by the reaper").add(clusters)
    if managed_jobs:
        meter.create_counter(REAPER_JOBS_CANCELLED, "Managed jobs cancelled by the reaper").add(managed_jobs)


def teardown_round_retried() -> None:
    """A teardown whose attempts all failed starts a new round (its first attempt is a retry)."""
    _teardown_retries(workflow.metric_meter())


# ------------------------------------------------------------------ activity side


def job_reattached(kind: str) -> None:
    """A step attempt found its job already submitted (by an earlier attempt or run) and follows it."""
    activity.metric_meter().create_counter(
        JOBS_REATTACHED, "Step attempts that re-attached to their SkyPilot job"
    ).add(1, {"kind": kind})


def teardown_attempt_started() -> None:
    """Counts attempts after the first, whatever ended the one before (an error, a timeout, a
    lost worker)."""
    if activity.info().attempt > 1:
        _teardown_retries(activity.metric_meter())


def _teardown_retries(meter: MetricMeter) -> None:
    meter.create_counter(TEARDOWN_RETRIES, "Teardown attempts after the first").add(1)
