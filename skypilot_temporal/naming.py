"""Names of what a run owns: cluster prefixes, job names, the owner label."""

from __future__ import annotations

import hashlib
import re

CLUSTER_NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
MAX_PREFIX_LENGTH = 24
# Every cluster this project launches is named "<CLUSTER_MARKER>...": the leak reaper only ever
# looks at clusters with this marker.
CLUSTER_MARKER = "skypilot-"
# The label every cluster a pipeline launches carries (owner_token of its workflow id): a run
# adopts a job on, execs on or tears down only a cluster whose label is its own.
OWNER_LABEL = "skypilot-temporal-owner"
# A cluster's role, the part of its name after the prefix: no "-", so a name's owner is exact.
CLUSTER_ROLE = re.compile(r"[a-z][a-z0-9]*")


def cluster_prefix_for(workflow_id: str) -> str:
    """The cluster-name prefix of the run with `workflow_id`: one workflow id, one prefix.

    Clusters are named "<prefix>-<role>", so the prefix is a reservation Temporal enforces: no two
    running workflows share an id. An id that is already a valid prefix without "--"
    ("skypilot-3fa2b1c9") is used as is; any other id becomes the marker, a short slug, "--" and
    32 bits of a hash of the whole id ("skypilot-night--0d3928ab"). So no id used as is equals
    another id's hashed prefix; two hashed ids share a prefix only if their hashes collide, and
    then the owner label (OWNER_LABEL) still keeps each run off the other's clusters.
    """
    if (
        workflow_id.startswith(CLUSTER_MARKER)
        and len(workflow_id) <= MAX_PREFIX_LENGTH
        and CLUSTER_NAME.fullmatch(workflow_id)
        and "--" not in workflow_id
    ):
        return workflow_id
    digest = hashlib.sha256(workflow_id.encode()).hexdigest()[:8]
    room = MAX_PREFIX_LENGTH - len(CLUSTER_MARKER) - len(digest) - 2
    slug = re.sub(r"[^a-z0-9]+", "-", workflow_id.lower()).strip("-")[:room].strip("-")
    return f"{CLUSTER_MARKER}{slug}--{digest}" if slug else f"{CLUSTER_MARKER}-{digest}"


def cluster_prefix_v1_for(workflow_id: str) -> str:
    """The prefix of runs started before cluster_prefix_for became injective (an id like
    "skypilot-nightly-0d3928" was both used as is and the hash of "nightly run 1")."""
    if (
        workflow_id.startswith(CLUSTER_MARKER)
        and len(workflow_id) <= MAX_PREFIX_LENGTH
        and CLUSTER_NAME.fullmatch(workflow_id)
    ):
        return workflow_id
    room = MAX_PREFIX_LENGTH - len(CLUSTER_MARKER) - 7
    slug = re.sub(r"[^a-z0-9]+", "-", workflow_id.lower()).strip("-")[:room].strip("-")
    digest = hashlib.sha256(workflow_id.encode()).hexdigest()[:6]
    return f"{CLUSTER_MARKER}{slug}-{digest}" if slug else f"{CLUSTER_MARKER}{digest}"


def owner_token(workflow_id: str) -> str:
    """The value of OWNER_LABEL on the clusters of the runs with `workflow_id`."""
    return hashlib.sha256(workflow_id.encode()).hexdigest()[:16]


def legacy_cluster_prefix_for(workflow_id: str) -> str:
    """The prefix of runs started before the CLUSTER_MARKER (so their cleanup finds their clusters)."""
    if len(workflow_id) <= MAX_PREFIX_LENGTH and CLUSTER_NAME.fullmatch(workflow_id):
        return workflow_id
    slug = re.sub(r"[^a-z0-9]+", "-", workflow_id.lower()).strip("-")[: MAX_PREFIX_LENGTH - 9]
    digest = hashlib.sha256(workflow_id.encode()).hexdigest()[:6]
    return f"{slug.rstrip('-') or 'run'}-{digest}" if slug[:1].isalpha() else f"p-{slug}-{digest}"


def job_name_for(prefix: str, run_id: str, step: str) -> str:
    """The SkyPilot job name of `step` in one workflow run: unique per run, found again on retry.

    The run token is a hash of the whole run id: run ids are time-ordered UUIDs whose leading
    digits are the same for runs started within a minute of each other.
    """
    return f"{prefix}-{run_token(run_id)}-{step}"


def run_token(run_id: str) -> str:
    return hashlib.sha256(run_id.encode()).hexdigest()[:8]


# ---------------------------------------------------------------- activity inputs and results
