"""Property tests (Hypothesis) of step 1's checks: random and hostile task YAML, paths, refs, env
keys and values and secret names give a valid task or one clear non-retryable error; never
another exception, never a hang, never a path outside the run's checkout."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import sky
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.exceptions import ApplicationError

from skypilot_temporal.activity.activities import SkyPilotActivities
from skypilot_temporal.bounds import input_problems
from skypilot_temporal.payloads import PipelineInput, StepTimeouts, TaskSpec
from skypilot_temporal.testing.fake_sky import FakeSky
from skypilot_temporal.trust.checkout import validate_ref
from skypilot_temporal.trust.task_policy import check_secret_names
from testing.in_process import WORKER_ENVIRON, WORKER_POLICY

# Generous: CI machines are loaded; a hang or an alias bomb takes far longer (and has its own test).
TIME_BOUND_SECONDS = 20.0
EXAMPLES = settings(
    max_examples=150,
    deadline=None,  # timed by hand below: the first example pays for SkyPilot's imports
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

HOSTILE_PATHS = st.sampled_from(
    [
        ".",
        "data",
        "data/x.csv",
        "data/../..",
        "../..",
        "../../../etc",
        "/etc",
        "/root/.sky",
        "//etc",
        "~/.ssh",
        "~root/.ssh",
        "~nosuchuser/x",
        "data/link-out",
        "data/link-out/passwd",
        "link-in",
        "s3://bucket/x",
        "gs://b",
        "file:///etc/passwd",
        "FILE://x/etc",
        "a\x00b",
        "",
        " ",
        "x" * 5000,
    ]
) | st.text(max_size=30)
SCALARS = st.none() | st.booleans() | st.integers(-(10**20), 10**20) | st.text(max_size=20)
ANY_YAML = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=8,
)
ENV_KEYS = st.sampled_from(["A", "_B", "PATH", "A B", "1X", "", "X=Y", "é"]) | st.text(max_size=10)
STORAGE = st.fixed_dictionaries(
    {"source": HOSTILE_PATHS | st.lists(HOSTILE_PATHS, max_size=3) | ANY_YAML},
    optional={"name": st.text(max_size=6), "mode": st.sampled_from(["COPY", "MOUNT", "bogus"])},
)
TASKS = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=10),
        "workdir": HOSTILE_PATHS | ANY_YAML | st.fixed_dictionaries({"url": st.text(max_size=10)}),
        "file_mounts": st.dictionaries(
            st.sampled_from(["/a", "/b", "~/c", "s3://x"]), HOSTILE_PATHS | STORAGE | ANY_YAML, max_size=3
        )
        | ANY_YAML,
        "envs": st.dictionaries(ENV_KEYS, SCALARS, max_size=3),
        "secrets": st.lists(st.text(max_size=8), max_size=2) | st.dictionaries(ENV_KEYS, SCALARS, max_size=2),
        "run": st.text(max_size=40),
        "num_nodes": st.integers(-3, 5) | st.text(max_size=3),
        "bogus": ANY_YAML,
    },
)
HOSTILE_TEXTS = st.sampled_from(
    [
        "a: &a [x, x]\nb: [*a, *a]\nrun: ls",
        "[" * 3000,
        "{" * 100 + "}" * 100,
        "run: !!python/object/apply:os.system [id]",
        "x: !!timestamp 2001-13-45",
        "x: 1e999999",
        "- just\n- a list",
        "\ufeffrun: ls",
        "run: ls\n" * 20000,
    ]
)
TEXTS = TASKS.map(lambda d: yaml.safe_dump(d, allow_unicode=True)) | HOSTILE_TEXTS | st.text(max_size=200)


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> tuple[SkyPilotActivities, Path]:
    import concurrent.futures

    root = tmp_path_factory.mktemp("checkouts")
    run_dir = root / "wf1" / "run1"
    (run_dir / "data").mkdir(parents=True)
    (run_dir / "data" / "x.csv").write_text("1")
    (run_dir / "data" / "link-out").symlink_to("/etc")
    (run_dir / "link-in").symlink_to(run_dir / "data")
    activities = SkyPilotActivities(
        FakeSky(),
        concurrent.futures.ThreadPoolExecutor(2),
        root,
        environ=WORKER_ENVIRON,
        policy=WORKER_POLICY,
    )
    return activities, run_dir


def assert_one_clear_line(err: ApplicationError) -> None:
    assert err.non_retryable, err.message
    assert err.message and "\n" not in err.message and len(err.message) < 2000, err.message
    assert "Traceback" not in err.message


def local_paths(task: sky.Task) -> list[str]:
    paths = [task.workdir] if isinstance(task.workdir, str) else []
    for source in (task.file_mounts or {}).values():
        if "://" not in source:
            paths.append(source)
    for storage in (task.storage_mounts or {}).values():
        sources = storage.source if isinstance(storage.source, list) else [storage.source]
        paths += [s for s in sources if isinstance(s, str) and "://" not in s]
    return paths


@EXAMPLES
@given(
    text=TEXTS,
    env=st.dictionaries(ENV_KEYS, st.text(max_size=20), max_size=3),
    secrets=st.lists(
        st.sampled_from(["HF_TOKEN", "TEMPORAL_API_KEY", "NOPE_TOKEN", "$(id)", ""]), max_size=2
    ),
)
def test_any_task_text_gives_a_valid_task_or_one_clear_error(checkout, text, env, secrets):
    activities, run_dir = checkout
    spec = TaskSpec(
        step="train.yaml",
        job_name="validate",
        yaml_text=text,
        env_overrides=env,
        secret_names=secrets,
        checkout_name="wf1/run1",
    )
    started = time.monotonic()
    try:
        task = activities._build_task(spec, "")
    except ApplicationError as err:
        assert_one_clear_line(err)
        return
    finally:
        assert time.monotonic() - started < TIME_BOUND_SECONDS, f"took {time.monotonic() - started:.1f} s"
    assert isinstance(task, sky.Task)
    for path in local_paths(task):
        assert Path(path).resolve().is_relative_to(run_dir.resolve()), f"{path} is outside the checkout"
    assert not set(secrets) - {"HF_TOKEN", "NOPE_TOKEN"}, "a secret outside the allow-list was handed out"


@EXAMPLES
@given(
    ref=st.text(max_size=60)
    | st.sampled_from(["main", "-uhello", "a..b", "HEAD@{1}", "v1.0", "x.lock", "a/b/"])
)
def test_any_ref_is_accepted_or_refused_in_one_line(ref):
    try:
        validate_ref(ref)
    except ApplicationError as err:
        assert_one_clear_line(err)
        return
    assert not ref.startswith("-") and ".." not in ref and " " not in ref and "\n" not in ref


@EXAMPLES
@given(
    timeout=st.integers(-(10**20), 10**20) | st.floats(allow_nan=True),
    keep=st.integers(-(10**20), 10**20),
    retry=st.floats(allow_nan=True, allow_infinity=True),
    env=st.dictionaries(ENV_KEYS, st.text(max_size=20), max_size=3),
    secrets=st.lists(st.text(max_size=10), max_size=3),
)
def test_any_pipeline_input_is_judged_without_an_exception(timeout, keep, retry, env, secrets):
    pipeline = PipelineInput(
        repo_url="https://example.com/r.git",
        timeouts=StepTimeouts(train=timeout),
        keep_clusters_minutes=keep,
        retry_initial_interval_seconds=retry,
        env_overrides=env,
        secret_names=secrets,
    )
    problems = input_problems(pipeline)
    if not problems:  # then every timedelta the workflow makes from it is representable
        from datetime import timedelta

        timedelta(seconds=pipeline.timeouts.train), timedelta(minutes=pipeline.keep_clusters_minutes)
        timedelta(seconds=pipeline.retry_initial_interval_seconds)


@EXAMPLES
@given(names=st.lists(st.text(max_size=12), max_size=4))
def test_secret_names_outside_the_allow_list_are_refused(names):
    try:
        check_secret_names(names, WORKER_POLICY)
    except ApplicationError as err:
        assert_one_clear_line(err)
        assert set(names) - WORKER_POLICY.secret_names
        return
    assert set(names) <= WORKER_POLICY.secret_names
