"""Set CRDTs: grow-only set, observed-remove set and last-writer-wins map."""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from chrysalis_memory.crdt.hlc import Stamp
from chrysalis_memory.crdt.registers import LWWRegister

T = TypeVar("T", bound=Hashable)
V = TypeVar("V")

Dot = tuple[str, int]
"""A unique event id: (writer id, that writer's sequence number)."""


class GSet(Generic[T]):
    """Grow-only set: merge is union, nothing is ever removed."""

    __slots__ = ("_items",)

    def __init__(self, items: Iterable[T] = ()) -> None:
        self._items: set[T] = set(items)

    def add(self, item: T) -> bool:
        """Add ``item``; True if it was new."""
        if item in self._items:
            return False
        self._items.add(item)
        return True

    def update(self, items: Iterable[T]) -> None:
        self._items.update(items)

    def join(self, other: GSet[T]) -> None:
        self._items |= other._items

    def merge(self, other: GSet[T]) -> GSet[T]:
        return GSet(self._items | other._items)

    def copy(self) -> GSet[T]:
        return GSet(self._items)

    @property
    def value(self) -> frozenset[T]:
        return frozenset(self._items)

    def __contains__(self, item: object) -> bool:
        return item in self._items

    def __iter__(self) -> Iterator[T]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GSet):
            return NotImplemented
        return self._items == other._items

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"GSet({sorted(map(repr, self._items))})"


class ORSet(Generic[T]):
    """Observed-remove set (add wins).

    Each add is tagged with a :data:`Dot`; a remove tombstones only the dots of
    that element its writer had observed. An add concurrent with a remove
    carries a dot the remover never saw, so the element survives. Tombstones
    make the state independent of delivery order: a remove may arrive before
    its add.

    Tombstones are scoped to their element: one op may add several elements
    under the same dot (a memory's ``tags_add``), and removing one of them must
    not remove the others.
    """

    __slots__ = ("_adds", "_removed")

    def __init__(
        self,
        adds: Mapping[T, Iterable[Dot]] | None = None,
        removed: Mapping[T, Iterable[Dot]] | None = None,
    ) -> None:
        self._adds: dict[T, set[Dot]] = {k: set(v) for k, v in (adds or {}).items()}
        self._removed: dict[T, set[Dot]] = {
            k: dots for k, v in (removed or {}).items() if (dots := set(v))
        }

    def add(self, element: T, dot: Dot) -> None:
        self._adds.setdefault(element, set()).add(dot)

    def observed(self, element: T) -> frozenset[Dot]:
        """The live dots of ``element``: what a remove issued here must name."""
        return frozenset(self._adds.get(element, set()) - self._removed.get(element, set()))

    def remove_dots(self, element: T, dots: Iterable[Dot]) -> None:
        """Tombstone the given dots of ``element`` (the payload of a remove)."""
        tombstones = set(dots)
        if tombstones:
            self._removed.setdefault(element, set()).update(tombstones)

    def remove(self, element: T) -> frozenset[Dot]:
        """Remove ``element`` as observed here; returns the dots it tombstoned."""
        dots = self.observed(element)
        self.remove_dots(element, dots)
        return dots

    def join(self, other: ORSet[T]) -> None:
        for element, dots in other._adds.items():
            self._adds.setdefault(element, set()).update(dots)
        for element, dots in other._removed.items():
            self._removed.setdefault(element, set()).update(dots)

    def merge(self, other: ORSet[T]) -> ORSet[T]:
        result = self.copy()
        result.join(other)
        return result

    def copy(self) -> ORSet[T]:
        return ORSet(self._adds, self._removed)

    def _live(self, element: T) -> bool:
        dots = self._adds.get(element)
        if not dots:
            return False
        return not dots <= self._removed.get(element, set())

    @property
    def value(self) -> frozenset[T]:
        return frozenset(e for e in self._adds if self._live(e))

    def __contains__(self, element: object) -> bool:
        return self._live(element)  # type: ignore[arg-type]

    @property
    def adds(self) -> Mapping[T, frozenset[Dot]]:
        return {k: frozenset(v) for k, v in self._adds.items()}

    @property
    def removed(self) -> Mapping[T, frozenset[Dot]]:
        """Tombstoned dots, by element."""
        return {k: frozenset(v) for k, v in self._removed.items()}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ORSet):
            return NotImplemented
        return self._adds == other._adds and self._removed == other._removed

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ORSet({sorted(map(repr, self.value))})"


class LWWMap(Generic[V]):
    """A map whose every key is its own last-writer-wins register."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[str, LWWRegister[V]] | None = None) -> None:
        self._entries: dict[str, LWWRegister[V]] = {k: r.copy() for k, r in (entries or {}).items()}

    def set(self, key: str, value: V, stamp: Stamp) -> None:
        current = self._entries.get(key)
        if current is None:
            self._entries[key] = LWWRegister(value, stamp)
        else:
            current.set(value, stamp)

    def join(self, other: LWWMap[V]) -> None:
        for key, register in other._entries.items():
            self.set(key, register.value, register.stamp)

    def merge(self, other: LWWMap[V]) -> LWWMap[V]:
        result = self.copy()
        result.join(other)
        return result

    def copy(self) -> LWWMap[V]:
        return LWWMap(self._entries)

    @property
    def entries(self) -> Mapping[str, LWWRegister[V]]:
        return self._entries

    @property
    def value(self) -> dict[str, V]:
        return {k: r.value for k, r in sorted(self._entries.items())}

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LWWMap):
            return NotImplemented
        return self._entries == other._entries

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"LWWMap({self.value!r})"
