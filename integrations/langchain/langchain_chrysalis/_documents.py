"""Memories as LangChain documents: ids, upserts, filters and stored vectors.

A document written through an adapter is a memory whose metadata carries two
reserved keys: ``lc_id`` (the document's id as the caller knows it) and
``lc_metadata`` (the document's own metadata, one last-writer-wins value, so
that re-adding a document replaces its metadata instead of merging it). Any
other memory reads as a document whose id is the memory's id and whose
metadata is the memory's metadata.

A document added again after it was deleted brings its memory back (learning a
forgotten id revives it; the later write wins, on every replica). Earlier
versions made a new memory instead, ``<id>~1``, ``<id>~2``...: a document is
still found in those, its live memory being the first of ``<id>``, ``<id>~1``...
that is not forgotten.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Final

import msgspec
from langchain_core.documents import Document

from chrysalis_memory import AgentMemory, MemoryDocument, RecallHit
from chrysalis_memory import validation as check
from chrysalis_memory.errors import InvalidArgumentError, UnknownMemoryError

LC_ID: Final = "lc_id"
LC_METADATA: Final = "lc_metadata"
RECALL_FILTERS: Final = frozenset({"tags", "memory_type", "source", "since", "until"})
_MAX_PLAIN_ID: Final = 200
_SEPARATOR: Final = "~"
MAX_RECALL: Final = 1000
"""The most hits one recall returns."""


def new_id() -> str:
    return str(uuid.uuid4())


def base_memory_id(doc_id: str) -> str:
    """The memory id of a document id's first incarnation (hashed if it could not
    be a memory id, or would leave no room for the incarnation suffix)."""
    if not isinstance(doc_id, str) or not doc_id:
        raise InvalidArgumentError(f"document ids must be non-empty strings, got {doc_id!r}")
    if len(doc_id) <= _MAX_PLAIN_ID and not doc_id.startswith("emb:"):
        return doc_id
    return "lc:" + hashlib.sha256(doc_id.encode("utf-8", "surrogatepass")).hexdigest()


def logical_id(memory: MemoryDocument) -> str:
    value = memory.metadata.get(LC_ID)
    return value if isinstance(value, str) and value else memory.id


async def find_live(
    mem: AgentMemory, doc_id: str, base: str | None = None
) -> tuple[MemoryDocument | None, str]:
    """The live memory holding document ``doc_id`` and its memory id, or None and
    the memory id to learn the document under (its forgotten memory, brought back,
    or a new one). ``base``: the memory id of the document, when the caller derives
    it. The ``<base>~<n>`` memories of earlier versions are looked at too."""
    base = base_memory_id(doc_id) if base is None else base
    revive: str | None = None
    n = 0
    while True:
        memory_id = base if n == 0 else f"{base}{_SEPARATOR}{n}"
        memory = await mem.get(memory_id, include_forgotten=True)
        if memory is None:
            return None, memory_id if revive is None else revive
        if logical_id(memory) == doc_id:
            if not memory.forgotten:
                return memory, memory_id
            if revive is None:
                revive = memory_id
        n += 1


def _exact(value: Any) -> Any:
    """Subclasses of str (LangChain's message text) as plain strings."""
    if isinstance(value, str):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def plain(value: Mapping[str, Any]) -> dict[str, Any]:
    """``value`` as it reads back from the store (JSON types), for comparisons."""
    try:
        result: dict[str, Any] = msgspec.json.decode(msgspec.json.encode(value, enc_hook=_exact))
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidArgumentError(f"metadata must be JSON-serialisable: {exc}") from None
    return result


_MISSING: Final = object()


class Writer:
    """How an adapter writes memories: importance, confidence, type and tags."""

    def __init__(
        self,
        *,
        importance: float,
        confidence: float,
        memory_type: str,
        tags: Iterable[str] = (),
    ) -> None:
        self.importance = check.unit_interval("importance", importance)
        self.confidence = check.unit_interval("confidence", confidence)
        self.memory_type = check.memory_type(memory_type)
        self.tags = check.tags(list(tags))

    async def learn(
        self,
        mem: AgentMemory,
        content: str,
        metadata: Mapping[str, Any],
        *,
        extra_tags: Sequence[str] = (),
        memory_id: str | None = None,
    ) -> str:
        """Learn a new memory; returns its id."""
        return await mem.learn(
            str(content),  # an exact str: msgspec encodes no str subclasses
            importance=self.importance,
            confidence=self.confidence,
            memory_type=self.memory_type,
            tags=sorted({*self.tags, *extra_tags}),
            metadata=plain(metadata),
            memory_id=memory_id,
        )

    async def upsert(
        self,
        mem: AgentMemory,
        doc_id: str,
        content: str,
        fields: Mapping[str, Any],
        *,
        extra_tags: Sequence[str] = (),
        base: str | None = None,
    ) -> str:
        """Create document ``doc_id``, or overwrite its content and ``fields`` (memory
        metadata keys); returns the memory id. Nothing is written when nothing changes."""
        content = str(content)
        wanted = plain({LC_ID: doc_id, **fields})
        tags = sorted({*self.tags, *extra_tags})
        memory, memory_id = await find_live(mem, doc_id, base)
        if memory is None:
            forgotten = await mem.get(memory_id, include_forgotten=True)
            await self.learn(mem, content, wanted, extra_tags=extra_tags, memory_id=memory_id)
            stale = [] if forgotten is None else [t for t in forgotten.tags if t not in tags]
            if stale:  # brought back: it keeps no tag of its earlier life
                await mem.untag(memory_id, *stale)
            return memory_id
        changes: dict[str, Any] = {}
        if memory.content != content:
            changes["content"] = content
        changed = {k: v for k, v in wanted.items() if memory.metadata.get(k, _MISSING) != v}
        if changed:
            changes["metadata"] = changed
        if changes:
            await mem.update(memory_id, **changes)
        missing = [tag for tag in tags if tag not in memory.tags]
        if missing:
            await mem.tag(memory_id, *missing)
        if memory.importance < self.importance or memory.confidence < self.confidence:
            await mem.reinforce(
                memory_id,
                importance=max(memory.importance, self.importance),
                confidence=max(memory.confidence, self.confidence),
            )
        return memory_id


def to_document(memory: MemoryDocument, *, doc_id: str | None = None) -> Document:
    """A memory as a LangChain document (see the module docstring)."""
    stored = memory.metadata.get(LC_METADATA)
    if isinstance(stored, dict):
        metadata = dict(stored)
    else:
        metadata = {k: v for k, v in memory.metadata.items() if k != LC_ID}
    return Document(page_content=memory.content, metadata=metadata, id=doc_id or logical_id(memory))


def describe(hit: RecallHit | MemoryDocument) -> dict[str, Any]:
    """What Chrysalis knows about a memory (or a recall hit), for a document's metadata."""
    memory = hit.memory if isinstance(hit, RecallHit) else hit
    info: dict[str, Any] = {
        "memory_id": memory.id,
        "memory_type": memory.memory_type.value,
        "tags": list(memory.tags),
        "importance": memory.importance,
        "confidence": memory.confidence,
        "access_count": memory.access_count,
        "source": memory.source_instance,
        "created_at": memory.created_at,
        "updated_at": memory.updated_at,
    }
    if isinstance(hit, RecallHit):
        info.update(score=hit.score, similarity=hit.similarity, relevance=hit.relevance)
    return info


def split_filter(
    filter: Mapping[str, Any] | None, scope_tags: Sequence[str] = ()
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a ``filter`` into recall's own filters (tags, memory_type, source,
    since, until) and conditions on the documents' metadata."""
    recall: dict[str, Any] = {}
    metadata: dict[str, Any] = {}
    if filter is not None and not isinstance(filter, Mapping):
        raise InvalidArgumentError(f"filter must be a mapping, got {type(filter).__name__}")
    for key, value in (filter or {}).items():
        (recall if key in RECALL_FILTERS else metadata)[key] = value
    tags = recall.pop("tags", None)
    if isinstance(tags, str):
        tags = [tags]
    merged = sorted({*scope_tags, *(tags or ())})
    if merged:
        recall["tags"] = merged
    return recall, metadata


def recall_size(k: int, filtered: bool) -> int:
    """How many hits to ask recall for, to rank ``k`` by similarity alone."""
    wanted = max(4 * k, k + 16) * (4 if filtered else 1)
    return min(MAX_RECALL, wanted)


def matches(value: Mapping[str, Any], conditions: Mapping[str, Any]) -> bool:
    """Whether ``value`` meets every condition: equality, nested mappings, or the
    operators ``$eq $ne $gt $gte $lt $lte $in $nin`` (LangGraph's and Chroma's)."""
    return all(_match(value.get(key), wanted) for key, wanted in conditions.items())


def _match(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, Mapping):
        if any(isinstance(k, str) and k.startswith("$") for k in wanted):
            return all(_operator(value, op, operand) for op, operand in wanted.items())
        return isinstance(value, Mapping) and all(
            _match(value.get(k), v) for k, v in wanted.items()
        )
    if isinstance(wanted, list | tuple):
        return (
            isinstance(value, list | tuple)
            and len(value) == len(wanted)
            and all(_match(v, w) for v, w in zip(value, wanted, strict=True))
        )
    return bool(value == wanted)


def _operator(value: Any, op: str, operand: Any) -> bool:
    if op == "$eq":
        return bool(value == operand)
    if op == "$ne":
        return bool(value != operand)
    if op == "$in":
        return value in operand
    if op == "$nin":
        return value not in operand
    if op in ("$gt", "$gte", "$lt", "$lte"):
        try:
            left, right = float(value), float(operand)
        except (TypeError, ValueError):
            return False
        if op == "$gt":
            return left > right
        if op == "$gte":
            return left >= right
        if op == "$lt":
            return left < right
        return left <= right
    raise InvalidArgumentError(f"unsupported filter operator {op!r}")


async def stored_vectors(
    mem: AgentMemory, model: str, memory_ids: Sequence[str]
) -> list[list[float] | None]:
    """The vectors recall holds of these memories if it embeds with ``model``
    (None for each it holds none of, or has forgotten since)."""
    if not memory_ids or await mem.embedding_model() != model:
        return [None] * len(memory_ids)
    vectors: list[list[float] | None] = []
    for memory_id in memory_ids:
        try:
            vectors.append(await mem.embedding(memory_id))
        except UnknownMemoryError:
            vectors.append(None)
    return vectors


def timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)
