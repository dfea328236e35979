"""Start a SkyPilotWorkflow run (a SweepWorkflow, or a pipeline file's) and follow it until it ends.

    python run_workflow.py                      # the example tasks in this repository
    python run_workflow.py --repo URL --ref v1 --env EPOCHS=3 --infra aws
    python run_workflow.py --sweep LR=0.1,0.01 --sweep EPOCHS=2,4 --max-parallel 2 --select eval_accuracy:max
    python run_workflow.py --pipeline tasks/pipeline.yaml   # any shape: a pipeline file of the repository
    python run_workflow.py --follow skypilot-3fa2b1c9   # attach to a run already going (or ended)
    python run_workflow.py --schedule "0 3 * * *" --schedule-id nightly   # a run every night
    python run_workflow.py --help

Every option defaults to a PIPELINE_* variable from .env. Exit status: 0 when the workflow
succeeded, 1 when it failed, was cancelled, terminated or timed out, 2 on bad input (an unknown
workflow id too) or a server unreachable before the run is started or found, 3 when you stop
waiting (the run goes on; --no-wait starts it and returns at once). Once it follows a run, a
Temporal outage is waited out: one line when the connection drops, one when it is back.
With --schedule or --every it starts no run: it creates or updates a Temporal Schedule (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from temporalio.client import Client, WorkflowFailureError
from temporalio.common import Priority
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError

from skypilot_temporal import config
from skypilot_temporal.bounds import (
    ENV_NAME,
    input_problems,
)
from skypilot_temporal.client.following import (
    Reconnecting,
    RunHandle,
    end_message,
    follow,
    print_failure,
    print_success,
    print_sweep_table,
    quiet_runtime,
)
from skypilot_temporal.client.options import (
    DEFAULT_MAX_PARALLEL,
    DEFAULT_SELECT,
    key_value,
    priority_key,
    run_priority,
    step_timeout,
    step_timeouts,
    sweep_of,
    sweep_values,
    workflow_id_for,
)
from skypilot_temporal.client.starting import (
    RunInput,
    attach,
    decryption_error,
    schedule_runs,
    start_run,
)
from skypilot_temporal.operations.schedules import OVERLAP_POLICIES, ScheduleRequest, parse_every
from skypilot_temporal.payloads import PipelineFileInput, PipelineInput, SweepInput, SweepResult
from skypilot_temporal.trust.checkout import check_repo_url_syntax, validate_ref
from skypilot_temporal.workflow.pipeline_file_workflow import MAX_PATH_CHARS, PipelineFileWorkflow
from workflows import PIPELINES, SkyPilotWorkflow, SweepWorkflow

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_DETACHED = 0, 1, 2, 3
PROJECT_DIR = Path(__file__).resolve().parent
# What --follow can attach to: each pipeline's type name and what its run returns.
RUN_TYPES = {
    pipeline.__name__: typing.get_type_hints(pipeline.run)["return"]
    for pipeline in [*PIPELINES, PipelineFileWorkflow]
}
T = TypeVar("T")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Start the SkyPilot pipeline (clone -> preprocess -> train -> eval) on "
        "Temporal and follow it. Defaults come from PIPELINE_* variables in .env."
    )
    parser.add_argument(
        "--repo",
        default=config.env_str("PIPELINE_REPO_URL", str(PROJECT_DIR)),
        help="task repository: git URL or local path (default: this repository)",
    )
    parser.add_argument(
        "--ref",
        default=config.env_str("PIPELINE_REF", "HEAD"),
        help="branch, tag or commit to run (default: HEAD)",
    )
    for flag, setting, default in (
        ("--preprocess-yaml", "PIPELINE_PREPROCESS_YAML", "tasks/data_preprocessing.yaml"),
        ("--train-yaml", "PIPELINE_TRAIN_YAML", "tasks/train.yaml"),
        ("--eval-yaml", "PIPELINE_EVAL_YAML", "tasks/eval.yaml"),
    ):
        parser.add_argument(flag, default=config.env_str(setting, default), help="path in the repository")
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
        help="per-step timeout, e.g. train=7200, or a pipeline file's step (repeatable)",
    )
    for flag, setting, meaning in (
        (
            "--keep-clusters-on-failure",
            "PIPELINE_KEEP_CLUSTERS_ON_FAILURE",
            "debugging: leave the clusters of a failed run up",
        ),
        (
            "--overlap-provisioning",
            "PIPELINE_OVERLAP_PROVISIONING",
            "bring the train cluster up while preprocess runs (the train job still waits for it)",
        ),
        (
            "--managed-train",
            "PIPELINE_MANAGED_TRAIN",
            "run train as a SkyPilot managed job: relaunched if its cluster is preempted or lost "
            "(eval then runs on a cluster of its own)",
        ),
    ):
        parser.add_argument(flag, action="store_true", default=config.env_bool(setting), help=meaning)
    parser.add_argument(
        "--pipeline",
        metavar="PATH",
        default=config.env_str("PIPELINE_FILE"),
        help="run the pipeline file at PATH in the repository (docs/pipeline-files.md) instead of "
        "the six steps; a SkyPilot multi-task YAML runs as a chain",
    )
    sweep = parser.add_argument_group("sweep: train + eval once per combination of values")
    sweep.add_argument(
        "--sweep",
        action="append",
        type=sweep_values,
        metavar="NAME=V1,V2,...",
        help="run a sweep over these values of env variable NAME (repeatable: every combination)",
    )
    sweep.add_argument(
        "--max-parallel", type=int, metavar="N", help=f"variants at once (default {DEFAULT_MAX_PARALLEL})"
    )
    sweep.add_argument(
        "--select",
        metavar="METRIC:max|min",
        help=f"the metric that picks the best variant (default {DEFAULT_SELECT}; a task reports "
        "a metric by printing `METRIC name=value`)",
    )
    sweep.add_argument("--fail-fast", action="store_true", help="fail the sweep at its first failed variant")
    recurring = parser.add_argument_group(
        "recurring runs: create or update a Temporal Schedule instead of starting one run "
        "(manage it with `temporal schedule ...` or the Web UI's Schedules page)"
    )
    when = recurring.add_mutually_exclusive_group()
    when.add_argument(
        "--schedule",
        metavar="CRON",
        default=None,
        help='cron in UTC, e.g. "0 3 * * *" (CRON_TZ=... for a zone)',
    )
    when.add_argument("--every", metavar="DURATION", default="", help="an interval, e.g. 6h, 30m, 1d")
    recurring.add_argument(
        "--schedule-id", metavar="ID", default="", help="the schedule's id; its runs are ID-<start time>"
    )
    recurring.add_argument(
        "--overlap",
        choices=list(OVERLAP_POLICIES),
        default=None,
        help="when a run is due while the last one is still going: skip it (default), run it "
        "after (buffer-one), or run both (allow-all)",
    )
    parser.add_argument("--task-queue", default=config.task_queue(), help="Temporal task queue")
    parser.add_argument(
        "--priority",
        type=priority_key,
        default=None,
        metavar="1-5",
        help="Temporal priority of the run's steps on a backlogged task queue: 1 first (default 3)",
    )
    parser.add_argument(
        "--fairness-key",
        default=config.env_str("PIPELINE_FAIRNESS_KEY"),
        metavar="TEAM",
        help="share a backlogged task queue fairly between keys (default: the task repository's "
        "owner, e.g. github.com/acme)",
    )
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
    try:  # what the worker would refuse at step 1 anyway: refused before anything starts
        check_repo_url_syntax(repo)
        validate_ref(args.ref)
    except ApplicationError as err:
        raise config.ConfigError(err.message) from None
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
    timeouts = step_timeouts(args.timeout, pipeline_file=bool(args.pipeline))
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
        managed_train=args.managed_train,
        timeouts=timeouts,
    )
    if problems := input_problems(pipeline):
        raise config.ConfigError("; ".join(problems))
    return pipeline


def workflow_of(run: RunInput) -> type[SkyPilotWorkflow] | type[SweepWorkflow] | type[PipelineFileWorkflow]:
    if isinstance(run, PipelineFileInput):
        return PipelineFileWorkflow
    return SweepWorkflow if isinstance(run, SweepInput) else SkyPilotWorkflow


def run_input(pipeline: PipelineInput, args: argparse.Namespace) -> RunInput:
    """What to start: the six steps, a sweep of them, or a pipeline file."""
    if not args.pipeline:
        if not args.sweep:
            return pipeline
        if args.overlap_provisioning:
            raise config.ConfigError("--overlap-provisioning does not apply to a sweep")
        return sweep_of(pipeline, args.sweep, args.max_parallel, args.select, args.fail_fast)
    for flag, given in (
        ("--sweep", args.sweep),
        ("--overlap-provisioning", args.overlap_provisioning),
        ("--managed-train", args.managed_train),
    ):
        if given:
            raise config.ConfigError(
                f"--pipeline (or PIPELINE_FILE) does not take {flag}: the pipeline file says what runs"
            )
    if len(args.pipeline) > MAX_PATH_CHARS:
        raise config.ConfigError(f"--pipeline: a path of at most {MAX_PATH_CHARS} characters")
    return PipelineFileInput(args.pipeline, pipeline)


async def start(client: Client, run: RunInput, args: argparse.Namespace, priority: Priority) -> RunHandle:
    workflow_id = workflow_id_for(args.cluster_prefix, args.workflow_id)
    in_use = ""
    if args.cluster_prefix:
        in_use = f"cluster prefix {args.cluster_prefix!r} is in use by the running workflow {workflow_id!r}"
    return await start_run(client, workflow_of(run), run, workflow_id, args.task_queue, in_use, priority)


def schedule_request(args: argparse.Namespace) -> ScheduleRequest | None:
    """What --schedule / --every ask for (None: start one run); ConfigError on a bad combination."""
    if args.schedule is not None and not args.schedule.strip():
        raise config.ConfigError('--schedule needs a cron expression, e.g. "0 3 * * *"')
    if not (args.schedule or args.every):
        if args.schedule_id or args.overlap:
            raise config.ConfigError("--schedule-id and --overlap need --schedule CRON or --every DURATION")
        return None
    flag = "--schedule" if args.schedule else "--every"
    for other, given in (("--follow", args.follow), ("--workflow-id", args.workflow_id)):
        if given:
            raise config.ConfigError(f"{flag} starts a new workflow id per run: it does not take {other}")
    if args.cluster_prefix:
        raise config.ConfigError(f"{flag}: a fixed --cluster-prefix would refuse every run after the first")
    if not args.schedule_id:
        raise config.ConfigError(f"{flag} needs --schedule-id ID (the same id again updates the schedule)")
    request = ScheduleRequest(
        args.schedule_id,
        cron=(args.schedule or "").strip(),
        every=parse_every(args.every) if args.every else None,
        overlap=args.overlap or "skip",
    )
    request.check()
    return request


async def create_schedule(
    client: Client, run: RunInput, request: ScheduleRequest, task_queue: str, priority: Priority
) -> int:
    verb = await schedule_runs(client, workflow_of(run), run, request, task_queue, priority)
    print(
        f"{verb.capitalize()} schedule {request.schedule_id}: {request.when()}, overlap {request.overlap}; "
        f"each run is a new workflow {request.schedule_id}-<start time>\n"
        f"  Web UI: {config.schedule_ui_url(client.namespace, request.schedule_id)}\n"
        f"  Manage: temporal schedule describe|trigger|toggle --pause|backfill|delete "
        f"--schedule-id {request.schedule_id}",
        flush=True,
    )
    return EXIT_OK


async def start_or_attach_and_follow(args: argparse.Namespace) -> int:
    # Bad input fails before connecting.
    pipeline = None if args.follow else pipeline_input(args)
    sweep_options = args.max_parallel is not None or args.select or args.fail_fast
    if pipeline and not args.sweep and sweep_options:
        raise config.ConfigError("--max-parallel, --select and --fail-fast need --sweep")
    run = run_input(pipeline, args) if pipeline else None
    priority = (
        run_priority(args.priority, args.fairness_key, pipeline.repo_url) if pipeline else Priority.default
    )
    recurring = schedule_request(args)
    client: Client = await config.connect_temporal(runtime=quiet_runtime())
    if run is not None and recurring is not None:
        return await create_schedule(client, run, recurring, args.task_queue, priority)
    temporal = Reconnecting(client.service_client.config.target_host)
    if run is None:
        handle = await attach(client, args.follow, temporal, RUN_TYPES)
        run_id, verb = handle.run_id, "Following"
    else:
        handle = await start(client, run, args, priority)
        run_id, verb = handle.result_run_id, "Started"
    url = config.workflow_ui_url(client.namespace, handle.id, run_id)
    print(f"{verb} workflow {handle.id}\n  Web UI: {url}", flush=True)
    if args.no_wait:
        return EXIT_OK
    progress = await follow(handle, temporal, client.data_converter)
    try:
        result = await temporal.call(handle.result)
    except WorkflowFailureError as err:
        print_failure(handle.id, end_message(err, progress), url)
        return EXIT_FAILED
    if isinstance(result, SweepResult):
        print_sweep_table(handle.id, result, url)
    else:
        print_success(handle.id, result, url)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a job's log line must never crash the starter
        stream.reconfigure(errors="replace")  # type: ignore[union-attr]
    config.load_env(PROJECT_DIR / ".env")
    try:
        args = build_parser().parse_args(argv)
        return asyncio.run(start_or_attach_and_follow(args))
    except config.ConfigError as err:
        print(f"run_workflow.py: error: {err}", file=sys.stderr)
        return EXIT_USAGE
    except RPCError as err:
        print(f"run_workflow.py: error: Temporal request failed: {config.one_line(err)}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as err:
        decryption = decryption_error(err)
        if decryption is None:
            raise
        print(f"run_workflow.py: error: cannot read the run: {decryption}", file=sys.stderr)
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
