"""run_workflow.py following a run: through a Temporal outage, attached with --follow, and the end
message saying only what the workflow reports."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import ApplicationError, CancelledError, TerminatedError
from temporalio.exceptions import TimeoutError as WorkflowTimeoutError
from temporalio.service import RPCError, RPCStatusCode
from temporalio.testing import WorkflowEnvironment
from test_scripts import assert_one_line_error, run_script, starter_env

import run_workflow
from skypilot_temporal.client import following
from skypilot_temporal.client.starting import start_run
from skypilot_temporal.errors import ConfigError
from skypilot_temporal.operations.reaper import ClusterReaperWorkflow
from skypilot_temporal.payloads import PipelineProgress, ReaperInput
from skypilot_temporal.testing.fake_sky import FakeJob, FakeSky
from skypilot_temporal.trust.codec import configured_data_converter
from testing import ROOT, free_port
from testing.in_process import TEMPORAL_CLI, Pipeline, running_worker
from workflows import SkyPilotWorkflow

# ------------------------------------------------------------------ a dev server we can kill


class DevServer:
    """A Temporal dev server on a fixed port whose state survives a SIGKILL (its db file)."""

    def __init__(self, db_file: Path) -> None:
        self.address = f"127.0.0.1:{free_port()}"
        self.db_file = db_file
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        host, port = self.address.split(":")
        command = [str(TEMPORAL_CLI), "server", "start-dev", "--headless", "--ip", host, "--port", port]
        self.process = subprocess.Popen(
            [*command, "--db-filename", str(self.db_file), "--log-level", "error"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    async def connect(self, timeout: float = 30) -> Client:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return await Client.connect(self.address, data_converter=configured_data_converter())
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)


class Lines:
    """A stream's lines as they arrive."""

    def __init__(self, stream: asyncio.StreamReader) -> None:
        self.lines: list[str] = []
        self.reader = asyncio.create_task(self._read(stream))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        async for raw in stream:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    async def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not self.count(text):
            assert not self.reader.done(), f"stream ended without {text!r}:\n" + "\n".join(self.lines)
            assert time.monotonic() < deadline, f"no {text!r} in {timeout}s:\n" + "\n".join(self.lines)
            await asyncio.sleep(0.1)


class Starter:
    """run_workflow.py running in the background, its output read as it comes."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout and process.stderr
        self.process = process
        self.stdout, self.stderr = Lines(process.stdout), Lines(process.stderr)

    @classmethod
    async def start(cls, *args: str, env_overrides: dict[str, str]) -> Starter:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "PIPELINE_"))}
        env.update(ENV_FILE=os.devnull, **env_overrides)
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            str(ROOT / "run_workflow.py"),
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def exit_code(self, timeout: float = 60) -> int:
        try:
            rc = await asyncio.wait_for(self.process.wait(), timeout)
        finally:
            if self.process.returncode is None:
                self.process.kill()
        await asyncio.gather(self.stdout.reader, self.stderr.reader)
        return rc

    def output(self) -> tuple[str, str]:
        return "\n".join(self.stdout.lines), "\n".join(self.stderr.lines)


def finish(job: FakeJob) -> None:
    """End a FakeSky job planned `until_cancelled` as a success."""
    job.status = "SUCCEEDED"
    job.finished_at = time.monotonic()
    job.done.set()


@pytest.fixture
async def dev_server(tmp_path: Path):
    server = DevServer(tmp_path / "temporal.db")
    server.start()
    yield server
    server.stop()


# ------------------------------------------------------------------ a Temporal outage


async def test_starter_waits_out_a_temporal_restart_and_reports_it_once(
    dev_server: DevServer, fake_sky: FakeSky, task_repo: Path, tmp_path: Path
):
    """SIGKILL the server while train runs, restart it on the same db: the starter carries on."""
    client = await dev_server.connect()
    task_queue = f"test-{uuid.uuid4().hex[:8]}"
    fake_sky.plan("train", until_cancelled=True)
    settings = {
        "TEMPORAL_ADDRESS": dev_server.address,
        "TEMPORAL_TASK_QUEUE": task_queue,
        "PIPELINE_REPO_URL": str(task_repo),
        "PIPELINE_REF": "main",
        "PIPELINE_PREPROCESS_YAML": "data_preprocessing.yaml",
        "PIPELINE_TRAIN_YAML": "train.yaml",
        "PIPELINE_EVAL_YAML": "eval.yaml",
    }
    worker_env = WorkflowEnvironment.from_client(client)
    async with running_worker(worker_env, fake_sky, tmp_path / "checkouts", task_queue):
        # A heartbeat timeout longer than the outage: the train step is not timed out meanwhile.
        starter = await Starter.start(
            "--workflow-id", "outage-run", "--timeout", "heartbeat=120", env_overrides=settings
        )
        try:
            train = await asyncio.to_thread(fake_sky.wait_for_job, "train", timeout=60)
            await starter.stdout.wait_for("▶ train ")
            dev_server.kill()
            await starter.stderr.wait_for(f"Lost connection to Temporal at {dev_server.address}")
            dev_server.start()
            await starter.stderr.wait_for("Reconnected to Temporal.")
            finish(train)
        finally:
            rc = await starter.exit_code()
    out, err = starter.output()
    assert rc == 0, (out, err)
    assert "Workflow outage-run succeeded" in out
    assert "✓ train " in out and "✓ train-down " in out, out
    lost, back = starter.stderr.count("Lost connection to Temporal"), starter.stderr.count("Reconnected")
    assert lost == 1 and back == 1, err
    # Unless told not to, temporalio's core logs "WARN ... gRPC call X retried N times" to stdout
    # from a call's 5th retry on: 4 to 6 lines per call during this outage, none here.
    retry_lines = [line for line in (out + "\n" + err).splitlines() if "retried" in line or "WARN" in line]
    assert retry_lines == [], retry_lines
    assert "Traceback" not in out + err


# ------------------------------------------------------------------ --follow


async def test_follow_prints_a_finished_run_like_the_run_that_started_it(pipeline: Pipeline):
    handle = await pipeline.start()
    await handle.result()
    rc, stdout, stderr = await run_script(
        "run_workflow.py", "--follow", handle.id, env_overrides=starter_env(pipeline)
    )
    assert rc == 0, (stdout, stderr)
    assert stdout.startswith(f"Following workflow {handle.id}\n  Web UI: http://localhost:8233/"), stdout
    starts = [line.split()[1] for line in stdout.splitlines() if line.startswith("  ▶ ")]
    ends = [line.split()[1] for line in stdout.splitlines() if line.startswith("  ✓ ")]
    steps = ["fetch-tasks", "preprocess", "preprocess-down", "train", "eval", "train-down"]
    assert starts == steps and ends == steps, stdout
    assert f"Workflow {handle.id} succeeded (commit " in stdout
    assert stderr == ""


class CountingQueries:
    """A run's handle that notes when it is queried."""

    def __init__(self, handle: WorkflowHandle, queried: list[float]) -> None:
        self._handle, self.queried = handle, queried

    def __getattr__(self, name: str):
        return getattr(self._handle, name)

    async def query(self, *args, **kwargs):
        self.queried.append(time.monotonic())
        return await self._handle.query(*args, **kwargs)


async def test_follow_queries_a_run_when_its_history_moves_not_while_a_step_runs(pipeline: Pipeline):
    """A progress query is a workflow task on the worker: with many runs followed, a query a
    second each was load on the worker for nothing while their steps ran."""
    pipeline.fake.plan("train", seconds=8)
    handle = await pipeline.start()
    counting = CountingQueries(handle, [])
    follower = asyncio.create_task(following.follow(counting, following.Reconnecting("test")))
    job = await asyncio.to_thread(pipeline.fake.wait_for_job, "train")
    train_started = time.monotonic()
    progress = await follower
    assert progress is not None and progress.status == "succeeded"
    assert job.finished_at is not None
    during_train = [t for t in counting.queried if train_started + 2 < t < job.finished_at]
    assert during_train == [], f"{len(during_train)} queries while train ran"
    assert len(counting.queried) < 20, len(counting.queried)  # about one per step boundary


class BusyQueries(CountingQueries):
    """A run's handle whose first query the server answers UNAVAILABLE, as a loaded one may."""

    async def query(self, *args, **kwargs):
        if not self.queried:
            self.queried.append(time.monotonic())
            raise RPCError("busy", RPCStatusCode.UNAVAILABLE, b"")
        return await super().query(*args, **kwargs)


async def test_a_query_the_server_turns_away_is_not_a_lost_connection(pipeline: Pipeline, capsys):
    handle = await pipeline.start()
    await handle.result()
    progress = await following.follow(BusyQueries(handle, []), following.Reconnecting("test"))
    assert progress is not None and progress.status == "succeeded"
    assert "Lost connection" not in capsys.readouterr().err


async def test_follow_of_an_unknown_workflow_id_is_a_one_line_error(pipeline: Pipeline):
    rc, stdout, stderr = await run_script(
        "run_workflow.py", "--follow", "no-such-run", env_overrides=starter_env(pipeline)
    )
    assert_one_line_error(rc, stdout, stderr, "no workflow with id no-such-run")
    assert stdout == ""
    reaper_id = f"reaper-{uuid.uuid4().hex[:6]}"
    await pipeline.env.client.execute_workflow(
        ClusterReaperWorkflow.run, ReaperInput(), id=reaper_id, task_queue=pipeline.task_queue
    )
    rc, stdout, stderr = await run_script(
        "run_workflow.py", "--follow", reaper_id, env_overrides=starter_env(pipeline)
    )
    assert_one_line_error(rc, stdout, stderr, f"workflow {reaper_id} is a ClusterReaperWorkflow, not a")


async def test_a_start_temporal_refuses_is_a_one_line_error(pipeline: Pipeline):
    too_long = "x" * 2000  # over Temporal's limit on workflow ids
    with pytest.raises(ConfigError, match=rf"^cannot start workflow '{too_long}': ") as raised:
        await start_run(
            pipeline.env.client, SkyPilotWorkflow, pipeline.input(), too_long, pipeline.task_queue
        )
    assert "\n" not in str(raised.value)


async def follow_during_train(pipeline: Pipeline, action: str) -> tuple[WorkflowHandle, int, str, str]:
    """`run_workflow.py --follow` a run, then `action` (cancel or terminate) it mid-train."""
    pipeline.fake.plan("train", until_cancelled=True)
    handle = await pipeline.start()
    await asyncio.to_thread(pipeline.fake.wait_for_job, "train")
    follower = await Starter.start("--follow", handle.id, env_overrides=starter_env(pipeline))
    try:
        await follower.stdout.wait_for("▶ train ")
        await getattr(handle, action)()
    finally:
        rc = await follower.exit_code()
    stdout, stderr = follower.output()
    return handle, rc, stdout, stderr


async def test_follow_attaches_to_a_running_run_and_reports_its_cancel(pipeline: Pipeline):
    handle, rc, stdout, stderr = await follow_during_train(pipeline, "cancel")
    assert rc == 1, (stdout, stderr)
    assert stdout.startswith(f"Following workflow {handle.id}\n"), stdout
    assert "  ✓ preprocess " in stdout and "  ⊘ train " in stdout, stdout
    assert stderr.splitlines()[0] == f"Workflow {handle.id} was cancelled; no cluster left", stderr
    pipeline.assert_no_cluster_left()


async def test_follow_lists_the_clusters_a_terminated_run_reports_up(pipeline: Pipeline):
    """Terminate skips the workflow's cleanup: its progress query still names the train cluster."""
    handle, rc, stdout, stderr = await follow_during_train(pipeline, "terminate")
    assert rc == 1, (stdout, stderr)
    [train_cluster] = pipeline.fake.clusters  # preprocess went down as a step; nothing tore this down
    assert train_cluster.endswith("-train")
    assert stderr.splitlines()[0] == (
        f"Workflow {handle.id} was terminated; clusters still up: {train_cluster} (check `sky status`)"
    ), stderr


# ------------------------------------------------------------------ the end message


def progress(*clusters_up: str, status: str = "cancelled") -> PipelineProgress:
    return PipelineProgress(status=status, commit_sha="abc", steps=[], clusters_up=list(clusters_up))


def ended(cause: BaseException) -> WorkflowFailureError:
    return WorkflowFailureError(cause=cause)


@pytest.mark.parametrize(
    "cause,answer,expected",
    [
        (CancelledError("x"), progress(), "was cancelled; no cluster left"),
        (
            CancelledError("x"),
            progress("p-preprocess", "p-train"),
            "was cancelled; clusters still up: p-preprocess, p-train (check `sky status`)",
        ),
        (
            TerminatedError("x"),
            None,
            "was terminated: no cleanup ran; the reaper removes its clusters (check `sky status`)",
        ),
        (
            TerminatedError("x"),
            progress("p-train", status="running"),
            "was terminated; clusters still up: p-train (check `sky status`)",
        ),
        (CancelledError("x"), None, "was cancelled; cleanup state unknown"),
        (
            WorkflowTimeoutError("x", type=None, last_heartbeat_details=[]),
            None,
            "timed out; cleanup state unknown",
        ),
        (ApplicationError("step 'train' failed"), progress(status="failed"), "failed: step 'train' failed"),
        (ApplicationError("step 'train' failed"), None, "failed: step 'train' failed; cleanup state unknown"),
    ],
)
def test_the_end_message_says_only_what_the_workflow_reports(cause, answer, expected):
    assert run_workflow.end_message(ended(cause), answer) == expected


def test_a_failure_lists_clusters_on_its_first_line_and_keeps_the_log_tail():
    cause = ApplicationError("step 'train' failed: exit code 100\nlast log lines:\nloss is NaN")
    message = run_workflow.end_message(ended(cause), progress("p-train", status="failed"))
    assert message.splitlines() == [
        "failed: step 'train' failed: exit code 100; clusters still up: p-train (check `sky status`)",
        "last log lines:",
        "loss is NaN",
    ]


# ------------------------------------------------------------------ the heading


def test_the_heading_is_printed_once_without_its_markdown_and_only_when_the_run_has_one(capsys):
    printed: dict[str, str] = {}
    following.print_new_steps(progress(status="running"), printed, {})  # a run of the six steps
    assert capsys.readouterr().out == ""
    headed = dataclasses.replace(progress(status="running"), heading="`d` (1 steps, at most 4 at once)")
    following.print_new_steps(headed, printed, {})
    following.print_new_steps(headed, printed, {})
    assert capsys.readouterr().out == "d (1 steps, at most 4 at once)\n"


async def started_priority(handle: WorkflowHandle) -> tuple[int, str]:
    async for event in handle.fetch_history_events():
        priority = event.workflow_execution_started_event_attributes.priority
        return priority.priority_key, priority.fairness_key
    raise AssertionError("no history")


async def test_the_starter_gives_a_run_its_priority_and_fairness_key(pipeline: Pipeline):
    """Steps and a sweep's variants inherit the run's Priority (Temporal's rule); the fairness
    key defaults to the task repository's owner, so each team gets its share of a backlog."""
    workflow_id = f"prio-{uuid.uuid4().hex[:8]}"
    args = ["--no-wait", "--workflow-id", workflow_id, "--priority", "1", "--fairness-key", "team-a"]
    rc, stdout, stderr = await run_script("run_workflow.py", *args, env_overrides=starter_env(pipeline))
    assert rc == 0, (stdout, stderr)
    handle = pipeline.env.client.get_workflow_handle(workflow_id)
    await handle.result()
    assert await started_priority(handle) == (1, "team-a")
    default_id = f"{workflow_id}-default"
    rc, stdout, stderr = await run_script(
        "run_workflow.py", "--no-wait", "--workflow-id", default_id, env_overrides=starter_env(pipeline)
    )
    assert rc == 0, (stdout, stderr)
    handle = pipeline.env.client.get_workflow_handle(default_id)
    await handle.result()
    assert await started_priority(handle) == (0, os.path.dirname(pipeline.input().repo_url))


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--priority", "0"], "argument --priority: expected 1 (runs first) to 5, got '0'"),
        (["--priority", "high"], "argument --priority: expected 1 (runs first) to 5, got 'high'"),
        (["--fairness-key", "t" * 65], "--fairness-key: at most 64 bytes, got 65"),
    ],
)
async def test_a_bad_priority_or_fairness_key_is_one_line_before_anything_starts(
    pipeline: Pipeline, flags: list[str], message: str
):
    rc, stdout, stderr = await run_script("run_workflow.py", *flags, env_overrides=starter_env(pipeline))
    assert rc == 2, (stdout, stderr)
    assert message in stderr and "Traceback" not in stderr, stderr
