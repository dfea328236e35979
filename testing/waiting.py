"""Waiting in tests: poll a check until it holds, or fail saying what never came."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, timeout: float, every: float = ...
) -> T: ...
@overload
async def eventually(check: Callable[[], T | None], what: str, timeout: float, every: float = ...) -> T: ...
async def eventually(check: Callable[[], Any], what: str, timeout: float, every: float = 1.0) -> Any:
    """check()'s first truthy value (awaited if awaitable); AssertionError naming `what` after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if inspect.isawaitable(found):
            found = await found
        if found:
            return found
        if time.monotonic() >= deadline:
            raise AssertionError(f"not within {timeout:g} s: {what}")
        await asyncio.sleep(every)
