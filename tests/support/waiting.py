"""Poll for a condition with a deadline instead of sleeping for a guessed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]], until: Callable[[T], bool], timeout_s: float = ...
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T], until: Callable[[T], bool], timeout_s: float = ...
) -> T: ...


async def eventually(
    probe: Callable[[], Any], until: Callable[[Any], bool], timeout_s: float = 30.0
) -> Any:
    """Call ``probe`` (a coroutine function, or a plain one reading in-process state) until
    ``until(result)`` holds; fail with the last result on timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = probe()
        if inspect.isawaitable(result):
            result = await result
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s; last value: {result!r}")
        await asyncio.sleep(0.02)
