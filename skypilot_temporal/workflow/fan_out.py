"""Fan-out: run variants of a pipeline as child workflows, at most `max_parallel` at once.

Each variant is a child workflow with its own id ("<parent id>-<variant id>"), so its own
clusters and its own page in the Web UI, linked from the parent's history. A cancel of the
parent cancels every running child, and waits for each to clean up; a terminated parent's
children get a cancel request too (they never outlive it with clusters up).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ApplicationError, ChildWorkflowError, is_cancelled_exception

with workflow.unsafe.imports_passed_through():
    from skypilot_temporal.bounds import MAX_VARIANT_ERROR_CHARS, MAX_VARIANT_METRICS
    from skypilot_temporal.errors import one_line
    from skypilot_temporal.payloads import PipelineResult, VariantProgress
    from skypilot_temporal.workflow.pipeline import Pipeline


async def run_variants(
    pipeline: Pipeline,
    child_run: Callable[..., Any],
    inputs: Sequence[tuple[VariantProgress, Any]],
    max_parallel: int,
    fail_fast: bool = False,
    select_metric: str = "",
) -> None:
    """Run `child_run` once per (variant, input), bounded; record how each went in its variant
    (its row keeps `select_metric` and a few more of its metrics, and a short error).

    A failed variant does not fail the run unless every variant fails, or `fail_fast` is set
    (then the first failure cancels the others and fails the run).
    """
    slots = asyncio.Semaphore(max_parallel)
    pipeline.board.search.step("variants")
    parent_id = workflow.info().workflow_id
    failed_fast = False

    async def run_one(variant: VariantProgress, input: Any) -> None:
        nonlocal failed_fast
        async with slots:
            if failed_fast:  # a slot freed by the failure that stops the sweep: start nothing
                return
            variant.workflow_id = f"{parent_id}-{variant.variant_id}"
            variant.status = "running"
            pipeline.board.redraw()
            started = workflow.now()
            try:
                result: PipelineResult = await workflow.execute_child_workflow(
                    child_run,
                    input,
                    id=variant.workflow_id,
                    parent_close_policy=workflow.ParentClosePolicy.REQUEST_CANCEL,
                    search_attributes=pipeline.board.search.for_child(),
                    static_summary=f"variant {variant.variant_id}: "
                    + " ".join(f"{k}={v}" for k, v in variant.params.items()),
                )
                variant.status = "succeeded"
                reported: dict[str, float] = {}
                for step in result.steps:
                    reported.update(step.metrics)
                variant.metrics = row_metrics(reported, select_metric)
            except asyncio.CancelledError:
                variant.status = "cancelled"
                raise
            except Exception as err:  # the child failed, was cancelled, or could not start
                cause = err.cause if isinstance(err, ChildWorkflowError) and err.cause else err
                variant.status = "cancelled" if is_cancelled_exception(err) else "failed"
                variant.error = one_line(str(cause), MAX_VARIANT_ERROR_CHARS)
                if fail_fast and variant.status == "failed":
                    failed_fast = True
                    raise ApplicationError(
                        f"variant {variant.variant_id} failed (fail-fast): {variant.error}",
                        type="VariantFailed",
                        non_retryable=True,
                    ) from None
            finally:
                variant.duration_seconds = round((workflow.now() - started).total_seconds(), 3)
                pipeline.board.redraw()

    running = [asyncio.create_task(run_one(variant, input)) for variant, input in inputs]
    try:
        await asyncio.gather(*running)
    except BaseException:  # a cancel of the run, or fail-fast: stop the others, wait for them
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        raise
    failed = [v for v, _ in inputs if v.status == "failed"]
    if failed and len(failed) == len(inputs):
        raise ApplicationError(
            f"all {len(failed)} variants failed; {failed[0].variant_id}: {failed[0].error}",
            type="AllVariantsFailed",
            non_retryable=True,
        )


def row_metrics(metrics: dict[str, float], select_metric: str) -> dict[str, float]:
    """The metrics a variant's row keeps: `select_metric` first, at most MAX_VARIANT_METRICS (the
    sweep's result and progress hold a row per variant; each child's own result has them all)."""
    names = [select_metric] if select_metric in metrics else []
    names += [name for name in metrics if name != select_metric]
    return {name: metrics[name] for name in names[:MAX_VARIANT_METRICS]}


def running_variants(variants: Sequence[VariantProgress]) -> list[str]:
    """The workflow ids of the variants still running (a failed one may be keeping its clusters)."""
    return [v.workflow_id for v in variants if v.status == "running" and v.workflow_id]


async def pass_release_to_variants(variants: Sequence[VariantProgress]) -> list[str]:
    """Pass the `release_clusters` signal on to the variants still running; one that has just
    ended is no error. The workflow ids it signalled."""
    running = running_variants(variants)
    signals = (workflow.get_external_workflow_handle(i).signal("release_clusters") for i in running)
    await asyncio.gather(*signals, return_exceptions=True)
    return running


def best_variant(variants: Sequence[VariantProgress], metric: str, direction: str) -> VariantProgress | None:
    """The succeeded variant with the highest (`max`) or lowest (`min`) `metric`, if any has it."""
    scored = [v for v in variants if v.status == "succeeded" and metric in v.metrics]
    if not scored:
        return None
    pick = max if direction == "max" else min
    return pick(scored, key=lambda v: v.metrics[metric])
