"""Search attributes: find runs by step, repository, commit, kind and outcome.

    temporal workflow list --query "PipelineStep='train' AND CommitSha='4e1f...'"

The starter gives a run its kind, repository and outcome "running" when it starts it; the
workflow then keeps PipelineStep (the step running now, cleared at the end), CommitSha and
PipelineOutcome current. A namespace must register them once (`registration_commands()`); a
run started without them (unregistered, or started by another client) never upserts any, so
it works the same, only unsearchable. Whether a run upserts depends only on its start event,
so replay is deterministic whatever the namespace's registrations are now.
"""

from __future__ import annotations

from collections.abc import Sequence

from temporalio import workflow
from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest
from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    SearchAttributeUpdate,
    TypedSearchAttributes,
)

PIPELINE_STEP = SearchAttributeKey.for_keyword("PipelineStep")
TASK_REPO = SearchAttributeKey.for_keyword("TaskRepo")
COMMIT_SHA = SearchAttributeKey.for_keyword("CommitSha")
PIPELINE_KIND = SearchAttributeKey.for_keyword("PipelineKind")
PIPELINE_OUTCOME = SearchAttributeKey.for_keyword("PipelineOutcome")
ALL_KEYS = (PIPELINE_STEP, TASK_REPO, COMMIT_SHA, PIPELINE_KIND, PIPELINE_OUTCOME)

KIND_OF_WORKFLOW = {
    "SkyPilotWorkflow": "pipeline",
    "SweepWorkflow": "sweep",
    "SweepVariantWorkflow": "sweep-variant",
}


def at_start(workflow_type: str, repo_url: str) -> TypedSearchAttributes:
    """What a run starts with (`repo_url` already without credentials)."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(PIPELINE_KIND, KIND_OF_WORKFLOW.get(workflow_type, workflow_type)),
            SearchAttributePair(TASK_REPO, repo_url),
            SearchAttributePair(PIPELINE_OUTCOME, "running"),
        ]
    )


def is_unregistered_error(message: str) -> bool:
    """Whether Temporal refused a start because the namespace lacks one of these attributes."""
    return "search attribute" in message.lower() and any(key.name in message for key in ALL_KEYS)


async def missing(client: Client) -> list[str]:
    """The attributes `client`'s namespace has not registered (raises RPCError if it cannot tell)."""
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    return [key.name for key in ALL_KEYS if key.name not in response.custom_attributes]


def registration_commands(names: Sequence[str] = ()) -> list[str]:
    """The Temporal CLI command that registers each attribute (self-hosted or dev server)."""
    return [
        f"temporal operator search-attribute create --name {key.name} --type Keyword"
        for key in ALL_KEYS
        if not names or key.name in names
    ]


def dev_server_args() -> list[str]:
    """`temporal server start-dev` arguments that register every attribute."""
    return [arg for key in ALL_KEYS for arg in ("--search-attribute", f"{key.name}=Keyword")]


class RunAttributes:
    """Workflow side: keeps a run's attributes current, if it started with them."""

    def __init__(self) -> None:
        started_with = workflow.info().typed_search_attributes
        self.enabled = started_with.get(PIPELINE_KIND) is not None
        self._step = ""
        self._commit = started_with.get(COMMIT_SHA) or ""

    def step(self, name: str) -> None:
        if name != self._step:
            self._step = name
            self._upsert(PIPELINE_STEP.value_set(name) if name else PIPELINE_STEP.value_unset())

    def commit(self, sha: str) -> None:
        if sha and sha != self._commit:
            self._commit = sha
            self._upsert(COMMIT_SHA.value_set(sha))

    def ended(self, outcome: str) -> None:
        self._step = ""
        self._upsert(PIPELINE_STEP.value_unset(), PIPELINE_OUTCOME.value_set(outcome))

    def for_child(self) -> TypedSearchAttributes | None:
        """A child run's start attributes: the parent's repository and commit, when it has them."""
        if not self.enabled:
            return None
        info = workflow.info().typed_search_attributes
        child = [
            SearchAttributePair(PIPELINE_KIND, KIND_OF_WORKFLOW["SweepVariantWorkflow"]),
            SearchAttributePair(PIPELINE_OUTCOME, "running"),
        ]
        if (repo := info.get(TASK_REPO)) is not None:
            child.append(SearchAttributePair(TASK_REPO, repo))
        if self._commit:
            child.append(SearchAttributePair(COMMIT_SHA, self._commit))
        return TypedSearchAttributes(child)

    def _upsert(self, *updates: SearchAttributeUpdate) -> None:
        if self.enabled:
            workflow.upsert_search_attributes(list(updates))
