"""Acme's pipeline over the fake SkyPilot SDK the package ships: no cloud, no API server."""

from __future__ import annotations

import uuid
from pathlib import Path

from acme_pipelines.pipelines import TrainTwiceEvaluated, TrainTwiceEvaluatedInput

from skypilot_temporal import PipelineInput, StepTimeouts, TaskPolicy
from skypilot_temporal.testing import FakeSky, make_git_repo, running_worker, start_dev_server

# The project's own task files: the fake runs no command, but each passes the worker's task policy.
TASKS = {path.name: path.read_text() for path in (Path(__file__).parents[1] / "tasks").glob("*.yaml")}


async def test_train_then_two_evals_on_one_cluster_leaves_nothing_up(tmp_path: Path):
    repo = make_git_repo(tmp_path / "tasks", TASKS)
    fake = FakeSky()
    env = await start_dev_server()
    try:
        queue = f"acme-{uuid.uuid4().hex[:8]}"
        async with running_worker(
            env.client,
            fake,
            queue,
            workflows=[TrainTwiceEvaluated],
            checkout_root=tmp_path / "checkouts",
            policy=TaskPolicy(local_repo_dirs=(tmp_path,)),
        ):
            result = await env.client.execute_workflow(
                TrainTwiceEvaluated.run,
                TrainTwiceEvaluatedInput(
                    PipelineInput(repo_url=str(repo), timeouts=StepTimeouts(heartbeat=5))
                ),
                id=f"acme-{uuid.uuid4().hex[:8]}",
                task_queue=queue,
            )
    finally:
        await env.shutdown()
    assert [s.step for s in result.steps] == ["train", "eval", "stress-eval"]
    assert all(s.job_status == "SUCCEEDED" for s in result.steps)
    assert len({s.cluster_name for s in result.steps}) == 1
    assert fake.clusters == {}
