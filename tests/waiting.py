"""Waiting for a condition with a deadline (never a bare sleep; ARCHITECTURE §6)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def wait_until(
    condition: Callable[[], Awaitable[bool]],
    *,
    timeout: float = 10.0,
    poll: float = 0.02,
    what: str = "the condition",
) -> None:
    """Poll ``condition`` until it holds; fail the test if ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        await asyncio.sleep(poll)
