"""What payload encryption costs per pipeline step: encode + decode of one step's payloads.

    .venv/bin/python -m bench.codec_bench     # from the repository root

One step of SkyPilotWorkflow puts about ten payloads through the codec: the activity input
(LaunchInput with a ~3 KB task YAML and env overrides), its summary, heartbeat details
(JobProgress), the StepResult with a 4 KB log tail, and the progress query the starter polls.
Each is encrypted once where it is written and decrypted where it is read; this measures both
with AES-256-GCM (skypilot_temporal/trust/codec.py), in process, no server. Goal: under 1 ms per step.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

import temporalio.converter
from temporalio.api.common.v1 import Payload

from skypilot_temporal.payloads import (
    JobProgress,
    LaunchInput,
    PipelineProgress,
    StepProgress,
    StepResult,
    TaskSpec,
)
from skypilot_temporal.trust.codec import EncryptionCodec

GOAL_MS = 1.0
BENCH_KEYS = {"bench-new": bytes(range(32)), "bench-old": bytes(range(32, 64))}


def step_payloads() -> list[Payload]:
    """The payloads one launch step writes, at realistic sizes (JSON, as the default converter makes)."""
    yaml_text = ("# train task\n" + "run: |\n" + "  python train.py --epochs 3 --lr 0.001\n" * 80)[:3072]
    log_tail = "".join(f"(train, pid=4242) epoch {i} step 100 loss 0.{i:04d}\n" for i in range(200))[:4096]
    task = TaskSpec(
        step="train",
        job_name="skypilot-3fa2b1c9-1a2b3c4d-train",
        yaml_text=yaml_text,
        env_overrides={"EPOCHS": "3", "LR": "0.001", "DATASET": "s3://bucket/data/v7"},
        secret_names=["HF_TOKEN"],
        checkout_name="skypilot-3fa2b1c9/01a20111",
        repo_url="https://github.com/example/ml-tasks",
        commit_sha="8476c58b2953" * 3,
    )
    steps = [
        StepProgress(name, f"launch {name} on skypilot-3fa2b1c9-{name}", "succeeded", duration_seconds=40.0)
        for name in ("fetch-tasks", "preprocess", "preprocess-down", "train", "eval", "train-down")
    ]
    values: list[Any] = [
        LaunchInput(cluster_name="skypilot-3fa2b1c9-train", task=task, infra="slurm"),
        "launch train on skypilot-3fa2b1c9-train",  # the activity summary (user metadata)
        *(
            JobProgress(
                phase="running",
                cluster_name="skypilot-3fa2b1c9-train",
                job_name=task.job_name,
                request_id="a1b2c3d4-" * 4,
                job_id=1,
                last_log_line=f"(train, pid=4242) epoch {i} step 100 loss 0.0{i}",
            )
            for i in range(6)
        ),
        StepResult(
            step="train",
            cluster_name="skypilot-3fa2b1c9-train",
            job_id=1,
            job_status="SUCCEEDED",
            exit_code=0,
            duration_seconds=36.2,
            log_tail=log_tail,
        ),
        PipelineProgress("running", "8476c58b2953", steps, ["skypilot-3fa2b1c9-train"]),
    ]
    return temporalio.converter.DataConverter.default.payload_converter.to_payloads(values)


async def _time_per_step(codec: EncryptionCodec, payloads: list[Payload], steps: int) -> tuple[float, float]:
    """Wall and CPU milliseconds per step (CPU time is what a busy machine cannot inflate)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(steps):
        decoded = await codec.decode(await codec.encode(payloads))
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    assert decoded == payloads
    return wall / steps * 1000.0, cpu / steps * 1000.0


async def _measure(steps: int, repeats: int) -> dict[str, Any]:
    codec = EncryptionCodec(BENCH_KEYS)
    payloads = step_payloads()
    encrypted = await codec.encode(payloads)
    await _time_per_step(codec, payloads, 50)  # warm up
    samples = [await _time_per_step(codec, payloads, steps) for _ in range(repeats)]
    wall_samples = [wall for wall, _ in samples]
    converter = temporalio.converter.DataConverter.default.payload_converter
    started = time.perf_counter()
    for _ in range(steps):
        converter.from_payloads(payloads)
    json_ms = (time.perf_counter() - started) / steps * 1000.0
    ms = statistics.median(wall_samples)
    return {
        "payloads_per_step": len(payloads),
        "plain_bytes_per_step": sum(p.ByteSize() for p in payloads),
        "encrypted_bytes_per_step": sum(p.ByteSize() for p in encrypted),
        "ms_per_step": ms,
        "ms_per_step_max": max(wall_samples),
        "cpu_ms_per_step": statistics.median(cpu for _, cpu in samples),
        "us_per_payload": ms * 1000.0 / len(payloads),
        "json_decode_ms_per_step": json_ms,
        "goal_ms": GOAL_MS,
        "met": ms < GOAL_MS,
    }


def measure(steps: int = 2000, repeats: int = 5) -> dict[str, Any]:
    """Median ms to encrypt and decrypt one step's payloads (over `repeats` runs of `steps` steps)."""
    return asyncio.run(_measure(steps, repeats))


def main() -> None:
    result = measure()
    overhead = result["encrypted_bytes_per_step"] - result["plain_bytes_per_step"]
    rows = [
        ("payloads per step", f"{result['payloads_per_step']}"),
        (
            "bytes per step (plain -> encrypted)",
            f"{result['plain_bytes_per_step']} -> {result['encrypted_bytes_per_step']} (+{overhead})",
        ),
        (
            "encode + decode per step",
            f"{result['ms_per_step']:.3f} ms (worst run {result['ms_per_step_max']:.3f})",
        ),
        ("CPU time per step", f"{result['cpu_ms_per_step']:.3f} ms"),
        ("per payload", f"{result['us_per_payload']:.1f} us"),
        ("for scale: JSON decode of the same payloads", f"{result['json_decode_ms_per_step']:.3f} ms"),
        ("goal", f"< {GOAL_MS:.0f} ms per step: {'met' if result['met'] else 'NOT met'}"),
    ]
    width = max(len(name) for name, _ in rows)
    print("Payload encryption (AES-256-GCM), one pipeline step")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


if __name__ == "__main__":
    main()
