"""What a replica holds, summarised so that two replicas find their difference
cheaply: per writer, the set of sequence numbers held, as intervals.

A version vector (the highest sequence number per writer) is not enough here:
replicas hold gaps, because ops arrive in any order and a writer's short-term
memories never leave it. Interval sets are exact and stay small (one interval
per writer, plus one per gap).

For reconciliation the writers are spread over :data:`BUCKETS` buckets by a
hash of their id, and each bucket has a digest of its entries. Two replicas
compare the bucket digests first (a few hundred bytes), then exchange the
entries of the buckets that differ, then the ops one lacks: the cost follows
the difference, not the size of the replicas.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Final

BUCKETS: Final = 64
Interval = tuple[int, int]
"""An inclusive range of sequence numbers ``(first, last)``."""


class SeqSet:
    """A set of positive integers stored as sorted, disjoint, non-adjacent intervals."""

    __slots__ = ("_firsts", "_lasts")

    def __init__(self, intervals: Iterable[Interval] = ()) -> None:
        self._firsts: list[int] = []
        self._lasts: list[int] = []
        for first, last in intervals:
            self.add_range(first, last)

    def __contains__(self, seq: object) -> bool:
        if not isinstance(seq, int):
            return False
        i = bisect.bisect_right(self._firsts, seq) - 1
        return i >= 0 and seq <= self._lasts[i]

    def __len__(self) -> int:
        return sum(last - first + 1 for first, last in self)

    def __iter__(self) -> Iterator[Interval]:
        return zip(self._firsts, self._lasts, strict=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeqSet) and self.intervals() == other.intervals()

    def __repr__(self) -> str:
        return f"SeqSet({self.intervals()!r})"

    def intervals(self) -> list[Interval]:
        return list(self)

    def add(self, seq: int) -> bool:
        """Add one number; returns whether it was new."""
        if seq in self:
            return False
        self.add_range(seq, seq)
        return True

    def add_range(self, first: int, last: int) -> None:
        if first > last:
            return
        # Every interval touching or adjacent to [first, last] is merged into it.
        lo = bisect.bisect_left(self._lasts, first - 1)
        hi = bisect.bisect_right(self._firsts, last + 1)
        if lo < hi:
            first = min(first, self._firsts[lo])
            last = max(last, self._lasts[hi - 1])
        self._firsts[lo:hi] = [first]
        self._lasts[lo:hi] = [last]

    def difference(self, other: SeqSet) -> list[Interval]:
        """The intervals of numbers in this set and not in ``other``."""
        result: list[Interval] = []
        theirs = other.intervals()
        j = 0
        for first, last in self:
            start = first
            while j < len(theirs) and theirs[j][1] < start:
                j += 1
            k = j
            while start <= last:
                if k >= len(theirs) or theirs[k][0] > last:
                    result.append((start, last))
                    break
                t_first, t_last = theirs[k]
                if t_first > start:
                    result.append((start, t_first - 1))
                start = max(start, t_last + 1)
                k += 1
        return result


def bucket_of(writer: str) -> int:
    return hashlib.blake2b(writer.encode(), digest_size=2).digest()[0] % BUCKETS


class Summary:
    """Per writer, the sequence numbers held; with a digest per bucket of writers."""

    def __init__(self) -> None:
        self._writers: dict[str, SeqSet] = {}
        self._buckets: list[set[str]] = [set() for _ in range(BUCKETS)]
        self._digests: list[bytes | None] = [None] * BUCKETS

    def __contains__(self, op: tuple[str, int]) -> bool:
        held = self._writers.get(op[0])
        return held is not None and op[1] in held

    def __len__(self) -> int:
        return sum(len(s) for s in self._writers.values())

    def writers(self) -> Mapping[str, SeqSet]:
        return self._writers

    def add(self, writer: str, seq: int) -> bool:
        """Record one op; returns whether it was new."""
        held = self._writers.get(writer)
        if held is None:
            held = self._writers[writer] = SeqSet()
            self._buckets[bucket_of(writer)].add(writer)
        if not held.add(seq):
            return False
        self._digests[bucket_of(writer)] = None
        return True

    def bucket_digest(self, bucket: int) -> bytes:
        digest = self._digests[bucket]
        if digest is None:
            h = hashlib.blake2b(digest_size=8)
            for writer in sorted(self._buckets[bucket]):
                h.update(writer.encode() + b"\0")
                for first, last in self._writers[writer]:
                    h.update(f"{first}-{last},".encode())
                h.update(b"\n")
            digest = self._digests[bucket] = h.digest()
        return digest

    def digests(self) -> list[bytes]:
        return [self.bucket_digest(b) for b in range(BUCKETS)]

    def differing_buckets(self, theirs: Sequence[bytes]) -> list[int]:
        return [b for b in range(BUCKETS) if self.bucket_digest(b) != theirs[b]]

    def entries(self, buckets: Iterable[int]) -> dict[str, list[Interval]]:
        """The writers of these buckets with their intervals."""
        return {
            writer: self._writers[writer].intervals()
            for bucket in buckets
            for writer in sorted(self._buckets[bucket])
        }

    def missing_from(
        self, theirs: Mapping[str, Sequence[Interval]], buckets: Iterable[int]
    ) -> dict[str, list[Interval]]:
        """What this replica holds, in these buckets, that ``theirs`` lacks."""
        result: dict[str, list[Interval]] = {}
        for bucket in buckets:
            for writer in self._buckets[bucket]:
                gap = self._writers[writer].difference(SeqSet(theirs.get(writer, ())))
                if gap:
                    result[writer] = gap
        return result
