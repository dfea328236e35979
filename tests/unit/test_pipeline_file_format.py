"""The pipeline file format: what it expresses, and one line for every problem (task-author input)."""

from __future__ import annotations

import json
import time
import tracemalloc
from typing import Any

import jsonschema
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skypilot_temporal.pipeline_file.graph import PipelineGraph, dependents, resolve, selected_variant
from skypilot_temporal.pipeline_file.load import MAX_GRAPH_STEPS, PipelineFileError, load_pipeline, schema
from testing import ROOT


def load(document: dict[str, Any] | str) -> PipelineGraph:
    text = document if isinstance(document, str) else yaml.safe_dump(document)
    return load_pipeline("pipeline.yaml", text)


def refused(document: dict[str, Any] | str) -> str:
    with pytest.raises(PipelineFileError) as raised:
        load(document)
    message = str(raised.value)
    assert "\n" not in message and message.startswith("pipeline.yaml: "), message
    return message


def test_the_schema_is_valid_and_shipped_with_the_package():
    jsonschema.Draft202012Validator.check_schema(schema())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "pipeline_file/pipeline.schema.json" in pyproject


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "steps:\n  a: {task: x, needs: [b]}\n  b: {task: x, needs: [a]}\n",
            "needs form a cycle: a -> b -> a",
        ),
        ("steps:\n  a: {task: x, needs: [a]}\n", "step 'a': needs itself"),
        ("steps:\n  a: {task: x, needs: [zz]}\n", "step 'a': needs 'zz', which is not a step of this file"),
        ("steps:\n  a: {task: x, foo: 1}\n", "step 'a': unknown key 'foo'"),
        ("stages: {}\nsteps:\n  a: {task: x}\n", "unknown key 'stages'"),
        ("steps:\n  A B: {task: x}\n", "steps: name 'A B' is not valid: lowercase letters"),
        ("steps:\n  a: {task: x}\n  a: {task: y}\n", "line 3: 'a' appears twice"),
        ("x: &a {task: y}\nsteps:\n  a: *a\n", "uses a YAML alias (*a)"),
        ("steps:\n  a: {needs: []}\n", "step 'a': missing 'task'"),
        ("steps:\n  a: {task: x, needs: b}\n", "step 'a': needs: 'b' is not a list"),
        ("steps:\n  a: {task: x, timeout: 0}\n", "step 'a': timeout: 0 is out of range (1..2592000)"),
        ("steps:\n  a: {task: x, timeout: 2w}\n", "step 'a': timeout: '2w' is not valid"),
        ("steps:\n  a: {task: x, retries: 9}\n", "step 'a': retries: 9 is out of range (0..5)"),
        ("max_parallel: 0\nsteps:\n  a: {task: x}\n", "max_parallel: 0 is out of range (1..32)"),
        ("on_failure: ignore\nsteps:\n  a: {task: x}\n", "on_failure: 'ignore' is not one of stop, continue"),
        (
            "steps:\n  a: {task: x, managed: true, cluster: c}\n",
            "step 'a': a managed job runs on a cluster of its own",
        ),
        (
            "steps:\n  very-long-step-name: {task: x}\n",
            "step 'very-long-step-name': its name is too long for a cluster",
        ),
        (
            "steps:\n  a-b: {task: x}\n  ab: {task: x}\n",
            "step 'ab': its own cluster would be named 'ab', as 'a-b''s",
        ),
        (
            "steps:\n  a: {task: x, cluster: c}\n  b: {task: x, cluster: c}\n",
            "step 'b': shares cluster 'c' with 'a' but",
        ),
        (
            "steps:\n  a: {task: x}\n  b: {task: x, env_from: {X: a.m}}\n",
            "step 'b': 'a.m': reads step 'a', which it does",
        ),
        (
            "steps:\n  a: {task: x}\n  b: {task: x, needs: [a], env_from: {X: z.m}}\n",
            "'z.m': 'z' is not a step",
        ),
        (
            "steps:\n  a: {task: x}\n  b: {task: x, needs: [a], when: [{metric: a.m, op: '=~', value: 1}]}\n",
            "step 'b': when[0].op: '=~' is not one of",
        ),
        ("steps:\n  a: {task: x, matrix: m}\n", "step 'a': matrix 'm' is not defined"),
        ("steps:\n  a: {task: x, select: {metric: acc}}\n", "step 'a': select needs a matrix"),
        (
            "matrices: {m: {LR: [1, 2]}}\nsteps:\n  a: {task: x, matrix: m}\n"
            "  b: {task: x, needs: [a], env_from: {X: a.acc}}\n",
            "step 'b': 'a.acc': 'a' has variants: give it `select:`",
        ),
        (
            "matrices: {m: {LR: [1, 2]}}\nsteps:\n  a: {task: x, matrix: m, select: {metric: acc}}\n"
            "  b: {task: x, needs: [a], env_from: {X: a.matrix.BS}}\n",
            "'a.matrix.BS': 'a' has no matrix value 'BS'",
        ),
        (
            "matrices: {m: {A: [1, 2, 3, 4, 5, 6, 7, 8], B: [1, 2, 3, 4, 5, 6, 7, 8, 9]}}\n"
            "steps:\n  a: {task: x, matrix: m}\n",
            "matrix 'm' has 72 combinations: at most 64",
        ),
        (
            "matrices: {m: {A: [1, 2]}}\nsteps:\n  a: {task: x, matrix: m}\n"
            "  a-v1: {task: x, managed: true}\n",
            "step 'a-v1': the name is reserved",
        ),
        ("run: echo hi\nresources: {cpus: 1}\n", "is a single SkyPilot task, not a pipeline"),
        ("- a\n- b\n", "not a pipeline file"),
        ("steps: [\n", "not valid YAML: "),
        ("name: c\n---\n- not a task\n", "document 2 is not a task"),
    ],
)
def test_each_problem_is_one_line_naming_the_file_the_step_and_the_problem(text: str, message: str):
    assert message in refused(text)


def test_a_graph_larger_than_the_bound_is_refused():
    matrices = {f"m{n}": {"A": list(range(64))} for n in range(4)}
    steps = {f"s{n}": {"task": "x", "matrix": f"m{n}"} for n in range(4)}
    assert f"256 steps once matrices are expanded: at most {MAX_GRAPH_STEPS}" in refused(
        {"matrices": matrices, "steps": steps}
    )


def test_selection_picks_the_best_reported_variant_and_resolves_its_values():
    graph = load(
        {
            "matrices": {"lr": {"LR": [0.1, 0.01, 0.001]}},
            "steps": {
                "t": {"task": "x", "matrix": "lr", "select": {"metric": "loss", "goal": "min"}},
                "r": {"task": "x", "needs": ["t"], "env_from": {"L": "t.loss", "LR": "t.matrix.LR"}},
            },
        }
    )
    metrics = {"t-v1": {"loss": 0.5}, "t-v2": {"loss": 0.2}, "t-v3": {}}
    assert selected_variant(graph, "t", metrics) == "t-v2"
    report = graph.step("r")
    assert report.needs == ["t-v1", "t-v2", "t-v3"]
    assert resolve(graph, report.env_from["L"], metrics) == (0.2, "t-v2")
    assert resolve(graph, report.env_from["LR"], metrics) == ("0.01", "t-v2")
    assert resolve(graph, report.env_from["L"], {}) == (None, "")


def test_steps_sharing_a_cluster_launch_once_then_exec():
    graph = load(
        {
            "steps": {
                "train": {"task": "t"},
                "eval": {"task": "e", "needs": ["train"], "cluster": "train"},
                "export": {"task": "x", "needs": ["eval"], "cluster": "train"},
            }
        }
    )
    assert [(s.name, s.cluster, s.launches) for s in graph.steps] == [
        ("train", "train", True),
        ("eval", "train", False),
        ("export", "train", False),
    ]


def test_timeouts_take_seconds_or_units():
    graph = load({"steps": {"a": {"task": "x", "timeout": "90m"}, "b": {"task": "x", "timeout": 30}}})
    assert [s.timeout_seconds for s in graph.steps] == [5400, 30]
    assert (
        load("steps:\n  a: {task: x, timeout: 10.0}\n").steps[0].timeout_seconds == 10
    )  # the schema's integer


def test_a_skypilot_multi_task_yaml_is_a_chain_of_its_tasks():
    text = "name: p\n---\nname: Prep Data\nrun: a\n---\nrun: b\n---\nname: train\nrun: c\n"
    graph = load_pipeline("chain.yaml", text)
    assert [(s.name, s.document, s.needs, s.cluster) for s in graph.steps] == [
        ("prep-data", 1, [], "task1"),
        ("task-2", 2, ["prep-data"], "task2"),
        ("train", 3, ["task-2"], "task3"),
    ]


# ---------------------------------------------------------------- generated graphs

NAMES = [f"s{n}" for n in range(12)]


@st.composite
def dags(draw: st.DrawFn) -> dict[str, Any]:
    """A valid pipeline file: each step needs some of the steps before it."""
    count = draw(st.integers(1, len(NAMES)))
    steps: dict[str, Any] = {}
    for index in range(count):
        earlier = NAMES[:index]
        needs = draw(st.lists(st.sampled_from(earlier), unique=True, max_size=3)) if earlier else []
        steps[NAMES[index]] = {"task": "t.yaml", **({"needs": needs} if needs else {})}
    order = draw(st.permutations(list(steps)))  # the file's order need not be the graph's
    return {"max_parallel": draw(st.integers(1, 4)), "steps": {n: steps[n] for n in order}}


@given(dags())
@settings(max_examples=200, deadline=None)
def test_a_valid_graph_expands_in_an_order_that_respects_its_needs(document: dict[str, Any]):
    graph = load(document)
    seen: set[str] = set()
    for step in graph.steps:
        assert set(step.needs) <= seen
        seen.add(step.name)
    assert seen == set(document["steps"])
    for name in seen:
        assert name not in dependents(graph, [name])


@given(
    dags(),
    st.sampled_from(["cycle", "unknown need", "unknown key", "bad name", "bad type"]),
    st.data(),
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_broken_graph_is_refused_in_one_line(document: dict[str, Any], breakage: str, data: st.DataObject):
    steps = document["steps"]
    names = list(steps)
    victim = data.draw(st.sampled_from(names))
    if breakage == "cycle":
        other = data.draw(st.sampled_from(names))
        steps[other].setdefault("needs", [])
        if victim not in steps[other]["needs"]:
            steps[other]["needs"].append(victim)
        # victim needs other too: a cycle (or a step needing itself)
        steps[victim]["needs"] = [*[n for n in steps[victim].get("needs", []) if n != other], other]
    elif breakage == "unknown need":
        steps[victim]["needs"] = ["nowhere"]
    elif breakage == "unknown key":
        steps[victim]["depends_on"] = []
    elif breakage == "bad name":
        steps["Bad Name"] = steps.pop(victim)
    else:
        steps[victim]["needs"] = 7
    refused(document)


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=20,
    )
)
@settings(max_examples=300, deadline=None)
def test_any_yaml_is_a_graph_or_one_line_never_a_traceback(document: Any):
    try:
        load_pipeline("pipeline.yaml", json.dumps({"steps": document}))
    except PipelineFileError as err:
        assert "\n" not in str(err) and str(err).startswith("pipeline.yaml: ")


@pytest.mark.parametrize(
    "text, message",
    [
        ("steps: " + "[" * 50_000 + "]" * 50_000 + "\n", "nested deeper than 32 levels"),
        ("steps:\n  a: {task: x, 1: y, foo: z}\n", "step 'a': unknown key"),
        (
            "steps:\n  a: {task: x}\n  b: {task: x, needs: [a], when: [{metric: a.m, op: '>', value: "
            + "9" * 401
            + "}]}\n",
            "step 'b'",
        ),
        (
            "steps:\n  a: {task: x, timeout: 9999999d}\n",
            "step 'a': timeout '9999999d' is longer than 30 days",
        ),
        ("steps:\n  fetch-tasks: {task: x}\n", "step 'fetch-tasks': the name is reserved"),
        ("steps:\n  train-down: {task: x}\n", "step 'train-down': the name is reserved"),
        ("steps:\n  train-retry1: {task: x, cluster: t}\n", "step 'train-retry1': the name is reserved"),
        (
            "matrices: {m: {LR: [1, 2]}}\nsteps:\n  a: {task: x, matrix: m, select: {metric: acc}}\n"
            "  b: {task: x, needs: [a], when: [{metric: a.matrix.LR, op: '<', value: 2}]}\n",
            "step 'b': when: 'a.matrix.LR' is a matrix value, not a metric",
        ),
        (
            "steps:\n  a: {task: x}\n"
            "  b: {task: x, needs: [a], when: [{metric: a.m, op: '>', value: .nan}]}\n",
            "step 'b': when: a value must be a finite number",
        ),
        ("steps:\n  <<: {a: {task: x}}\n  a: {task: y}\n", "line 2: uses a YAML merge key (<<): not allowed"),
        (
            "steps:\n  a: {task: x, needs: [" + ", ".join(["b"] * 60_000) + "]}\n",
            "more than 50000 YAML values",
        ),
    ],
)
def test_hostile_files_are_refused_in_one_line(text: str, message: str):
    assert message in refused(text)


def test_a_matrix_too_large_is_refused_before_it_is_built():
    values = list(range(64))
    started = time.monotonic()
    matrix = {f"K{n}": list(values) for n in range(8)}
    message = refused({"matrices": {"m": matrix}, "steps": {"a": {"task": "x", "matrix": "m"}}})
    assert f"has {64**8} combinations: at most 64" in message
    assert time.monotonic() - started < 1


def test_a_graph_that_expands_to_too_many_steps_or_needs_is_refused_before_it_is_built():
    """16 KB of file: 100 steps of two 64-variant matrices, each of the second needing all 32 of
    the first. Built before it was counted, it took 700 MB; counted first, almost nothing."""
    values = list(range(64))
    first = {f"s{n}": {"task": "x", "matrix": "m1"} for n in range(32)}
    second = {f"t{n}": {"task": "x", "matrix": "m2", "needs": sorted(first)} for n in range(68)}
    document = {"matrices": {"m1": {"X": values}, "m2": {"Y": list(values)}}, "steps": {**first, **second}}
    tracemalloc.start()
    try:
        message = refused(document)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "6400 steps once matrices are expanded: at most 200" in message
    assert peak < 30 * 2**20, f"{peak / 2**20:.0f} MB"
    # Within the step bound, needs across matrices multiply: 3 steps of 64 each needing all 64.
    fan = {"a": {"task": "x", "matrix": "m1"}, "b": {"task": "x", "matrix": "m2", "needs": ["a"]}}
    fan["c"] = {"task": "x", "matrix": "m3", "needs": ["a", "b"]}
    matrices = {name: {"V": list(range(64))} for name in ("m1", "m2", "m3")}
    assert "12288 needs once matrices are expanded: at most 4096" in refused(
        {"matrices": matrices, "steps": fan}
    )


def test_env_sent_again_with_every_attempt_is_bounded_by_what_history_holds():
    """200 steps of 60 KB env each, 6 attempts each: 70 MB, and Temporal ends a run at 50 MB."""
    env = {f"E{n}": "x" * 1000 for n in range(60)}
    steps = {f"s{n}": {"task": "x", "retries": 5, "matrix": "m"} for n in range(50)}
    document = {"on_failure": "continue", "env": env, "matrices": {"m": {"V": [1, 2, 3, 4]}}, "steps": steps}
    assert "sent again with every attempt, comes to 70528 KB: at most 8192 KB" in refused(document)
    document["env"] = {f"E{n}": "x" * 1000 for n in range(30)}
    for step in steps.values():
        step["retries"] = 0
    assert len(load(document).steps) == 200  # 30 KB once each: 6 MB


def test_an_expanded_graph_too_large_for_history_is_refused():
    env = {f"E{n}": "x" * 1000 for n in range(60)}
    steps = {f"s{n}": {"task": "x", "matrix": "m", "env": dict(env)} for n in range(3)}
    message = refused({"matrices": {"m": {"A": list(range(64))}}, "steps": steps})
    assert "KB of env and settings: at most 1024 KB" in message


def test_chain_step_names_are_unique_whatever_the_tasks_are_named():
    text = (
        "name: c\n---\nname: task-3\nrun: a\n---\nrun: b\n---\nrun: c\n---\n"
        "name: Prep\nrun: d\n---\nname: prep\nrun: e\n"
    )
    graph = load_pipeline("chain.yaml", text)
    names = [s.name for s in graph.steps]
    assert names == ["task-1", "task-2", "task-3", "task-4", "task-5"]
    assert [s.document for s in graph.steps] == [1, 2, 3, 4, 5]


yaml_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), st.booleans()), inner, max_size=4)
    ),
    max_leaves=30,
)


@given(
    st.dictionaries(
        st.sampled_from(["steps", "matrices", "env", "max_parallel", "on_failure", "name", "x"]),
        yaml_values,
        max_size=5,
    ),
    st.integers(0, 2),
)
@settings(max_examples=400, deadline=None)
def test_any_document_is_a_graph_or_one_line_never_a_traceback(
    document: dict[str, Any], extra_documents: int
):
    text = yaml.safe_dump(document) + "---\n{}\n" * extra_documents
    try:
        load_pipeline("pipeline.yaml", text)
    except PipelineFileError as err:
        assert "\n" not in str(err) and str(err).startswith("pipeline.yaml: ")


# ---------------------------------------------------------------- edges (mutation pass)


def test_comparisons_at_equality_and_across():
    from skypilot_temporal.pipeline_file.graph import Condition, MetricRef

    ref = MetricRef("a", "m")
    holds = {
        op: [Condition(ref, op, 0.5).holds(v) for v in (0.4, 0.5, 0.6)]
        for op in (">", ">=", "<", "<=", "==", "!=")
    }
    assert holds == {
        ">": [False, False, True],
        ">=": [False, True, True],
        "<": [True, False, False],
        "<=": [True, True, False],
        "==": [False, True, False],
        "!=": [True, False, True],
    }
    assert Condition(ref, ">=", 0.5).holds(None) is False


def test_a_steps_env_is_the_files_then_its_own_then_the_runs_then_its_matrix_values():
    graph = load(
        {
            "env": {"A": "file", "B": "file", "C": "file", "LR": "file"},
            "matrices": {"m": {"LR": [0.1]}},
            "steps": {"t": {"task": "x", "matrix": "m", "env": {"B": "step", "C": "step"}}},
        }
    )
    env = graph.env_of(graph.step("t-v1"), {"C": "run", "LR": "run"})
    assert env == {"A": "file", "B": "step", "C": "run", "LR": "0.1", "VARIANT_ID": "v1"}


def nested(levels: int) -> str:
    return "steps:\n  a: {task: x}\nx: " + "[" * (levels - 1) + "]" * (levels - 1) + "\n"


def test_bounds_hold_exactly_at_their_limits():
    # The document is one level; `x` (an unknown key, refused after) holds the rest.
    assert "nested deeper" not in refused(nested(32))
    assert "nested deeper than 32 levels" in refused(nested(33))
    load("steps:\n  a: {task: x, timeout: 30d}\n")
    assert "longer than 30 days" in refused("steps:\n  a: {task: x, timeout: 31d}\n")
    matrices = {"m": {"A": list(range(50))}, "n": {"A": list(range(50))}}
    two_hundred = {f"s{k}": {"task": "x", "matrix": "m" if k % 2 else "n"} for k in range(4)}
    assert len(load({"matrices": matrices, "steps": two_hundred}).steps) == 200
    one_more = {**two_hundred, "extra": {"task": "x"}}
    assert "201 steps once matrices are expanded: at most 200" in refused(
        {"matrices": matrices, "steps": one_more}
    )


def test_yaml_values_are_counted_exactly_up_to_their_bound():
    """Nine values besides the items of `x` (the document, its keys, `steps`, `a`, ...): 49_991
    items make 50_000, refused only after, for the unknown key; one more is refused while parsing."""

    def with_items(count: int) -> str:
        return "steps:\n  a: {task: x}\nx: [" + ", ".join(["1"] * count) + "]\n"

    assert "unknown key 'x'" in refused(with_items(49_991))
    assert "more than 50000 YAML values" in refused(with_items(49_992))


def test_needs_are_counted_exactly_up_to_their_bound_within_a_matrix_and_across():
    """63 x 64 needs across two matrices, then 64 within one (a variant needs its own): 4096, the
    bound; one more, between two plain steps, is refused."""
    matrices = {"m1": {"V": list(range(64))}, "m2": {"V": list(range(63))}}
    steps: dict[str, Any] = {
        "a": {"task": "x", "matrix": "m1"},
        "b": {"task": "x", "matrix": "m2", "needs": ["a"]},
        "e": {"task": "x", "matrix": "m1", "needs": ["a"]},
    }
    graph = load({"matrices": matrices, "steps": steps})
    assert sum(len(s.needs) for s in graph.steps) == 4096
    steps |= {"d": {"task": "x"}, "c": {"task": "x", "needs": ["d"]}}
    assert "4097 needs once matrices are expanded: at most 4096" in refused(
        {"matrices": matrices, "steps": steps}
    )


def test_env_over_every_attempt_is_accepted_at_exactly_its_bound():
    """64 KB of file env (16 values of 4 KB, the most one holds) for 32 steps of 4 attempts: 8 MB."""
    env = {f"E{n:02}": "x" * 4093 for n in range(16)}
    steps = {f"s{n}": {"task": "x", "retries": 3} for n in range(32)}
    assert len(load({"env": env, "steps": steps}).steps) == 32
    steps["one-more"] = {"task": "x"}
    assert "comes to 8256 KB: at most 8192 KB" in refused({"env": env, "steps": steps})


@pytest.mark.parametrize("name", ["cleanup", "fetch-tasks", "train-down", "train-retry2", "train-v1"])
def test_the_runs_own_step_names_are_reserved(name: str):
    assert f"step {name!r}: the name is reserved" in refused({"steps": {name: {"task": "x"}}})


def test_a_step_beyond_a_failed_chain_is_skipped_naming_the_step_it_needs():
    graph = load(
        {
            "steps": {
                "a": {"task": "x"},
                "b": {"task": "x", "needs": ["a"]},
                "c": {"task": "x", "needs": ["b"]},
            }
        }
    )
    assert dependents(graph, ["a"]) == {"b", "c"}
