"""Pipeline files end to end on the real stack: the example diamond (tasks/diamond.yaml), then the
same diamond with a failing branch. Parallelism is read from the run's history; what is left is
read from SkyPilot (`sky status`) and Slurm (`squeue`)."""

from __future__ import annotations

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError

from skypilot_temporal.naming import cluster_prefix_for
from skypilot_temporal.payloads import LaunchInput
from testing import ROOT
from testing.in_process import make_git_repo
from testing.local_stack import Stack, slurm_allocations

pytestmark = pytest.mark.e2e


async def launch_spans(client: Client, workflow_id: str) -> dict[str, tuple[float, float]]:
    """Step -> (its launch activity's first start, its completion), epoch seconds, from the history."""
    steps: dict[int, str] = {}
    started: dict[str, float] = {}
    spans: dict[str, tuple[float, float]] = {}
    async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
        at = event.event_time.ToDatetime().timestamp()
        if event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED:
            attributes = event.activity_task_scheduled_event_attributes
            if attributes.activity_type.name == "launch_task":
                [launch] = await client.data_converter.decode(attributes.input.payloads, [LaunchInput])
                steps[event.event_id] = launch.task.step
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
            step = steps.get(event.activity_task_started_event_attributes.scheduled_event_id)
            if step:
                started.setdefault(step, at)
        elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_COMPLETED:
            step = steps.get(event.activity_task_completed_event_attributes.scheduled_event_id)
            if step:
                spans[step] = (started[step], at)
    return spans


def assert_nothing_left(stack: Stack, workflow_id: str) -> None:
    prefix = cluster_prefix_for(workflow_id)
    assert stack.clusters(prefix) == [], f"`sky status` still lists clusters of {prefix}"
    assert slurm_allocations(prefix) == {}, "Slurm still holds an allocation of the run"


async def test_a_diamond_runs_its_trainings_at_once_and_a_failing_branch_stops_the_other(
    stack: Stack, tmp_path
):
    rc, stdout, stderr, workflow_id = await stack.start_pipeline("--pipeline", "tasks/diamond.yaml")
    assert rc == 0, stdout + stderr
    result = await stack.temporal.get_workflow_handle(workflow_id, result_type=dict).result()
    by_step = {s["step"]: s for s in result["steps"]}
    assert list(by_step) == ["prepare", "train-small", "train-large", "eval-large", "compare"]
    prefix = cluster_prefix_for(workflow_id)
    assert (
        by_step["eval-large"]["cluster_name"] == by_step["train-large"]["cluster_name"] == f"{prefix}-large"
    )
    assert by_step["eval-large"]["job_id"] == 2  # exec'd on the training cluster, after its job 1
    # The compare task got the metrics the earlier steps reported.
    small_loss = by_step["train-small"]["metrics"]["train_loss"]
    assert f"small: train_loss={small_loss:g}" in by_step["compare"]["log_tail"]
    assert "large_is_better" in by_step["compare"]["metrics"]
    spans = await launch_spans(stack.temporal, workflow_id)
    (small_start, small_end), (large_start, large_end) = spans["train-small"], spans["train-large"]
    assert small_start < large_end and large_start < small_end, "the two trainings did not overlap"
    assert_nothing_left(stack, workflow_id)

    # The same diamond, its small training failing while the large one runs for minutes.
    files = {f"tasks/{p.name}": p.read_text() for p in (ROOT / "tasks").glob("*.yaml")}
    files["tasks/diamond.yaml"] = (
        files["tasks/diamond.yaml"]
        .replace('{VARIANT_ID: small, EPOCHS: "2"}', '{VARIANT_ID: small, EPOCHS: "2", FAIL_TRAINING: "1"}')
        .replace('{VARIANT_ID: large, EPOCHS: "4"}', '{VARIANT_ID: large, EPOCHS: "600"}', 1)
    )
    repo = make_git_repo(tmp_path / "failing-branch", files)
    rc, stdout, stderr, workflow_id = await stack.start_pipeline(
        "--repo", str(repo), "--ref", "main", "--pipeline", "tasks/diamond.yaml"
    )
    assert rc == 1, stdout + stderr
    assert "step 'train-small'" in stderr and "training diverged" in stderr, stderr
    with pytest.raises(WorkflowFailureError):
        await stack.temporal.get_workflow_handle(workflow_id).result()
    progress = await stack.temporal.get_workflow_handle(workflow_id).query("progress")
    statuses = {s["name"]: s["status"] for s in progress["steps"]}
    assert statuses["train-small"] == "failed" and statuses["train-large"] == "cancelled", statuses
    assert statuses["eval-large"] == statuses["compare"] == "skipped", statuses
    assert_nothing_left(stack, workflow_id)
