"""Start a SkyPilotWorkflow run and follow it until it ends.

    python run_workflow.py                      # the example tasks in this repository
    python run_workflow.py --repo URL --ref v1 --env EPOCHS=3 --infra aws
    python run_workflow.py --help

Every option defaults to a PIPELINE_* variable from .env. Exit status: 0 when the workflow
succeeded, 1 when it failed, was cancelled or timed out, 2 on bad input or an unreachable
server, 3 when you stop waiting (the run goes on; --no-wait starts it and returns at once).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import sys
import uuid
from collections.abc import Sequence
from typing import TextIO

from temporalio.client import Client, WorkflowFailureError, WorkflowHandle
from temporalio.exceptions import (
    ApplicationError,
    CancelledError,
    TerminatedError,
    WorkflowAlreadyStartedError,
)
from temporalio.exceptions import TimeoutError as WorkflowTimeoutError
from temporalio.service import RPCError

import config
from shared import PipelineInput, PipelineProgress, StepProgress, StepTimeouts
from workflows import SkyPilotWorkflow

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DETACHED = 0, 1, 2, 3
POLL_SECONDS = 1.0


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
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"timeout for {key!r} must be positive")
    return key.replace("-", "_"), seconds


def env_list(name: str) -> list[str]:
    return [item.strip() for item in config.env_str(name).split(",") if item.strip()]


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
        help="cluster name prefix (default: derived from the workflow id)",
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
    parser.add_argument("--no-wait", action="store_true", help="start the run and exit")
    return parser


def pipeline_input(args: argparse.Namespace) -> PipelineInput:
    repo = args.repo
    if os.path.isdir(repo):  # a local path: the worker may run from another directory
        repo = os.path.abspath(repo)
    env = dict(key_value(item) for item in env_list("PIPELINE_ENV"))
    env.update(dict(args.env or []))
    secrets = env_list("PIPELINE_SECRETS") + list(args.secret or [])
    for name in secrets:
        if not name.isidentifier():
            raise config.ConfigError(f"--secret takes a variable name, got {name!r}")
    return PipelineInput(
        repo_url=repo,
        ref=args.ref,
        preprocess_yaml=args.preprocess_yaml,
        train_yaml=args.train_yaml,
        eval_yaml=args.eval_yaml,
        cluster_prefix=args.cluster_prefix,
        env_overrides=env,
        secret_names=secrets,
        infra=args.infra,
        keep_clusters_on_failure=args.keep_clusters_on_failure,
        overlap_provisioning=args.overlap_provisioning,
        timeouts=StepTimeouts(**dict(args.timeout or [])),
    )


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


async def follow(handle: WorkflowHandle) -> None:
    """Print one line per step as it starts and ends (cleanup included) until the run ends.

    Plain text only, so the output reads the same in a terminal and in a file.
    """
    marks = status_marks(sys.stdout)
    printed: dict[str, str] = {}  # step summary -> last status printed (summaries are unique)
    while True:
        try:
            progress: PipelineProgress | None = await handle.query(SkyPilotWorkflow.progress)
        except RPCError:
            progress = None  # not yet picked up by a worker, or finished
        for step in progress.steps if progress else []:
            if step.status == "pending" or printed.get(step.summary) == step.status:
                continue
            if step.status != "running" and step.summary not in printed:  # started and ended
                print(step_line(dataclasses.replace(step, status="running"), marks), flush=True)
            printed[step.summary] = step.status
            print(step_line(step, marks), flush=True)
        desc = await handle.describe()
        if desc.status is not None and desc.status.name != "RUNNING":
            return
        await asyncio.sleep(POLL_SECONDS)


async def start_and_follow(args: argparse.Namespace) -> int:
    pipeline = pipeline_input(args)
    client: Client = await config.connect_temporal()
    workflow_id = args.workflow_id or f"skypilot-{uuid.uuid4().hex[:8]}"
    try:
        handle = await client.start_workflow(
            SkyPilotWorkflow.run,
            pipeline,
            id=workflow_id,
            task_queue=args.task_queue,
            static_summary=f"SkyPilot pipeline: {pipeline.repo_url}@{pipeline.ref}",
            static_details=(
                f"tasks: {pipeline.preprocess_yaml}, {pipeline.train_yaml}, "
                f"{pipeline.eval_yaml}; infra: {pipeline.infra or 'from the tasks'}"
            ),
        )
    except WorkflowAlreadyStartedError:
        raise config.ConfigError(
            f"cannot start workflow {workflow_id!r}: a workflow with this id is already running"
        ) from None
    except RPCError as err:
        raise config.ConfigError(f"cannot start workflow {workflow_id!r}: {config.one_line(err)}") from None
    url = config.workflow_ui_url(client.namespace, workflow_id, handle.result_run_id)
    print(f"Started workflow {workflow_id}\n  Web UI: {url}", flush=True)
    if args.no_wait:
        return EXIT_OK
    try:
        await follow(handle)
        result = await handle.result()
    except WorkflowFailureError as err:
        first_line, *log_lines = describe_failure(err).splitlines()
        print(f"Workflow {workflow_id} {first_line}", file=sys.stderr)
        for line in log_lines:  # "last log lines:" and the failing job's log tail
            print(f"  {line}" if line == "last log lines:" else f"    {line}", file=sys.stderr)
        print(f"  Web UI: {url}", file=sys.stderr)
        return EXIT_FAILED
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
    return EXIT_OK


def describe_failure(err: WorkflowFailureError) -> str:
    cause = err.cause
    if isinstance(cause, CancelledError):
        return "was cancelled (its clusters were torn down)"
    if isinstance(cause, TerminatedError):
        return "was terminated (no cleanup ran: check `sky status`)"
    if isinstance(cause, WorkflowTimeoutError):
        return "timed out"
    if isinstance(cause, ApplicationError):
        return f"failed: {cause.message}"
    return f"failed: {cause or err}"


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a job's log line must never crash the starter
        stream.reconfigure(errors="replace")  # type: ignore[union-attr]
    config.load_env()
    try:
        args = build_parser().parse_args(argv)
        return asyncio.run(start_and_follow(args))
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
