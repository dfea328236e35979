"""Search attributes: find runs by step, repository, commit, kind and outcome.

    temporal workflow list --query "PipelineStep='train' AND CommitSha='4e1f...'"

The starter gives a run all five when it starts it (so Temporal checks every registration
then, and a namespace lacking one refuses the start, which the starter retries without them);
the workflow then keeps PipelineStep (the step running now, cleared at the end), CommitSha and
PipelineOutcome current. A run started without all five (unregistered, another client, or an
older starter's run) never upserts any: it works the same, only unsearchable. Whether a run
upserts depends only on its start event, so replay is deterministic whatever the namespace's
registrations are now. Upgrade workers before starters: a run started with the attributes but
first run by a worker older than this module would not replay on a newer one. (No patch marker
gates this: a second `patched()` in a run's first workflow task made replay of a history whose
first task was retried fail in sdk-core.)
"""

from __future__ import annotations

from urllib.parse import urlsplit

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
STARTING = "starting"  # PipelineStep before the first step

KIND_OF_WORKFLOW = {
    "SkyPilotWorkflow": "pipeline",
    "SweepWorkflow": "sweep",
    "SweepVariantWorkflow": "sweep-variant",
    "PipelineFileWorkflow": "pipeline-file",
}


def at_start(workflow_type: str, repo_url: str) -> TypedSearchAttributes:
    """What a run starts with: all five, so that starting it checks that each is registered."""
    return TypedSearchAttributes(
        [
            SearchAttributePair(PIPELINE_STEP, STARTING),
            SearchAttributePair(TASK_REPO, searchable_repo(repo_url)),
            SearchAttributePair(COMMIT_SHA, ""),
            SearchAttributePair(PIPELINE_KIND, KIND_OF_WORKFLOW.get(workflow_type, workflow_type)),
            SearchAttributePair(PIPELINE_OUTCOME, "running"),
        ]
    )


def searchable_repo(repo_url: str) -> str:
    """The repository as stored in the (unencrypted) visibility index: scheme, host and path
    only, never user info, a query or a fragment (where tokens hide)."""
    if "://" not in repo_url:
        return repo_url.rsplit("@", 1)[-1] if repo_url.count(":") == 1 else repo_url  # user@host:path
    try:
        parts = urlsplit(repo_url)
        host, port = parts.hostname or "", f":{parts.port}" if parts.port else ""
    except ValueError:  # not a URL a fetch could use: the run fails at step 1 and says why
        return repo_url.split("://", 1)[0] + "://"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def is_unregistered_error(message: str) -> bool:
    """Whether Temporal refused a start over one of these attributes (missing, or another type)."""
    return "search attribute" in message.lower() and any(key.name in message for key in ALL_KEYS)


async def missing(client: Client) -> list[str]:
    """The attributes `client`'s namespace has not registered (raises RPCError if it cannot tell)."""
    response = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=client.namespace)
    )
    return [key.name for key in ALL_KEYS if key.name not in response.custom_attributes]


def registration_command(name: str) -> str:
    """The Temporal CLI command that registers attribute `name` (self-hosted or dev server)."""
    return f"temporal operator search-attribute create --name {name} --type Keyword"


def dev_server_args() -> list[str]:
    """`temporal server start-dev` arguments that register every attribute."""
    return [arg for key in ALL_KEYS for arg in ("--search-attribute", f"{key.name}=Keyword")]


class RunAttributes:
    """Workflow side: keeps a run's attributes current, if it started with them."""

    def __init__(self) -> None:
        started_with = workflow.info().typed_search_attributes
        self.enabled = all(started_with.get(key) is not None for key in ALL_KEYS)
        self._step = started_with.get(PIPELINE_STEP) or ""
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
        return TypedSearchAttributes(
            [
                SearchAttributePair(PIPELINE_STEP, STARTING),
                SearchAttributePair(TASK_REPO, info.get(TASK_REPO) or ""),
                SearchAttributePair(COMMIT_SHA, self._commit),
                SearchAttributePair(PIPELINE_KIND, KIND_OF_WORKFLOW["SweepVariantWorkflow"]),
                SearchAttributePair(PIPELINE_OUTCOME, "running"),
            ]
        )

    def _upsert(self, *updates: SearchAttributeUpdate) -> None:
        if self.enabled:
            workflow.upsert_search_attributes(list(updates))
