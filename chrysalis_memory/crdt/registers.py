"""Single-value CRDTs: last-writer-wins, max and min registers."""

from __future__ import annotations

from typing import Any, Generic, Protocol, TypeVar

from chrysalis_memory.crdt._canonical import canonical_bytes
from chrysalis_memory.crdt.hlc import Stamp

T = TypeVar("T")


class _Orderable(Protocol):
    def __lt__(self, other: Any, /) -> bool: ...


Ord = TypeVar("Ord", bound=_Orderable)


class LWWRegister(Generic[T]):
    """Last-writer-wins register ordered by ``(HLC, writer id)``.

    Two different values under one stamp can only come from a writer that
    reused a timestamp; the canonical encoding of the value breaks that tie so
    that merge stays commutative (the spec's ``>=`` on ``updated_at`` does not).
    """

    __slots__ = ("stamp", "value")

    def __init__(self, value: T, stamp: Stamp) -> None:
        self.value = value
        self.stamp = stamp

    def _beats(self, value: T, stamp: Stamp) -> bool:
        if stamp != self.stamp:
            return stamp > self.stamp
        return canonical_bytes(value) > canonical_bytes(self.value)

    def set(self, value: T, stamp: Stamp) -> bool:
        """Write ``value`` at ``stamp`` in place; True if it became the value."""
        if self._beats(value, stamp):
            self.value, self.stamp = value, stamp
            return True
        return False

    def join(self, other: LWWRegister[T]) -> None:
        """Merge ``other`` into this register in place."""
        self.set(other.value, other.stamp)

    def merge(self, other: LWWRegister[T]) -> LWWRegister[T]:
        """The least upper bound of both registers, as a new register."""
        result = self.copy()
        result.join(other)
        return result

    def copy(self) -> LWWRegister[T]:
        return LWWRegister(self.value, self.stamp)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LWWRegister):
            return NotImplemented
        return bool(self.stamp == other.stamp and self.value == other.value)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"LWWRegister({self.value!r}, {self.stamp!r})"


class MaxRegister(Generic[Ord]):
    """A value that only grows: merge keeps the greater one."""

    __slots__ = ("value",)

    def __init__(self, value: Ord | None = None) -> None:
        self.value = value

    def offer(self, value: Ord) -> bool:
        """Raise the register to ``value`` if it is greater; True if it changed."""
        if self.value is None or self.value < value:
            self.value = value
            return True
        return False

    def join(self, other: MaxRegister[Ord]) -> None:
        if other.value is not None:
            self.offer(other.value)

    def merge(self, other: MaxRegister[Ord]) -> MaxRegister[Ord]:
        result = self.copy()
        result.join(other)
        return result

    def copy(self) -> MaxRegister[Ord]:
        return MaxRegister(self.value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MaxRegister):
            return NotImplemented
        return bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MaxRegister({self.value!r})"


class MinRegister(Generic[Ord]):
    """A value that only shrinks: merge keeps the smaller one (first writer wins)."""

    __slots__ = ("value",)

    def __init__(self, value: Ord | None = None) -> None:
        self.value = value

    def offer(self, value: Ord) -> bool:
        if self.value is None or value < self.value:
            self.value = value
            return True
        return False

    def join(self, other: MinRegister[Ord]) -> None:
        if other.value is not None:
            self.offer(other.value)

    def merge(self, other: MinRegister[Ord]) -> MinRegister[Ord]:
        result = self.copy()
        result.join(other)
        return result

    def copy(self) -> MinRegister[Ord]:
        return MinRegister(self.value)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MinRegister):
            return NotImplemented
        return bool(self.value == other.value)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"MinRegister({self.value!r})"
