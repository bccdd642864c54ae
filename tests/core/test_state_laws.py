"""Whole documents: the op fold and the state merge agree and are CRDTs.

Histories are played by real writers (``strategies.histories``): signed ops,
causal parents, observed-remove dots from each writer's own view, cumulative
access counts, concurrent creates of one id, HLC ties and clock skew.

* the fold is independent of the order and multiplicity of ops;
* ``fold(A | B) == merge(fold(A), fold(B))`` for any subsets A and B;
* the document merge is commutative, associative and idempotent;
* accretion keeps every id and never lowers importance, confidence, evidence
  or access counts; a write storm merges to one state in any order;
* states survive ``to_record``/``from_record`` and equal states encode to
  equal bytes (the basis of ``state_root()``).
"""

from __future__ import annotations

import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chrysalis_memory.crdt import HybridClock
from chrysalis_memory.crdt._canonical import canonical_bytes
from chrysalis_memory.crdt.hlc import Stamp
from chrysalis_memory.model import (
    EmbeddingState,
    MemoryDocument,
    MemoryPatch,
    MemoryState,
    Op,
    OpAuthor,
    accrete,
    fold,
    merge_write_storm,
)
from chrysalis_memory.model.ops import Creation
from chrysalis_memory.model.state import DocState, decode_state, new_state

from .strategies import (
    HEAVY,
    History,
    ManualClock,
    encoded,
    histories,
    signer_for,
    states_equal,
)


def subset(ops: list[Op], mask: list[bool]) -> list[Op]:
    assert len(mask) >= len(ops)
    return [op for op, keep in zip(ops, mask[: len(ops)], strict=True) if keep]


masks = st.lists(st.booleans(), min_size=40, max_size=40)


def state_of(states: dict[str, DocState], doc: str, like: DocState) -> DocState:
    """The state of ``doc``, or an empty one (nothing known about it yet)."""
    return states.get(doc) or new_state(doc, like.doc_type)


# --- the fold -------------------------------------------------------------------------


@HEAVY
@given(history=histories(), data=st.data())
def test_fold_ignores_order_and_duplicates(history: History, data: st.DataObject) -> None:
    reference = fold(history.ops)
    extra = data.draw(st.lists(st.sampled_from(history.ops), max_size=10), "duplicates")
    shuffled = data.draw(st.permutations(history.ops + extra + history.ops[:3]), "order")
    again = fold(shuffled)
    assert states_equal(again, reference)
    assert encoded(again) == encoded(reference)
    for doc, state in reference.items():
        assert state.version == len({op.cid for op in history.ops if op.doc == doc})
        if isinstance(state, MemoryState) and state.exists:
            assert again[doc].to_document() == state.to_document()


@HEAVY
@given(history=histories(), data=st.data())
def test_fold_is_incremental(history: History, data: st.DataObject) -> None:
    """Folding more ops into existing states equals folding everything at once."""
    split = data.draw(st.integers(0, len(history.ops)), "split")
    states = fold(history.ops[split:])
    fold(reversed(history.ops[:split]), into=states)
    assert states_equal(states, fold(history.ops))


@HEAVY
@given(history=histories(), a=masks, b=masks)
def test_fold_of_union_equals_merge_of_folds(
    history: History, a: list[bool], b: list[bool]
) -> None:
    ops_a, ops_b = subset(history.ops, a), subset(history.ops, b)
    union = {op.cid: op for op in ops_a + ops_b}
    expected = fold(union.values())
    fa, fb = fold(ops_a), fold(ops_b)
    merged = accrete(fa, fb.values())
    assert states_equal(merged, expected)
    assert encoded(merged) == encoded(expected)
    # Document by document, with the plain state merge too.
    for doc, state in expected.items():
        assert merge_write_storm([state_of(fa, doc, state), state_of(fb, doc, state)]) == state


@HEAVY
@given(history=histories(embeddings=False))
def test_fold_matches_the_field_semantics(history: History) -> None:
    """An oracle computed from the ops alone, field by field (ARCHITECTURE §2)."""
    states = fold(history.ops)
    for doc, state in states.items():
        assert isinstance(state, MemoryState)
        ops = [op for op in history.ops if op.doc == doc]
        patches: list[tuple[Op, MemoryPatch]] = [(op, op.patch) for op in ops]  # type: ignore[misc]

        def lww(name: str, patches: list[tuple[Op, MemoryPatch]] = patches) -> Any:
            writes = [
                (Stamp(op.hlc[0], op.hlc[1], op.writer), canonical_bytes(v), v)
                for op, p in patches
                if (v := getattr(p, name)) is not msgspec.UNSET
            ]
            return max(writes)[2] if writes else None

        assert state.content.value == lww("content")
        assert state.memory_type.value == lww("memory_type")
        assert state.forgotten.value == (lww("forgotten") or False)
        creations = [Stamp(op.hlc[0], op.hlc[1], op.writer) for op, p in patches if p.create]
        if creations:
            assert state.created.value is not None
            assert state.created.value[0] == min(creations)  # the earliest create wins

        importance = [p.importance for _, p in patches if p.importance is not msgspec.UNSET]
        assert state.importance.value == (max(importance) if importance else None)
        assert state.evidence.value == {e for _, p in patches for e in p.evidence}
        related = {m for _, p in patches for m in p.related_memories}
        assert state.related_memories.value == related

        # Tags: present iff some add of the tag was not observed by a remove of it.
        adds = {(t, (op.writer, op.seq)) for op, p in patches for t in p.tags_add}
        removes = {(t, tuple(d)) for _, p in patches for t, ds in p.tags_remove.items() for d in ds}
        assert state.tags.value == {t for t, dot in adds if (t, dot) not in removes}

        # Access: the sum of each writer's last published cumulative count.
        expected_access = sum(n for (d, _), n in history.access_totals.items() if d == doc)
        assert state.access.value == expected_access
        if state.exists:
            view = state.to_document()
            assert isinstance(view, MemoryDocument)
            assert view.access_count == expected_access
            assert view.tags == sorted(view.tags)
            assert view.version == len(ops)
            assert view.updated_at >= view.created_at
            assert view.source_instance == min(creations).writer


# --- the document merge ---------------------------------------------------------------


@HEAVY
@given(history=histories(), a=masks, b=masks, c=masks)
def test_document_merge_is_a_semilattice(
    history: History, a: list[bool], b: list[bool], c: list[bool]
) -> None:
    fa, fb, fc = (fold(subset(history.ops, m)) for m in (a, b, c))
    for doc, like in fold(history.ops).items():
        sa, sb, sc = (state_of(f, doc, like) for f in (fa, fb, fc))
        before = [s.encode() for s in (sa, sb, sc)]
        assert sa.merge(sb) == sb.merge(sa)  # type: ignore[arg-type]
        assert sa.merge(sb).merge(sc) == sa.merge(sb.merge(sc))  # type: ignore[arg-type]
        assert sa.merge(sa) == sa  # type: ignore[arg-type]
        assert sa.merge(sb).merge(sb) == sa.merge(sb)  # type: ignore[arg-type]
        joined = sa.copy()
        joined.join(sb)  # type: ignore[arg-type]
        assert joined == sa.merge(sb)  # type: ignore[arg-type]
        assert [s.encode() for s in (sa, sb, sc)] == before, "merge changed its inputs"


@HEAVY
@given(history=histories(), a=masks, b=masks)
def test_accretion_keeps_everything_and_never_decreases(
    history: History, a: list[bool], b: list[bool]
) -> None:
    local, remote = fold(subset(history.ops, a)), fold(subset(history.ops, b))
    local_before, remote_before = encoded(local), encoded(remote)
    result = accrete(local, remote.values())
    assert encoded(local) == local_before
    assert encoded(remote) == remote_before
    assert result.keys() == local.keys() | remote.keys()
    assert states_equal(accrete(list(local.values()), remote.values()), result)
    for doc, merged in result.items():
        for side in (local.get(doc), remote.get(doc)):
            if side is None:
                continue
            assert side.ops.value <= merged.ops.value  # no op is lost
            if not isinstance(merged, MemoryState):
                continue
            assert isinstance(side, MemoryState)
            for name in ("importance", "confidence"):
                ours, theirs = getattr(merged, name).value, getattr(side, name).value
                assert theirs is None or ours >= theirs, name
            assert merged.evidence.value >= side.evidence.value
            assert merged.access.value >= side.access.value
            for writer, count in side.access.counts.items():
                assert merged.access.of(writer) >= count
            assert merged.tags.removed.keys() >= side.tags.removed.keys()
            if side.exists:
                assert merged.exists


@HEAVY
@given(history=histories(min_ops=2), masks_=st.lists(masks, min_size=1, max_size=4), data=st.data())
def test_write_storm_merges_the_same_in_any_order(
    history: History, masks_: list[list[bool]], data: st.DataObject
) -> None:
    doc = data.draw(st.sampled_from(sorted(history.doc_ids)), "doc")
    like = fold(history.ops)[doc]
    versions = [state_of(fold(subset(history.ops, m)), doc, like) for m in masks_]
    expected = fold({op.cid: op for m in masks_ for op in subset(history.ops, m)}.values()).get(
        doc
    ) or new_state(doc, like.doc_type)
    storm = merge_write_storm(versions)
    assert storm == expected
    for order in itertools.permutations(versions):
        assert merge_write_storm(order) == storm
    assert merge_write_storm(versions + versions[:1]) == storm  # repeated writes


def test_write_storm_needs_a_write() -> None:
    with pytest.raises(ValueError, match="at least one write"):
        merge_write_storm([])


def test_merging_different_documents_is_refused() -> None:
    with pytest.raises(ValueError, match="cannot merge memory"):
        MemoryState("m1").join(MemoryState("m2"))
    with pytest.raises(ValueError, match="cannot merge embedding"):
        EmbeddingState("emb:1").join(EmbeddingState("emb:2"))


# --- persistence ----------------------------------------------------------------------


@HEAVY
@given(history=histories(), data=st.data())
def test_records_round_trip_and_equal_states_encode_equally(
    history: History, data: st.DataObject
) -> None:
    states = fold(history.ops)
    reordered = fold(data.draw(st.permutations(history.ops), "order"))
    for doc, state in states.items():
        cls = type(state)
        record = state.to_record()
        assert cls.from_record(record) == state
        # Through JSON, as the store keeps it.
        assert cls.from_record(msgspec.json.decode(state.encode())) == state
        again = decode_state(state.encode(), state.doc_type)
        assert again == state
        assert again.encode() == state.encode()
        assert state.copy() == state
        assert state.copy().encode() == state.encode()
        # Equal states built along different paths give identical bytes.
        assert reordered[doc] == state
        assert reordered[doc].encode() == state.encode()
        if isinstance(state, MemoryState) and state.exists:
            assert again.to_document() == state.to_document()


@HEAVY
@given(history=histories())
def test_replicas_holding_the_same_ops_converge(history: History) -> None:
    """After every writer receives every op, all hold identical documents."""
    for w in history.writers:
        for op in history.ops:
            w.receive(op)
    reference = encoded(fold(history.ops))
    for w in history.writers:
        assert encoded(w.states) == reference


# --- hand-written scenarios -------------------------------------------------------------


def test_untagging_one_tag_keeps_the_others_added_by_the_same_op() -> None:
    author = OpAuthor("a", signer_for("a"), HybridClock(physical=ManualClock(10)))
    create = author.make("m1", MemoryPatch(create=Creation(), content="x", tags_add=("p", "q")))
    state = fold([create])["m1"]
    assert isinstance(state, MemoryState)
    untag = author.make(
        "m1", MemoryPatch(tags_remove={"p": tuple(state.observed_dots("p"))}), state.heads
    )
    after = fold([create, untag])["m1"]
    assert isinstance(after, MemoryState)
    assert after.tags.value == {"q"}
    assert after.to_document().tags == ["q"]
