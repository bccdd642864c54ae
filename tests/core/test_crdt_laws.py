"""Every CRDT is a join-semilattice, and each has the semantics ARCHITECTURE §2 asks.

Invariant 1 (ARCHITECTURE §3): merge is commutative, associative and
idempotent. On top of the laws: ``merge`` leaves its inputs alone, ``join`` (in
place) agrees with ``merge``, ``copy`` is independent of its original, and the
merge is an upper bound of both sides (nothing is lost).
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from chrysalis_memory.crdt import (
    GCounter,
    GSet,
    LWWMap,
    LWWRegister,
    MaxRegister,
    MinRegister,
    ORSet,
    Stamp,
)
from chrysalis_memory.crdt._canonical import canonical_bytes

from .strategies import CRDTS, LAWS, dots, elements, json_values, stamps, writers

KINDS = sorted(CRDTS)


def draw3(data: st.DataObject, kind: str) -> tuple[Any, Any, Any]:
    strategy = CRDTS[kind]
    return data.draw(strategy, "a"), data.draw(strategy, "b"), data.draw(strategy, "c")


# --- the semilattice laws, for every CRDT -------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@LAWS
@given(data=st.data())
def test_merge_is_commutative(kind: str, data: st.DataObject) -> None:
    a, b, _ = draw3(data, kind)
    assert a.merge(b) == b.merge(a)


@pytest.mark.parametrize("kind", KINDS)
@LAWS
@given(data=st.data())
def test_merge_is_associative(kind: str, data: st.DataObject) -> None:
    a, b, c = draw3(data, kind)
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@pytest.mark.parametrize("kind", KINDS)
@LAWS
@given(data=st.data())
def test_merge_is_idempotent(kind: str, data: st.DataObject) -> None:
    a, b, _ = draw3(data, kind)
    assert a.merge(a) == a
    ab = a.merge(b)
    assert ab.merge(b) == ab
    assert ab.merge(a) == ab  # absorption: the merge already contains both sides


@pytest.mark.parametrize("kind", KINDS)
@LAWS
@given(data=st.data())
def test_merge_leaves_inputs_unchanged(kind: str, data: st.DataObject) -> None:
    a, b, _ = draw3(data, kind)
    a_before, b_before = copy.deepcopy(a), copy.deepcopy(b)
    result = a.merge(b)
    assert a == a_before
    assert b == b_before
    # ... and the result shares no mutable state with them.
    result.join(data.draw(CRDTS[kind], "more"))
    assert a == a_before
    assert b == b_before


@pytest.mark.parametrize("kind", KINDS)
@LAWS
@given(data=st.data())
def test_join_equals_merge(kind: str, data: st.DataObject) -> None:
    a, b, _ = draw3(data, kind)
    b_before = copy.deepcopy(b)
    joined = a.copy()
    joined.join(b)
    assert joined == a.merge(b)
    assert b == b_before


@pytest.mark.parametrize("kind", KINDS)
@LAWS
@given(data=st.data())
def test_copy_is_equal_and_independent(kind: str, data: st.DataObject) -> None:
    a, b, _ = draw3(data, kind)
    a_before = copy.deepcopy(a)
    clone = a.copy()
    assert clone == a
    clone.join(b)
    assert a == a_before


@pytest.mark.parametrize("kind", KINDS)
@LAWS
@given(data=st.data())
def test_any_merge_order_of_many_replicas_converges(kind: str, data: st.DataObject) -> None:
    replicas = data.draw(st.lists(CRDTS[kind], min_size=1, max_size=4), "replicas")
    results = []
    for order in itertools.permutations(replicas):
        acc = order[0].copy()
        for r in order[1:]:
            acc.join(r)
        results.append(acc)
    assert all(r == results[0] for r in results)


def test_crdts_are_not_hashable() -> None:
    """They are mutable: hashing one would give a stale key."""
    values: list[Any] = [
        LWWRegister(1, Stamp(0, 0, "a")),
        MaxRegister(1),
        MinRegister(1),
        GSet(),
        ORSet(),
        LWWMap(),
        GCounter(),
    ]
    for value in values:
        with pytest.raises(TypeError):
            hash(value)


# --- LWW register ---------------------------------------------------------------------


@LAWS
@given(a=json_values, b=json_values, sa=stamps, sb=stamps)
def test_lww_higher_stamp_wins_in_either_order(a: Any, b: Any, sa: Stamp, sb: Stamp) -> None:
    ra, rb = LWWRegister(a, sa), LWWRegister(b, sb)
    for merged in (ra.merge(rb), rb.merge(ra)):
        if sa > sb:
            assert (merged.value, merged.stamp) == (a, sa)
        elif sb > sa:
            assert (merged.value, merged.stamp) == (b, sb)
        else:
            # A reused stamp: the canonical bytes of the value decide, the same
            # way on every replica (the spec's ``>=`` lets the incoming side win).
            winner = a if canonical_bytes(a) >= canonical_bytes(b) else b
            assert merged.value == winner
            assert canonical_bytes(merged.value) == canonical_bytes(winner)


def test_lww_orders_by_hlc_then_writer() -> None:
    early = LWWRegister("early", Stamp(1000, 5, "zed"))
    late = LWWRegister("late", Stamp(1001, 0, "alice"))
    assert early.merge(late).value == "late"  # wall time first, whatever the writer id
    same_ms_higher_counter = LWWRegister("counter", Stamp(1001, 1, "alice"))
    assert late.merge(same_ms_higher_counter).value == "counter"
    # Equal HLCs (concurrent writes at the same instant): the writer id decides.
    by_a = LWWRegister("from a", Stamp(1001, 1, "a"))
    by_b = LWWRegister("from b", Stamp(1001, 1, "b"))
    assert by_a.merge(by_b).value == by_b.merge(by_a).value == "from b"


def test_lww_set_reports_whether_it_won() -> None:
    r = LWWRegister("x", Stamp(5, 0, "a"))
    assert not r.set("older", Stamp(4, 9, "z"))
    assert r.value == "x"
    assert r.set("newer", Stamp(5, 1, "a"))
    assert r.value == "newer"
    assert not r.set("newer", Stamp(5, 1, "a"))  # replay is a no-op


@LAWS
@given(st.lists(st.tuples(json_values, stamps), min_size=1, max_size=6), st.randoms())
def test_lww_register_final_value_independent_of_delivery_order(
    writes: list[tuple[Any, Stamp]], rnd: Any
) -> None:
    def play(sequence: list[tuple[Any, Stamp]]) -> LWWRegister[Any]:
        register: LWWRegister[Any] = LWWRegister(None, Stamp(-1, 0, ""))
        for value, stamp in sequence:
            register.set(value, stamp)
        return register

    shuffled = writes * 2
    rnd.shuffle(shuffled)
    assert play(writes) == play(shuffled)
    assert play(writes).stamp == max(s for _, s in writes)


# --- LWW map ----------------------------------------------------------------------------


def test_lww_map_merges_key_by_key() -> None:
    left: LWWMap[str] = LWWMap()
    right: LWWMap[str] = LWWMap()
    left.set("colour", "red", Stamp(10, 0, "a"))
    left.set("size", "big", Stamp(1, 0, "a"))
    right.set("colour", "blue", Stamp(9, 0, "b"))
    right.set("size", "small", Stamp(2, 0, "b"))
    right.set("shape", "round", Stamp(0, 0, "b"))
    expected = {"colour": "red", "shape": "round", "size": "small"}
    assert left.merge(right).value == right.merge(left).value == expected
    assert list(left.merge(right).value) == sorted(expected)  # deterministic key order


# --- max / min registers ----------------------------------------------------------------


@LAWS
@given(st.lists(st.none() | st.floats(0, 1), min_size=1, max_size=5))
def test_max_and_min_registers_keep_the_extremes(values: list[float | None]) -> None:
    maxes = [MaxRegister(v) for v in values]
    mins = [MinRegister(v) for v in values]
    top, bottom = maxes[0], mins[0]
    for m in maxes[1:]:
        top = top.merge(m)
    for n in mins[1:]:
        bottom = bottom.merge(n)
    present = [v for v in values if v is not None]
    assert top.value == (max(present) if present else None)
    assert bottom.value == (min(present) if present else None)


def test_max_register_never_decreases() -> None:
    r: MaxRegister[float] = MaxRegister(0.7)
    assert not r.offer(0.2)
    assert r.value == 0.7
    assert r.offer(0.9)
    assert r.value == 0.9


# --- G-Set ------------------------------------------------------------------------------


@LAWS
@given(st.lists(st.frozensets(st.integers(0, 9)), min_size=1, max_size=4))
def test_gset_merge_is_union(parts: list[frozenset[int]]) -> None:
    merged: GSet[int] = GSet()
    for p in parts:
        merged = merged.merge(GSet(p))
    assert merged.value == frozenset().union(*parts)


# --- OR-Set -----------------------------------------------------------------------------


def test_orset_add_wins_over_concurrent_remove() -> None:
    a: ORSet[str] = ORSet()
    a.add("x", ("a", 1))
    b = a.copy()  # b has observed a's add
    removed = b.remove("x")  # b removes x ...
    assert removed == {("a", 1)}
    a.add("x", ("a", 2))  # ... while a concurrently re-adds it
    assert "x" not in b
    for merged in (a.merge(b), b.merge(a)):
        assert "x" in merged
        assert merged.observed("x") == {("a", 2)}


def test_orset_remove_only_removes_observed_dots() -> None:
    a: ORSet[str] = ORSet()
    a.add("x", ("a", 1))
    b: ORSet[str] = ORSet()  # b never saw a's add
    assert b.remove("x") == frozenset()
    assert "x" in a.merge(b)
    # Naming an unobserved dot of another element does nothing either.
    b.remove_dots("y", [("a", 1)])
    assert "x" in a.merge(b)


def test_orset_removed_element_can_be_added_again() -> None:
    s: ORSet[str] = ORSet()
    s.add("x", ("a", 1))
    s.remove("x")
    assert "x" not in s
    s.add("x", ("b", 1))
    assert "x" in s
    assert s.value == {"x"}


def test_orset_remove_delivered_before_its_add_converges() -> None:
    writer: ORSet[str] = ORSet()
    writer.add("x", ("a", 1))
    dots_removed = writer.remove("x")

    add_first: ORSet[str] = ORSet()
    add_first.add("x", ("a", 1))
    add_first.remove_dots("x", dots_removed)

    remove_first: ORSet[str] = ORSet()
    remove_first.remove_dots("x", dots_removed)  # the tombstone arrives first
    assert "x" not in remove_first
    remove_first.add("x", ("a", 1))  # the late add stays removed

    assert add_first == remove_first == writer
    assert "x" not in remove_first


def test_orset_removing_one_element_keeps_others_added_under_the_same_dot() -> None:
    """One op may add several tags under one dot; untagging one keeps the rest."""
    s: ORSet[str] = ORSet()
    s.add("x", ("a", 1))
    s.add("y", ("a", 1))
    s.remove("x")
    assert s.value == {"y"}
    elsewhere: ORSet[str] = ORSet()
    elsewhere.remove_dots("x", [("a", 1)])
    elsewhere.add("y", ("a", 1))
    elsewhere.add("x", ("a", 1))
    assert elsewhere == s


OrSetEvent = tuple[str, str, tuple[str, int]]


@st.composite
def orset_sessions(draw: st.DrawFn) -> list[list[OrSetEvent]]:
    """Per-replica event logs of adds and observed removes, with syncs between.

    Returns, per replica, the events as it issued them: ``("add", e, dot)`` or
    ``("rm", e, dot)`` (one event per tombstoned dot).
    """
    n = draw(st.integers(2, 3))
    replicas: list[ORSet[str]] = [ORSet() for _ in range(n)]
    logs: list[list[OrSetEvent]] = [[] for _ in range(n)]
    seqs = [0] * n
    for _ in range(draw(st.integers(1, 15))):
        i = draw(st.integers(0, n - 1))
        kind = draw(st.sampled_from(["add", "add", "rm", "sync"]))
        element = draw(elements)
        if kind == "add":
            seqs[i] += 1
            dot = (f"w{i}", seqs[i])
            replicas[i].add(element, dot)
            logs[i].append(("add", element, dot))
        elif kind == "rm":
            for dot in sorted(replicas[i].remove(element)):
                logs[i].append(("rm", element, dot))
        else:
            j = draw(st.integers(0, n - 1))
            replicas[j].join(replicas[i])
    return logs


def replay(events: list[OrSetEvent]) -> ORSet[str]:
    s: ORSet[str] = ORSet()
    for kind, element, dot in events:
        if kind == "add":
            s.add(element, dot)
        else:
            s.remove_dots(element, [dot])
    return s


@LAWS
@given(orset_sessions(), st.randoms())
def test_orset_any_delivery_order_converges_to_add_wins(
    logs: list[list[OrSetEvent]], rnd: Any
) -> None:
    events = [e for log in logs for e in log]
    shuffled = events + events[: len(events) // 2]  # with duplicates
    rnd.shuffle(shuffled)
    result = replay(events)
    assert replay(shuffled) == result
    # The model: an element is present iff one of its adds was not observed by
    # any remove of that element.
    adds = {(e, d) for k, e, d in events if k == "add"}
    removes = {(e, d) for k, e, d in events if k == "rm"}
    assert result.value == {e for e, d in adds if (e, d) not in removes}


# --- G-Counter --------------------------------------------------------------------------


@LAWS
@given(
    base=st.dictionaries(writers, st.integers(1, 5), max_size=4),
    increments=st.lists(st.tuples(writers, st.integers(1, 4)), max_size=10),
)
def test_gcounter_concurrent_increments_add_up(
    base: dict[str, int], increments: list[tuple[str, int]]
) -> None:
    """Each writer increments its own copy; merging them all loses nothing."""
    replicas = {w: GCounter(base) for w in "abcd"}
    for w, by in increments:
        replicas[w].increment(w, by)
    merged = GCounter()
    for r in replicas.values():
        merged.join(r)
    assert merged.value == sum(base.values()) + sum(by for _, by in increments)
    # The spec's max() of the totals would lose every increment but one replica's.
    if len({w for w, _ in increments}) >= 2:
        assert max(r.value for r in replicas.values()) < merged.value


def test_gcounter_observe_is_idempotent_and_monotonic() -> None:
    c = GCounter()
    assert c.increment("a") == 1
    assert c.increment("a", 2) == 3
    c.observe("a", 2)  # a stale total changes nothing
    c.observe("b", 4)
    c.observe("b", 4)
    assert c.value == 7
    assert c.counts == {"a": 3, "b": 4}
    with pytest.raises(ValueError, match="only grows"):
        c.increment("a", -1)


@LAWS
@given(dots, elements)
def test_orset_observed_is_what_a_remove_tombstones(dot: tuple[str, int], e: str) -> None:
    s: ORSet[str] = ORSet()
    s.add(e, dot)
    assert s.observed(e) == {dot}
    assert s.remove(e) == {dot}
    assert s.observed(e) == frozenset()
    assert s.removed == {e: frozenset({dot})}
