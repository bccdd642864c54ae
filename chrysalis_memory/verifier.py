"""Batch signature verification on every core.

ed25519 verification is the dominant cost of ingesting remote ops (~100 µs
each). ``cryptography`` releases the GIL while verifying, so chunks of a batch
verify in parallel threads.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from chrysalis_memory.errors import SignatureError
from chrysalis_memory.model.ops import Op, verify_signature

_INLINE_BELOW = 32  # smaller batches are not worth a thread hop


def _invalid_in(ops: Sequence[Op], indexes: Sequence[int]) -> list[SignatureError]:
    errors: list[SignatureError] = []
    for op, index in zip(ops, indexes, strict=True):
        try:
            verify_signature(op, index=index)
        except SignatureError as error:
            errors.append(error)
    return errors


class SignatureVerifier:
    """Verifies op signatures on a small thread pool; close it when done."""

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or min(4, os.cpu_count() or 1)
        self._pool: ThreadPoolExecutor | None = None

    async def invalid(
        self, ops: Sequence[Op], indexes: Sequence[int] | None = None
    ) -> list[SignatureError]:
        """Every op of ``ops`` whose signature does not verify, in batch order.

        ``indexes`` are the ops' positions in the caller's batch, for messages.
        """
        positions = range(len(ops)) if indexes is None else indexes
        if len(ops) < _INLINE_BELOW or self.workers == 1:
            return _invalid_in(ops, positions)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="chrysalis-verify")
        loop = asyncio.get_running_loop()
        size = -(-len(ops) // self.workers)
        chunks = await asyncio.gather(
            *(
                loop.run_in_executor(
                    self._pool,
                    _invalid_in,
                    ops[start : start + size],
                    positions[start : start + size],
                )
                for start in range(0, len(ops), size)
            )
        )
        return [error for chunk in chunks for error in chunk]

    async def check(self, ops: Sequence[Op], indexes: Sequence[int] | None = None) -> None:
        """Raise the first :class:`SignatureError` in ``ops``, if any."""
        errors = await self.invalid(ops, indexes)
        if errors:
            raise errors[0]

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
