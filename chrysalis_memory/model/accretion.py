"""The accretion engine (spec §4.2) and write storms (spec §4.4), on CRDT states.

The spec's sample merges ``MemoryDocument`` views directly; a view has lost
what a correct merge needs (write stamps, tag dots, per-agent counts, the set
of ops folded), so the engine merges :class:`~.state.MemoryState` instead. The
invariants are the spec's: the result is a superset of both inputs, and
importance, confidence, evidence and access counts never decrease.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from functools import reduce
from typing import TypeVar

from chrysalis_memory.model.state import DocState

S = TypeVar("S", bound=DocState)


def accrete(
    local: Mapping[str, DocState] | Iterable[DocState],
    remote: Iterable[DocState],
) -> dict[str, DocState]:
    """Merge remote states into local ones; returns the merged set by id.

    Inputs are left untouched. Every id of either side is in the result, and
    each merged state is the least upper bound of its two sides.
    """
    items = local.values() if isinstance(local, Mapping) else local
    merged: dict[str, DocState] = {state.id: state.copy() for state in items}
    for state in remote:
        mine = merged.get(state.id)
        if mine is None:
            merged[state.id] = state.copy()
        else:
            mine.join(state)  # type: ignore[arg-type]
    return merged


def merge_write_storm(writes: Iterable[S]) -> S:
    """Merge any number of concurrent versions of one document into one.

    Merge is commutative, associative and idempotent, so any order (and any
    repetition) of ``writes`` gives the same result.
    """
    versions = list(writes)
    if not versions:
        raise ValueError("a write storm needs at least one write")
    return reduce(lambda a, b: a.merge(b), versions[1:], versions[0].copy())  # type: ignore[return-value]
