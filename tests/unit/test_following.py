"""What the starter prints for a sweep: a line per variant as it starts and ends, and the table."""

from __future__ import annotations

from temporalio.client import WorkflowFailureError
from temporalio.exceptions import TerminatedError

from skypilot_temporal.client.following import end_message, print_new_steps, print_success, print_sweep_table
from skypilot_temporal.payloads import (
    ASCII_STATUS_MARKS,
    PipelineProgress,
    PipelineResult,
    StepProgress,
    StepResult,
    SweepResult,
    VariantProgress,
)


def variants() -> list[VariantProgress]:
    return [
        VariantProgress("v1", {"LR": "0.1"}, "succeeded", "s-v1", {"eval_accuracy": 0.81}, 70.4),
        VariantProgress("v2", {"LR": "0.01"}, "succeeded", "s-v2", {"eval_accuracy": 0.93}, 69.0),
        VariantProgress("v3", {"LR": "10"}, "failed", "s-v3", {}, 12.0, "step 'train' failed: NaN"),
    ]


def test_a_variant_gets_a_line_when_it_starts_and_one_when_it_ends(capsys):
    printed: dict[str, str] = {}
    running = [VariantProgress("v1", {"LR": "0.1"}, "running", "s-v1"), VariantProgress("v2", {"LR": "1"})]
    print_new_steps(PipelineProgress("running", "", [], [], running), printed, ASCII_STATUS_MARKS)
    print_new_steps(PipelineProgress("running", "", [], [], running), printed, ASCII_STATUS_MARKS)
    print_new_steps(PipelineProgress("succeeded", "", [], [], variants()), printed, ASCII_STATUS_MARKS)
    assert capsys.readouterr().out.splitlines() == [
        "  > variant v1    LR=0.1  (workflow s-v1)",
        "  + variant v1    LR=0.1  succeeded  eval_accuracy=0.81  70s",
        "  > variant v2    LR=0.01  (workflow s-v2)",
        "  + variant v2    LR=0.01  succeeded  eval_accuracy=0.93  69s",
        "  > variant v3    LR=10  (workflow s-v3)",
        "  x variant v3    LR=10  failed     12s  step 'train' failed: NaN",
    ]


def test_the_sweep_table_has_a_row_per_variant_and_stars_the_best(capsys):
    rows = variants()
    result = SweepResult("repo", "a" * 40, StepResult("preprocess", "c"), rows, rows[1], "eval_accuracy:max")
    print_sweep_table("s", result, "http://ui")
    assert capsys.readouterr().out.splitlines() == [
        "Sweep s succeeded (commit aaaaaaaaaaaa); best by eval_accuracy:max: v2",
        "    variant  LR    status     eval_accuracy  time",
        "    v1       0.1   succeeded  0.81           70s",
        "  * v2       0.01  succeeded  0.93           69s",
        "    v3       10    failed     -              12s",
        "  Web UI: http://ui",
    ]


def test_a_terminated_sweep_says_its_variants_are_still_cleaning_up():
    running = [VariantProgress("v1", {}, "running"), VariantProgress("v2", {}, "succeeded")]
    ended = WorkflowFailureError(cause=TerminatedError("x"))
    message = end_message(ended, PipelineProgress("running", "", [], [], running))
    assert message == "was terminated; variants v1 are still cleaning up (check `sky status`)"


def test_a_pipeline_result_shows_each_steps_metrics(capsys):
    steps = [
        StepResult("train", "p-train", 1, "SUCCEEDED", 0, 36.2, metrics={"train_loss": 0.25}),
        StepResult(
            "eval",
            "p-train",
            2,
            "SUCCEEDED",
            0,
            11.0,
            "METRIC eval_accuracy=0.864",
            metrics={"eval_accuracy": 0.864},
        ),
    ]
    print_success("w", PipelineResult("repo", "b" * 40, steps), "http://ui")
    assert capsys.readouterr().out.splitlines()[1:3] == [
        "  train      p-train: job 1 SUCCEEDED in 36s  train_loss=0.25",
        "  eval       p-train: job 2 SUCCEEDED in 11s  eval_accuracy=0.864",
    ]


def test_a_managed_step_says_managed_and_counts_its_recoveries(capsys):
    train = StepProgress("train", "managed job train", "succeeded", job_id=3, job_status="SUCCEEDED")
    train.duration_seconds, train.recoveries = 212.0, 1
    print_new_steps(PipelineProgress("running", "", [train], []), {}, ASCII_STATUS_MARKS)
    result = StepResult("train", "", 3, "SUCCEEDED", 0, 212.0, recoveries=1)
    print_success("w", PipelineResult("repo", "b" * 40, [result]), "http://ui")
    assert capsys.readouterr().out.splitlines()[:4] == [
        "  > train            managed job train",
        "  + train            succeeded  managed job 3  1 recovery  212s",
        "Workflow w succeeded (commit bbbbbbbbbbbb)",
        "  train      managed: job 3 SUCCEEDED after 1 recovery in 212s",
    ]
