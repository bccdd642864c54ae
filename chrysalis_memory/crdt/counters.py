"""Counter CRDTs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

MAX_TOTAL: Final = (1 << 53) - 1
"""The most a G-Counter's :attr:`~GCounter.value` reports: the sum of its entries
saturates here, so it always fits SQLite's INTEGER and a JSON double exactly,
however many writers report however much. Entries themselves are bounded where
they arrive (``MAX_ACCESS`` for access counts, in the op decoder)."""


class GCounter:
    """Grow-only counter: one entry per writer, merge takes the pointwise max.

    Concurrent increments by different writers add up, which the spec's
    ``max(a, b)`` loses. A writer only ever raises its own entry, and an op
    carries the writer's new total rather than a delta, so applying ops in any
    order, any number of times, gives the same count.
    """

    __slots__ = ("_counts",)

    def __init__(self, counts: Mapping[str, int] | None = None) -> None:
        self._counts: dict[str, int] = dict(counts or {})

    def observe(self, writer: str, total: int) -> None:
        """Record that ``writer``'s own count has reached ``total``."""
        if total > self._counts.get(writer, 0):
            self._counts[writer] = total

    def increment(self, writer: str, by: int = 1) -> int:
        """Add ``by`` to ``writer``'s entry; returns the writer's new total."""
        if by < 0:
            raise ValueError("a G-Counter only grows")
        total = self._counts.get(writer, 0) + by
        self._counts[writer] = total
        return total

    def of(self, writer: str) -> int:
        return self._counts.get(writer, 0)

    def join(self, other: GCounter) -> None:
        for writer, total in other._counts.items():
            self.observe(writer, total)

    def merge(self, other: GCounter) -> GCounter:
        result = self.copy()
        result.join(other)
        return result

    def copy(self) -> GCounter:
        return GCounter(self._counts)

    @property
    def counts(self) -> Mapping[str, int]:
        return dict(self._counts)

    @property
    def value(self) -> int:
        """The sum of every writer's count, saturating at :data:`MAX_TOTAL`."""
        return min(sum(self._counts.values()), MAX_TOTAL)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GCounter):
            return NotImplemented
        return self._counts == other._counts

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GCounter({self.value})"
