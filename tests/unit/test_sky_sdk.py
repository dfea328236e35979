"""The SkyPilot SDK seam: the installed SDK and the fake both provide every call of the
`SkyPilotSDK` Protocol, with the parameters the code passes, and the Protocol lists exactly the
calls the code makes. So the fake cannot drift from the real SDK unnoticed."""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import sky

from skypilot_temporal.activity.sdk import ManagedJobsSDK, SkyPilotSDK, TaskFactory
from skypilot_temporal.testing.fake_sky import FakeSky
from testing import ROOT

P = inspect.Parameter
POSITIONAL = (P.POSITIONAL_ONLY, P.POSITIONAL_OR_KEYWORD)
IMPLEMENTATIONS = {"the installed sky module": sky, "testing/fake_sky.FakeSky": FakeSky()}


def protocol_members(protocol: type) -> set[str]:
    return {
        name
        for name, value in vars(protocol).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, property))
    } | set(inspect.get_annotations(protocol))


def incompatibilities(expected: Callable[..., Any], actual: Callable[..., Any]) -> list[str]:
    """How a call made as `expected` declares it would fail on `actual`: the parameters the
    Protocol declares positional are passed by position, the keyword-only ones by name."""
    wanted = [p for p in inspect.signature(expected).parameters.values() if p.name != "self"]
    offered = list(inspect.signature(actual).parameters.values())
    positional = [p for p in offered if p.kind in POSITIONAL]
    by_name = {p.name: p for p in offered if p.kind in (P.POSITIONAL_OR_KEYWORD, P.KEYWORD_ONLY)}
    takes_any_keyword = any(p.kind is P.VAR_KEYWORD for p in offered)
    passed: set[str] = set()
    problems = []
    for index, param in enumerate(p for p in wanted if p.kind in POSITIONAL):
        if index >= len(positional):
            problems.append(f"no positional parameter for {param.name!r}")
            continue
        passed.add(positional[index].name)
        if positional[index].name != param.name:
            problems.append(f"positional parameter {index} is {positional[index].name!r}, not {param.name!r}")
    for param in (p for p in wanted if p.kind is P.KEYWORD_ONLY):
        if param.name in by_name:
            passed.add(param.name)
        elif not takes_any_keyword:
            problems.append(f"no parameter {param.name!r}")
    for param in offered:
        required = param.kind not in (P.VAR_POSITIONAL, P.VAR_KEYWORD) and param.default is P.empty
        if required and param.name not in passed:
            problems.append(f"requires {param.name!r}, which the code never passes")
    return problems


def is_sdk(node: ast.expr) -> bool:
    """`sky_sdk` or `self._sky`."""
    return (isinstance(node, ast.Name) and node.id == "sky_sdk") or (
        isinstance(node, ast.Attribute)
        and node.attr == "_sky"
        and isinstance(node.value, ast.Name)
        and node.value.id == "self"
    )


def sdk_members_used(source: str, jobs: bool = False) -> set[str]:
    """The members of `self._sky.X` and `sky_sdk.X` in Python source (with `jobs`: of
    `self._sky.jobs.X`, the managed-jobs calls)."""
    used = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        base = node.value
        of_jobs = isinstance(base, ast.Attribute) and base.attr == "jobs" and is_sdk(base.value)
        if of_jobs if jobs else is_sdk(base):
            used.add(node.attr)
    return used


def test_the_protocol_lists_exactly_the_sdk_calls_the_code_makes():
    sources = [path.read_text() for path in [*ROOT.glob("*.py"), *(ROOT / "skypilot_temporal").rglob("*.py")]]
    assert set().union(*(sdk_members_used(source) for source in sources)) == protocol_members(SkyPilotSDK)
    assert set().union(*(sdk_members_used(s, jobs=True) for s in sources)) == protocol_members(ManagedJobsSDK)
    assert protocol_members(TaskFactory) == {"from_yaml_config"}


@pytest.mark.parametrize("where", IMPLEMENTATIONS)
def test_every_protocol_call_exists_with_the_parameters_the_code_passes(where):
    implementation = IMPLEMENTATIONS[where]
    assert isinstance(implementation, SkyPilotSDK), f"{where} lacks a call of SkyPilotSDK"
    problems = {
        name: incompatibilities(getattr(SkyPilotSDK, name), getattr(implementation, name))
        for name in protocol_members(SkyPilotSDK) - {"Task", "jobs"}
    }
    problems |= {
        f"jobs.{name}": incompatibilities(getattr(ManagedJobsSDK, name), getattr(implementation.jobs, name))
        for name in protocol_members(ManagedJobsSDK)
    }
    problems["Task.from_yaml_config"] = incompatibilities(
        TaskFactory.from_yaml_config, implementation.Task.from_yaml_config
    )
    assert {name: found for name, found in problems.items() if found} == {}, where


def test_the_check_catches_a_renamed_missing_or_extra_parameter():
    def renamed(task, cluster=None): ...

    def positional_renamed(name, job_id, follow, preload_content=True): ...

    def extra_required(cluster_name, job_ids=None, *, purge): ...

    assert incompatibilities(SkyPilotSDK.exec, renamed) == ["no parameter 'cluster_name'"]
    assert incompatibilities(SkyPilotSDK.tail_logs, positional_renamed) == [
        "positional parameter 0 is 'name', not 'cluster_name'"
    ]
    assert incompatibilities(SkyPilotSDK.cancel, extra_required) == [
        "requires 'purge', which the code never passes"
    ]
    assert incompatibilities(SkyPilotSDK.cancel, lambda cluster_name, **kwargs: None) == []
