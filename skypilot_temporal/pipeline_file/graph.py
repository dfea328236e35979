"""A pipeline file, checked and expanded: the graph the generic workflow runs.

The step-1 activity builds it (pipeline_file/load.py) and returns it to the workflow, so it is in
the run's history once; the workflow never reads the file. Everything here is plain data and
pure functions, safe in the workflow sandbox.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

COMPARISONS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}


@dataclass
class MetricRef:
    """A value a step reads from a step it needs: `metric` of step `step`, or with `param` the
    matrix value `param` of that step's variant. `step` is a step of the graph, or a matrix
    group (a declared step fanned out): then the group's selected variant."""

    step: str
    metric: str = ""
    param: str = ""

    def __str__(self) -> str:
        return f"{self.step}.matrix.{self.param}" if self.param else f"{self.step}.{self.metric}"


@dataclass
class Condition:
    """Run a step only if `ref` `op` `value` (a metric that was not reported does not hold)."""

    ref: MetricRef
    op: str
    value: float

    def holds(self, actual: float | None) -> bool:
        return actual is not None and COMPARISONS[self.op](actual, self.value)

    def __str__(self) -> str:
        return f"{self.ref} {self.op} {self.value:g}"


@dataclass
class GraphStep:
    """One step of the graph (a matrix variant is a step of its own: "<declared>-v<n>")."""

    name: str
    task: str  # the task YAML's path in the repository
    # The task's YAML document in `task` (a SkyPilot multi-task file holds several).
    document: int = 0
    needs: list[str] = field(default_factory=list)
    # The cluster's role ("<prefix>-<role>"); empty for a managed job.
    cluster: str = ""
    # The first step on its cluster launches it; the later ones exec on it.
    launches: bool = True
    managed: bool = False
    env: dict[str, str] = field(default_factory=dict)  # the step's own, over the file's
    env_from: dict[str, MetricRef] = field(default_factory=dict)
    when: list[Condition] = field(default_factory=list)
    timeout_seconds: int = 0  # 0: the run's timeout for the step's declared name
    retries: int = 0
    # The declared step it comes from, and for a variant its id and matrix values.
    declared: str = ""
    variant: str = ""
    params: dict[str, str] = field(default_factory=dict)


@dataclass
class Selection:
    """A matrix group's selected variant: the best `metric` (`goal` max or min)."""

    metric: str
    goal: str = "max"


@dataclass
class PipelineGraph:
    file: str
    name: str
    steps: list[GraphStep]  # in an order that respects `needs`
    max_parallel: int = 4
    on_failure: str = "stop"  # stop | continue
    env: dict[str, str] = field(default_factory=dict)  # every step's
    # Matrix groups: declared step -> its variants' step names, and how one is selected.
    groups: dict[str, list[str]] = field(default_factory=dict)
    selections: dict[str, Selection] = field(default_factory=dict)

    def step(self, name: str) -> GraphStep:
        return next(s for s in self.steps if s.name == name)

    def env_of(self, step: GraphStep, run_env: Mapping[str, str]) -> dict[str, str]:
        """A step's env before the values it reads from other steps: the file's, the step's, the
        run's overrides (`run_env`), then its matrix values and variant id."""
        env = {**self.env, **step.env, **run_env, **step.params}
        if step.variant:
            env["VARIANT_ID"] = step.variant
        return env

    def cluster_users(self) -> dict[str, list[str]]:
        """Each cluster role -> the steps that run on it, in order."""
        users: dict[str, list[str]] = {}
        for step in self.steps:
            if step.cluster:
                users.setdefault(step.cluster, []).append(step.name)
        return users


def attempt_name(step: str, attempt: int) -> str:
    """The name attempt `attempt` of a step runs under: the step's, then `<step>-retry<n>`."""
    return step if attempt == 0 else f"{step}-retry{attempt}"


def selected_variant(
    graph: PipelineGraph, group: str, metrics: Mapping[str, Mapping[str, float]]
) -> str | None:
    """The variant of `group` later steps read: of those that reported the selecting metric (in
    `metrics`, step -> its metrics), the best; the first of equals. None if none reported it."""
    selection = graph.selections.get(group)
    if selection is None:
        return None
    reported = [
        (metrics[v][selection.metric], v)
        for v in graph.groups[group]
        if selection.metric in metrics.get(v, {})
    ]
    if not reported:
        return None
    best = max if selection.goal == "max" else min
    value = best(value for value, _ in reported)
    return next(v for actual, v in reported if actual == value)


def resolve(
    graph: PipelineGraph, ref: MetricRef, metrics: Mapping[str, Mapping[str, float]]
) -> tuple[float | str | None, str]:
    """What `ref` reads now, and from which step ("" if nothing): a metric (a number), a matrix
    value (text), or None when the step did not report it."""
    step = ref.step
    if step in graph.groups:
        step = selected_variant(graph, step, metrics) or ""
        if not step:
            return None, ""
    if ref.param:
        return graph.step(step).params.get(ref.param), step
    return metrics.get(step, {}).get(ref.metric), step


def dependents(graph: PipelineGraph, names: Sequence[str]) -> set[str]:
    """Every step that needs one of `names`, directly or through others."""
    found: set[str] = set()
    for step in graph.steps:  # in order: a step's needs come before it
        if any(n in found or n in names for n in step.needs):
            found.add(step.name)
    return found
