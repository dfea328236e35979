"""Making a worker's version current races with other workers: the conflict token decides.

A stub of the two Worker Deployment calls stands in for the server, whose answers in a race the
dev server does not let a test time."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from temporalio.api.deployment.v1 import message_pb2 as deployment_messages
from temporalio.api.workflowservice.v1 import request_response_pb2 as service
from temporalio.service import RPCError, RPCStatusCode

from skypilot_temporal.operations.deployment import Versioning, make_current_if_newer

Summary = deployment_messages.WorkerDeploymentInfo.WorkerDeploymentVersionSummary


def described(current: str, token: bytes, builds: dict[str, int]) -> service.DescribeWorkerDeploymentResponse:
    """The deployment with `builds` (build id -> creation second) and `current` current."""
    info = deployment_messages.WorkerDeploymentInfo(
        version_summaries=[
            Summary(
                deployment_version=deployment_messages.WorkerDeploymentVersion(build_id=build),
                create_time=Timestamp(seconds=created),
            )
            for build, created in builds.items()
        ],
        routing_config=deployment_messages.RoutingConfig(
            current_deployment_version=deployment_messages.WorkerDeploymentVersion(build_id=current)
        ),
    )
    return service.DescribeWorkerDeploymentResponse(worker_deployment_info=info, conflict_token=token)


class Server:
    """Answers each describe with the next of `states`; refuses a set whose token is stale."""

    def __init__(self, *states: service.DescribeWorkerDeploymentResponse) -> None:
        self.states, self.described, self.sets = list(states), 0, []

    async def describe_worker_deployment(self, request: Any) -> service.DescribeWorkerDeploymentResponse:
        self.described += 1
        return self.states[min(self.described, len(self.states)) - 1]

    async def set_worker_deployment_current_version(self, request: Any) -> None:
        self.sets.append(request.conflict_token)
        if request.conflict_token != self.states[-1].conflict_token:
            raise RPCError("conflict token mismatch", RPCStatusCode.FAILED_PRECONDITION, b"")


def client_of(server: Server) -> Any:
    return SimpleNamespace(workflow_service=server, namespace="default", identity="test-worker")


async def test_a_stale_conflict_token_is_retried_with_the_fresh_one(caplog: pytest.LogCaptureFixture):
    """Another worker changed the deployment between our describe and our set (a new token, the
    same current build): the set is refused, and the next one, with the fresh token, succeeds."""
    builds = {"code-old": 1, "code-new": 2}
    server = Server(described("code-old", b"t1", builds), described("code-old", b"t2", builds))
    with caplog.at_level(logging.INFO):
        await make_current_if_newer(client_of(server), Versioning("queue", "code-new"))
    assert server.sets == [b"t1", b"t2"]
    assert "build code-new is now current (was code-old)" in caplog.text, caplog.text


async def test_a_newer_build_made_current_meanwhile_is_left_current(caplog: pytest.LogCaptureFixture):
    """The race lost to a newer build: the set with the stale token is refused, and the fresh
    look finds a newer build current, which this older worker leaves alone."""
    server = Server(
        described("code-old", b"t1", {"code-old": 1, "code-new": 2}),
        described("code-newer", b"t2", {"code-old": 1, "code-new": 2, "code-newer": 3}),
    )
    with caplog.at_level(logging.INFO):
        await make_current_if_newer(client_of(server), Versioning("queue", "code-new"))
    assert server.sets == [b"t1"]
    assert "build code-new is NOT current (current: code-newer, it is newer)" in caplog.text, caplog.text
