"""Workers against an API server that checks who calls: the local stack's (service-account tokens
issued by scripts/skypilot_tokens.py, as scripts/local_stack.sh does for its own worker)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from skypilot_temporal.naming import cluster_prefix_for
from testing import ROOT
from testing.local_stack import SKY_API, Stack, process_env, spawn_worker_process, start_worker_process
from testing.waiting import eventually

pytestmark = pytest.mark.e2e

REFUSED = "refused this worker's credentials"


def service_account_token(name: str, out: Path, action: str = "issue") -> str:
    """A token of service account `name` (issue: new or rotated; rotate: the old value stops working)."""
    subprocess.run(
        [sys.executable, "-m", "scripts.skypilot_tokens", action, name, "--out", str(out), "--api", SKY_API],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out.read_text()


def test_a_worker_whose_token_the_server_refuses_does_not_start_and_says_why_in_one_line(tmp_path: Path):
    unknown = "sky_eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzYS1ub2JvZHkifQ.bm90LWEtc2lnbmF0dXJl"
    worker = spawn_worker_process(
        tmp_path / "worker.log",
        process_env(
            TEMPORAL_TASK_QUEUE=f"e2e-auth-{uuid.uuid4().hex[:6]}", SKYPILOT_SERVICE_ACCOUNT_TOKEN=unknown
        ),
    )
    assert worker.proc.wait(timeout=120) == 2
    output = worker.log()
    [error] = [line for line in output.splitlines() if line.startswith("run_worker.py: error:")]
    assert REFUSED in error and "SKYPILOT_SERVICE_ACCOUNT_TOKEN" in error, output
    assert "Traceback" not in output and unknown not in output


async def test_a_token_revoked_mid_run_waits_for_the_fix_and_another_accounts_cancel_leaves_it_alone(
    temporal, sky_sdk, tmp_path: Path
):
    """Two workers, each its own service account and task queue, each a run. A's token is revoked
    (rotated) while A launches: A's steps say why they wait. B's run is cancelled meanwhile: its
    teardown cancels B's requests only, never A's launch. A's worker restarted with the new token
    re-attaches and A completes; nothing of either is left."""
    suffix = uuid.uuid4().hex[:6]
    accounts = {"a": f"e2e-a-{suffix}", "b": f"e2e-b-{suffix}"}
    tokens = {key: service_account_token(name, tmp_path / f"{key}.token") for key, name in accounts.items()}
    queues = {key: f"e2e-auth-{key}-{suffix}" for key in accounts}
    stacks = {key: Stack(temporal, sky_sdk, queues[key], tmp_path) for key in accounts}
    workers = {
        key: start_worker_process(
            queues[key],
            tmp_path / f"{key}.log",
            tmp_path / f"checkouts-{key}",
            SKYPILOT_SERVICE_ACCOUNT_TOKEN=tokens[key],
        )
        for key in accounts
    }
    restarted = None
    ids = {key: f"e2e-auth-{key}-{suffix}" for key in accounts}
    runs = {key: asyncio.create_task(stacks[key].start_pipeline(workflow_id=ids[key])) for key in accounts}
    prefixes = {key: cluster_prefix_for(ids[key]) for key in accounts}

    def launch_of_a():
        requests = stacks["a"].requests_on(f"{prefixes['a']}-preprocess")
        return next((r for r in requests if r.name == "sky.launch"), None)

    def a_says_refused() -> bool:
        return REFUSED in workers["a"].log()

    try:
        launch_a = await eventually(lambda: asyncio.to_thread(launch_of_a), "A's preprocess launch", 300)
        await eventually(
            lambda: asyncio.to_thread(stacks["b"].requests_on, f"{prefixes['b']}-preprocess"),
            "B's preprocess launch",
            300,
        )
        fixed = service_account_token(
            accounts["a"], tmp_path / "a.token", "rotate"
        )  # A's old token stops working
        await temporal.get_workflow_handle(ids["b"]).cancel()
        rc_b, _, _, _ = await runs["b"]
        assert rc_b != 0
        assert (await temporal.get_workflow_handle(ids["b"]).describe()).status.name == "CANCELED"
        # B's teardown cancelled its own launch; A's, of another account, is untouched.
        [again] = [
            r
            for r in stacks["a"].requests_on(f"{prefixes['a']}-preprocess")
            if r.request_id == launch_a.request_id
        ]
        assert again.status != "CANCELLED", again.status
        await eventually(lambda: asyncio.to_thread(a_says_refused), "A's step to say why it waits", 180)
        workers["a"].kill(signal.SIGTERM)
        restarted = start_worker_process(
            queues["a"], tmp_path / "a2.log", tmp_path / "checkouts-a", SKYPILOT_SERVICE_ACCOUNT_TOKEN=fixed
        )
        rc_a, stdout_a, stderr_a, _ = await runs["a"]
        assert rc_a == 0, stderr_a
    finally:
        for process in [*workers.values(), restarted]:
            if process is not None:
                process.kill(signal.SIGTERM)
        for name in accounts.values():  # owning no cluster now, they can go
            subprocess.run(
                [sys.executable, "-m", "scripts.skypilot_tokens", "delete", name, "--api", SKY_API],
                cwd=ROOT,
                capture_output=True,
                timeout=60,
            )
    logs = "".join(process.log() for process in [*workers.values(), restarted] if process)
    assert not any(token in logs for token in [*tokens.values(), fixed])
    assert fixed not in stdout_a + stderr_a
    for key in accounts:
        assert stacks[key].clusters(prefixes[key]) == [], f"`sky status` still lists clusters of run {key}"
