"""Materialised CRDT state of documents: the fold of ops and the state merge.

A document's state is a product of CRDTs, one per field (ARCHITECTURE §2).
Applying an op joins that op's effect into each field it touches, so the fold
of a set of ops does not depend on their order or multiplicity, and merging
two states equals folding the union of their ops::

    fold(A | B) == merge(fold(A), fold(B))

(``tests/core/test_state_laws.py`` checks both with hypothesis.)
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Any, Final, TypeAlias

import msgspec
from msgspec import UNSET

from chrysalis_memory.crdt import GCounter, GSet, LWWMap, LWWRegister, MaxRegister, MinRegister
from chrysalis_memory.crdt.hlc import Stamp
from chrysalis_memory.crdt.sets import ORSet
from chrysalis_memory.model.document import (
    DocumentType,
    EmbeddingDocument,
    MemoryDocument,
    MemoryType,
    SyncStatus,
)
from chrysalis_memory.model.ops import EmbeddingPatch, MemoryPatch, Op, b64decode

BOTTOM: Final = Stamp(-1, 0, "")
"""A stamp below every real write: the initial stamp of an unset register."""

_ENCODER: Final = msgspec.json.Encoder(order="sorted")


def stamp_of(op: Op) -> Stamp:
    return Stamp(op.hlc[0], op.hlc[1], op.writer)


class MemoryState:
    """The CRDT state of one memory on one replica."""

    __slots__ = (
        "access",
        "confidence",
        "content",
        "created",
        "embedding_ref",
        "evidence",
        "forgotten",
        "id",
        "importance",
        "memory_type",
        "metadata",
        "ops",
        "parent_memories",
        "referenced",
        "related_memories",
        "tags",
        "updated",
    )

    doc_type: Final = "memory"

    def __init__(self, doc_id: str) -> None:
        self.id = doc_id
        self.created: MinRegister[tuple[Stamp, str]] = MinRegister()
        self.content: LWWRegister[str | None] = LWWRegister(None, BOTTOM)
        self.memory_type: LWWRegister[str | None] = LWWRegister(None, BOTTOM)
        self.embedding_ref: LWWRegister[str | None] = LWWRegister(None, BOTTOM)
        self.forgotten: LWWRegister[bool] = LWWRegister(False, BOTTOM)
        self.metadata: LWWMap[Any] = LWWMap()
        self.tags: ORSet[str] = ORSet()
        self.importance: MaxRegister[float] = MaxRegister()
        self.confidence: MaxRegister[float] = MaxRegister()
        self.access = GCounter()
        self.evidence: GSet[str] = GSet()
        self.related_memories: GSet[str] = GSet()
        self.parent_memories: GSet[str] = GSet()
        self.updated: MaxRegister[Stamp] = MaxRegister()
        self.ops: GSet[str] = GSet()
        self.referenced: GSet[str] = GSet()

    # --- the fold ---------------------------------------------------------------

    def apply(self, op: Op) -> bool:
        """Join one op into this state; False if it was already folded in.

        The op must already be verified and must belong to this document.
        """
        if not self.ops.add(op.cid):
            return False
        self.referenced.update(op.parents)
        stamp = Stamp(op.hlc[0], op.hlc[1], op.writer)
        self.updated.offer(stamp)
        patch = op.patch
        assert isinstance(patch, MemoryPatch)
        if patch.create is not UNSET:
            self.created.offer((stamp, patch.create.kind))
        if patch.content is not UNSET:
            self.content.set(patch.content, stamp)
        if patch.memory_type is not UNSET:
            self.memory_type.set(patch.memory_type, stamp)
        if patch.embedding_ref is not UNSET:
            self.embedding_ref.set(patch.embedding_ref, stamp)
        if patch.metadata is not UNSET:
            for key, value in patch.metadata.items():
                self.metadata.set(key, value, stamp)
        if patch.tags_add:
            dot = (op.writer, op.seq)
            for tag in patch.tags_add:
                self.tags.add(tag, dot)
        if patch.tags_remove:
            for tag, dots in patch.tags_remove.items():
                self.tags.remove_dots(tag, ((w, n) for w, n in dots))
        if patch.importance is not UNSET:
            self.importance.offer(patch.importance)
        if patch.confidence is not UNSET:
            self.confidence.offer(patch.confidence)
        if patch.evidence:
            self.evidence.update(patch.evidence)
        if patch.related_memories:
            self.related_memories.update(patch.related_memories)
        if patch.parent_memories:
            self.parent_memories.update(patch.parent_memories)
        if patch.access is not UNSET:
            self.access.observe(op.writer, patch.access)
        if patch.forgotten is not UNSET:
            self.forgotten.set(patch.forgotten, stamp)
        return True

    # --- the state merge (accretion) --------------------------------------------

    def join(self, other: MemoryState) -> None:
        """Merge ``other`` (a state of the same memory) into this one."""
        if other.id != self.id:
            raise ValueError(f"cannot merge memory {other.id!r} into {self.id!r}")
        for name in self.__slots__:
            if name != "id":
                getattr(self, name).join(getattr(other, name))

    def merge(self, other: MemoryState) -> MemoryState:
        """The least upper bound of two states of one memory, as a new state."""
        result = self.copy()
        result.join(other)
        return result

    def copy(self) -> MemoryState:
        result = MemoryState(self.id)
        for name in self.__slots__:
            if name != "id":
                setattr(result, name, getattr(self, name).copy())
        return result

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MemoryState):
            return NotImplemented
        return all(getattr(self, n) == getattr(other, n) for n in self.__slots__)

    __hash__ = None  # type: ignore[assignment]

    # --- derived values ----------------------------------------------------------

    @property
    def exists(self) -> bool:
        """True once a creating op is known (ops can arrive before their creation)."""
        return self.created.value is not None and self.content.value is not None

    @property
    def is_forgotten(self) -> bool:
        return self.forgotten.value

    @property
    def version(self) -> int:
        return len(self.ops)

    @property
    def heads(self) -> list[str]:
        """Ops of this memory that no known op names as a parent, sorted."""
        return sorted(cid for cid in self.ops if cid not in self.referenced)

    def observed_dots(self, tag: str) -> list[tuple[str, int]]:
        """The add-dots of ``tag`` that a remove issued now must tombstone."""
        return sorted(self.tags.observed(tag))

    def to_document(self, sync_status: SyncStatus = SyncStatus.PENDING) -> MemoryDocument:
        """The user-facing view; only valid when :attr:`exists`."""
        created = self.created.value
        if created is None or self.content.value is None:
            raise ValueError(f"memory {self.id!r} has no creating op yet")
        (created_stamp, kind) = created
        return MemoryDocument.model_construct(
            id=self.id,
            type=DocumentType(kind),
            content=self.content.value,
            embedding_ref=self.embedding_ref.value,
            memory_type=MemoryType(self.memory_type.value or "episodic"),
            tags=sorted(self.tags.value),
            importance=self.importance.value or 0.0,
            confidence=self.confidence.value or 0.0,
            access_count=self.access.value,
            source_instance=created_stamp.writer,
            created_at=created_stamp.wall_ms / 1000,
            updated_at=(self.updated.value or created_stamp).wall_ms / 1000,
            version=self.version,
            sync_status=sync_status,
            related_memories=sorted(self.related_memories),
            parent_memories=sorted(self.parent_memories),
            evidence=sorted(self.evidence),
            metadata=self.metadata.value,
            forgotten=self.forgotten.value,
        )

    # --- persistence ---------------------------------------------------------------

    def to_record(self) -> dict[str, Any]:
        """Plain, canonically ordered data: equal states give equal records."""

        def lww(register: LWWRegister[Any]) -> list[Any]:
            return [register.value, list(register.stamp)]

        created = self.created.value
        return {
            "id": self.id,
            "created": None if created is None else [list(created[0]), created[1]],
            "content": lww(self.content),
            "memory_type": lww(self.memory_type),
            "embedding_ref": lww(self.embedding_ref),
            "forgotten": lww(self.forgotten),
            "metadata": {k: lww(r) for k, r in sorted(self.metadata.entries.items())},
            "tags": {t: sorted(d) for t, d in sorted(self.tags.adds.items())},
            "tags_removed": {t: sorted(d) for t, d in sorted(self.tags.removed.items())},
            "importance": self.importance.value,
            "confidence": self.confidence.value,
            "access": dict(sorted(self.access.counts.items())),
            "evidence": sorted(self.evidence),
            "related_memories": sorted(self.related_memories),
            "parent_memories": sorted(self.parent_memories),
            "updated": None if self.updated.value is None else list(self.updated.value),
            "ops": sorted(self.ops),
            "referenced": sorted(self.referenced),
        }

    def encode(self) -> bytes:
        return _ENCODER.encode(self.to_record())

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> MemoryState:
        def lww(data: list[Any]) -> LWWRegister[Any]:
            value, stamp = data
            return LWWRegister(value, Stamp(*stamp))

        state = cls(record["id"])
        if record["created"] is not None:
            stamp, kind = record["created"]
            state.created = MinRegister((Stamp(*stamp), kind))
        state.content = lww(record["content"])
        state.memory_type = lww(record["memory_type"])
        state.embedding_ref = lww(record["embedding_ref"])
        state.forgotten = lww(record["forgotten"])
        state.metadata = LWWMap({k: lww(v) for k, v in record["metadata"].items()})
        state.tags = ORSet(
            {t: [(w, s) for w, s in dots] for t, dots in record["tags"].items()},
            {t: [(w, s) for w, s in dots] for t, dots in record["tags_removed"].items()},
        )
        state.importance = MaxRegister(record["importance"])
        state.confidence = MaxRegister(record["confidence"])
        state.access = GCounter(record["access"])
        state.evidence = GSet(record["evidence"])
        state.related_memories = GSet(record["related_memories"])
        state.parent_memories = GSet(record["parent_memories"])
        updated = record["updated"]
        state.updated = MaxRegister(None if updated is None else Stamp(*updated))
        state.ops = GSet(record["ops"])
        state.referenced = GSet(record["referenced"])
        return state


class EmbeddingState:
    """The CRDT state of one embedding document: an LWW payload."""

    __slots__ = ("created", "id", "ops", "payload", "referenced")

    doc_type: Final = "embedding"

    def __init__(self, doc_id: str) -> None:
        self.id = doc_id
        self.payload: LWWRegister[EmbeddingPatch | None] = LWWRegister(None, BOTTOM)
        self.created: MinRegister[int] = MinRegister()
        self.ops: GSet[str] = GSet()
        self.referenced: GSet[str] = GSet()

    def apply(self, op: Op) -> bool:
        if not self.ops.add(op.cid):
            return False
        assert isinstance(op.patch, EmbeddingPatch)
        self.referenced.update(op.parents)
        self.created.offer(op.hlc[0])
        self.payload.set(op.patch, stamp_of(op))
        return True

    def join(self, other: EmbeddingState) -> None:
        if other.id != self.id:
            raise ValueError(f"cannot merge embedding {other.id!r} into {self.id!r}")
        self.payload.join(other.payload)
        self.created.join(other.created)
        self.ops.join(other.ops)
        self.referenced.join(other.referenced)

    def merge(self, other: EmbeddingState) -> EmbeddingState:
        result = self.copy()
        result.join(other)
        return result

    def copy(self) -> EmbeddingState:
        result = EmbeddingState(self.id)
        result.join(self)
        return result

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EmbeddingState):
            return NotImplemented
        return self.to_record() == other.to_record()

    __hash__ = None  # type: ignore[assignment]

    @property
    def exists(self) -> bool:
        return self.payload.value is not None

    @property
    def version(self) -> int:
        return len(self.ops)

    @property
    def heads(self) -> list[str]:
        return sorted(cid for cid in self.ops if cid not in self.referenced)

    def to_document(self, sync_status: SyncStatus = SyncStatus.PENDING) -> EmbeddingDocument:
        payload = self.payload.value
        if payload is None:
            raise ValueError(f"embedding {self.id!r} has no payload yet")
        raw = b64decode(payload.vector)
        return EmbeddingDocument.model_construct(
            id=self.id,
            text_hash=payload.text_hash,
            vector=list(struct.unpack(f"<{payload.dimensions}f", raw)),
            dimensions=payload.dimensions,
            model=payload.model,
            created_at=(self.created.value or 0) / 1000,
            sync_status=sync_status,
        )

    def to_record(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "payload": [msgspec.to_builtins(self.payload.value), list(self.payload.stamp)],
            "created": self.created.value,
            "ops": sorted(self.ops),
            "referenced": sorted(self.referenced),
        }

    def encode(self) -> bytes:
        return _ENCODER.encode(self.to_record())

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> EmbeddingState:
        state = cls(record["id"])
        payload, stamp = record["payload"]
        value = None if payload is None else msgspec.convert(payload, EmbeddingPatch)
        state.payload = LWWRegister(value, Stamp(*stamp))
        state.created = MinRegister(record["created"])
        state.ops = GSet(record["ops"])
        state.referenced = GSet(record["referenced"])
        return state


DocState: TypeAlias = MemoryState | EmbeddingState


def new_state(doc_id: str, doc_type: str) -> DocState:
    return EmbeddingState(doc_id) if doc_type == "embedding" else MemoryState(doc_id)


def decode_state(data: bytes | str, doc_type: str) -> DocState:
    record = msgspec.json.decode(data)
    if doc_type == "embedding":
        return EmbeddingState.from_record(record)
    return MemoryState.from_record(record)


def fold(ops: Iterable[Op], into: dict[str, DocState] | None = None) -> dict[str, DocState]:
    """Fold verified ops into per-document states (order and duplicates don't matter).

    Ops whose document type disagrees with an existing state of the same id are
    a protocol violation the store rejects before folding; here they would raise.
    """
    states: dict[str, DocState] = {} if into is None else into
    for op in ops:
        state = states.get(op.doc)
        if state is None:
            state = states[op.doc] = new_state(op.doc, op.doc_type)
        state.apply(op)
    return states
