"""What a task author can and cannot make the worker do: host files, secrets, masking, resource
bombs, git transports, credentials in repository URLs."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from skypilot_temporal import SkyPilotPlugin, worker_startup
from skypilot_temporal.activity.activities import SkyPilotActivities
from skypilot_temporal.activity.job_log import JobLogSink
from skypilot_temporal.bounds import input_problems
from skypilot_temporal.errors import ConfigError
from skypilot_temporal.payloads import FetchTasksInput, JobProgress, LaunchInput, PipelineInput, TaskSpec
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.trust.checkout import check_repo_url
from skypilot_temporal.trust.redaction import Redactor, redact_credentials
from skypilot_temporal.trust.task_policy import TaskPolicy
from testing import TASK_REPO_DIRS
from testing.in_process import WORKER_ENVIRON, Pipeline, git, make_git_repo

PEM = "\n".join(
    [
        "-----BEGIN PRIVATE KEY-----",
        "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC",
        "BKcwggSjAgEAAoIBAQDc8wP0",
        "-----END PRIVATE KEY-----",
    ]
)
ALIAS_BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8)]
    + ["run: echo hi"]
)


def worker_with(fake_sky: FakeSky, executor, checkouts: Path, **policy) -> SkyPilotActivities:
    """The activities of a worker whose operator set `policy` (test repositories allowed)."""
    policy.setdefault("local_repo_dirs", TASK_REPO_DIRS)
    return SkyPilotActivities(
        fake_sky, executor, checkouts, environ=WORKER_ENVIRON, policy=TaskPolicy(**policy)
    )


def make_repo(tmp_path: Path, files: dict[str, str], name: str = "repo") -> Path:
    return make_git_repo(tmp_path / name, files)


async def fetch_one(activities: SkyPilotActivities, repo: Path | str, task: str = "task.yaml", **kwargs):
    return await ActivityEnvironment().run(
        activities.fetch_tasks,
        FetchTasksInput(
            repo_url=str(repo), ref="main", yaml_paths=[task], checkout_name="wf1/run1", **kwargs
        ),
    )


async def refused(activities, repo, error_type: str, **kwargs) -> str:
    with pytest.raises(ApplicationError) as err:
        await fetch_one(activities, repo, **kwargs)
    assert err.value.type == error_type, err.value.message
    assert err.value.non_retryable and "\n" not in err.value.message
    return err.value.message


# ---------------------------------------------------------------- 1. host files


@pytest.mark.parametrize(
    "task_yaml,shown",
    [
        ("file_mounts:\n  /tmp/x: ~/.ssh\nrun: ls /tmp/x", "~/.ssh"),
        ("file_mounts:\n  /tmp/y: /root/.sky\nrun: ls", "/root/.sky"),
        ("workdir: /etc\nrun: ls", "/etc"),
        ("workdir: ../..\nrun: ls", "../.."),
        ("file_mounts:\n  /data:\n    name: b\n    source: ../../..\n    mode: COPY\nrun: ls", "../../.."),
        ("file_mounts:\n  /data:\n    source: [data, /etc/passwd]\nrun: ls", "/etc/passwd"),
        ("file_mounts:\n  /k: file:///root/.ssh/id_rsa\nrun: ls", "file:///root/.ssh/id_rsa"),
    ],
)
async def test_a_task_cannot_upload_host_files(activities, tmp_path, task_yaml, shown):
    repo = make_repo(tmp_path, {"task.yaml": task_yaml, "data/x.csv": "1"})
    message = await refused(activities, repo, "PathNotAllowed")
    assert "'task.yaml'" in message and shown in message


async def test_a_symlink_in_the_checkout_pointing_outside_is_refused(activities, tmp_path):
    repo = make_repo(tmp_path, {"task.yaml": "workdir: .\nrun: ls", "code/train.py": "print()"})
    (repo / "code" / "keys").symlink_to(Path.home() / ".ssh")
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "link", cwd=repo)
    message = await refused(activities, repo, "PathNotAllowed")
    assert "code/keys" in message


async def test_paths_inside_the_checkout_and_cloud_urls_pass(activities, fake_sky: FakeSky, tmp_path):
    task_yaml = (
        "workdir: .\nfile_mounts:\n  /data: data\n  /bucket: s3://my-bucket/x\n"
        "  /store:\n    name: st\n    source: data\n    mode: COPY\nrun: ls"
    )
    repo = make_repo(tmp_path, {"task.yaml": task_yaml, "data/x.csv": "1"})
    result = await fetch_one(activities, repo)
    assert result.yaml_texts["task.yaml"] == task_yaml


async def test_the_operator_can_allow_a_directory_and_only_the_operator(fake_sky, executor, tmp_path):
    shared_data = tmp_path / "shared-data"
    shared_data.mkdir()
    repo = make_repo(tmp_path, {"task.yaml": f"file_mounts:\n  /data: {shared_data}\nrun: ls"})
    strict = worker_with(fake_sky, executor, tmp_path / "c1")
    await refused(strict, repo, "PathNotAllowed")
    allowing = worker_with(fake_sky, executor, tmp_path / "c2", upload_dirs=(shared_data,))
    await fetch_one(allowing, repo)


async def test_a_launch_rechecks_the_task_it_is_given(activities, fake_sky: FakeSky):
    """A task text reaching launch by another path than step 1 is checked again."""
    spec = TaskSpec(step="train", job_name="wf1-train", yaml_text="workdir: /etc\nrun: ls")
    with pytest.raises(ApplicationError, match="outside the task repository"):
        await ActivityEnvironment().run(activities.launch_task, LaunchInput("wf1-train", spec))
    assert fake_sky.submitted == []


@pytest.mark.parametrize(
    "volumes_yaml,shown",
    [
        # SkyPilot's resolved mounts: with them present it skips its own volume checks.
        (
            "volume_mounts:\n  - path: /host\n    volume_name: v\n    volume_config: {type: k8s-hostpath}",
            "'volume_mounts'",
        ),
        ("volumes:\n  /mnt/keys:\n    host_path: /root/.config/skypilot-temporal", "/root/.config"),
        ("volumes:\n  /mnt/x:\n    host_path: /srv/data/../../etc", "/srv/data/../../etc"),
        # Checked again after SkyPilot substitutes $SUB.
        (
            "envs:\n  SUB: ../../etc\nvolumes:\n  /mnt/x:\n    host_path: /srv/data/$SUB",
            "/srv/data/../../etc",
        ),
    ],
)
async def test_a_task_cannot_mount_a_directory_of_the_clusters_host(
    fake_sky, executor, tmp_path, volumes_yaml, shown
):
    repo = make_repo(tmp_path, {"task.yaml": f"resources:\n  infra: slurm\n{volumes_yaml}\nrun: ls"})
    activities = worker_with(fake_sky, executor, tmp_path / "c", host_path_dirs=("/srv/data",))
    with pytest.raises(ApplicationError) as err:
        await fetch_one(activities, repo)
    assert err.value.type in ("PathNotAllowed", "InvalidTask") and err.value.non_retryable
    assert shown in err.value.message and "\n" not in err.value.message


async def test_named_volumes_and_an_allowed_host_directory_pass(fake_sky, executor, tmp_path):
    task_yaml = (
        "resources:\n  infra: slurm\nvolumes:\n  /mnt/ds: my-dataset\n"
        "  /mnt/scratch:\n    host_path: /srv/data/team-a\nrun: ls"
    )
    repo = make_repo(tmp_path, {"task.yaml": task_yaml})
    activities = worker_with(fake_sky, executor, tmp_path / "c", host_path_dirs=("/srv/data",))
    await fetch_one(activities, repo)


async def test_a_pipeline_with_a_host_file_mount_fails_at_step_1_with_no_cluster(pipeline: Pipeline):
    (pipeline.repo / "train.yaml").write_text("file_mounts:\n  /tmp/x: ~/.ssh\nrun: ls /tmp/x\n")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-am", "evil", cwd=pipeline.repo)
    error = await pipeline.fail()
    assert "'train.yaml'" in str(error.message) and "~/.ssh" in str(error.message)
    assert pipeline.fake.ever_launched == set()


# ---------------------------------------------------------------- 2. secrets by name


async def test_only_secrets_the_operator_lists_are_handed_out(activities, tmp_path):
    repo = make_repo(tmp_path, {"task.yaml": "run: echo $TEMPORAL_API_KEY"})
    message = await refused(activities, repo, "SecretNotAllowed", secret_names=["TEMPORAL_API_KEY"])
    assert "TEMPORAL_API_KEY" in message and "WORKER_ALLOWED_SECRETS" in message
    assert WORKER_ENVIRON["TEMPORAL_API_KEY"] not in message


async def test_the_default_worker_hands_out_no_secret(fake_sky, executor, tmp_path):
    repo = make_repo(tmp_path, {"task.yaml": "run: ls"})
    default = SkyPilotActivities(fake_sky, executor, tmp_path / "c", environ=WORKER_ENVIRON)
    await refused(default, repo, "SecretNotAllowed", secret_names=["HF_TOKEN"])


@pytest.mark.parametrize(
    "secrets_yaml",
    [
        "secrets: [prod-db-password]",
        "secrets:\n  prod-db-password: null",
        "managed_secrets: [prod-db-password]",
    ],
)
async def test_a_task_cannot_pull_skypilot_managed_secrets_unless_allowed(activities, tmp_path, secrets_yaml):
    repo = make_repo(tmp_path, {"task.yaml": f"{secrets_yaml}\nrun: ls"})
    message = await refused(activities, repo, "SecretNotAllowed")
    assert "prod-db-password" in message


async def test_a_launch_rechecks_the_secret_names_it_is_given(activities, fake_sky: FakeSky):
    """A launch input naming a worker credential (not through step 1) is refused, not handed it."""
    spec = TaskSpec(
        step="train", job_name="wf1-train", yaml_text="run: ls", secret_names=["TEMPORAL_API_KEY"]
    )
    with pytest.raises(ApplicationError, match="not allowed on this worker") as err:
        await ActivityEnvironment().run(activities.launch_task, LaunchInput("wf1-train", spec))
    assert err.value.type == "SecretNotAllowed" and fake_sky.called("launch") == []


async def test_a_pipeline_asking_for_a_worker_credential_launches_nothing(pipeline: Pipeline):
    error = await pipeline.fail(secret_names=["TEMPORAL_API_KEY"])
    assert "not allowed on this worker" in str(error.message)
    assert pipeline.fake.ever_launched == set()


# ---------------------------------------------------------------- 3. masking


def test_a_multi_line_secret_is_masked_line_by_line_and_whole():
    redact = Redactor([PEM, "abc", "abcdef"])
    assert redact(PEM) == "***"
    joined = " ".join(PEM.splitlines())  # how an exception message shows it on one line
    assert "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" not in redact(joined)
    assert redact("abcdef abc") == "*** ***"


async def test_a_multi_line_secret_never_reaches_the_log_tail_or_the_log(fake_sky, executor, tmp_path):
    activities = SkyPilotActivities(
        fake_sky,
        executor,
        tmp_path / "c",
        heartbeat_interval_seconds=0.05,
        environ={"SA_KEY": PEM},
        policy=TaskPolicy(secret_names=frozenset({"SA_KEY"}), local_repo_dirs=TASK_REPO_DIRS),
    )
    fake_sky.plan("train", logs=["key follows:", *PEM.splitlines(), "done"])
    spec = TaskSpec(step="train", job_name="wf1-train", yaml_text="run: cat key", secret_names=["SA_KEY"])
    result = await ActivityEnvironment().run(activities.launch_task, LaunchInput("wf1-train", spec))
    assert "MIIEvQ" not in result.log_tail and "BKcwggSj" not in result.log_tail
    assert "done" in result.log_tail


async def test_failure_messages_are_masked(activities, fake_sky: FakeSky):
    fake_sky.fail_next("launch", ValueError(f"bad env value s3cr3t-value in {WORKER_ENVIRON['HF_TOKEN']}"))
    spec = TaskSpec(step="train", job_name="wf1-train", yaml_text="run: ls", secret_names=["HF_TOKEN"])
    with pytest.raises(ApplicationError) as err:
        await ActivityEnvironment().run(activities.launch_task, LaunchInput("wf1-train", spec))
    assert "s3cr3t-value" not in err.value.message and "***" in err.value.message
    assert err.value.__cause__ is None, "the unmasked original must not travel as the cause"


def test_the_log_sink_masks_line_spanning_output():
    logged: list[str] = []
    sink = JobLogSink(logged.append, [PEM], JobProgress("running", "c"))
    sink.write(PEM + "\nafter\n")
    assert all("MIIEvQ" not in line and "BEGIN PRIVATE" not in line for line in [*logged, sink.tail()])


# ---------------------------------------------------------------- 4. resource bombs


async def test_a_yaml_alias_bomb_is_refused_before_it_expands(activities, tmp_path):
    repo = make_repo(tmp_path, {"task.yaml": ALIAS_BOMB})
    started = time.monotonic()
    message = await refused(activities, repo, "InvalidTaskYaml")
    assert "alias" in message
    assert time.monotonic() - started < 10


@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, "run: 2001-13-45\nx: !!timestamp 2001-13-45"])
async def test_pathological_yaml_is_a_one_line_error(activities, tmp_path, text):
    repo = make_repo(tmp_path, {"task.yaml": text})
    await refused(activities, repo, "InvalidTaskYaml")


@pytest.mark.parametrize(
    "overrides,problem",
    [
        ({"timeouts": {"train": 10**14}}, "timeouts.train"),
        ({"timeouts": {"heartbeat": 0}}, "timeouts.heartbeat"),
        ({"keep_clusters_minutes": 10**12}, "keep_clusters_minutes"),
        ({"retry_initial_interval_seconds": float("nan")}, "retry_initial_interval_seconds"),
        ({"env_overrides": {"A B": "1"}}, "not variable names"),
        ({"env_overrides": {"BIG": "x" * 100_000}}, "larger than"),
        ({"secret_names": ["$(id)"]}, "secret name"),
        ({"timeouts": {"train": True}}, "timeouts.train"),
        ({"timeouts": {"steps": {f"s{n}": 60 for n in range(101)}}}, "timeouts.steps must map at most 100"),
        ({"timeouts": {"steps": {"s" * 64: 60}}}, "timeouts.sssss"),
        ({"timeouts": {"steps": {"smoke": 0}}}, "timeouts.smoke must be between 1"),
    ],
)
def test_numeric_and_named_inputs_are_bounded(overrides, problem):
    from skypilot_temporal.payloads import StepTimeouts

    fields = {"repo_url": "https://example.com/r.git", **overrides}
    if "timeouts" in fields:
        fields["timeouts"] = StepTimeouts(**fields["timeouts"])
    problems = input_problems(PipelineInput(**fields))
    assert any(problem in p for p in problems), problems


async def test_an_overflowing_timeout_fails_the_run_in_one_line_instead_of_retrying_forever(
    pipeline: Pipeline,
):
    from skypilot_temporal.payloads import StepTimeouts

    error = await asyncio.wait_for(pipeline.fail(timeouts=StepTimeouts(train=10**14, heartbeat=5)), 60)
    assert error.type == "InvalidInput" and "timeouts.train" in error.message
    assert pipeline.fake.ever_launched == set()


# ---------------------------------------------------------------- 5. git transports and URL credentials


@pytest.mark.parametrize(
    "url", ["git://example.com/r.git", "http://example.com/r.git", "HTTP://example.com/r"]
)
def test_unencrypted_git_needs_the_operator(url):
    with pytest.raises(ApplicationError, match="WORKER_ALLOW_INSECURE_GIT") as err:
        check_repo_url(url)
    assert err.value.non_retryable
    assert "git" in check_repo_url(url, allow_insecure=True).protocols


@pytest.mark.parametrize(
    "url", ["https://github.com/o/r.git", "ssh://git@github.com/o/r.git", "git@github.com:o/r.git"]
)
def test_https_and_ssh_are_allowed_and_never_the_local_transport(url):
    assert check_repo_url(url) == (url, "https:ssh")


@pytest.mark.parametrize("url", ["/srv/r", "file:///srv/r", "/srv/r/../other"])
def test_a_local_repository_needs_a_directory_the_operator_allows(url):
    with pytest.raises(ApplicationError, match="WORKER_ALLOWED_LOCAL_REPOS") as err:
        check_repo_url(url)
    assert err.value.type == "LocalRepositoryNotAllowed"
    assert check_repo_url("/srv/r", local_repo_dirs=[Path("/srv")]) == ("/srv/r", "file")
    assert check_repo_url("file:///srv/my%20r", local_repo_dirs=[Path("/srv")]).fetch_from == "/srv/my r"
    with pytest.raises(ApplicationError):
        check_repo_url("/srv/r", local_repo_dirs=[Path("/srv/r/sub")])


@pytest.mark.parametrize("escape", ["%2e%2e", "%2E%2E", ".%2e"])
def test_a_percent_escaped_file_url_cannot_leave_the_allowed_directory(tmp_path, escape):
    """git decodes %-escapes in a file:// URL: the check sees the path git would fetch."""
    allowed, other = tmp_path / "repos", tmp_path / "secret-repo"
    allowed.mkdir()
    other.mkdir()
    url = f"file://{allowed}/{escape}/secret-repo"
    with pytest.raises(ApplicationError, match="WORKER_ALLOWED_LOCAL_REPOS"):
        check_repo_url(url, local_repo_dirs=[allowed])


async def test_another_runs_checkout_is_never_a_task_repository(pipeline: Pipeline, tmp_path):
    """A run whose --repo is another run's checkout (under the worker's checkout root) is refused
    even when the operator allows the directory holding it."""
    first = await pipeline.start()
    await first.result()
    checkouts = tmp_path / "checkouts"  # the pipeline fixture's worker's checkout root
    (checkouts / "skypilot-other").mkdir(parents=True, exist_ok=True)
    other_run = make_git_repo(checkouts / "skypilot-other" / "run-1", {"task.yaml": "run: echo stolen\n"})
    error = await pipeline.fail(repo_url=str(other_run))
    assert "inside the worker's checkouts" in error.message
    assert pipeline.fake.submitted[-1].job_name.endswith("-eval"), "a task of the other checkout ran"


@pytest.mark.parametrize("url", ["https://h:notaport/x", "https://[::1/x", "https:///x"])
def test_a_malformed_url_is_one_line_naming_it(url):
    with pytest.raises(ApplicationError) as err:
        check_repo_url(url)
    assert err.value.type == "InvalidRepository" and "\n" not in err.value.message


@pytest.mark.parametrize("url", ["ftp://example.com/r", "ext::sh -c id", "-uhello", "fd::17"])
def test_other_transports_are_refused(url):
    with pytest.raises(ApplicationError):
        check_repo_url(url)


async def test_git_refuses_a_redirect_to_an_insecure_transport_too(activities, tmp_path):
    """GIT_ALLOW_PROTOCOL is what git itself enforces, e.g. for a submodule or an insteadOf."""
    with pytest.raises(ApplicationError) as err:
        await fetch_one(activities, "git://127.0.0.1:1/r.git")
    assert err.value.type == "InsecureRepositoryUrl"


def test_credentials_in_a_url_are_hidden_but_an_ssh_user_is_not():
    assert redact_credentials("cannot clone https://bob:hunter2@git.example.com/r") == (
        "cannot clone https://***@git.example.com/r"
    )
    assert redact_credentials("https://ghp_abcdef@github.com/o/r") == "https://***@github.com/o/r"
    assert redact_credentials("ssh://git@github.com/o/r") == "ssh://git@github.com/o/r"


async def test_a_repo_url_with_credentials_never_shows_them(pipeline: Pipeline, caplog):
    url = "https://bob:hunter2pw@127.0.0.1:9/tasks.git"
    from skypilot_temporal.payloads import StepTimeouts

    handle = await pipeline.start(repo_url=url, timeouts=StepTimeouts(fetch_tasks=3, heartbeat=5))
    with pytest.raises(Exception) as err:
        await handle.result()
    progress = await handle.query("progress")
    shown = [str(err.value.cause), str(progress), caplog.text]
    async for event in handle.fetch_history_events():
        for field in ("activity_task_scheduled_event_attributes",):
            if event.HasField(field):
                shown.append(str(event.user_metadata))
    assert not [text for text in shown if "hunter2pw" in text]
    assert any("https://***@127.0.0.1:9/tasks.git" in text for text in shown)


# ---------------------------------------------------------------- found by review


@pytest.mark.parametrize(
    "task_yaml",
    [
        "workdir: 'https://h/../../../../../../../../../../root'\nrun: ls",
        "file_mounts:\n  /x: 'x:///../../../../../../../../../etc/passwd'\nrun: ls",
        "file_mounts:\n  /x:\n    name: b\n    mode: COPY\n"
        "    source: ['x://../../../../../../../../etc/passwd']\nrun: ls",
    ],
)
async def test_what_skypilot_reads_as_a_local_path_is_checked_as_one(activities, tmp_path, task_yaml):
    """A URL-looking string without a host is a local path to SkyPilot (and a workdir always is)."""
    repo = make_repo(tmp_path, {"task.yaml": task_yaml})
    await refused(activities, repo, "PathNotAllowed")


async def test_paths_are_checked_after_skypilot_substitutes_env_vars(activities, tmp_path):
    repo = make_repo(tmp_path, {"task.yaml": "envs:\n  D: ../../../../../../../../etc\nworkdir: $D\nrun: ls"})
    await refused(activities, repo, "PathNotAllowed")
    repo2 = make_repo(tmp_path, {"task.yaml": "file_mounts:\n  /x: ./$D\nrun: ls"}, name="repo2")
    message = await refused(
        activities, repo2, "PathNotAllowed", env_overrides={"D": "../../../../../../etc/hostname"}
    )
    assert "outside the task repository" in message


@pytest.mark.parametrize(
    "files,link",
    [
        ({"task.yaml": "managed_secrets: 5\nrun: ls"}, None),
        ({"task.yaml": "workdir: 'x://['\nrun: ls"}, None),
        ({"task.yaml": "workdir: loop\nrun: ls"}, ("loop", "loop")),
        ({"task.yaml": "workdir: .\nrun: ls"}, ("sub/loop", "loop")),
    ],
)
async def test_whatever_a_task_trips_the_checks_on_is_one_non_retryable_error(
    activities, tmp_path, files, link
):
    repo = make_repo(tmp_path, files)
    if link:
        (repo / link[0]).parent.mkdir(parents=True, exist_ok=True)
        (repo / link[0]).symlink_to(link[1])
        git("add", ".", cwd=repo)
        git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "loop", cwd=repo)
    try:
        await fetch_one(activities, repo)  # a path inside the checkout may well be fine
    except ApplicationError as err:
        assert err.non_retryable and "\n" not in err.message


async def test_a_task_file_that_is_a_symlink_loop_is_one_error(activities, tmp_path):
    repo = make_repo(tmp_path, {"other.yaml": "run: ls"})
    (repo / "task.yaml").symlink_to("task.yaml")
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "loop", cwd=repo)
    with pytest.raises(ApplicationError) as err:
        await fetch_one(activities, repo)
    assert err.value.non_retryable


async def test_a_task_config_block_needs_the_operator_and_services_are_refused(fake_sky, executor, tmp_path):
    config_yaml = "config:\n  kubernetes:\n    remote_identity: LOCAL_CREDENTIALS\nrun: ls"
    repo = make_repo(tmp_path, {"task.yaml": config_yaml})
    strict = worker_with(fake_sky, executor, tmp_path / "c1")
    assert "WORKER_ALLOW_TASK_CONFIG" in await refused(strict, repo, "InvalidTask")
    allowing = worker_with(fake_sky, executor, tmp_path / "c2", allow_task_config=True)
    await fetch_one(allowing, repo)
    service = make_repo(
        tmp_path, {"task.yaml": "service:\n  tls:\n    keyfile: /root/.ssh/id_rsa\nrun: ls"}, "svc"
    )
    await refused(strict, service, "InvalidTask")


async def test_a_symlink_into_a_sibling_runs_checkout_is_refused(activities, tmp_path):
    sibling = tmp_path / "checkouts" / "wf1" / "run2"
    sibling.mkdir(parents=True)
    repo = make_repo(tmp_path, {"task.yaml": "workdir: .\nrun: ls"})
    (repo / "other-run").symlink_to(sibling)
    git("add", ".", cwd=repo)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-m", "link", cwd=repo)
    assert "other-run" in await refused(activities, repo, "PathNotAllowed")


async def test_an_allowed_directory_does_not_allow_its_neighbours(fake_sky, executor, tmp_path):
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "shared" / "private").mkdir(parents=True)
    repo = make_repo(tmp_path, {"task.yaml": f"file_mounts:\n  /d: {tmp_path}/shared/private\nrun: ls"})
    allowing = worker_with(fake_sky, executor, tmp_path / "c", upload_dirs=(tmp_path / "shared" / "data",))
    await refused(allowing, repo, "PathNotAllowed")


async def test_step_1_failure_messages_are_masked(activities, tmp_path):
    repo = make_repo(tmp_path, {"task.yaml": "run: ls"})
    with pytest.raises(ApplicationError) as err:
        await fetch_one(
            activities, repo, task=f"{WORKER_ENVIRON['HF_TOKEN']}.yaml", secret_names=["HF_TOKEN"]
        )
    assert WORKER_ENVIRON["HF_TOKEN"] not in err.value.message and "***" in err.value.message


def test_an_ssh_password_in_a_url_is_hidden_and_exception_text_is_cleaned():
    from skypilot_temporal.errors import clean_message

    assert redact_credentials("ssh://u:pw@h/r") == "ssh://***@h/r"
    assert "pw" not in clean_message(RuntimeError("cannot reach https://u:pw@api.example.com"))


async def test_yaml_nesting_is_bounded(activities, tmp_path):
    repo = make_repo(tmp_path, {"task.yaml": "x: " + "[" * 100 + "]" * 100})
    assert "nested deeper" in await refused(activities, repo, "InvalidTaskYaml")


async def test_git_itself_refuses_an_insecure_transport_it_is_redirected_to(
    activities, tmp_path, monkeypatch
):
    """GIT_ALLOW_PROTOCOL: an https URL that git's config rewrites to git:// (insteadOf) stops in git."""
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "url.git://127.0.0.1:1/.insteadOf")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "https://example.invalid/")
    with pytest.raises(ApplicationError) as err:
        await fetch_one(activities, "https://example.invalid/tasks.git")
    assert "not allowed" in err.value.message, err.value.message


@pytest.mark.parametrize(
    "task_yaml,shown",
    [
        ("file_mounts:\n  /m:\n    name: b\n    mode: COPY\n    source: //root/.ssh\nrun: ls", "//root/.ssh"),
        ("workdir: .\nfile_mounts_mapping:\n  /x: ../../../../root\nrun: ls", "file_mounts_mapping"),
        ("_metadata: {}\nrun: ls", "_metadata"),
        ("api_server_access: true\nrun: ls", "api_server_access"),  # the worker's identity in a job
        (
            "resources:\n  _cluster_config_overrides:\n    kubernetes:\n"
            "      remote_identity: LOCAL_CREDENTIALS\nrun: ls",
            "_cluster_config_overrides",
        ),
        ("resources:\n  any_of:\n    - _cluster_config_overrides: {}\nrun: ls", "_cluster_config_overrides"),
    ],
)
async def test_second_review_storage_paths_without_a_scheme_and_internal_keys(
    activities, tmp_path, task_yaml, shown
):
    repo = make_repo(tmp_path, {"task.yaml": task_yaml})
    with pytest.raises(ApplicationError) as err:
        await fetch_one(activities, repo)
    assert err.value.non_retryable and shown in err.value.message, err.value.message


async def test_a_task_may_say_api_server_access_false_but_not_true(activities, tmp_path):
    repo = make_repo(tmp_path, {"task.yaml": "api_server_access: false\nrun: ls"})
    await fetch_one(activities, repo)  # what the worker sets anyway: a copied SkyPilot YAML runs
    (repo / "task.yaml").write_text("api_server_access: yes\nrun: ls")
    git("commit", "-qam", "true", cwd=repo)
    message = await refused(activities, repo, "InvalidTask")
    assert "`api_server_access:` may only be false" in message, message


@pytest.mark.parametrize(("api_version", "starts"), [("41", False), ("42", True), (None, True)])
def test_the_worker_refuses_an_api_server_too_old_for_api_server_access(api_version, starts):
    class Sdk:
        def api_info(self):
            return SimpleNamespace(status="healthy", version="0.9", api_version=api_version)

    if starts:
        worker_startup.check_skypilot_api_server(Sdk())  # type: ignore[arg-type]
        return
    with pytest.raises(ConfigError, match=r"speaks API version 41; this worker needs 42") as refused:
        worker_startup.check_skypilot_api_server(Sdk())  # type: ignore[arg-type]
    assert "\n" not in str(refused.value)


TOKEN = "sky_eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJzYS0xMjMifQ.c2lnbmF0dXJlLXZhbHVl"


def test_a_skypilot_service_account_token_is_hidden_wherever_it_appears(caplog):
    assert redact_credentials(f"401: Authorization: Bearer {TOKEN} refused") == (
        "401: Authorization: Bearer sky_*** refused"
    )
    assert redact_credentials("sky_launch failed on sky_status.py") == "sky_launch failed on sky_status.py"
    SkyPilotPlugin(sky=FakeSky())  # its log filters, as on a worker
    with caplog.at_level(logging.INFO, "temporalio.activity"):
        logging.getLogger("temporalio.activity").info("calling with %s", TOKEN)
    assert TOKEN not in caplog.text and "sky_***" in caplog.text


@pytest.mark.parametrize("refusal", ["http 401", "authentication error"])
def test_the_worker_refuses_to_start_in_one_line_when_the_api_server_refuses_its_token(refusal):
    class Refused(Exception):
        response = SimpleNamespace(status_code=401)

    class ApiServerAuthenticationError(Exception):
        pass

    error = Refused if refusal == "http 401" else ApiServerAuthenticationError

    class Sdk:
        def api_info(self):
            raise error(f"401 Client Error: Unauthorized (token {TOKEN} is revoked)")

    with pytest.raises(ConfigError) as refused:
        worker_startup.check_skypilot_api_server(Sdk())  # type: ignore[arg-type]
    message = str(refused.value)
    assert "refused this worker's credentials" in message and "SKYPILOT_SERVICE_ACCOUNT_TOKEN" in message
    assert TOKEN not in message and "\n" not in message


def test_the_worker_refuses_a_token_that_is_not_a_skypilot_one_before_calling(monkeypatch):
    monkeypatch.setenv("SKYPILOT_SERVICE_ACCOUNT_TOKEN", "ghp_not-a-skypilot-token")

    class Sdk:
        def api_info(self):
            raise AssertionError("no call with a malformed token")

    with pytest.raises(ConfigError, match=r"^SKYPILOT_SERVICE_ACCOUNT_TOKEN is not a SkyPilot") as refused:
        worker_startup.check_skypilot_api_server(Sdk())  # type: ignore[arg-type]
    assert "ghp_not" not in str(refused.value)
