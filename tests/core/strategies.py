"""Hypothesis strategies shared by the core property tests.

Two families:

* strategies for single CRDT values (``lww_registers()``, ``or_sets()``, ...),
  drawn from deliberately small domains so that ties and overlaps are common;
* :func:`histories`, which plays a realistic multi-writer session against a few
  documents with real :class:`OpAuthor` instances (deterministic keys, injected
  physical clocks that skew, stall and jump backwards) and returns every op it
  minted, plus what each writer saw.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass, field
from typing import Any

import msgspec
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from chrysalis_memory.crdt import (
    HLC,
    GCounter,
    GSet,
    HybridClock,
    LWWMap,
    LWWRegister,
    MaxRegister,
    MinRegister,
    ORSet,
    Stamp,
)
from chrysalis_memory.model import EmbeddingPatch, MemoryPatch, Op, OpAuthor, Signer, decode_op
from chrysalis_memory.model.ops import Creation, b64encode
from chrysalis_memory.model.state import DocState, fold

# --- settings ---------------------------------------------------------------------

LAWS = settings(max_examples=100, deadline=None)
"""Cheap properties on single CRDT values."""

HEAVY = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
"""Properties that mint and sign whole op histories."""

# --- plain values ---------------------------------------------------------------------

WRITERS = ("a", "b", "c", "d")
writers = st.sampled_from(WRITERS)

# JSON-native values only: what a peer decodes is what a local writer holds.
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=6,
)

stamps = st.builds(
    Stamp,
    st.integers(min_value=0, max_value=4),
    st.integers(min_value=0, max_value=3),
    writers,
)
"""Small ranges, so equal HLCs from different writers (and equal stamps) are common."""

hlcs = st.builds(HLC, st.integers(min_value=0, max_value=10**6), st.integers(0, 50))

dots = st.tuples(writers, st.integers(min_value=1, max_value=4))
elements = st.sampled_from(["x", "y", "z"])

# --- CRDT values ------------------------------------------------------------------------


def lww_registers(
    values: st.SearchStrategy[Any] = json_values,
) -> st.SearchStrategy[LWWRegister[Any]]:
    return st.builds(LWWRegister, values, stamps)


max_registers = st.builds(MaxRegister, st.none() | st.integers(-5, 5) | st.floats(0, 1))
min_registers = st.builds(MinRegister, st.none() | st.integers(-5, 5) | st.floats(0, 1))
g_sets = st.builds(GSet, st.frozensets(st.integers(0, 6) | elements, max_size=6))
or_sets = st.builds(
    ORSet,
    st.dictionaries(elements, st.frozensets(dots, min_size=1, max_size=4), max_size=3),
    st.dictionaries(elements, st.frozensets(dots, min_size=1, max_size=4), max_size=3),
)
lww_maps = st.builds(
    LWWMap, st.dictionaries(st.sampled_from(["k1", "k2", "k3"]), lww_registers(), max_size=3)
)
g_counters = st.builds(
    GCounter, st.dictionaries(writers, st.integers(min_value=1, max_value=20), max_size=4)
)

CRDTS: dict[str, st.SearchStrategy[Any]] = {
    "LWWRegister": lww_registers(),
    "MaxRegister": max_registers,
    "MinRegister": min_registers,
    "GSet": g_sets,
    "ORSet": or_sets,
    "LWWMap": lww_maps,
    "GCounter": g_counters,
}

# --- signing ----------------------------------------------------------------------------


def signer_for(writer: str) -> Signer:
    """A deterministic key per writer, so a history replays identically."""
    return Signer.from_bytes(hashlib.sha256(f"chrysalis-test-key:{writer}".encode()).digest())


class ManualClock:
    """A physical clock the test moves by hand (skew, stalls, backward jumps)."""

    def __init__(self, ms: int) -> None:
        self.ms = ms

    def __call__(self) -> int:
        return self.ms


def vector_b64(values: list[float]) -> str:
    return b64encode(struct.pack(f"<{len(values)}f", *values))


# --- memory patches (for single ops) ---------------------------------------------------

unit = st.floats(min_value=0.0, max_value=1.0) | st.sampled_from([0.0, 1.0, 1e-7, 5e-324])
tags = st.text(alphabet="abcxyz-", min_size=1, max_size=5)
contents = st.text(min_size=1, max_size=20)


@st.composite
def memory_patches(draw: st.DrawFn) -> MemoryPatch:
    """Any valid memory patch (at least one field set)."""
    fields: dict[str, Any] = {}
    if draw(st.booleans()):
        fields["create"] = Creation(kind=draw(st.sampled_from(["memory", "bead", "metadata"])))
    optional = {
        "content": contents,
        "memory_type": st.sampled_from(["episodic", "semantic", "procedural"]),
        "embedding_ref": st.none() | st.text(min_size=1, max_size=10),
        "metadata": st.dictionaries(st.text(max_size=5), json_values, max_size=3),
        "tags_add": st.lists(tags, max_size=3, unique=True).map(tuple),
        "tags_remove": st.dictionaries(
            tags, st.lists(dots, min_size=1, max_size=2, unique=True).map(tuple), max_size=2
        ),
        "importance": unit,
        "confidence": unit,
        "evidence": st.lists(st.text(min_size=1, max_size=6), max_size=2).map(tuple),
        "related_memories": st.lists(st.text(min_size=1, max_size=6), max_size=2).map(tuple),
        "access": st.integers(min_value=1, max_value=10**6),
        "forgotten": st.booleans(),
    }
    for name, strategy in optional.items():
        if draw(st.booleans()):
            fields[name] = draw(strategy)
    if MemoryPatch(**fields) == MemoryPatch():  # nothing set, or only empty collections
        fields["content"] = draw(contents)
    return MemoryPatch(**fields)


@st.composite
def signed_ops(draw: st.DrawFn) -> Op:
    """One valid signed op (memory or embedding) by a fresh writer."""
    writer = draw(writers)
    clock = HybridClock(physical=ManualClock(draw(st.integers(0, 2**40))))
    author = OpAuthor(writer, signer_for(writer), clock, last_seq=draw(st.integers(0, 1000)))
    parents = draw(
        st.lists(st.binary(min_size=32, max_size=32).map(bytes.hex), max_size=2, unique=True)
    )
    if draw(st.integers(0, 4)) == 0:
        values = draw(st.lists(st.floats(width=32, allow_nan=False), min_size=1, max_size=4))
        patch: MemoryPatch | EmbeddingPatch = EmbeddingPatch(
            text_hash=hashlib.sha256(b"t").hexdigest(),
            model=draw(st.sampled_from(["m1", "nomic-embed-text"])),
            dimensions=len(values),
            vector=vector_b64(values),
        )
        doc = "emb:" + draw(st.text(alphabet="0123456789abcdef", min_size=1, max_size=8))
    else:
        patch = draw(memory_patches())
        doc = draw(st.sampled_from(["m1", "m2", "a memory id"]))
    return author.make(doc, patch, parents)


# --- histories -------------------------------------------------------------------------

MEMORY_IDS = ("m1", "m2", "m3")
EMBEDDING_ID = "emb:" + hashlib.sha256(b"some text").hexdigest()[:16]


@dataclass
class Writer:
    name: str
    author: OpAuthor
    physical: ManualClock
    known: dict[str, Op] = field(default_factory=dict)
    """Every op this writer holds (its own and received), by CID."""
    states: dict[str, DocState] = field(default_factory=dict)

    def receive(self, op: Op) -> None:
        if op.cid in self.known:
            return
        self.known[op.cid] = op
        self.author.clock.observe(op.hlc)
        fold([op], into=self.states)

    def memory(self, doc: str) -> Any:
        return self.states.get(doc)


@dataclass
class History:
    writers: list[Writer]
    ops: list[Op]
    """Every distinct op minted, in minting order."""
    access_totals: dict[tuple[str, str], int]
    """(doc, writer) -> the last cumulative access count the writer published."""

    @property
    def doc_ids(self) -> set[str]:
        return {op.doc for op in self.ops}

    def __repr__(self) -> str:  # a readable falsifying example
        lines = [
            f"  {op.writer}#{op.seq} {op.doc} hlc={tuple(op.hlc)} {op.cid[:8]} "
            f"{msgspec.json.encode(op.patch).decode()}"
            for op in self.ops
        ]
        return "History(\n" + "\n".join(lines) + "\n)"


def _mint(w: Writer, doc: str, patch: MemoryPatch | EmbeddingPatch, history: list[Op]) -> Op:
    state = w.states.get(doc)
    parents = state.heads if state is not None else []
    op = w.author.make(doc, patch, parents)
    # What a peer receives: the canonical bytes, checked and decoded.
    assert decode_op(op.encoded).cid == op.cid
    w.receive(op)
    history.append(op)
    return op


@st.composite
def histories(
    draw: st.DrawFn,
    *,
    min_ops: int = 1,
    max_steps: int = 24,
    embeddings: bool = True,
) -> History:
    """A realistic session: 2-4 writers, 1-3 memories (and maybe one embedding).

    Writers create (possibly concurrently, the same id), edit, tag and untag
    (removing the dots *they* observed), reinforce, count accesses (cumulative
    per writer), link, forget and set metadata, and now and then sync some of
    their ops to another writer. Physical clocks start skewed by a few ms and
    move forward, stall or jump back, so HLC ties across writers are frequent.
    """
    n_writers = draw(st.integers(2, 4), label="writers")
    doc_ids = MEMORY_IDS[: draw(st.integers(1, 3), label="documents")]
    ws = []
    for name in WRITERS[:n_writers]:
        physical = ManualClock(1_000 + draw(st.integers(0, 3)))
        author = OpAuthor(name, signer_for(name), HybridClock(physical=physical))
        ws.append(Writer(name, author, physical))
    minted: list[Op] = []
    access_totals: dict[tuple[str, str], int] = {}

    steps = draw(st.integers(min_value=min_ops, max_value=max_steps), label="steps")
    for _ in range(steps):
        w = draw(st.sampled_from(ws))
        # The writer's wall clock: usually forward, sometimes stalled or backwards.
        w.physical.ms = max(0, w.physical.ms + draw(st.sampled_from([0, 0, 1, 1, 2, 7, -3, -40])))
        action = draw(
            st.sampled_from(
                [
                    "create",
                    "update",
                    "tag",
                    "untag",
                    "reinforce",
                    "access",
                    "forget",
                    "metadata",
                    "link",
                    "sync",
                    "sync",
                ]
                + (["embed"] if embeddings else [])
            )
        )
        if action == "sync":
            target = draw(st.sampled_from(ws))
            mine = list(w.known.values())
            if mine and target is not w:
                chosen = draw(st.lists(st.sampled_from(mine), max_size=len(mine)))
                if draw(st.booleans()):
                    chosen = mine  # a full sync
                for op in chosen:
                    target.receive(decode_op(op.encoded))
            continue

        if action == "embed":
            values = draw(st.lists(st.sampled_from([0.0, 0.5, -1.0]), min_size=2, max_size=2))
            patch_e = EmbeddingPatch(
                text_hash=hashlib.sha256(b"some text").hexdigest(),
                model=draw(st.sampled_from(["m1", "m2"])),
                dimensions=2,
                vector=vector_b64(values),
            )
            _mint(w, EMBEDDING_ID, patch_e, minted)
            continue

        doc = draw(st.sampled_from(doc_ids))
        state = w.memory(doc)
        if action != "create" and (state is None or not state.exists) and draw(st.booleans()):
            # Learn of the memory from a writer who has it, then edit it.
            for other in ws:
                other_state = other.memory(doc)
                if other is not w and other_state is not None and other_state.exists:
                    for op in other.known.values():
                        w.receive(decode_op(op.encoded))
                    break
            state = w.memory(doc)
        if action == "create" or state is None or not state.exists:
            # A writer only edits what it knows; one that does not know ``doc``
            # creates it, perhaps concurrently with another writer.
            patch = MemoryPatch(
                create=Creation(),
                content=draw(st.sampled_from(["alpha", "beta", "gamma"])),
                memory_type=draw(st.sampled_from(["episodic", "semantic"])),
                importance=draw(st.sampled_from([0.1, 0.5, 0.9])),
                confidence=draw(st.sampled_from([0.2, 0.6])),
                tags_add=tuple(draw(st.lists(elements, max_size=2, unique=True))),
            )
        elif action == "update":
            update: dict[str, Any] = {
                "content": draw(st.sampled_from(["alpha", "beta", "delta", "omega"]))
            }
            if draw(st.booleans()):
                update["memory_type"] = draw(st.sampled_from(["semantic", "procedural"]))
            if draw(st.booleans()):
                update["embedding_ref"] = EMBEDDING_ID
            patch = MemoryPatch(**update)
        elif action == "tag":
            # Several tags in one op share one dot.
            patch = MemoryPatch(tags_add=tuple(draw(st.lists(elements, min_size=1, unique=True))))
        elif action == "untag":
            live = sorted(state.tags.value)
            if not live:
                patch = MemoryPatch(tags_add=(draw(elements),))
            else:
                chosen_tags = draw(st.lists(st.sampled_from(live), min_size=1, unique=True))
                patch = MemoryPatch(
                    tags_remove={t: tuple(state.observed_dots(t)) for t in chosen_tags}
                )
        elif action == "reinforce":
            patch = MemoryPatch(
                importance=draw(st.sampled_from([0.0, 0.3, 0.7, 0.95, 1.0])),
                confidence=draw(st.sampled_from([0.1, 0.8])),
                evidence=tuple(draw(st.lists(st.sampled_from(["e1", "e2", "e3"]), max_size=2))),
            )
        elif action == "access":
            total = state.access.of(w.name) + draw(st.integers(1, 3))
            access_totals[(doc, w.name)] = total
            patch = MemoryPatch(access=total)
        elif action == "forget":
            patch = MemoryPatch(forgotten=draw(st.sampled_from([True, True, False])))
        elif action == "metadata":
            patch = MemoryPatch(
                metadata=draw(
                    st.dictionaries(st.sampled_from(["k1", "k2"]), json_values, min_size=1)
                )
            )
        else:  # link
            others = [d for d in MEMORY_IDS if d != doc]
            patch = MemoryPatch(
                related_memories=tuple(draw(st.lists(st.sampled_from(others), max_size=2))),
                parent_memories=tuple(draw(st.lists(st.sampled_from(others), max_size=1))),
                evidence=("linked",),
            )
        _mint(w, doc, patch, minted)

    if len(minted) < min_ops:
        w = ws[0]
        for i in range(min_ops - len(minted)):
            patch = MemoryPatch(create=Creation(), content=f"filler {i}")
            _mint(w, doc_ids[0], patch, minted)
    return History(ws, minted, access_totals)


def states_equal(a: dict[str, DocState], b: dict[str, DocState]) -> bool:
    return a.keys() == b.keys() and all(a[k] == b[k] for k in a)


def encoded(states: dict[str, DocState]) -> dict[str, bytes]:
    return {k: v.encode() for k, v in sorted(states.items())}
