"""Hybrid search over one replica: retrieve, fuse, filter, rank."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Protocol

from chrysalis_memory.errors import InvalidArgumentError
from chrysalis_memory.model.document import SyncStatus
from chrysalis_memory.model.ops import b64decode, embedding_id, text_hash
from chrysalis_memory.model.state import DocState, EmbeddingState, MemoryState
from chrysalis_memory.recall.ranking import (
    collective_score,
    query_words,
    reciprocal_rank_fusion,
    relevance,
)
from chrysalis_memory.store import ListQuery, OpStore, RankFields
from chrysalis_memory.store.sqlite import TextHit

if TYPE_CHECKING:
    from chrysalis_memory.recall.embedders import Embedder

SearchMode = Literal["hybrid", "vector", "keyword"]
OVERFETCH = 4
"""Candidates fetched per retriever, per result wanted: room for fusion and filters."""
FILTERED_OVERFETCH = 4
"""Further factor when filters that only apply after retrieval are given."""
CONSIDERED = 3
"""Fused candidates ranked per result wanted (when no filter thins them out)."""


async def _nothing() -> list[TextHit]:
    return []


async def _vector_search(
    vectors: VectorQuery | None,
    query_vector: Sequence[float] | None,
    fetch: int,
    filters: ListQuery,
) -> Sequence[VectorHitLike]:
    if vectors is None or query_vector is None:
        return []
    return await vectors.query(query_vector, fetch, _vector_where(filters))


class VectorHitLike(Protocol):
    @property
    def id(self) -> str: ...

    @property
    def similarity(self) -> float: ...


class VectorQuery(Protocol):
    async def query(
        self, vector: Sequence[float], k: int, where: Mapping[str, Any] | None = None
    ) -> Sequence[VectorHitLike]: ...


class Candidate(NamedTuple):
    state: MemoryState
    status: SyncStatus
    score: float
    relevance: float
    similarity: float


async def search(
    store: OpStore,
    embedder: Embedder,
    vectors: VectorQuery | None,
    query: str,
    k: int,
    mode: SearchMode,
    filters: ListQuery,
    query_vector: Sequence[float] | None = None,
) -> list[Candidate]:
    """The best ``k`` live memories for ``query`` that pass ``filters``.

    ``query_vector`` is the query's embedding when the caller has it already (in
    the embedder's space); otherwise ``query`` is embedded here.
    """
    fetch = max(OVERFETCH * k, 32)
    post_filtered = (
        bool(filters.tags) or filters.since_ms is not None or filters.until_ms is not None
    )
    if post_filtered:
        fetch *= FILTERED_OVERFETCH  # these filters are only applied after retrieval
    if mode == "keyword" or vectors is None:
        query_vector = None
    elif query_vector is None:
        query_vector = (await embedder.embed([query]))[0]
    elif len(query_vector) != embedder.dimensions:
        raise InvalidArgumentError(
            f"the query vector has {len(query_vector)} dimensions; {embedder.model} "
            f"embeds in {embedder.dimensions}"
        )
    # The two retrievers run at once: Chroma and SQLite each work on a thread of their own.
    vector_hits, keyword_hits = await asyncio.gather(
        _vector_search(vectors, query_vector, fetch, filters),
        store.search_text(query_words(query), fetch) if mode != "vector" else _nothing(),
    )
    rankings = [
        ranking
        for ranking in (
            [hit.id for hit in vector_hits] if query_vector is not None else None,
            [hit.doc_id for hit in keyword_hits] if mode != "vector" else None,
        )
        if ranking is not None
    ]
    similarity = {hit.id: hit.similarity for hit in vector_hits}
    fused = reciprocal_rank_fusion(rankings)
    scaled = relevance(fused, max(len(rankings), 1))
    # Ranking can lift a memory a few places (confidence, use), not from the bottom of
    # the fused list: only the head of it is read, unless filters will thin it out.
    considered = sorted(fused, key=lambda doc_id: -fused[doc_id])
    if not post_filtered and filters.memory_type is None and filters.source is None:
        considered = considered[: max(CONSIDERED * k, 16)]
    # One round trip: what ranking needs and the encoded states (decoded for the results
    # only), with the embeddings of the keyword-only memories at the head of the fused
    # list: the results are most often those, and the similarity of each is reported.
    expected: list[str] = []
    if query_vector is not None:
        text_of = {hit.doc_id: hit.content for hit in keyword_hits}
        expected = [
            embedding_id(embedder.model, text_hash(text_of[doc_id]))
            for doc_id in considered[:k]
            if doc_id not in similarity and doc_id in text_of
        ]
    rows, embeddings = await store.rank_rows(considered, also=expected)
    scored = sorted(
        (
            (collective_score(scaled[doc_id], f.confidence, f.access_count), doc_id)
            for doc_id, (f, _, _) in rows.items()
            if passes_filters(f, filters)
        ),
        key=lambda pair: (-pair[0], pair[1]),
    )[:k]
    best: list[Candidate] = []
    for score, doc_id in scored:
        state, status = store.ranked_state(doc_id, rows[doc_id])
        if not isinstance(state, MemoryState) or not state.exists:
            continue
        best.append(
            Candidate(state, status, score, scaled[doc_id], similarity.get(doc_id, math.nan))
        )
    if query_vector is not None and any(math.isnan(c.similarity) for c in best):
        best = await _fill_similarity(store, embedder.model, query_vector, best, embeddings)
    return [c._replace(similarity=0.0) if math.isnan(c.similarity) else c for c in best]


def _vector_where(filters: ListQuery) -> dict[str, Any] | None:
    """The filters Chroma can apply itself (metadata that only changes when the memory is
    re-indexed); tags and time are applied after retrieval, on the state itself."""
    clauses: list[dict[str, Any]] = []
    if filters.memory_type is not None:
        clauses.append({"memory_type": filters.memory_type})
    if filters.source is not None:
        clauses.append({"source": filters.source})
    if not clauses:
        return None
    return clauses[0] if len(clauses) == 1 else {"$and": clauses}


def passes_filters(fields: RankFields, filters: ListQuery) -> bool:
    """Check a live candidate against the filters (the indexes may lag the store)."""
    if filters.memory_type is not None and fields.memory_type != filters.memory_type:
        return False
    if filters.source is not None and fields.source != filters.source:
        return False
    if filters.since_ms is not None and fields.updated_ms < filters.since_ms:
        return False
    if filters.until_ms is not None and fields.updated_ms > filters.until_ms:
        return False
    return all(tag in fields.tags for tag in filters.tags)


async def _fill_similarity(
    store: OpStore,
    model: str,
    query_vector: Sequence[float],
    best: list[Candidate],
    known: Mapping[str, tuple[DocState, SyncStatus]],
) -> list[Candidate]:
    """Cosine similarity of keyword-only hits, from their stored embeddings: those
    in ``known`` (read already), else read now (only theirs: each is a few KiB)."""
    ids = {
        c.state.id: embedding_id(model, text_hash(c.state.content.value or ""))
        for c in best
        if math.isnan(c.similarity)
    }
    embeddings = dict(known)
    missing = [emb_id for emb_id in ids.values() if emb_id not in embeddings]
    if missing:
        embeddings.update(await store.get_states(missing))
    filled: list[Candidate] = []
    for c in best:
        entry = embeddings.get(ids[c.state.id]) if c.state.id in ids else None
        payload = entry[0].payload.value if entry and isinstance(entry[0], EmbeddingState) else None
        if payload is not None:
            c = c._replace(similarity=_cosine(query_vector, payload.vector))
        filled.append(c)
    return filled


def _cosine(query: Sequence[float], encoded: str) -> float:
    """Cosine similarity of the query and a stored vector (encoded as by
    ``model.ops.encode_vector``: little-endian float32), decoded straight into numpy."""
    import numpy as np  # here, not at import time: only keyword-only hits need it

    x = np.asarray(query, dtype=np.float32)
    y = np.frombuffer(b64decode(encoded), dtype="<f4")
    norm = float(np.linalg.norm(x) * np.linalg.norm(y))
    return float(np.dot(x, y)) / norm if norm else 0.0
