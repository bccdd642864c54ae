"""Hybrid logical clocks (Kulkarni et al., 2014).

An HLC timestamp is ``(wall_ms, counter)``: close to wall-clock time, but it
never goes backwards, even when the machine's clock does, and it is always
greater than every timestamp this replica has seen. Ordering writes by
``(HLC, writer id)`` gives a total order that respects causality, which plain
``time.time()`` cannot (spec defect: writes lost under clock skew).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import NamedTuple


class HLC(NamedTuple):
    """A hybrid logical timestamp; tuples order it correctly for free."""

    wall_ms: int
    counter: int


class Stamp(NamedTuple):
    """A write's position in the global total order: HLC, then writer id."""

    wall_ms: int
    counter: int
    writer: str


def system_ms() -> int:
    """The machine's wall clock in milliseconds."""
    return time.time_ns() // 1_000_000


class HybridClock:
    """A replica's clock. Not thread-safe: one replica, one writer task.

    ``physical`` is injectable so tests can make the wall clock skew, stall or
    jump backwards.
    """

    __slots__ = ("_last", "_physical")

    def __init__(self, physical: Callable[[], int] = system_ms, last: HLC | None = None) -> None:
        self._physical = physical
        self._last = last or HLC(0, 0)

    @property
    def last(self) -> HLC:
        """The greatest timestamp issued or observed so far."""
        return self._last

    def now(self) -> HLC:
        """A timestamp for a local event: strictly greater than any before it."""
        physical = self._physical()
        wall, counter = self._last
        stamp = HLC(physical, 0) if physical > wall else HLC(wall, counter + 1)
        self._last = stamp
        return stamp

    def observe(self, remote: HLC) -> None:
        """Account for a timestamp seen on a received op.

        The next :meth:`now` is then greater than ``remote``, so a local write
        made after seeing a remote one always wins over it.
        """
        if remote > self._last:
            self._last = HLC(remote.wall_ms, remote.counter)
