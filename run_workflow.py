"""Start a SkyPilotWorkflow run and follow it until it ends.

    python run_workflow.py                      # the example tasks in this repository
    python run_workflow.py --repo URL --ref v1 --env EPOCHS=3 --infra aws
    python run_workflow.py --follow skypilot-3fa2b1c9   # attach to a run already going (or ended)
    python run_workflow.py --help

Every option defaults to a PIPELINE_* variable from .env. Exit status: 0 when the workflow
succeeded, 1 when it failed, was cancelled, terminated or timed out, 2 on bad input (an unknown
workflow id too) or a server unreachable before the run is started or found, 3 when you stop
waiting (the run goes on; --no-wait starts it and returns at once). Once it follows a run, a
Temporal outage is waited out: one line when the connection drops, one when it is back.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import uuid
from collections.abc import Awaitable, Callable, Collection, Sequence
from datetime import timedelta
from typing import Any, TextIO, TypeVar

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import (
    ApplicationError,
    CancelledError,
    TerminatedError,
    WorkflowAlreadyStartedError,
)
from temporalio.exceptions import TimeoutError as WorkflowTimeoutError
from temporalio.runtime import LoggingConfig, Runtime, TelemetryConfig, TelemetryFilter
from temporalio.service import RPCError, RPCStatusCode

import config
from redaction import redact_url_credentials
from shared import (
    CLUSTER_MARKER,
    ENV_NAME,
    MAX_HEARTBEAT_SECONDS,
    MAX_PREFIX_LENGTH,
    MAX_STEP_TIMEOUT_SECONDS,
    PipelineInput,
    PipelineProgress,
    PipelineResult,
    StepProgress,
    StepTimeouts,
    cluster_prefix_for,
    input_problems,
)
from workflows import SkyPilotWorkflow

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DETACHED = 0, 1, 2, 3
POLL_SECONDS = 1.0
RECONNECT_MIN_SECONDS, RECONNECT_MAX_SECONDS = 1.0, 10.0
# A query waits for a worker to answer it; with no worker running it would wait ~30 s per poll.
QUERY_TIMEOUT = timedelta(seconds=10)
# What the server not answering looks like. Besides UNAVAILABLE, tonic reports a connection that
# dropped mid-call as UNKNOWN (or CANCELLED) "transport error".
OUTAGE_CODES = frozenset({RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED})
TRANSPORT_CODES = frozenset({RPCStatusCode.UNKNOWN, RPCStatusCode.CANCELLED})
TRANSPORT_WORDS = ("transport", "connect", "broken pipe", "h2 protocol")

T = TypeVar("T")
RunHandle = WorkflowHandle[Any, PipelineResult]


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip() or not key.strip().isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def step_timeout(text: str) -> tuple[str, int]:
    key, value = key_value(text)
    names = [f.name for f in dataclasses.fields(StepTimeouts)]
    if key.replace("-", "_") not in names:
        raise argparse.ArgumentTypeError(f"unknown step {key!r} (one of: {', '.join(names)})")
    try:
        seconds = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"timeout for {key!r} must be whole seconds") from None
    limit = MAX_HEARTBEAT_SECONDS if key == "heartbeat" else MAX_STEP_TIMEOUT_SECONDS
    if not 1 <= seconds <= limit:
        raise argparse.ArgumentTypeError(f"timeout for {key!r} must be between 1 and {limit} seconds")
    return key.replace("-", "_"), seconds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Start the SkyPilot pipeline (clone -> preprocess -> train -> eval) on "
        "Temporal and follow it. Defaults come from PIPELINE_* variables in .env."
    )
    parser.add_argument(
        "--repo",
        default=config.env_str("PIPELINE_REPO_URL", str(config.PROJECT_DIR)),
        help="task repository: git URL or local path (default: this repository)",
    )
    parser.add_argument(
        "--ref",
        default=config.env_str("PIPELINE_REF", "HEAD"),
        help="branch, tag or commit to run (default: HEAD)",
    )
    parser.add_argument(
        "--preprocess-yaml",
        default=config.env_str("PIPELINE_PREPROCESS_YAML", "tasks/data_preprocessing.yaml"),
        help="path in the repository",
    )
    parser.add_argument(
        "--train-yaml",
        default=config.env_str("PIPELINE_TRAIN_YAML", "tasks/train.yaml"),
        help="path in the repository",
    )
    parser.add_argument(
        "--eval-yaml",
        default=config.env_str("PIPELINE_EVAL_YAML", "tasks/eval.yaml"),
        help="path in the repository",
    )
    parser.add_argument(
        "--infra",
        default=config.env_str("PIPELINE_INFRA"),
        help="override the tasks' infra, e.g. slurm, aws, k8s",
    )
    parser.add_argument(
        "--env",
        action="append",
        type=key_value,
        metavar="KEY=VALUE",
        help="env override for every task (repeatable; stored in workflow history: use --secret for secrets)",
    )
    parser.add_argument(
        "--secret",
        action="append",
        metavar="NAME",
        help="pass the WORKER's environment variable NAME to every task as a "
        "SkyPilot secret; only the name is stored (repeatable)",
    )
    parser.add_argument(
        "--cluster-prefix",
        default=config.env_str("PIPELINE_CLUSTER_PREFIX"),
        help="reserve a fixed cluster prefix NAME: the run's workflow id becomes skypilot-NAME and its "
        "clusters skypilot-NAME-<step>; a second run with it is refused while the first is going",
    )
    parser.add_argument("--workflow-id", default="", help="workflow id (default: a new unique one)")
    parser.add_argument(
        "--timeout",
        action="append",
        type=step_timeout,
        metavar="STEP=SECONDS",
        help="per-step timeout, e.g. train=7200 (repeatable)",
    )
    parser.add_argument(
        "--keep-clusters-on-failure",
        action="store_true",
        default=config.env_bool("PIPELINE_KEEP_CLUSTERS_ON_FAILURE"),
        help="debugging: leave the clusters of a failed run up",
    )
    parser.add_argument(
        "--overlap-provisioning",
        action="store_true",
        default=config.env_bool("PIPELINE_OVERLAP_PROVISIONING"),
        help="bring the train cluster up while preprocess runs (the train job still waits for it)",
    )
    parser.add_argument("--task-queue", default=config.task_queue(), help="Temporal task queue")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-wait", action="store_true", help="start the run and exit")
    mode.add_argument(
        "--follow",
        metavar="WORKFLOW_ID",
        default="",
        help="start nothing: follow the run with this id, already going or ended, to its end",
    )
    return parser


def pipeline_input(args: argparse.Namespace) -> PipelineInput:
    repo = args.repo
    if os.path.isdir(repo):  # a local path: the worker may run from another directory
        repo = os.path.abspath(repo)
    try:
        env = dict(key_value(item) for item in config.env_list("PIPELINE_ENV"))
    except argparse.ArgumentTypeError as err:
        raise config.ConfigError(f"PIPELINE_ENV: {err}") from None
    env.update(dict(args.env or []))
    secrets = config.env_list("PIPELINE_SECRETS") + list(args.secret or [])
    for name in secrets:
        if not ENV_NAME.fullmatch(name):
            raise config.ConfigError(f"--secret takes a variable name, got {name!r}")
    pipeline = PipelineInput(
        repo_url=repo,
        ref=args.ref,
        preprocess_yaml=args.preprocess_yaml,
        train_yaml=args.train_yaml,
        eval_yaml=args.eval_yaml,
        env_overrides=env,
        secret_names=secrets,
        infra=args.infra,
        keep_clusters_on_failure=args.keep_clusters_on_failure,
        overlap_provisioning=args.overlap_provisioning,
        timeouts=StepTimeouts(**dict(args.timeout or [])),
    )
    if problems := input_problems(pipeline):
        raise config.ConfigError("; ".join(problems))
    return pipeline


def status_marks(stream: TextIO) -> dict[str, str]:
    """Plain-text marks for step lines, in ASCII when the output can't encode the symbols."""
    try:
        "▶✓✗".encode(stream.encoding or "ascii")
        return {"running": "▶", "succeeded": "✓", "other": "✗"}
    except (UnicodeEncodeError, LookupError):
        return {"running": ">", "succeeded": "+", "other": "x"}


def step_line(step: StepProgress, marks: dict[str, str]) -> str:
    """`▶ name summary` when a step starts; `✓ name status cluster job duration` when it ends."""
    if step.status == "running":
        return f"  {marks['running']} {step.name:<16} {step.summary}"
    parts = [f"{step.status:<9}"]
    if step.cluster_name:
        parts.append(f"cluster {step.cluster_name}")
    if step.job_id is not None:
        failed = step.job_status if step.job_status not in ("", "SUCCEEDED") else ""
        parts.append(f"job {step.job_id} {failed}".rstrip())
    if step.duration_seconds is not None:
        parts.append(f"{step.duration_seconds:.0f}s")
    return f"  {marks.get(step.status, marks['other'])} {step.name:<16} " + "  ".join(parts)


def quiet_runtime() -> Runtime:
    """A Temporal runtime whose core logs errors only.

    The default one logs a WARN line for each retried RPC: a flood while Temporal is down, which
    the starter reports in one line of its own instead.
    """
    quiet = TelemetryFilter(core_level="ERROR", other_level="ERROR")
    return Runtime(telemetry=TelemetryConfig(logging=LoggingConfig(filter=quiet)))


def is_outage(err: RPCError, codes: Collection[RPCStatusCode] = OUTAGE_CODES) -> bool:
    """Whether `err` means the server did not answer (down, unreachable, connection dropped)."""
    if err.status in codes:
        return True
    message = str(err).lower()
    return err.status in TRANSPORT_CODES and any(word in message for word in TRANSPORT_WORDS)


class Reconnecting:
    """Calls to Temporal that wait out an outage instead of failing: the run goes on without us."""

    def __init__(self, address: str) -> None:
        self.address = address

    async def call(
        self, request: Callable[[], Awaitable[T]], outage_codes: Collection[RPCStatusCode] = OUTAGE_CODES
    ) -> T:
        """`await request()`, retried with backoff while the server does not answer.

        One line when the connection is lost and one when it is back, never one per retry.
        """
        delay, lost = RECONNECT_MIN_SECONDS, False
        while True:
            try:
                answer = await request()
            except RPCError as err:
                if not is_outage(err, outage_codes):
                    raise
                if not lost:
                    lost = True
                    print(
                        f"Lost connection to Temporal at {self.address}: reconnecting (the run goes on)...",
                        file=sys.stderr,
                        flush=True,
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)
                continue
            if lost:
                print("Reconnected to Temporal.", file=sys.stderr, flush=True)
            return answer


async def query_progress(handle: RunHandle, temporal: Reconnecting) -> PipelineProgress | None:
    """The run's progress query; None when no worker answers it (none running, or not yet)."""
    try:
        # Only UNAVAILABLE is an outage here: a query also times out when no worker answers.
        return await temporal.call(
            lambda: handle.query(SkyPilotWorkflow.progress, rpc_timeout=QUERY_TIMEOUT),
            outage_codes={RPCStatusCode.UNAVAILABLE},
        )
    except RPCError:
        return None


def print_new_steps(
    progress: PipelineProgress | None, printed: dict[str, str], marks: dict[str, str]
) -> None:
    """Print the step starts and ends not printed yet; `printed` maps summary -> last status."""
    for step in progress.steps if progress else []:
        if step.status == "pending" or printed.get(step.summary) == step.status:
            continue
        if step.status != "running" and step.summary not in printed:  # started and ended
            print(step_line(dataclasses.replace(step, status="running"), marks), flush=True)
        printed[step.summary] = step.status
        print(step_line(step, marks), flush=True)


async def follow(handle: RunHandle, temporal: Reconnecting) -> PipelineProgress | None:
    """Print one line per step as it starts and ends (cleanup included) until the run ends.

    Plain text only, so the output reads the same in a terminal and in a file. Returns what the
    ended run's progress query reports (None: no answer).
    """
    marks = status_marks(sys.stdout)
    printed: dict[str, str] = {}  # summaries are unique
    while True:
        description = await temporal.call(handle.describe)
        # Queried after the describe, so the progress of an ended run is its final state.
        progress = await query_progress(handle, temporal)
        print_new_steps(progress, printed, marks)
        if description.status not in (None, WorkflowExecutionStatus.RUNNING):
            return progress
        await asyncio.sleep(POLL_SECONDS)


def workflow_id_for(args: argparse.Namespace) -> str:
    """The run's workflow id. Its clusters are named after it (shared.cluster_prefix_for), so a
    fixed --cluster-prefix is a fixed workflow id: Temporal refuses a second running one."""
    if args.cluster_prefix:
        if args.workflow_id:
            raise config.ConfigError("give --cluster-prefix or --workflow-id, not both")
        workflow_id = CLUSTER_MARKER + args.cluster_prefix.removeprefix(CLUSTER_MARKER)
        if cluster_prefix_for(workflow_id) != workflow_id:
            raise config.ConfigError(
                f"--cluster-prefix {args.cluster_prefix!r}: use lowercase letters, digits and '-' "
                f"(at most {MAX_PREFIX_LENGTH - len(CLUSTER_MARKER)} characters)"
            )
        return workflow_id
    return args.workflow_id or f"{CLUSTER_MARKER}{uuid.uuid4().hex[:8]}"


async def start(client: Client, pipeline: PipelineInput, args: argparse.Namespace) -> RunHandle:
    workflow_id = workflow_id_for(args)
    try:
        return await client.start_workflow(
            SkyPilotWorkflow.run,
            pipeline,
            id=workflow_id,
            task_queue=args.task_queue,
            static_summary=f"SkyPilot pipeline: {redact_url_credentials(pipeline.repo_url)}@{pipeline.ref}",
            static_details=(
                f"tasks: {pipeline.preprocess_yaml}, {pipeline.train_yaml}, "
                f"{pipeline.eval_yaml}; infra: {pipeline.infra or 'from the tasks'}"
            ),
        )
    except WorkflowAlreadyStartedError:
        if args.cluster_prefix:
            raise config.ConfigError(
                f"cluster prefix {args.cluster_prefix!r} is in use by the running workflow {workflow_id!r}"
            ) from None
        raise config.ConfigError(
            f"cannot start workflow {workflow_id!r}: a workflow with this id is already running"
        ) from None
    except RPCError as err:
        raise config.ConfigError(f"cannot start workflow {workflow_id!r}: {config.one_line(err)}") from None


async def attach(client: Client, workflow_id: str, temporal: Reconnecting) -> RunHandle:
    """A handle on the latest run with `workflow_id`, whether it is going or ended."""
    try:
        description = await temporal.call(client.get_workflow_handle(workflow_id).describe)
    except RPCError as err:
        if err.status == RPCStatusCode.NOT_FOUND:
            raise config.ConfigError(f"no workflow with id {workflow_id}") from None
        raise
    if description.workflow_type != SkyPilotWorkflow.__name__:
        raise config.ConfigError(
            f"workflow {workflow_id} is a {description.workflow_type}, not a {SkyPilotWorkflow.__name__} run"
        )
    return client.get_workflow_handle_for(SkyPilotWorkflow.run, workflow_id, run_id=description.run_id)


async def start_or_attach_and_follow(args: argparse.Namespace) -> int:
    pipeline = None if args.follow else pipeline_input(args)  # bad input fails before connecting
    client: Client = await config.connect_temporal(runtime=quiet_runtime())
    temporal = Reconnecting(client.service_client.config.target_host)
    if pipeline is None:
        handle = await attach(client, args.follow, temporal)
        run_id, verb = handle.run_id, "Following"
    else:
        handle = await start(client, pipeline, args)
        run_id, verb = handle.result_run_id, "Started"
    url = config.workflow_ui_url(client.namespace, handle.id, run_id)
    print(f"{verb} workflow {handle.id}\n  Web UI: {url}", flush=True)
    if args.no_wait:
        return EXIT_OK
    progress = await follow(handle, temporal)
    try:
        result = await temporal.call(handle.result)
    except WorkflowFailureError as err:
        print_failure(handle.id, end_message(err, progress), url)
        return EXIT_FAILED
    print_success(handle.id, result, url)
    return EXIT_OK


def print_success(workflow_id: str, result: PipelineResult, url: str) -> None:
    print(f"Workflow {workflow_id} succeeded (commit {result.commit_sha[:12]})")
    for step in result.steps:
        print(
            f"  {step.step:<10} {step.cluster_name}: job {step.job_id} {step.job_status} "
            f"in {step.duration_seconds:.0f}s"
        )
    last_eval_lines = result.steps[-1].log_tail.splitlines()[-3:] if result.steps else []
    for line in last_eval_lines:
        print(f"  eval> {line}")
    print(f"  Web UI: {url}")


def print_failure(workflow_id: str, message: str, url: str) -> None:
    first_line, *log_lines = message.splitlines()
    print(f"Workflow {workflow_id} {first_line}", file=sys.stderr)
    for line in log_lines:  # "last log lines:" and the failing job's log tail
        print(f"  {line}" if line == "last log lines:" else f"    {line}", file=sys.stderr)
    print(f"  Web UI: {url}", file=sys.stderr)


def end_message(err: WorkflowFailureError, progress: PipelineProgress | None) -> str:
    """How the run ended, its first line followed by what its progress query says of clusters."""
    cause = err.cause
    if isinstance(cause, CancelledError):
        outcome = "was cancelled"
    elif isinstance(cause, TerminatedError):
        outcome = "was terminated"
    elif isinstance(cause, WorkflowTimeoutError):
        outcome = "timed out"
    elif isinstance(cause, ApplicationError):
        outcome = f"failed: {cause.message}"
    else:
        outcome = f"failed: {cause or err}"
    first_line, *rest = outcome.splitlines()
    return "\n".join([first_line + clusters_note(cause, progress), *rest])


def clusters_note(cause: BaseException | None, progress: PipelineProgress | None) -> str:
    """Which clusters the ended run reports up: never a cleanup the workflow did not report."""
    if progress is None:
        if isinstance(cause, TerminatedError):
            return ": no cleanup ran; the reaper removes its clusters (check `sky status`)"
        return "; cleanup state unknown"
    if progress.clusters_up:
        return f"; clusters still up: {', '.join(progress.clusters_up)} (check `sky status`)"
    if isinstance(cause, (CancelledError, TerminatedError, WorkflowTimeoutError)):
        return "; no cluster left"
    return ""  # a failed run names its clusters only when some are up


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a job's log line must never crash the starter
        stream.reconfigure(errors="replace")  # type: ignore[union-attr]
    config.load_env()
    try:
        args = build_parser().parse_args(argv)
        return asyncio.run(start_or_attach_and_follow(args))
    except config.ConfigError as err:
        print(f"run_workflow.py: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except RPCError as err:
        print(f"run_workflow.py: error: Temporal request failed: {config.one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("Stopped waiting; the workflow keeps running (see the Web UI link above).", file=sys.stderr)
        return EXIT_DETACHED


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # The Temporal client's native threads can crash a normal interpreter exit
    # (PyGILState_Release, rc 134/139) after all work is done: skip teardown so the exit
    # status is always the one above.
    os._exit(code)
