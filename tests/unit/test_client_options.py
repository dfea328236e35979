"""A starter's option values (skypilot_temporal.client.options): where each --timeout lands."""

from __future__ import annotations

import argparse

import pytest
from temporalio.common import Priority

from skypilot_temporal.client.options import fairness_key_of, run_priority, step_timeout, step_timeouts
from skypilot_temporal.errors import ConfigError


def test_in_a_pipeline_files_run_a_step_named_like_a_seed_step_is_that_files_step():
    """`--timeout train=60` with --pipeline is the file's step `train` (the run's value must win
    over the file's `timeout:`), not the seed's train field; run-wide names stay fields."""
    given = [step_timeout(t) for t in ("train=60", "eval=70", "other-steps=80", "heartbeat=9", "prep=90")]
    timeouts = step_timeouts(given, pipeline_file=True)
    assert timeouts.steps == {"train": 60, "eval": 70, "prep": 90}
    assert (timeouts.other_steps, timeouts.heartbeat) == (80, 9)
    six = step_timeouts(given[:4], pipeline_file=False)
    assert (six.train, six.eval, six.steps) == (60, 70, {})


def test_in_a_pipeline_files_run_fetch_tasks_and_teardown_stay_run_wide():
    given = [step_timeout(t) for t in ("fetch-tasks=30", "teardown=40")]
    timeouts = step_timeouts(given, pipeline_file=True)
    assert (timeouts.fetch_tasks, timeouts.teardown, timeouts.steps) == (30, 40, {})


def test_a_step_name_without_a_pipeline_file_is_refused_naming_the_fields():
    with pytest.raises(ConfigError, match=r"unknown step 'prep'.*with --pipeline"):
        step_timeouts([step_timeout("prep=90")], pipeline_file=False)


@pytest.mark.parametrize("text", ["train", "train=x", "Train=5", "heartbeat=999999", "train=0"])
def test_a_bad_timeout_is_one_usage_line(text: str):
    with pytest.raises(argparse.ArgumentTypeError) as raised:
        step_timeout(text)
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "repo, key",
    [
        ("https://github.com/acme/ml-tasks", "github.com/acme"),
        ("https://token@gitlab.com/acme/sub/repo?x=1", "gitlab.com/acme"),  # no credentials
        ("git@github.com:acme/tasks.git", "github.com/acme"),
        ("ssh://git@host:2222/team/repo", "host/team"),
        ("/srv/tasks/ml", "/srv/tasks"),
        ("https://[not-a-url", ""),
    ],
)
def test_a_runs_fairness_key_is_its_repositorys_owner(repo: str, key: str):
    assert fairness_key_of(repo) == key
    assert run_priority(None, "", repo) == Priority(priority_key=None, fairness_key=key or None)


def test_a_fairness_key_given_wins_and_is_bounded():
    assert run_priority(2, " team-b ", "https://github.com/acme/x") == Priority(2, "team-b")
    assert len(fairness_key_of("/" + "é" * 80 + "/repo").encode()) <= 64
    with pytest.raises(ConfigError, match=r"^--fairness-key: at most 64 bytes, got 65$"):
        run_priority(None, "k" * 65, "x")
