"""Every number an op carries has an explicit range, checked in the one decoder.

Invariant 8 (ARCHITECTURE §3): every number that arrives is range-checked in one
decoder, and no value that passes can overflow anything later. Here, with
hypothesis drawing the extremes: every value inside the bounds decodes, folds and
fits a signed 64-bit SQLite INTEGER (and a JSON double) even after the ``+ 1`` or
the sum that follows it; every value outside is a :class:`MalformedOpError`
naming the field, never another exception; and the hybrid logical clock keeps
issuing valid stamps after seeing the largest stamp that decodes.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from chrysalis_memory.crdt import HLC, GCounter, HybridClock
from chrysalis_memory.crdt.counters import MAX_TOTAL
from chrysalis_memory.crdt.hlc import CEILING, MAX_COUNTER, MAX_WALL_MS
from chrysalis_memory.errors import ClockExhaustedError, MalformedOpError
from chrysalis_memory.model import MemoryPatch, Op, OpAuthor, decode_op, verify_signature
from chrysalis_memory.model.ops import MAX_ACCESS, MAX_SEQ, Creation
from chrysalis_memory.model.state import MemoryState

from .strategies import LAWS, ManualClock, signer_for

INT64_MAX = (1 << 63) - 1
EXACT_DOUBLE = 1 << 53
SIGNER = signer_for("w")


def test_the_bounds_leave_room_for_what_is_computed_from_them() -> None:
    # +1 of each (next sequence number, next tick) and the saturated sum stay
    # exact as JSON doubles, hence inside SQLite's INTEGER.
    assert MAX_SEQ + 1 <= EXACT_DOUBLE
    assert MAX_WALL_MS + 1 <= EXACT_DOUBLE
    assert MAX_COUNTER + 1 <= EXACT_DOUBLE
    assert MAX_TOTAL + 1 <= EXACT_DOUBLE
    assert MAX_ACCESS < MAX_TOTAL
    assert EXACT_DOUBLE < INT64_MAX


def forge(
    *,
    seq: int = 1,
    hlc: tuple[int, int] = (1_700_000_000_000, 0),
    patch: MemoryPatch | None = None,
) -> bytes:
    """A validly signed op carrying whatever numbers it is given (as an attacker
    would send it: signing does not check ranges, the decoder must)."""
    unsigned = Op(
        doc="m1",
        writer="w",
        seq=seq,
        hlc=HLC(*hlc),
        key=SIGNER.public_key,
        patch=patch or MemoryPatch(create=Creation(), content="x"),
    )
    op = msgspec.structs.replace(unsigned, sig=SIGNER.sign(unsigned.encoded))
    return op.encoded


def seqs_in_range() -> st.SearchStrategy[int]:
    return st.integers(1, MAX_SEQ) | st.sampled_from([1, MAX_SEQ - 1, MAX_SEQ])


def walls_in_range() -> st.SearchStrategy[int]:
    return st.integers(0, MAX_WALL_MS) | st.sampled_from([0, MAX_WALL_MS - 1, MAX_WALL_MS])


def counters_in_range() -> st.SearchStrategy[int]:
    return st.integers(0, MAX_COUNTER) | st.sampled_from([0, MAX_COUNTER - 1, MAX_COUNTER])


def accesses_in_range() -> st.SearchStrategy[int]:
    return st.integers(1, MAX_ACCESS) | st.sampled_from([1, MAX_ACCESS])


def above(bound: int) -> st.SearchStrategy[int]:
    """Values past ``bound``: just past it, at the 64-bit edges, and far beyond."""
    return (
        st.integers(bound + 1, bound + 1000)
        | st.sampled_from([bound + 1, INT64_MAX, INT64_MAX + 1, 1 << 64, 10**40])
        | st.integers(bound + 1, 1 << 200)
    )


below_zero = st.integers(-(1 << 200), -1) | st.sampled_from([-1, -(1 << 63), -(1 << 64)])


@LAWS
@given(
    seq=seqs_in_range(),
    wall=walls_in_range(),
    counter=counters_in_range(),
    access=accesses_in_range(),
    dot_seq=seqs_in_range(),
)
def test_every_value_inside_the_bounds_is_accepted_and_cannot_overflow(
    seq: int, wall: int, counter: int, access: int, dot_seq: int
) -> None:
    patch = MemoryPatch(
        create=Creation(),
        content="x",
        access=access,
        tags_remove={"t": (("w", dot_seq),)},
    )
    op = decode_op(forge(seq=seq, hlc=(wall, counter), patch=patch))
    verify_signature(op)
    state = MemoryState("m1")
    state.apply(op)
    # What the store writes to its INTEGER columns, and the +1 that follows.
    for value in (op.seq + 1, op.hlc.wall_ms + 1, op.hlc.counter + 1, state.access.value + 1):
        assert value <= EXACT_DOUBLE
    # The next op of this writer and the clock's next tick are in range too.
    author = OpAuthor("w", SIGNER, HybridClock(physical=ManualClock(0), last=op.hlc), seq)
    if seq < MAX_SEQ:
        decode_op(author.make("m1", MemoryPatch(content="y")).encoded)


OUT_OF_RANGE: dict[str, tuple[Any, Any]] = {
    # field: (strategy of bad values, how to build the op from one)
    "seq": (above(MAX_SEQ) | below_zero | st.just(0), lambda v: forge(seq=v)),
    "hlc wall time": (above(MAX_WALL_MS) | below_zero, lambda v: forge(hlc=(v, 0))),
    "hlc counter": (above(MAX_COUNTER) | below_zero, lambda v: forge(hlc=(1, v))),
    "access": (
        above(MAX_ACCESS) | below_zero | st.just(0),
        lambda v: forge(patch=MemoryPatch(access=v)),
    ),
    "tags_remove": (
        above(MAX_SEQ) | below_zero | st.just(0),
        lambda v: forge(patch=MemoryPatch(tags_remove={"t": (("w", v),)})),
    ),
}


@pytest.mark.parametrize("field", sorted(OUT_OF_RANGE))
def test_every_value_outside_the_bounds_is_refused_naming_the_field(field: str) -> None:
    strategy, build = OUT_OF_RANGE[field]
    word = field.split()[-1]

    @LAWS
    @given(value=strategy)
    @example(value=INT64_MAX)
    def check(value: int) -> None:
        raw = build(value)
        # Only our error, whatever the value: no OverflowError, no other exception.
        with pytest.raises(MalformedOpError, match=rf"\b{word}\b"):
            decode_op(raw)
        with pytest.raises(MalformedOpError, match=rf"\b{word}\b"):
            decode_op(msgspec.json.decode(raw))  # as plain data (a JSON API)

    check()


def test_the_attack_stamps_of_issue_13_are_refused() -> None:
    now = 1_700_000_000_000
    for raw in (
        forge(hlc=(now + 590_000, INT64_MAX)),  # blocked every learn() for ~585 s
        forge(hlc=(INT64_MAX, 0)),  # a clock near the integer limit
        forge(seq=1 << 63),  # crashed the gossip handler
        forge(patch=MemoryPatch(access=INT64_MAX)),  # made recall() raise OverflowError
    ):
        with pytest.raises(MalformedOpError):
            decode_op(raw)


def test_an_op_nested_too_deeply_is_refused_not_a_recursion_error() -> None:
    raw = forge(patch=MemoryPatch(content="x", metadata={"a": 1}))
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    bomb = raw.replace(b'{"a":1}', deep)
    assert len(bomb) < 1 << 20
    with pytest.raises(MalformedOpError, match="nested too deeply"):
        decode_op(bomb)


# --- the G-Counter's total -----------------------------------------------------------------


@LAWS
@given(
    counts=st.dictionaries(
        st.integers(0, 20_000).map(lambda i: f"w{i}"),
        accesses_in_range(),
        max_size=50,
    ),
    extra_writers=st.integers(0, 10_000),
)
def test_the_access_total_saturates_and_merge_stays_a_semilattice(
    counts: dict[str, int], extra_writers: int
) -> None:
    # Up to 10,050 writers each at MAX_ACCESS: more than enough to pass 2^53.
    counts = counts | {f"x{i}": MAX_ACCESS for i in range(extra_writers)}
    counter = GCounter(counts)
    assert counter.value == min(sum(counts.values()), MAX_TOTAL)
    assert counter.value <= MAX_TOTAL < INT64_MAX
    half = dict(list(counts.items())[::2])
    a, b = GCounter(half), GCounter(counts)
    assert a.merge(b) == b.merge(a) == b
    assert a.merge(b).value == counter.value


def test_eight_thousand_writers_at_the_bound_saturate_the_total() -> None:
    counter = GCounter({f"w{i}": MAX_ACCESS for i in range(8200)})
    assert counter.value == MAX_TOTAL


# --- the clock after the largest stamps that decode -----------------------------------------


@LAWS
@given(
    remote=st.builds(HLC, walls_in_range(), counters_in_range()),
    physical=st.integers(0, MAX_WALL_MS) | st.sampled_from([0, 1_700_000_000_000]),
    ticks=st.integers(1, 50),
)
@example(remote=HLC(1_700_000_590_000, MAX_COUNTER), physical=1_700_000_000_000, ticks=5)
@example(remote=HLC(MAX_WALL_MS, MAX_COUNTER), physical=0, ticks=50)
def test_a_clock_that_saw_any_valid_stamp_keeps_issuing_valid_increasing_stamps(
    remote: HLC, physical: int, ticks: int
) -> None:
    clock = HybridClock(physical=ManualClock(physical))
    clock.observe(remote)
    stamps = [clock.now() for _ in range(ticks)]
    assert stamps == sorted(set(stamps)), "not strictly increasing"
    assert stamps[0] > min(remote, HLC(*CEILING))
    for stamp in stamps:
        assert 0 <= stamp.wall_ms <= MAX_WALL_MS
        assert 0 <= stamp.counter <= MAX_COUNTER
    # A restart from the log (the clock reloads the largest stamp, as any stamp
    # received: at most the ceiling) does the same.
    again = HybridClock(physical=ManualClock(physical), last=stamps[-1])
    assert min(stamps[-1], HLC(*CEILING)) < again.now() <= HLC(MAX_WALL_MS, MAX_COUNTER)


def test_a_full_counter_costs_one_millisecond_not_every_later_write() -> None:
    now = 1_700_000_000_000
    clock = HybridClock(physical=ManualClock(now))
    clock.observe(HLC(now + 590_000, MAX_COUNTER))
    assert clock.now() == HLC(now + 590_001, 0)
    assert clock.now() == HLC(now + 590_001, 1)


def test_a_clock_restored_from_a_log_with_an_out_of_range_stamp_still_ticks() -> None:
    # A store written before the bounds existed may hold [now + 590 s, 2^63 - 1].
    now = 1_700_000_000_000
    clock = HybridClock(physical=ManualClock(now), last=HLC(now + 590_000, INT64_MAX))
    stamp = clock.now()
    assert stamp == HLC(now + 590_001, 0)
    clock = HybridClock(physical=ManualClock(now), last=HLC(INT64_MAX, INT64_MAX))
    assert clock.now() == HLC(MAX_WALL_MS, 0)


def test_the_clock_refuses_clearly_only_after_its_last_stamp() -> None:
    clock = HybridClock(physical=ManualClock(0), last=HLC(MAX_WALL_MS, MAX_COUNTER))
    assert clock.last == HLC(*CEILING)  # taken over as the ceiling: a millisecond left
    assert clock.now() == HLC(MAX_WALL_MS, 0)
    # The 2^32 stamps of that millisecond take too long to issue here: start near the end.
    clock._last = HLC(MAX_WALL_MS, MAX_COUNTER - 1)
    assert clock.now() == HLC(MAX_WALL_MS, MAX_COUNTER)
    with pytest.raises(ClockExhaustedError, match="every timestamp"):
        clock.now()
    assert clock.last == HLC(MAX_WALL_MS, MAX_COUNTER)  # and nothing was issued


def test_a_writer_at_the_last_sequence_number_refuses_clearly() -> None:
    author = OpAuthor("w", SIGNER, HybridClock(physical=ManualClock(0)), last_seq=MAX_SEQ - 1)
    op = author.make("m1", MemoryPatch(create=Creation(), content="last"))
    assert decode_op(op.encoded).seq == MAX_SEQ
    with pytest.raises(ClockExhaustedError, match="sequence number"):
        author.make("m1", MemoryPatch(content="one too many"))
    assert author.last_seq == MAX_SEQ
