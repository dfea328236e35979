"""A sweep end to end on the real stack: preprocess once, three variants two at a time."""

from __future__ import annotations

import pytest

from e2e.test_pipeline_e2e import DATA_DIR, result_of, status_of
from skypilot_temporal.naming import cluster_prefix_for
from testing.local_stack import Stack

pytestmark = pytest.mark.e2e


async def test_a_sweep_of_three_variants_reports_the_best_and_leaves_nothing(stack: Stack):
    rc, stdout, stderr, workflow_id = await stack.start_pipeline(
        "--sweep", "LR=0.1,0.01,0.001", "--env", "EPOCHS=1", "--max-parallel", "2"
    )
    assert rc == 0, stderr
    assert await status_of(stack.temporal, workflow_id) == "COMPLETED"
    result = await result_of(stack.temporal, workflow_id)
    variants = {v["variant_id"]: v for v in result["variants"]}
    assert [(v["params"], v["status"]) for v in variants.values()] == [
        ({"LR": "0.1"}, "succeeded"),
        ({"LR": "0.01"}, "succeeded"),
        ({"LR": "0.001"}, "succeeded"),
    ]
    accuracy = {name: v["metrics"]["eval_accuracy"] for name, v in variants.items()}
    assert result["best"]["variant_id"] == max(accuracy, key=accuracy.__getitem__)
    assert result["best"]["variant_id"] == "v2", accuracy  # the example eval favours LR=0.01

    # Each variant is its own workflow: every job SUCCEEDED, at most two ran at once.
    spans = []
    for name, variant in variants.items():
        child = stack.temporal.get_workflow_handle(variant["workflow_id"])
        child_result = await result_of(stack.temporal, variant["workflow_id"])
        assert [(s["step"], s["job_status"]) for s in child_result["steps"]] == [
            ("train", "SUCCEEDED"),
            ("eval", "SUCCEEDED"),
        ]
        description = await child.describe()
        spans.append((description.start_time, description.close_time))
        assert (DATA_DIR / cluster_prefix_for(workflow_id) / f"model-{name}" / "weights.txt").exists()
        assert stack.clusters(cluster_prefix_for(variant["workflow_id"])) == []
    most_at_once = max(sum(start <= t < close for start, close in spans) for t, _ in spans)
    assert most_at_once == 2
    assert stack.clusters(cluster_prefix_for(workflow_id)) == []

    # The starter printed each variant's start and end, then the table with the best starred.
    for name in variants:
        assert f"▶ variant {name}" in stdout and f"✓ variant {name}" in stdout, stdout
    assert "best by eval_accuracy:max: v2" in stdout and "* v2" in stdout, stdout
