"""Hybrid logical clocks (Kulkarni et al., 2014).

An HLC timestamp is ``(wall_ms, counter)``: close to wall-clock time, but it
never goes backwards, even when the machine's clock does, and it is always
greater than every timestamp this replica has seen. Ordering writes by
``(HLC, writer id)`` gives a total order that respects causality, which plain
``time.time()`` cannot (spec defect: writes lost under clock skew).

Both parts are bounded (:data:`MAX_WALL_MS`, :data:`MAX_COUNTER`); the op
decoder refuses stamps outside them, and the clock never issues one. When the
counter would pass its bound the clock moves its wall time on by 1 ms and starts
the counter again (the standard HLC remedy), so a received stamp with a full
counter costs a millisecond of lead, not every later write.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Final, NamedTuple

from chrysalis_memory.errors import ClockExhaustedError

MAX_WALL_MS: Final = (1 << 47) - 1
"""Largest wall time a stamp may carry: 2^47 - 1 ms after 1970, in the year 6429.

Far beyond any honest clock, yet small enough that nothing derived from it can
overflow: it fits SQLite's 64-bit INTEGER with room for ``+ 1``, it is exact as
a JSON double (below 2^53), and seconds (``wall_ms / 1000``) are exact floats."""

MAX_COUNTER: Final = (1 << 32) - 1
"""Largest logical counter a stamp may carry (4,294,967,295).

The counter only counts stamps issued within one millisecond of logical time
(or while the wall clock is behind): no honest writer comes near it. It fits
SQLite's INTEGER and a JSON double with ``+ 1`` to spare."""

CEILING: Final[tuple[int, int]] = (MAX_WALL_MS - 1, MAX_COUNTER)
"""Highest stamp a clock takes over from elsewhere (a received op, or the log on
restart). A stamp above it (in the very last millisecond of the range) is
treated as this one, so the clock always has a whole millisecond, 2^32 stamps,
left to issue; :meth:`HybridClock.now` raises :class:`ClockExhaustedError`
only once those are gone."""


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


def _capped(stamp: tuple[int, int]) -> HLC:
    """``stamp`` as a clock may hold it: at most :data:`CEILING`, never negative."""
    wall, counter = stamp
    if (wall, counter) > CEILING:
        return HLC(*CEILING)
    return HLC(max(wall, 0), min(max(counter, 0), MAX_COUNTER))


class HybridClock:
    """A replica's clock. Not thread-safe: one replica, one writer task.

    ``physical`` is injectable so tests can make the wall clock skew, stall or
    jump backwards.
    """

    __slots__ = ("_last", "_physical")

    def __init__(self, physical: Callable[[], int] = system_ms, last: HLC | None = None) -> None:
        self._physical = physical
        self._last = HLC(0, 0) if last is None else _capped(last)

    @property
    def last(self) -> HLC:
        """The greatest timestamp issued or observed so far."""
        return self._last

    def now(self) -> HLC:
        """A timestamp for a local event: strictly greater than any before it.

        Always within :data:`MAX_WALL_MS` and :data:`MAX_COUNTER`.
        """
        physical = min(self._physical(), MAX_WALL_MS - 1)
        wall, counter = self._last
        if physical > wall:
            stamp = HLC(physical, 0)
        elif counter < MAX_COUNTER:
            stamp = HLC(wall, counter + 1)
        elif wall < MAX_WALL_MS:
            stamp = HLC(wall + 1, 0)  # the counter is full: a millisecond of lead instead
        else:
            raise ClockExhaustedError(
                f"the clock has issued every timestamp up to {MAX_WALL_MS} ms "
                "(year 6429): no further write can be ordered"
            )
        self._last = stamp
        return stamp

    def observe(self, remote: HLC) -> None:
        """Account for a timestamp seen on a received op.

        The next :meth:`now` is then greater than ``remote``, so a local write
        made after seeing a remote one always wins over it (for a stamp above
        :data:`CEILING`: greater than the ceiling).
        """
        if remote > self._last:
            capped = _capped(remote)
            if capped > self._last:
                self._last = capped
