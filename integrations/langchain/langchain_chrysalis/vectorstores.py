"""``ChrysalisVectorStore``: a LangChain vector store on an agent's collective memory."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore
from langchain_core.vectorstores.utils import maximal_marginal_relevance
from typing_extensions import Self

from chrysalis_memory import AgentMemory, AgentMemoryConfig, MemoryDocument
from chrysalis_memory.errors import InvalidArgumentError
from langchain_chrysalis._documents import (
    LC_METADATA,
    MAX_RECALL,
    Writer,
    find_live,
    matches,
    new_id,
    recall_size,
    split_filter,
    stored_vectors,
    to_document,
)
from langchain_chrysalis._runtime import HandleLifecycle, MemoryArg, MemoryHandle
from langchain_chrysalis.embeddings import LangChainEmbedder, as_embedder

__all__ = ["ChrysalisVectorStore"]

_Hit = tuple[MemoryDocument, float]


class ChrysalisVectorStore(HandleLifecycle, VectorStore):
    """A vector store whose documents are memories of a Chrysalis agent.

    Documents added here are learned as memories (``importance`` 0.8 by
    default, so that they reach every agent through the hub; below the
    agent's promotion threshold, 0.7, they would stay on this agent) and are
    embedded with ``embedding``: the agent's memory is opened with that model as
    its embedder. Search ranks by cosine similarity over the agent's whole
    memory (what every agent shared with it included), restricted to ``tags``
    when given.

    Setup::

        from langchain_chrysalis import ChrysalisVectorStore

        store = ChrysalisVectorStore(embedding=OpenAIEmbeddings(), agent_id="agent-a",
                                     data_dir="./data", hub_url="ws://hub:4444",
                                     hub_token="chry_...")

    Args:
        embedding: the LangChain embeddings that embed documents and queries.
        memory: an ``AgentMemory`` (or ``BlockingAgentMemory``) to share, created
            with ``embedder=LangChainEmbedder(embedding)`` so that stored
            memories are embedded with the same model as queries. Otherwise the
            store opens the agent named by ``config`` and the keywords
            ``agent_id``, ``data_dir``, ``hub_url``, ``hub_token`` (defaults:
            ``AgentMemoryConfig.from_env()``, a local store).
        tags: given to every document added, and required of every document
            found (a collection within the agent's memory).
        importance, confidence, memory_type: what documents are learned with.
        embedding_model: the name the embeddings are cached under (default:
            derived from the embeddings' class, model and dimensions).

    Filters (``filter=`` of the search methods) take the keys ``tags``,
    ``memory_type``, ``source`` (the agent that created the memory), ``since``
    and ``until`` (last update), applied by recall; any other key is a
    condition on the document's metadata: a value (equality) or an operator
    (``{"$in": [...]}``, ``$ne``, ``$gt``, ``$gte``, ``$lt``, ``$lte``, ``$nin``).
    """

    def __init__(
        self,
        embedding: Embeddings,
        *,
        memory: MemoryArg | None = None,
        agent_id: str | None = None,
        data_dir: str | Path | None = None,
        hub_url: str | None = None,
        hub_token: str | None = None,
        config: AgentMemoryConfig | None = None,
        tags: Sequence[str] = (),
        importance: float = 0.8,
        confidence: float = 0.8,
        memory_type: str = "semantic",
        embedding_model: str | None = None,
    ) -> None:
        if not isinstance(embedding, Embeddings):
            raise InvalidArgumentError(
                f"embedding must be a LangChain Embeddings, got {type(embedding).__name__}"
            )
        self._embedding = embedding
        self._embedder = (
            LangChainEmbedder(embedding, model=embedding_model)
            if embedding_model is not None
            else as_embedder(embedding)
        )
        self._writer = Writer(
            importance=importance, confidence=confidence, memory_type=memory_type, tags=tags
        )
        self._handle = MemoryHandle(
            memory,
            config=config,
            agent_id=agent_id,
            data_dir=data_dir,
            hub_url=hub_url,
            hub_token=hub_token,
            embedder=self._embedder,
        )

    # --- lifecycle ------------------------------------------------------------------

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding

    @property
    def memory(self) -> AgentMemory:
        """The agent memory behind this store (to share it: ``memory=store.memory``)."""
        return self._handle.memory

    @property
    def tags(self) -> list[str]:
        return list(self._writer.tags)

    # --- writes ----------------------------------------------------------------------

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Add texts (or overwrite those whose ids exist); returns their ids."""
        rows, chosen = _rows(texts, metadatas, ids)
        self._handle.run(lambda mem: self._add(mem, rows))
        return chosen

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        rows, chosen = _rows(texts, metadatas, ids)
        await self._handle.arun(lambda mem: self._add(mem, rows))
        return chosen

    async def _add(self, mem: AgentMemory, rows: list[tuple[str, str, dict[str, Any]]]) -> None:
        for doc_id, text, metadata in rows:
            await self._writer.upsert(mem, doc_id, text, {LC_METADATA: metadata})

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Forget documents by id (missing ids are ignored). With no ids, forget every
        document carrying this store's ``tags`` (refused when it has none: that
        would be the agent's whole memory, for every agent)."""
        return self._handle.run(lambda mem: self._delete(mem, ids))

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        return await self._handle.arun(lambda mem: self._delete(mem, ids))

    async def _delete(self, mem: AgentMemory, ids: list[str] | None) -> bool:
        if ids is None:
            if not self._writer.tags:
                raise InvalidArgumentError(
                    "delete() with no ids would forget this agent's whole memory (and every "
                    "agent's, once synced): pass ids, or give the store tags= to delete them"
                )
            while batch := await mem.list(tags=self._writer.tags, limit=500):
                for listed in batch:
                    await mem.forget(listed.id)
            return True
        for doc_id in ids:
            live, memory_id = await find_live(mem, doc_id)
            if live is not None:
                await mem.forget(memory_id)
        return True

    # --- reads -----------------------------------------------------------------------

    def get_by_ids(self, ids: Sequence[str], /) -> builtins.list[Document]:
        return self._handle.run(lambda mem: self._get(mem, ids))

    async def aget_by_ids(self, ids: Sequence[str], /) -> builtins.list[Document]:
        return await self._handle.arun(lambda mem: self._get(mem, ids))

    async def _get(self, mem: AgentMemory, ids: Sequence[str]) -> builtins.list[Document]:
        found = []
        for doc_id in ids:
            memory, _ = await find_live(mem, doc_id)
            if memory is not None:
                found.append(to_document(memory, doc_id=doc_id))
        return found

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> builtins.list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter=filter)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> builtins.list[Document]:
        hits = await self.asimilarity_search_with_score(query, k, filter=filter)
        return [doc for doc, _ in hits]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> builtins.list[tuple[Document, float]]:
        """Documents with their cosine similarity to ``query`` (higher is closer)."""
        vector = self._embedding.embed_query(query)
        return self.similarity_search_with_score_by_vector(vector, k, filter=filter)

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> builtins.list[tuple[Document, float]]:
        vector = await self._embedding.aembed_query(query)
        return await self.asimilarity_search_with_score_by_vector(vector, k, filter=filter)

    def similarity_search_by_vector(
        self,
        embedding: builtins.list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> builtins.list[Document]:
        hits = self.similarity_search_with_score_by_vector(embedding, k, filter=filter)
        return [doc for doc, _ in hits]

    async def asimilarity_search_by_vector(
        self,
        embedding: builtins.list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> builtins.list[Document]:
        hits = await self.asimilarity_search_with_score_by_vector(embedding, k, filter=filter)
        return [doc for doc, _ in hits]

    def similarity_search_with_score_by_vector(
        self,
        embedding: Sequence[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
    ) -> builtins.list[tuple[Document, float]]:
        hits = self._handle.run(lambda mem: self._search(mem, embedding, k, filter))
        return [(to_document(memory), similarity) for memory, similarity in hits]

    async def asimilarity_search_with_score_by_vector(
        self,
        embedding: Sequence[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
    ) -> builtins.list[tuple[Document, float]]:
        hits = await self._handle.arun(lambda mem: self._search(mem, embedding, k, filter))
        return [(to_document(memory), similarity) for memory, similarity in hits]

    async def _search(
        self,
        mem: AgentMemory,
        vector: Sequence[float],
        k: int,
        filter: dict[str, Any] | None,
    ) -> builtins.list[_Hit]:
        """The ``k`` memories closest to ``vector``, by cosine similarity."""
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidArgumentError(f"k must be a positive integer, got {k!r}")
        k = min(k, MAX_RECALL)
        recall_filters, conditions = split_filter(filter, self._writer.tags)
        fetch = recall_size(k, bool(conditions))
        while True:
            hits = await mem.recall(
                "",
                fetch,
                vector=list(vector),
                mode="vector",
                record_access=False,
                **recall_filters,
            )
            found = [
                (hit.memory, hit.similarity)
                for hit in hits
                if not conditions or matches(to_document(hit.memory).metadata, conditions)
            ]
            if len(found) >= k or len(hits) < fetch or fetch >= MAX_RECALL:
                break
            fetch = min(MAX_RECALL, fetch * 4)
        found.sort(key=lambda pair: -pair[1])
        return found[:k]

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> builtins.list[Document]:
        vector = self._embedding.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(
            vector, k, fetch_k, lambda_mult, filter=filter
        )

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> builtins.list[Document]:
        vector = await self._embedding.aembed_query(query)
        return await self.amax_marginal_relevance_search_by_vector(
            vector, k, fetch_k, lambda_mult, filter=filter
        )

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: builtins.list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> builtins.list[Document]:
        """Documents close to ``embedding`` and different from each other: the
        ``fetch_k`` closest, then ``k`` of them picked by maximal marginal relevance."""
        candidates = self._handle.run(lambda mem: self._candidates(mem, embedding, fetch_k, filter))
        vectors = self._complete(candidates, self._embedding.embed_documents)
        return _pick(embedding, candidates, vectors, k, lambda_mult)

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: builtins.list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> builtins.list[Document]:
        candidates = await self._handle.arun(
            lambda mem: self._candidates(mem, embedding, fetch_k, filter)
        )
        missing = _missing(candidates)
        made = await self._embedding.aembed_documents(missing) if missing else []
        vectors = _fill(candidates, made)
        return _pick(embedding, candidates, vectors, k, lambda_mult)

    async def _candidates(
        self,
        mem: AgentMemory,
        vector: Sequence[float],
        fetch_k: int,
        filter: dict[str, Any] | None,
    ) -> builtins.list[tuple[_Hit, builtins.list[float] | None]]:
        hits = await self._search(mem, vector, max(fetch_k, 1), filter)
        stored = await stored_vectors(mem, self._embedder.model, [m.id for m, _ in hits])
        return list(zip(hits, stored, strict=True))

    @staticmethod
    def _complete(
        candidates: builtins.list[tuple[_Hit, builtins.list[float] | None]],
        embed: Callable[[builtins.list[str]], builtins.list[builtins.list[float]]],
    ) -> builtins.list[builtins.list[float]]:
        """The candidates' vectors: as stored, or embedded again if this replica
        holds none under this model (a memory shared with another embedder)."""
        missing = _missing(candidates)
        return _fill(candidates, embed(missing) if missing else [])

    # --- scores and construction ------------------------------------------------------

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """Scores are cosine similarities; relevance is the similarity clamped to [0, 1]."""
        return _relevance

    @classmethod
    def from_texts(
        cls,
        texts: builtins.list[str],
        embedding: Embeddings,
        metadatas: builtins.list[dict[str, Any]] | None = None,
        *,
        ids: builtins.list[str] | None = None,
        **kwargs: Any,
    ) -> Self:
        """A store made with ``embedding`` and ``kwargs`` (the constructor's), with
        ``texts`` added."""
        store = cls(embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: builtins.list[str],
        embedding: Embeddings,
        metadatas: builtins.list[dict[str, Any]] | None = None,
        *,
        ids: builtins.list[str] | None = None,
        **kwargs: Any,
    ) -> Self:
        store = cls(embedding=embedding, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store


def _relevance(similarity: float) -> float:
    return min(1.0, max(0.0, similarity))


def _rows(
    texts: Iterable[str],
    metadatas: builtins.list[dict[str, Any]] | None,
    ids: builtins.list[str] | None,
) -> tuple[builtins.list[tuple[str, str, dict[str, Any]]], builtins.list[str]]:
    """(id, text, metadata) per text, ids drawn where none is given."""
    items = list(texts)
    if metadatas is not None and len(metadatas) != len(items):
        raise InvalidArgumentError(f"got {len(metadatas)} metadatas for {len(items)} texts")
    if ids is not None and len(ids) != len(items):
        raise InvalidArgumentError(f"got {len(ids)} ids for {len(items)} texts")
    chosen = [new_id() if ids is None or ids[i] is None else str(ids[i]) for i in range(len(items))]
    rows = [
        (chosen[i], text, dict(metadatas[i]) if metadatas is not None else {})
        for i, text in enumerate(items)
    ]
    return rows, chosen


def _missing(
    candidates: builtins.list[tuple[_Hit, builtins.list[float] | None]],
) -> builtins.list[str]:
    """The texts of the candidates this replica holds no vector of."""
    return [memory.content for (memory, _), vector in candidates if vector is None]


def _fill(
    candidates: builtins.list[tuple[_Hit, builtins.list[float] | None]],
    made: builtins.list[builtins.list[float]],
) -> builtins.list[builtins.list[float]]:
    fresh = iter(made)
    return [vector if vector is not None else next(fresh) for _, vector in candidates]


def _pick(
    query: Sequence[float],
    candidates: builtins.list[tuple[_Hit, builtins.list[float] | None]],
    vectors: builtins.list[builtins.list[float]],
    k: int,
    lambda_mult: float,
) -> builtins.list[Document]:
    if not candidates:
        return []
    chosen = maximal_marginal_relevance(
        np.asarray(query, dtype=np.float32), vectors, lambda_mult=lambda_mult, k=k
    )
    return [to_document(candidates[i][0][0]) for i in chosen]
