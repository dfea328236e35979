"""fetch_tasks: git clone with argument lists, validated refs and paths, real git repositories."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from skypilot_temporal.payloads import FetchTasksInput
from testing.in_process import TASK_FILES, git


def fetch_input(
    repo: Path | str, ref: str = "main", paths=TASK_FILES, name: str = "wf1/run1", **kwargs
) -> FetchTasksInput:
    return FetchTasksInput(repo_url=str(repo), ref=ref, yaml_paths=list(paths), checkout_name=name, **kwargs)


async def fetch(activities, *args, **kwargs):
    return await ActivityEnvironment().run(activities.fetch_tasks, fetch_input(*args, **kwargs))


async def expect_error(activities, error_type: str, *args, **kwargs) -> ApplicationError:
    with pytest.raises(ApplicationError) as err:
        await fetch(activities, *args, **kwargs)
    assert err.value.type == error_type, err.value.message
    assert err.value.non_retryable
    assert "\n" not in err.value.message.strip()
    return err.value


async def test_fetch_returns_commit_and_task_texts(activities, task_repo: Path, tmp_path: Path):
    result = await fetch(activities, task_repo)
    assert result.commit_sha == git("rev-parse", "HEAD", cwd=task_repo)
    assert set(result.yaml_texts) == set(TASK_FILES)
    assert "Data preprocessing completed" in result.yaml_texts["data_preprocessing.yaml"]
    assert (tmp_path / "checkouts" / "wf1" / "run1" / "train.yaml").is_file()


async def test_fetch_checks_out_a_branch_tag_or_commit(activities, task_repo: Path):
    first = git("rev-parse", "HEAD", cwd=task_repo)
    git("tag", "v1", cwd=task_repo)
    git("checkout", "--quiet", "-b", "experiment", cwd=task_repo)
    (task_repo / "train.yaml").write_text("name: train\nrun: echo experiment\n")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-am", "exp", cwd=task_repo)
    second = git("rev-parse", "HEAD", cwd=task_repo)

    by_branch = await fetch(activities, task_repo, ref="experiment", name="a")
    assert by_branch.commit_sha == second and "experiment" in by_branch.yaml_texts["train.yaml"]
    assert (await fetch(activities, task_repo, ref="v1", name="b")).commit_sha == first
    assert (await fetch(activities, task_repo, ref=first[:10], name="c")).commit_sha == first
    assert (await fetch(activities, task_repo, ref="main", name="d")).commit_sha == first


async def test_each_run_gets_a_fresh_checkout(activities, task_repo: Path, tmp_path: Path):
    stale = tmp_path / "checkouts" / "wf1" / "run1" / "stale.txt"
    stale.parent.mkdir(parents=True)
    stale.write_text("left over from an earlier attempt")
    await fetch(activities, task_repo)
    assert not stale.exists()


async def test_missing_repository_is_non_retryable(activities, tmp_path: Path):
    err = await expect_error(activities, "RepositoryNotFound", tmp_path / "no-such-repo")
    assert "no-such-repo" in err.message


async def test_missing_ref_is_non_retryable(activities, task_repo: Path):
    err = await expect_error(activities, "RefNotFound", task_repo, ref="no-such-branch")
    assert "no-such-branch" in err.message


async def test_missing_task_file_is_non_retryable(activities, task_repo: Path):
    err = await expect_error(
        activities, "TaskFileNotFound", task_repo, paths=["data_preprocessing.yaml", "nope.yaml", "eval.yaml"]
    )
    assert "nope.yaml" in err.message


@pytest.mark.parametrize("path", ["../outside.yaml", "/etc/passwd", "sub/../../outside.yaml"])
async def test_task_paths_must_stay_inside_the_clone(activities, task_repo: Path, path: str):
    (task_repo.parent / "outside.yaml").write_text("run: echo outside\n")
    err = await expect_error(
        activities, "PathOutsideRepository", task_repo, paths=[path, "train.yaml", "eval.yaml"]
    )
    assert path in err.message


@pytest.mark.parametrize(
    "ref", ["--upload-pack=touch /tmp/pwned-ref", "-b", "main..HEAD", "a b", "x.lock", ""]
)
async def test_option_looking_or_malformed_refs_are_rejected(activities, task_repo: Path, ref):
    await expect_error(activities, "InvalidRef", task_repo, ref=ref)
    assert not Path("/tmp/pwned-ref").exists()


@pytest.mark.parametrize("repo", ["--upload-pack=touch /tmp/pwned-repo", "ext::sh -c touch% /tmp/pwned-repo"])
async def test_option_looking_repositories_are_rejected(activities, repo: str):
    await expect_error(activities, "InvalidRepository", repo)
    assert not Path("/tmp/pwned-repo").exists()


@pytest.mark.parametrize(
    "text,error_type",
    [
        ("run: [unclosed\n", "InvalidTaskYaml"),
        ("- just\n- a list\n", "InvalidTaskYaml"),
        ("name: train\nresources:\n  cpus: 1+\nno_such_field: 1\nrun: echo\n", "InvalidTask"),
    ],
)
async def test_malformed_task_yaml_fails_before_any_cluster(
    activities, fake_sky, task_repo: Path, text: str, error_type: str
):
    (task_repo / "train.yaml").write_text(text)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-am", "bad", cwd=task_repo)
    err = await expect_error(activities, error_type, task_repo)
    assert "train.yaml" in err.message
    assert fake_sky.calls == []


async def test_task_needing_an_unset_env_fails_at_fetch(activities, task_repo: Path):
    (task_repo / "train.yaml").write_text("name: train\nenvs:\n  DATA_BUCKET:\nrun: echo\n")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-am", "env", cwd=task_repo)
    err = await expect_error(activities, "InvalidTask", task_repo)
    assert "DATA_BUCKET" in err.message
    result = await fetch(activities, task_repo, name="again", env_overrides={"DATA_BUCKET": "b"})
    assert result.commit_sha


async def test_remove_checkout_deletes_only_this_run(activities, task_repo: Path, tmp_path: Path):
    from skypilot_temporal.payloads import RemoveCheckoutInput

    await fetch(activities, task_repo, name="wf1/run1")
    await fetch(activities, task_repo, name="wf2/run1")
    await ActivityEnvironment().run(activities.remove_checkout, RemoveCheckoutInput("wf1/run1"))
    assert not (tmp_path / "checkouts" / "wf1" / "run1").exists()
    assert (tmp_path / "checkouts" / "wf2" / "run1" / "train.yaml").exists()


async def test_an_oversized_task_file_is_rejected_before_it_reaches_history(activities, task_repo: Path):
    (task_repo / "train.yaml").write_text("name: train\nrun: |\n" + "  echo padding\n" * 30_000)
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "--quiet", "-am", "big", cwd=task_repo)
    err = await expect_error(activities, "TaskFileTooLarge", task_repo)
    assert "train.yaml" in err.message
