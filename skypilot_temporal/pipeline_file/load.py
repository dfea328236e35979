"""Read a pipeline file (task-author input) into the graph the generic workflow runs.

Two formats: this project's pipeline file (pipeline.schema.json, docs/pipeline-files.md) and
SkyPilot's own multi-task YAML (a `name:` document, then tasks, run one after another). Every
problem is one line naming the file, the step and the problem; nothing here touches a cluster.
The task files themselves are read and checked by the step-1 activity, against the worker's
task policy, like any task.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

import jsonschema
import yaml

from skypilot_temporal.pipeline_file.graph import Condition, GraphStep, MetricRef, PipelineGraph, Selection

MAX_GRAPH_STEPS = 200  # steps after matrices are expanded (see docs/pipeline-files.md, "Scale")
MAX_VARIANTS = 64
MAX_DEFAULT_PARALLEL = 4
MAX_STEP_TIMEOUT_SECONDS = 30 * 24 * 3600
MAX_ENV_BYTES = 64 * 1024
# The expanded graph is step 1's result, in the run's history: well under Temporal's 2 MB payload.
MAX_GRAPH_BYTES = 1024 * 1024
MAX_DEPTH = 32
# A file's YAML nodes, counted while it is parsed: refused before anything is built from it.
MAX_YAML_NODES = 50_000
# `needs` entries once matrices are expanded (a step needing every variant of a 64-variant group).
MAX_GRAPH_NEEDS = 4096
# Every attempt of every step carries its env in its activity input: all of it goes into the
# run's history, which Temporal ends at 50 MB (no cleanup runs then).
MAX_HISTORY_ENV_BYTES = 8 * 1024 * 1024
RESERVED_STEP_NAMES = re.compile(r"fetch-tasks|cleanup|.*-down|.*-retry[0-9]+|.*-v[0-9]+")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_CLUSTER = re.compile(r"[a-z][a-z0-9]{0,11}")
_TYPE_NAMES = {
    "object": "a mapping",
    "array": "a list",
    "string": "text",
    "integer": "a whole number",
    "number": "a number",
    "boolean": "true or false",
}


class PipelineFileError(ValueError):
    """What is wrong with a pipeline file: one line."""


@functools.cache
def schema() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("pipeline.schema.json").read_text()
    return dict(json.loads(text))


def load_pipeline(path: str, text: str) -> PipelineGraph:
    """The graph of the pipeline file at `path` (in the repository) whose content is `text`."""
    documents = _documents(path, text)
    if len(documents) > 1 and isinstance(documents[0], dict) and set(documents[0]) <= {"name"}:
        return _skypilot_chain(path, documents)
    if len(documents) != 1 or not isinstance(documents[0], dict):
        raise PipelineFileError(
            f"{path}: not a pipeline file: expected one mapping with `steps:` "
            "(or a SkyPilot multi-task YAML: a `name:` document, then tasks)"
        )
    document = documents[0]
    if "steps" not in document and ("run" in document or "resources" in document):
        raise PipelineFileError(f"{path}: is a single SkyPilot task, not a pipeline (it has no `steps:`)")
    _check_schema(path, document)
    try:
        graph = _Builder(path, document).build()
    except PipelineFileError:
        raise
    except Exception as exc:  # whatever a value within the schema trips on: still one line
        raise PipelineFileError(f"{path}: cannot be read: {_short(f'{type(exc).__name__}: {exc}')}") from None
    size = len(json.dumps(dataclasses.asdict(graph)))
    if size > MAX_GRAPH_BYTES:
        raise PipelineFileError(
            f"{path}: its steps, expanded, hold {size // 1024} KB of env and settings: at most "
            f"{MAX_GRAPH_BYTES // 1024} KB (they travel in the run's history)"
        )
    sent = sum(
        (step.retries + 1) * sum(len(k) + len(v) for k, v in graph.env_of(step, {}).items())
        for step in graph.steps
    )
    if sent > MAX_HISTORY_ENV_BYTES:
        raise PipelineFileError(
            f"{path}: its steps' env, sent again with every attempt, comes to {sent // 1024} KB: at most "
            f"{MAX_HISTORY_ENV_BYTES // 1024} KB (it travels in the run's history, which Temporal "
            "ends at 50 MB)"
        )
    return graph


# ---------------------------------------------------------------- parsing


def _documents(path: str, text: str) -> list[Any]:
    try:
        depth = nodes = 0
        for event in yaml.parse(text, Loader=_YAML_LOADER):  # events: no recursion, whatever the nesting
            if isinstance(event, yaml.NodeEvent):
                nodes += 1
                if nodes > MAX_YAML_NODES:
                    raise PipelineFileError(f"{path}: more than {MAX_YAML_NODES} YAML values")
            if isinstance(event, yaml.AliasEvent):
                raise PipelineFileError(
                    f"{path}: uses a YAML alias (*{event.anchor}): aliases are not allowed"
                )
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_DEPTH:
                    raise PipelineFileError(f"{path}: nested deeper than {MAX_DEPTH} levels")
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
        composed = list(yaml.compose_all(text, Loader=_YAML_LOADER))
        for node in composed:
            _refuse_duplicate_keys(path, node)
        return list(yaml.load_all(text, Loader=_YAML_LOADER))
    except PipelineFileError:
        raise
    except yaml.MarkedYAMLError as exc:
        where = f" (line {exc.problem_mark.line + 1})" if exc.problem_mark else ""
        raise PipelineFileError(f"{path}: not valid YAML: {exc.problem or exc.context}{where}") from None
    except Exception as exc:  # e.g. ValueError for a timestamp like 2001-13-45
        raise PipelineFileError(f"{path}: not valid YAML: {_short(str(exc))}") from None


def _refuse_duplicate_keys(path: str, node: yaml.Node | None) -> None:
    """YAML keeps the last of two equal keys silently: two steps with one name would be one.
    (Nesting is bounded before composing: the recursion is too.)"""
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:merge":  # `<<:` would merge keys past the check below
                raise PipelineFileError(
                    f"{path}: line {key.start_mark.line + 1}: uses a YAML merge key (<<): not allowed"
                )
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen:
                    raise PipelineFileError(
                        f"{path}: line {key.start_mark.line + 1}: {key.value!r} appears twice"
                    )
                seen.add(key.value)
            _refuse_duplicate_keys(path, value)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _refuse_duplicate_keys(path, item)


def _check_schema(path: str, document: Mapping[str, Any]) -> None:
    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        raise PipelineFileError(f"{path}: {_where(error.absolute_path)}{_what(error)}")


def _where(location: Iterable[Any]) -> str:
    parts = list(location)
    if parts[:1] == ["steps"] and len(parts) > 1:
        rest = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts[2:]).lstrip(".")
        return f"step {parts[1]!r}: " + (f"{rest}: " if rest else "")
    text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in parts).lstrip(".")
    return f"{text}: " if text else ""


def _what(error: jsonschema.ValidationError) -> str:
    """The problem in words a task author knows (the schema's descriptions), with the value."""
    instance: Any = error.instance
    value = _short(instance)
    kind: Any = error.validator
    expected: Any = error.validator_value
    rule: dict[str, Any] = error.schema if isinstance(error.schema, dict) else {}
    described = rule.get("description", "see the schema")
    if "propertyNames" in error.schema_path:
        return f"name {value} is not valid: {described}"
    if kind == "additionalProperties":
        extra = sorted(set(instance) - set(rule.get("properties", {})), key=str)
        return f"unknown key {_short(extra[0])}" if extra else error.message
    if kind == "required":
        missing = [k for k in expected if k not in instance]
        return f"missing {missing[0]!r}" if missing else error.message
    if kind in ("pattern", "oneOf") or (kind in ("maxLength", "minLength") and "description" in rule):
        return f"{value} is not valid: {described}"
    if kind == "enum":
        return f"{value} is not one of {', '.join(map(str, expected))}"
    if kind in ("maxProperties", "maxItems"):
        return f"more than {expected} entries"
    if kind in ("minProperties", "minItems"):
        return f"needs at least {expected} entry"
    if kind in ("minimum", "maximum"):
        return f"{value} is out of range ({rule.get('minimum', '')}..{rule.get('maximum', '')})"
    if kind == "type":
        kinds = [expected] if isinstance(expected, str) else list(expected)
        return f"{value} is not {' or '.join(_TYPE_NAMES.get(k, k) for k in kinds)}"
    return error.message.splitlines()[0][:200]


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _seconds(value: int | float | str) -> int:
    if isinstance(value, int | float):  # the schema's integer: 10.0 is one too
        return int(value)
    return int(value[:-1]) * _UNITS[value[-1]]


# ---------------------------------------------------------------- the graph


class _Builder:
    def __init__(self, path: str, document: Mapping[str, Any]) -> None:
        self.path = path
        self.document = document
        self.declared: dict[str, dict[str, Any]] = dict(document["steps"])
        self.matrices: dict[str, dict[str, list[Any]]] = dict(document.get("matrices", {}))

    def fail(self, step: str, problem: str) -> PipelineFileError:
        return PipelineFileError(
            f"{self.path}: step {step!r}: {problem}" if step else f"{self.path}: {problem}"
        )

    def build(self) -> PipelineGraph:
        order = self._order()
        ancestors = self._ancestors(order)
        variants = self._variants()
        self._check_expanded_size(variants)
        clusters = self._clusters(order, ancestors, variants)
        graph = PipelineGraph(
            file=self.path,
            name=str(self.document.get("name", "")),
            steps=[],
            max_parallel=int(self.document.get("max_parallel", MAX_DEFAULT_PARALLEL)),
            on_failure=str(self.document.get("on_failure", "stop")),
        )
        graph.env = {k: _text(v) for k, v in self.document.get("env", {}).items()}
        for name in order:
            spec = self.declared[name]
            matrix = spec.get("matrix", "")
            if RESERVED_STEP_NAMES.fullmatch(name):
                raise self.fail(
                    name,
                    "the name is reserved: fetch-tasks, cleanup and names ending in -down, "
                    "-retry<N> or -v<N> are steps the run adds itself",
                )
            if "select" in spec:
                if not matrix:
                    raise self.fail(name, "select needs a matrix (it picks one of the step's variants)")
                graph.selections[name] = Selection(
                    spec["select"]["metric"], spec["select"].get("goal", "max")
                )
            env = {k: _text(v) for k, v in spec.get("env", {}).items()}
            if sum(len(k) + len(v) for k, v in {**graph.env, **env}.items()) > MAX_ENV_BYTES:
                raise self.fail(name, f"env is larger than {MAX_ENV_BYTES // 1024} KB")
            env_from = {k: self._ref(name, v, ancestors) for k, v in spec.get("env_from", {}).items()}
            if any(not math.isfinite(float(c["value"])) for c in spec.get("when", [])):
                raise self.fail(name, "when: a value must be a finite number")
            when = [
                Condition(self._ref(name, c["metric"], ancestors), c["op"], float(c["value"]))
                for c in spec.get("when", [])
            ]
            for ref in [*env_from.values(), *(c.ref for c in when)]:
                self._check_ref_source(name, ref)
            if param := next((c.ref for c in when if c.ref.param), None):
                raise self.fail(
                    name, f"when: {str(param)!r} is a matrix value, not a metric: compare a metric"
                )
            timeout = _seconds(spec["timeout"]) if "timeout" in spec else 0
            if timeout > MAX_STEP_TIMEOUT_SECONDS:
                raise self.fail(name, f"timeout {spec['timeout']!r} is longer than 30 days")
            instances = variants[matrix] if matrix else [("", {})]
            if matrix:
                graph.groups[name] = [f"{name}-{v}" for v, _ in instances]
            for variant, params in instances:
                step_name = f"{name}-{variant}" if variant else name
                cluster = clusters.get(name, "")
                graph.steps.append(
                    GraphStep(
                        name=step_name,
                        task=spec["task"],
                        needs=self._needs(spec, matrix, variant, variants),
                        cluster=f"{cluster}{variant}" if cluster else "",
                        managed=bool(spec.get("managed", False)),
                        env=env,
                        env_from={k: self._same_variant(r, matrix, variant) for k, r in env_from.items()},
                        when=[
                            Condition(self._same_variant(c.ref, matrix, variant), c.op, c.value) for c in when
                        ],
                        timeout_seconds=timeout,
                        retries=int(spec.get("retries", 0)),
                        declared=name,
                        variant=variant,
                        params=dict(params),
                    )
                )
        if len(graph.steps) > MAX_GRAPH_STEPS:
            raise self.fail(
                "", f"{len(graph.steps)} steps once matrices are expanded: at most {MAX_GRAPH_STEPS}"
            )
        names = [s.name for s in graph.steps]
        if clash := next((n for n in names if names.count(n) > 1), None):
            raise self.fail("", f"step {clash!r} is also the name of a matrix variant: rename one")
        self._mark_launches(graph)
        return graph

    def _check_expanded_size(self, variants: Mapping[str, list[tuple[str, dict[str, str]]]]) -> None:
        """The expanded graph's steps and needs, counted before any of it is built."""

        def width(step: str) -> int:
            matrix = self.declared[step].get("matrix", "")
            return len(variants[matrix]) if matrix else 1

        steps = sum(width(name) for name in self.declared)
        if steps > MAX_GRAPH_STEPS:
            raise self.fail("", f"{steps} steps once matrices are expanded: at most {MAX_GRAPH_STEPS}")
        needs = 0
        for name, spec in self.declared.items():
            matrix = spec.get("matrix", "")
            for need in spec.get("needs", []):
                same = matrix and self.declared[need].get("matrix", "") == matrix
                needs += width(name) * (1 if same else width(need))
        if needs > MAX_GRAPH_NEEDS:
            raise self.fail("", f"{needs} needs once matrices are expanded: at most {MAX_GRAPH_NEEDS}")

    def _order(self) -> list[str]:
        """The declared steps in an order that respects `needs` (file order where free)."""
        for name, spec in self.declared.items():
            for need in spec.get("needs", []):
                if need == name:
                    raise self.fail(name, "needs itself")
                if need not in self.declared:
                    raise self.fail(name, f"needs {need!r}, which is not a step of this file")
        order: list[str] = []
        done: set[str] = set()
        while len(order) < len(self.declared):
            ready = [n for n, s in self.declared.items() if n not in done and set(s.get("needs", [])) <= done]
            if not ready:
                raise self.fail("", f"needs form a cycle: {' -> '.join(self._cycle(done))}")
            order.extend(ready)
            done.update(ready)
        return order

    def _cycle(self, done: set[str]) -> list[str]:
        path = [next(n for n in self.declared if n not in done)]
        while True:
            following = next(n for n in self.declared[path[-1]].get("needs", []) if n not in done)
            if following in path:
                return [*path[path.index(following) :], following]
            path.append(following)

    def _ancestors(self, order: list[str]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {}
        for name in order:
            needs = self.declared[name].get("needs", [])
            found[name] = set(needs).union(*(found[n] for n in needs)) if needs else set()
        return found

    def _variants(self) -> dict[str, list[tuple[str, dict[str, str]]]]:
        variants = {}
        for name, matrix in self.matrices.items():
            count = math.prod(len(values) for values in matrix.values())
            if count > MAX_VARIANTS:
                raise self.fail("", f"matrix {name!r} has {count} combinations: at most {MAX_VARIANTS}")
            combos = list(
                itertools.product(*([(k, _text(v)) for v in values] for k, values in matrix.items()))
            )
            variants[name] = [(f"v{n}", dict(combo)) for n, combo in enumerate(combos, 1)]
        for step, spec in self.declared.items():
            if spec.get("matrix") and spec["matrix"] not in self.matrices:
                raise self.fail(step, f"matrix {spec['matrix']!r} is not defined under `matrices:`")
        return variants

    def _clusters(
        self,
        order: list[str],
        ancestors: dict[str, set[str]],
        variants: Mapping[str, list[tuple[str, dict[str, str]]]],
    ) -> dict[str, str]:
        """Each declared step's cluster role; steps sharing one must follow one another."""
        clusters: dict[str, str] = {}
        for name in order:
            spec = self.declared[name]
            if spec.get("managed"):
                if "cluster" in spec:
                    raise self.fail(name, "a managed job runs on a cluster of its own: drop `cluster:`")
                continue
            role = spec.get("cluster") or name.replace("-", "")
            if not _CLUSTER.fullmatch(role):
                raise self.fail(
                    name,
                    "its name is too long for a cluster name: give it `cluster:` (at most 12 characters)",
                )
            clusters[name] = role
        by_role: dict[str, list[str]] = {}
        for name, role in clusters.items():
            by_role.setdefault(role, []).append(name)
        for role, users in by_role.items():
            implicit = [u for u in users if "cluster" not in self.declared[u]]
            if len(implicit) > 1:
                raise self.fail(
                    implicit[1],
                    f"its own cluster would be named {role!r}, as {implicit[0]!r}'s: give it `cluster:`",
                )
            for earlier, later in itertools.pairwise(users):
                if earlier not in ancestors[later]:
                    raise self.fail(
                        later,
                        f"shares cluster {role!r} with {earlier!r} but does not need it "
                        "(directly or through others)",
                    )
                if self.declared[earlier].get("matrix", "") != self.declared[later].get("matrix", ""):
                    raise self.fail(
                        later, f"shares cluster {role!r} with {earlier!r}, which has another matrix"
                    )
        for role, users in by_role.items():
            matrix = self.declared[users[0]].get("matrix", "")
            taken = [f"{role}{v}" for v, _ in variants.get(matrix, []) if f"{role}{v}" in by_role]
            if taken:
                raise self.fail(
                    users[0], f"a variant's cluster {taken[0]!r} is also a step's cluster: rename one"
                )
        return clusters

    def _ref(self, step: str, text: str, ancestors: dict[str, set[str]]) -> MetricRef:
        source, _, rest = text.partition(".")
        if source not in self.declared:
            raise self.fail(step, f"{text!r}: {source!r} is not a step of this file")
        if source not in ancestors[step]:
            raise self.fail(
                step, f"{text!r}: reads step {source!r}, which it does not need (directly or through others)"
            )
        if rest.startswith("matrix."):
            return MetricRef(source, param=rest.removeprefix("matrix."))
        return MetricRef(source, metric=rest)

    def _check_ref_source(self, step: str, ref: MetricRef) -> None:
        source = self.declared[ref.step]
        matrix = source.get("matrix", "")
        if ref.param and (not matrix or ref.param not in self.matrices[matrix]):
            raise self.fail(step, f"{str(ref)!r}: {ref.step!r} has no matrix value {ref.param!r}")
        shared = matrix and matrix == self.declared[step].get("matrix", "")
        if matrix and not shared and "select" not in source:
            raise self.fail(
                step, f"{str(ref)!r}: {ref.step!r} has variants: give it `select:` to say which one"
            )

    def _same_variant(self, ref: MetricRef, matrix: str, variant: str) -> MetricRef:
        """In a variant, a step of the same matrix means the same variant of it."""
        if variant and self.declared[ref.step].get("matrix", "") == matrix:
            return MetricRef(f"{ref.step}-{variant}", ref.metric, ref.param)
        return ref

    def _needs(
        self,
        spec: Mapping[str, Any],
        matrix: str,
        variant: str,
        variants: Mapping[str, list[tuple[str, dict[str, str]]]],
    ) -> list[str]:
        needs = []
        for need in spec.get("needs", []):
            need_matrix = self.declared[need].get("matrix", "")
            if not need_matrix:
                needs.append(need)
            elif need_matrix == matrix:
                needs.append(f"{need}-{variant}")
            else:
                needs.extend(f"{need}-{v}" for v, _ in variants[need_matrix])
        return needs

    @staticmethod
    def _mark_launches(graph: PipelineGraph) -> None:
        for users in graph.cluster_users().values():
            for later in users[1:]:
                graph.step(later).launches = False


# ---------------------------------------------------------------- SkyPilot's multi-task YAML


def _skypilot_chain(path: str, documents: list[Any]) -> PipelineGraph:
    """Each task of a SkyPilot pipeline YAML as a step on a cluster of its own, one after another."""
    tasks = documents[1:]
    if len(tasks) > MAX_GRAPH_STEPS:
        raise PipelineFileError(f"{path}: {len(tasks)} tasks: at most {MAX_GRAPH_STEPS}")
    if bad := next((n for n, task in enumerate(tasks, 2) if not isinstance(task, dict)), None):
        raise PipelineFileError(f"{path}: document {bad} is not a task (a YAML mapping)")
    # A task's step is its name, lowercased, at most 24 characters; `task-<n>` where that name is
    # missing, taken twice, reserved, or looks like another task's `task-<n>`.
    wanted = [
        re.sub(r"[^a-z0-9]+", "-", str(t.get("name", "")).lower()).strip("-")[:24].strip("-") for t in tasks
    ]
    names = [
        name
        if name[:1].isalpha()
        and wanted.count(name) == 1
        and not RESERVED_STEP_NAMES.fullmatch(name)
        and not re.fullmatch(r"task-[0-9]+", name)
        else f"task-{number}"
        for number, name in enumerate(wanted, 1)
    ]
    steps: list[GraphStep] = []
    for number, name in enumerate(names, 1):
        steps.append(
            GraphStep(
                name=name,
                task=path,
                document=number,
                needs=[steps[-1].name] if steps else [],
                cluster=f"task{number}",
                declared=name,
            )
        )
    header = documents[0] or {}
    return PipelineGraph(file=path, name=str(header.get("name", "")), steps=steps, max_parallel=1)
