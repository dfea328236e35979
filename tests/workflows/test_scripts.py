"""run_workflow.py and run_worker.py as a user runs them: real processes, real Temporal server."""

from __future__ import annotations

import asyncio
import os
import re
import sys
import uuid

import pytest
from temporalio.client import Client

from skypilot_temporal.payloads import PipelineInput
from skypilot_temporal.trust import codec
from testing import ROOT
from testing.in_process import Pipeline, running_worker
from workflows import SkyPilotWorkflow

PYTHON = sys.executable


async def run_script(
    script: str, *args: str, env_overrides: dict[str, str] | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    """Run a project script in a clean environment (no .env), as a user would."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TEMPORAL_", "PIPELINE_"))}
    env["ENV_FILE"] = os.devnull
    env.update(env_overrides or {})
    proc = await asyncio.create_subprocess_exec(
        PYTHON,
        str(ROOT / script),
        *args,
        cwd=str(ROOT / "tests"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout)
    return proc.returncode, stdout.decode(), stderr.decode()


def starter_env(pipeline: Pipeline) -> dict[str, str]:
    return {
        "TEMPORAL_ADDRESS": pipeline.env.client.service_client.config.target_host,
        "TEMPORAL_TASK_QUEUE": pipeline.task_queue,
        "PIPELINE_REPO_URL": str(pipeline.repo),
        "PIPELINE_REF": "main",
        "PIPELINE_PREPROCESS_YAML": "data_preprocessing.yaml",
        "PIPELINE_TRAIN_YAML": "train.yaml",
        "PIPELINE_EVAL_YAML": "eval.yaml",
    }


def assert_one_line_error(rc: int, stdout: str, stderr: str, *expected: str) -> None:
    assert rc == 2, (rc, stdout, stderr)
    assert "Traceback" not in stderr + stdout
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage:"), stderr
    for text in expected:
        assert text in lines[-1], stderr


async def test_starter_exits_0_on_success_every_time(pipeline: Pipeline):
    """The exit status is trustworthy: no crash at interpreter exit over repeated runs."""
    pipeline.fake.plan("eval", logs=["eval_accuracy=0.93"])
    for attempt in range(5):
        rc, stdout, stderr = await run_script("run_workflow.py", env_overrides=starter_env(pipeline))
        assert rc == 0, f"run {attempt}: rc={rc}\n{stdout}\n{stderr}"
        assert "succeeded" in stdout and "eval_accuracy=0.93" in stdout
        assert "http://localhost:8233/namespaces/default/workflows/skypilot-" in stdout
        for step in ("fetch-tasks", "preprocess", "preprocess-down", "train", "eval", "train-down"):
            assert f"✓ {step} " in stdout, stdout


async def test_starter_prints_each_step_start_and_end_in_plain_text(pipeline: Pipeline):
    """Piped to a file: one line as each step starts and ends, naming cluster, job and time."""
    rc, stdout, stderr = await run_script(
        "run_workflow.py", "--workflow-id", "skypilot-starter-lines", env_overrides=starter_env(pipeline)
    )
    assert rc == 0, (stdout, stderr)
    assert "\x1b" not in stdout + stderr
    lines = stdout.splitlines()
    assert re.search(r"^  ▶ train +launch train on skypilot-starter-lines-train$", stdout, re.M), stdout
    ends = {line.split()[1]: line for line in lines if line.startswith("  ✓ ")}
    assert re.fullmatch(
        r"  ✓ preprocess +succeeded +cluster skypilot-starter-lines-preprocess +job 1 +\d+s",
        ends["preprocess"],
    )
    assert re.fullmatch(
        r"  ✓ preprocess-down +succeeded +cluster skypilot-starter-lines-preprocess +\d+s",
        ends["preprocess-down"],
    )
    assert re.fullmatch(
        r"  ✓ train +succeeded +cluster skypilot-starter-lines-train +job 1 +\d+s", ends["train"]
    )
    assert re.fullmatch(
        r"  ✓ eval +succeeded +cluster skypilot-starter-lines-train +job 2 +\d+s", ends["eval"]
    )
    assert re.fullmatch(r"  ✓ fetch-tasks +succeeded +\d+s", ends["fetch-tasks"])
    starts = [line.split()[1] for line in lines if line.startswith("  ▶ ")]
    assert starts == ["fetch-tasks", "preprocess", "preprocess-down", "train", "eval", "train-down"]


async def test_starter_falls_back_to_ascii_marks_when_the_output_cannot_encode_them(pipeline: Pipeline):
    pipeline.fake.plan("eval", logs=["accuracy ≈ 0.93 ✓"])
    rc, stdout, stderr = await run_script(
        "run_workflow.py", env_overrides={**starter_env(pipeline), "PYTHONIOENCODING": "ascii"}
    )
    assert rc == 0, (stdout, stderr)
    assert "Traceback" not in stderr
    assert re.search(r"^  > train +launch train on ", stdout, re.M), stdout
    assert re.search(r"^  \+ train +succeeded +cluster ", stdout, re.M), stdout
    assert "accuracy ? 0.93 ?" in stdout


async def test_starter_exits_1_when_the_workflow_fails(pipeline: Pipeline):
    pipeline.fake.plan("train", status="FAILED", logs=["loss is NaN"])
    rc, stdout, stderr = await run_script(
        "run_workflow.py", "--workflow-id", "skypilot-starter-fails", env_overrides=starter_env(pipeline)
    )
    assert rc == 1, (stdout, stderr)
    assert "step 'train'" in stderr and "exit code 100" in stderr and "loss is NaN" in stderr
    assert "Traceback" not in stderr
    # The failing step's end line names its cluster and job; cleanup steps follow it.
    assert re.search(
        r"^  ✗ train +failed +cluster skypilot-starter-fails-train +job 1 FAILED +\d+s$", stdout, re.M
    ), stdout
    assert re.search(r"^  ▶ cleanup +cleanup: down skypilot-starter-fails-train$", stdout, re.M), stdout
    assert re.search(r"^  ✓ cleanup +succeeded +cluster skypilot-starter-fails-train +\d+s$", stdout, re.M), (
        stdout
    )
    # The failure names the step, then the job's last log lines, indented under it.
    first, *rest = stderr.splitlines()
    assert first.startswith(
        "Workflow skypilot-starter-fails failed: step 'train' on cluster skypilot-starter-fails-train"
    )
    assert "  last log lines:" in rest and "    loss is NaN" in rest


async def test_starter_passes_env_infra_and_secret_names(pipeline: Pipeline):
    rc, _stdout, stderr = await run_script(
        "run_workflow.py",
        "--env",
        "EPOCHS=7",
        "--env",
        "EMPTY=",
        "--infra",
        "slurm",
        "--secret",
        "HF_TOKEN",
        "--workflow-id",
        "starter-env",
        env_overrides=starter_env(pipeline),
    )
    assert rc == 0, stderr
    handle = pipeline.env.client.get_workflow_handle("starter-env")
    history = await handle.fetch_history()
    [started] = [e for e in history.events if e.HasField("workflow_execution_started_event_attributes")]
    payloads = started.workflow_execution_started_event_attributes.input.payloads
    [recorded_input] = await pipeline.env.client.data_converter.decode(payloads)
    assert recorded_input["env_overrides"]["EPOCHS"] == "7" and recorded_input["secret_names"] == ["HF_TOKEN"]
    assert "s3cr3t-value" not in str(recorded_input)  # the value lives on the worker only
    assert all(job.secrets == {"HF_TOKEN": "s3cr3t-value"} for job in pipeline.fake.submitted)
    assert all(job.envs["EPOCHS"] == "7" and job.envs["EMPTY"] == "" for job in pipeline.fake.submitted)


async def test_starter_no_wait_returns_at_once(pipeline: Pipeline):
    pipeline.fake.plan("train", until_cancelled=True)
    rc, stdout, _ = await run_script(
        "run_workflow.py", "--no-wait", "--workflow-id", "no-wait", env_overrides=starter_env(pipeline)
    )
    assert rc == 0 and "Started workflow no-wait" in stdout
    handle = pipeline.env.client.get_workflow_handle("no-wait")
    await asyncio.to_thread(pipeline.fake.wait_for_job, "train")
    await handle.cancel()


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--env", "NOEQUALS"], ["expected KEY=VALUE", "NOEQUALS"]),
        (["--env", "1BAD=x"], ["expected KEY=VALUE"]),
        (["--timeout", "bogus=10"], ["unknown step 'bogus'"]),
        (["--timeout", "train=-5"], ["between 1 and"]),
        (["--timeout", "train=100000000000000"], ["timeout for 'train' must be between 1 and 2592000"]),
        (["--secret", "not a name"], ["--secret takes a variable name"]),
        (["--sweep", "LR="], ["'LR=' has an empty value"]),
        (["--sweep", "1X=2"], ["NAME a variable name", "'1X=2'"]),
        (["--sweep", "LR=1", "--sweep", "LR=2"], ["--sweep gives 'LR' twice"]),
        (["--sweep", "LR=1", "--max-parallel", "0"], ["max_parallel must be between 1 and 100"]),
        (["--sweep", "LR=1", "--select", "acc:up"], ["select direction must be max or min"]),
        (["--sweep", "VARIANT_ID=1"], ["VARIANT_ID is set by the sweep"]),
        (["--sweep", "LR=1", "--env", "PIPELINE_RUN_ID=x"], ["PIPELINE_RUN_ID is set by the sweep"]),
        (
            [
                "--sweep",
                "A=" + ",".join(map(str, range(40))),
                "--sweep",
                "B=" + ",".join(map(str, range(40))),
            ],
            ["makes 1600 variants: at most 1000"],
        ),
        (["--max-parallel", "2"], ["need --sweep"]),
        (["--sweep", "LR=1", "--overlap-provisioning"], ["does not apply to a sweep"]),
        (["--managed-train", "--overlap-provisioning"], ["a managed train do not go together"]),
        (["--repo", "https://h:notaport/x"], ["'https://h:notaport/x' is not a valid URL"]),
        (["--repo", "https://[::1/x"], ["'https://[::1/x' is not a valid URL"]),
        (["--repo", "ext::sh -c id"], ["invalid repository"]),
        (["--ref=--upload-pack=touch /tmp/pwned"], ["invalid git ref '--upload-pack=touch /tmp/pwned'"]),
        (["--cluster-prefix", "night--0d3928ab"], ["--cluster-prefix 'night--0d3928ab'"]),
    ],
)
async def test_starter_rejects_bad_arguments_in_one_line(pipeline: Pipeline, args, expected):
    rc, stdout, stderr = await run_script("run_workflow.py", *args, env_overrides=starter_env(pipeline))
    assert_one_line_error(rc, stdout, stderr, *expected)
    assert pipeline.fake.calls == [], "a run started"


async def test_following_a_run_under_a_key_the_starter_lacks_is_one_line_naming_it(
    env, fake_sky, task_repo, tmp_path
):
    client = Client(**{**env.client.config(), "data_converter": codec.data_converter({"kA": os.urandom(32)})})
    task_queue = f"keys-{uuid.uuid4().hex[:8]}"
    async with running_worker(env, fake_sky, tmp_path / "checkouts", task_queue, client=client):
        handle = await client.start_workflow(
            SkyPilotWorkflow.run,
            PipelineInput(repo_url=str(task_repo), ref="main", retry_initial_interval_seconds=0.1),
            id=f"keys-{uuid.uuid4().hex[:8]}",
            task_queue=task_queue,
        )
        await handle.result()
    other_key = codec.new_key_line("kB")
    rc, stdout, stderr = await run_script(
        "run_workflow.py",
        "--follow",
        handle.id,
        env_overrides={
            "TEMPORAL_ADDRESS": client.service_client.config.target_host,
            "PAYLOAD_CODEC_KEYS": other_key,
        },
    )
    assert_one_line_error(rc, stdout, stderr, "key id 'kA', which is not configured")


async def test_starter_reports_an_unreachable_temporal_in_one_line(pipeline: Pipeline):
    rc, stdout, stderr = await run_script(
        "run_workflow.py", env_overrides={**starter_env(pipeline), "TEMPORAL_ADDRESS": "127.0.0.1:1"}
    )
    assert_one_line_error(rc, stdout, stderr, "cannot reach Temporal at 127.0.0.1:1")


async def test_starter_reports_a_duplicate_workflow_id_in_one_line(pipeline: Pipeline):
    pipeline.fake.plan("train", until_cancelled=True)
    handle = await pipeline.start()
    rc, stdout, stderr = await run_script(
        "run_workflow.py", "--workflow-id", handle.id, env_overrides=starter_env(pipeline)
    )
    assert_one_line_error(rc, stdout, stderr, f"cannot start workflow {handle.id!r}")
    await handle.cancel()


async def test_a_cluster_prefix_is_a_workflow_id_a_second_run_cannot_take(pipeline: Pipeline):
    pipeline.fake.plan("train", until_cancelled=True)
    env = starter_env(pipeline)
    rc, stdout, stderr = await run_script(
        "run_workflow.py", "--cluster-prefix", "nightly", "--no-wait", env_overrides=env
    )
    assert rc == 0 and "Started workflow skypilot-nightly" in stdout, stdout + stderr
    rc, stdout, stderr = await run_script("run_workflow.py", "--cluster-prefix", "nightly", env_overrides=env)
    assert_one_line_error(
        rc, stdout, stderr, "cluster prefix 'nightly' is in use by the running workflow 'skypilot-nightly'"
    )
    rc, stdout, stderr = await run_script(
        "run_workflow.py", "--cluster-prefix", "Bad_Name", env_overrides=env
    )
    assert_one_line_error(rc, stdout, stderr, "--cluster-prefix 'Bad_Name'")
    await pipeline.env.client.get_workflow_handle("skypilot-nightly").cancel()


async def test_starter_help_lists_every_option():
    rc, stdout, _ = await run_script("run_workflow.py", "--help")
    assert rc == 0
    for option in (
        "--repo",
        "--ref",
        "--env",
        "--secret",
        "--infra",
        "--workflow-id",
        "--no-wait",
        "--follow",
        "--timeout",
        "--cluster-prefix",
        "--keep-clusters-on-failure",
    ):
        assert option in stdout


async def test_worker_exits_in_one_line_when_the_skypilot_api_server_is_unreachable():
    rc, stdout, stderr = await run_script(
        "run_worker.py", env_overrides={"SKYPILOT_API_SERVER_ENDPOINT": "http://127.0.0.1:9"}, timeout=120
    )
    assert_one_line_error(rc, stdout, stderr, "SkyPilot API server not reachable at http://127.0.0.1:9")


@pytest.mark.parametrize(
    "setting,value,expected",
    [
        (
            "WORKER_MAX_CONCURRENT_ACTIVITIES",
            "lots",
            "WORKER_MAX_CONCURRENT_ACTIVITIES must be a whole number",
        ),
        ("WORKER_SDK_THREADS", "0", "WORKER_SDK_THREADS must be between 1 and"),
        (
            "WORKER_ALLOWED_SECRETS",
            "HF_TOKEN,not a name",
            "WORKER_ALLOWED_SECRETS: 'not a name' is not a variable name",
        ),
        ("WORKER_ALLOWED_UPLOAD_DIRS", "relative/dir", "is not an absolute path"),
        (
            "WORKER_ALLOWED_LOCAL_REPOS",
            "repos",
            "WORKER_ALLOWED_LOCAL_REPOS: 'repos' is not an absolute path",
        ),
        ("LOG_LEVEL", "verbose", "LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got 'verbose'"),
        (
            "WORKER_LOG_FILE",
            "/no/such/dir/worker.log",
            "WORKER_LOG_FILE '/no/such/dir/worker.log': No such file",
        ),
        ("PAYLOAD_CODEC_KEYS", "k1:not-base64!", "PAYLOAD_CODEC_KEYS"),
    ],
)
async def test_worker_reports_a_bad_setting_in_one_line(setting, value, expected):
    rc, stdout, stderr = await run_script("run_worker.py", env_overrides={setting: value})
    assert_one_line_error(rc, stdout, stderr, expected)
    assert value not in stderr or setting != "PAYLOAD_CODEC_KEYS", "key material echoed"


async def test_starter_reports_a_bad_pipeline_env_in_one_line(pipeline: Pipeline):
    rc, stdout, stderr = await run_script(
        "run_workflow.py", env_overrides={**starter_env(pipeline), "PIPELINE_ENV": "NOEQUALS"}
    )
    assert_one_line_error(rc, stdout, stderr, "PIPELINE_ENV: expected KEY=VALUE, got 'NOEQUALS'")
