"""Metrics a job reports with `METRIC <name>=<number>` lines, as the log sink collects them."""

from __future__ import annotations

import pytest

from skypilot_temporal.activity.job_log import MAX_METRICS, JobLogSink, add_metrics
from skypilot_temporal.payloads import JobProgress


def sink_after(*lines: str) -> JobLogSink:
    sink = JobLogSink(lambda line: None, [], JobProgress("running", "c"))
    for line in lines:
        sink.write(line + "\n")
    return sink


def test_a_metric_is_found_after_skypilots_prefix_and_ansi_codes():
    sink = sink_after(
        "(eval, pid=1234) METRIC eval_accuracy=0.91",
        "\x1b[36m(train, pid=77)\x1b[0m METRIC \x1b[1mloss\x1b[0m=1.5e-3 (epoch 3)",
        "METRIC steps=-12",
    )
    assert sink.metrics == {"eval_accuracy": 0.91, "loss": 0.0015, "steps": -12.0}


def test_a_metric_line_split_across_writes_counts_once_whole():
    sink = JobLogSink(lambda line: None, [], JobProgress("running", "c"))
    sink.write("(eval, pid=1) METRIC acc")
    sink.write("uracy=0.5\nMETRIC f1=.25")
    assert sink.tail().endswith("METRIC f1=.25")
    assert sink.metrics == {"accuracy": 0.5, "f1": 0.25}


@pytest.mark.parametrize(
    "value", ["nan", "NaN", "inf", "-inf", "Infinity", "abc", "1e999", "0x10", "1_000", "0.5.1", "", "1,5"]
)
def test_a_value_that_is_not_a_finite_number_is_ignored(value):
    metrics: dict[str, float] = {"kept": 1.0}
    add_metrics(metrics, f"METRIC kept={value}")
    add_metrics(metrics, f"METRIC other={value}")
    assert metrics == {"kept": 1.0}


@pytest.mark.parametrize(
    "line",
    [
        "METRIC 9lives=1",  # a name starts with a letter or _
        f"METRIC {'n' * 65}=1",  # at most 64 characters
        "METRIC a b=1",
        "METRIC a = 1",
        "XMETRIC a=1",
        "metric a=1",
        "METRICa=1",
        "eval_accuracy=0.9",  # the example tasks' own line is no metric
    ],
)
def test_a_line_that_is_not_a_metric_report_adds_none(line):
    assert sink_after(line).metrics == {}


def test_names_may_hold_dots_and_dashes_and_several_metrics_share_a_line():
    assert sink_after("METRIC val.top-1=0.7 METRIC _n=3").metrics == {"val.top-1": 0.7, "_n": 3.0}
    assert sink_after(f"METRIC {'n' * 64}=2").metrics == {"n" * 64: 2.0}


def test_the_last_value_of_a_metric_wins():
    assert sink_after("METRIC loss=3", "METRIC loss=2", "METRIC loss=nan", "METRIC loss=1").metrics == {
        "loss": 1.0
    }


def test_at_most_max_metrics_names_are_kept_and_the_kept_ones_still_update():
    lines = [f"METRIC m{i}={i}" for i in range(MAX_METRICS + 10)]
    sink = sink_after(*lines, "METRIC m0=-1")
    assert len(sink.metrics) == MAX_METRICS == 50
    assert set(sink.metrics) == {f"m{i}" for i in range(MAX_METRICS)}
    assert sink.metrics["m0"] == -1.0


def test_reading_the_job_log_again_starts_the_metrics_afresh():
    sink = sink_after("METRIC provisioning_only=1")
    sink.clear_tail()
    sink.write("METRIC from_the_job=2\n")
    assert sink.metrics == {"from_the_job": 2.0}


def test_a_metric_whose_value_is_a_secret_is_masked_not_reported():
    sink = JobLogSink(lambda line: None, ["0.123456"], JobProgress("running", "c"))
    sink.write("METRIC token=0.123456\n")
    assert sink.metrics == {} and sink.tail() == "METRIC token=***"
