"""Provenance (who created a memory, and when) cannot be taken over by a later writer.

Invariant 9 (ARCHITECTURE §3), issue 13 item 2: an agent pushed a ``create`` op
on another agent's memory with a backdated clock, and the memory then showed the
attacker as ``source_instance`` and ``created_at`` near 0 on every replica. The
fold keeps the earliest creation (a min register: it converges whatever the
order); :func:`check_stamps`, run on every ingest, refuses an op stamped before
something its writer had provably seen (a parent, or its own earlier op), so a
writer who had seen a memory cannot claim to have created it first.

Here: the rule on single ops; with hypothesis over realistic multi-writer
histories (clocks that skew, stall and jump back) in any arrival order, that no
honest op is ever refused; and that a backdated creation is refused whenever the
evidence against it is held.
"""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chrysalis_memory.crdt import HLC, HybridClock
from chrysalis_memory.crdt.hlc import CEILING
from chrysalis_memory.errors import BackdatedError, InvalidOpError
from chrysalis_memory.model import MemoryPatch, Op, OpAuthor
from chrysalis_memory.model.ops import Creation, check_stamps
from chrysalis_memory.model.state import MemoryState, fold

from .strategies import HEAVY, History, ManualClock, histories, signer_for

T0 = 1_700_000_000_000


class Replica:
    """What a store knows when it checks an op: the stamps of the ops it holds."""

    def __init__(self) -> None:
        self.ops: list[Op] = []

    def check(self, *ops: Op) -> None:
        stamps = {op.cid: op.hlc for op in self.ops}
        writers: dict[str, list[tuple[int, HLC]]] = {}
        for op in self.ops:
            writers.setdefault(op.writer, []).append((op.seq, op.hlc))
        check_stamps(ops, stamps, {w: sorted(entries) for w, entries in writers.items()})

    def take(self, *ops: Op) -> None:
        self.check(*ops)
        self.ops.extend(ops)


def forge(
    writer: str, seq: int, hlc: tuple[int, int], patch: MemoryPatch, *parents: str, doc: str = "m1"
) -> Op:
    """A validly signed op with whatever stamp, as a crafted client would send it."""
    unsigned = Op(
        doc=doc,
        writer=writer,
        seq=seq,
        hlc=HLC(*hlc),
        parents=tuple(sorted(parents)),
        key=signer_for(writer).public_key,
        patch=patch,
    )
    return msgspec.structs.replace(unsigned, sig=signer_for(writer).sign(unsigned.encoded))


CREATE = MemoryPatch(create=Creation(), content="mine now")


def alice_creates() -> Op:
    author = OpAuthor("alice", signer_for("alice"), HybridClock(physical=ManualClock(T0)))
    return author.make("m1", MemoryPatch(create=Creation(), content="alice's"))


def test_a_creation_stamped_before_a_parent_it_names_is_refused() -> None:
    replica = Replica()
    creation = alice_creates()
    replica.take(creation)
    attack = forge("mallory", 1, (1000, 0), CREATE, creation.cid)
    with pytest.raises(BackdatedError, match="parent") as caught:
        replica.check(attack)
    assert caught.value.cid == attack.cid
    assert isinstance(caught.value, InvalidOpError)
    # An equal stamp is no better: an honest writer's is strictly greater.
    with pytest.raises(BackdatedError):
        replica.check(forge("mallory", 1, tuple(creation.hlc), CREATE, creation.cid))


def test_a_creation_stamped_before_its_writers_earlier_op_is_refused() -> None:
    replica = Replica()
    creation = alice_creates()
    # mallory saw the memory and wrote (an access, as recall records), then forged.
    seen = forge("mallory", 1, (T0 + 5, 0), MemoryPatch(access=1), creation.cid)
    replica.take(creation, seen)
    attack = forge("mallory", 2, (1000, 0), CREATE)  # no parents named
    with pytest.raises(BackdatedError, match="never goes back"):
        replica.check(attack)
    # In the other order (the forged op held first), the earlier op is the one out
    # of line: a replica never holds both.
    other = Replica()
    other.take(creation, attack)
    with pytest.raises(BackdatedError, match="not before its #2"):
        other.check(seen)


def test_what_changes_nothing_is_accepted() -> None:
    replica = Replica()
    creation = alice_creates()
    replica.take(creation)
    replica.check(forge("bob", 1, (T0 + 1, 0), CREATE, creation.cid))  # learn again, later
    replica.check(forge("bob", 1, (1000, 0), CREATE))  # concurrent: nothing says otherwise
    replica.check(forge("alice", 2, (T0 + 1, 0), MemoryPatch(forgotten=True), creation.cid))
    # A parent not held yet cannot be checked: it may arrive later.
    replica.check(forge("bob", 1, (1000, 0), CREATE, "ab" * 32))
    # Stamps above the clock's ceiling (the last millisecond of the range) are not
    # held against later ops: no clock takes them over.
    top = forge("carol", 1, (CEILING[0] + 1, 5), MemoryPatch(content="x"))
    replica.take(top)
    replica.check(forge("carol", 2, (CEILING[0] + 1, 0), MemoryPatch(content="y"), top.cid))


def test_the_ops_of_one_batch_are_checked_against_each_other() -> None:
    creation = alice_creates()
    seen = forge("mallory", 1, (T0 + 5, 0), MemoryPatch(access=1), creation.cid)
    attack = forge("mallory", 2, (1000, 0), CREATE)
    with pytest.raises(BackdatedError) as caught:
        Replica().check(creation, seen, attack)
    assert caught.value.cid == attack.cid


def _replay(order: list[Op]) -> tuple[Replica, dict[str, MemoryState]]:
    replica = Replica()
    for op in order:
        replica.take(op)  # raises if an honest op is refused
    states = fold(order)
    return replica, {d: s for d, s in states.items() if isinstance(s, MemoryState)}


@HEAVY
@given(history=histories(min_ops=2), data=st.data())
def test_no_honest_op_is_ever_refused_in_any_arrival_order(
    history: History, data: st.DataObject
) -> None:
    """Honest writers (whose clocks skew, stall and jump back) never trip the check,
    whatever order their ops arrive in and whichever of them a replica holds:
    concurrent creations of one id included, so they still converge."""
    order = data.draw(st.permutations(history.ops), label="arrival order")
    cut = data.draw(st.integers(0, len(order)), label="ops held")
    _replay(order[:cut])
    _replay(order)


@HEAVY
@given(history=histories(min_ops=2, embeddings=False), data=st.data())
def test_a_backdated_creation_is_refused_once_its_writer_is_known_to_have_seen_the_memory(
    history: History, data: st.DataObject
) -> None:
    """A writer who wrote anything after seeing a memory's creation (an op naming
    it, or stamped after it) forges a creation of that memory stamped before it,
    with its next sequence number: every replica holding that evidence refuses
    it, and the creator stays whoever it was."""
    writer = data.draw(st.sampled_from(history.writers), label="attacker")
    target = data.draw(st.sampled_from(sorted(history.doc_ids)), label="memory")
    creations = [op for op in history.ops if op.doc == target and op.patch.create]  # type: ignore[union-attr]
    if not creations:
        return
    first = min(creations, key=lambda op: (op.hlc, op.writer))
    theirs = [op for op in history.ops if op.writer == writer.name]
    evidence = [op for op in theirs if op.hlc > first.hlc]
    if not evidence or first.writer == writer.name:
        return
    attack = forge(
        writer.name,
        max(op.seq for op in theirs) + 1,
        (max(0, first.hlc.wall_ms - 1), 0),
        MemoryPatch(create=Creation(), content="forged"),
        *data.draw(st.sampled_from([(), (first.cid,)]), label="parents"),
        doc=target,
    )
    order = data.draw(st.permutations(history.ops), label="arrival order")
    replica, _ = _replay(order)
    with pytest.raises(BackdatedError):
        replica.check(attack)
    states = fold(replica.ops)
    state = states[target]
    assert isinstance(state, MemoryState) and state.created.value is not None
    assert state.created.value[0].writer == first.writer
