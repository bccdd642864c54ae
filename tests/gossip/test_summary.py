"""Interval sets and bucketed summaries: exact, and cheap to compare."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from chrysalis_memory.gossip.summary import BUCKETS, SeqSet, Summary

numbers = st.sets(st.integers(min_value=1, max_value=200), max_size=80)


@given(numbers)
def test_a_seqset_holds_exactly_what_was_added_in_canonical_intervals(values: set[int]) -> None:
    seqs = SeqSet()
    for value in sorted(values, key=lambda v: (v * 7919) % 211):  # any order
        seqs.add(value)
    assert {v for v in range(202) if v in seqs} == values
    assert len(seqs) == len(values)
    intervals = seqs.intervals()
    for (_, last), (first, _) in itertools.pairwise(intervals):
        assert first > last + 1  # disjoint and not adjacent: one form per set
    assert SeqSet(intervals) == seqs


@given(numbers, numbers)
def test_difference_is_set_difference(a: set[int], b: set[int]) -> None:
    sa, sb = SeqSet(), SeqSet()
    for v in a:
        sa.add(v)
    for v in b:
        sb.add(v)
    diff = {v for first, last in sa.difference(sb) for v in range(first, last + 1)}
    assert diff == a - b


def test_adding_twice_is_not_new() -> None:
    seqs = SeqSet()
    assert seqs.add(3)
    assert not seqs.add(3)
    seqs.add_range(5, 9)
    seqs.add(4)
    assert seqs.intervals() == [(3, 9)]


@given(st.sets(st.tuples(st.sampled_from("abcdefgh"), st.integers(1, 40)), max_size=120))
def test_equal_holdings_give_equal_digests_whatever_the_order(ops: set[tuple[str, int]]) -> None:
    one, two = Summary(), Summary()
    for writer, seq in sorted(ops):
        one.add(writer, seq)
    for writer, seq in sorted(ops, reverse=True):
        two.add(writer, seq)
    assert one.digests() == two.digests()
    assert one.differing_buckets(two.digests()) == []


def test_the_difference_is_found_through_the_differing_buckets_only() -> None:
    mine, theirs = Summary(), Summary()
    for writer in (f"agent-{i}" for i in range(200)):
        for seq in range(1, 51):
            mine.add(writer, seq)
            theirs.add(writer, seq)
    mine.add("agent-7", 60)
    mine.add("agent-150", 51)
    differing = mine.differing_buckets(theirs.digests())
    assert 1 <= len(differing) <= 2 < BUCKETS
    entries = theirs.entries(differing)
    assert "agent-7" in entries and "agent-150" in entries
    assert mine.missing_from(entries, differing) == {"agent-7": [(60, 60)], "agent-150": [(51, 51)]}
