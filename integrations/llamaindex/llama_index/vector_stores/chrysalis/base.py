"""``ChrysalisVectorStore``: a LlamaIndex vector store over the agents' collective memory.

Each node is one memory: its id is the node's id, its content the node's text,
its metadata the node's (with LlamaIndex's usual ``_node_content`` record of the
whole node, so that nodes come back as they went in). Queries go through
Chrysalis's recall, so what other agents have learned and synced is found too,
ranked by relevance, confidence and use across agents.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.schema import (
    BaseNode,
    MetadataMode,
    NodeRelationship,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict
from llama_index.vector_stores.chrysalis.embedding import LlamaIndexEmbedder
from llama_index.vector_stores.chrysalis.filters import compile_filters, pushdown
from llama_index.vector_stores.chrysalis.replica import Replica, ReplicaUser, replica_for

from chrysalis_memory import AgentMemory, AgentMemoryConfig, BlockingAgentMemory
from chrysalis_memory.errors import UnknownMemoryError, UsageError
from chrysalis_memory.model.document import MemoryDocument, MemoryType, RecallHit
from chrysalis_memory.validation import MAX_ID_CHARS, MAX_QUERY_CHARS, MAX_TAG_CHARS

if TYPE_CHECKING:
    from chrysalis_memory.sync.client import SyncReport

__all__ = ["NODE_TAG", "ChrysalisVectorStore"]

log = logging.getLogger(__name__)

NODE_TAG: Final = "llamaindex"
"""Every node the store writes carries this tag."""
COLLECTION_TAG_PREFIX: Final = "llamaindex:"
MAX_COLLECTION_CHARS: Final = MAX_TAG_CHARS - len(COLLECTION_TAG_PREFIX)
WRITE_CHUNK: Final = 256
"""Nodes learned between two index flushes (their pinned vectors wait in memory)."""
PAGE: Final = 500
"""Memories read per page when listing."""
MAX_FETCH: Final = 1000
"""The most hits one recall returns."""
_SEARCH_MODES: Final[dict[VectorStoreQueryMode, Literal["vector", "hybrid", "keyword"]]] = {
    VectorStoreQueryMode.HYBRID: "hybrid",
    VectorStoreQueryMode.SEMANTIC_HYBRID: "hybrid",
    VectorStoreQueryMode.TEXT_SEARCH: "keyword",
    VectorStoreQueryMode.SPARSE: "keyword",
}


@dataclass
class _Learnable:
    """A node, as the arguments of ``AgentMemory.learn``."""

    node_id: str
    content: str
    metadata: dict[str, Any]
    related: list[str]
    parents: list[str]
    embedding: list[float] | None


class ChrysalisVectorStore(ReplicaUser, BasePydanticVectorStore):
    """The collective memory of Chrysalis agents as a LlamaIndex vector store.

    ::

        store = ChrysalisVectorStore(agent_id="agent-a", data_dir="./data",
                                     hub_url="ws://127.0.0.1:4444", hub_token=token,
                                     embed_model=embed_model)
        index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
        print(index.as_query_engine(llm=llm).query("When is the staging DB restored?"))

    Pass ``memory=<AgentMemory>`` to share a replica, or its config keywords
    (``agent_id``, ``data_dir``, ``hub_url``, ``hub_token``, or a whole ``config``);
    with none, the ``CHRYSALIS_*`` environment (a local store by default).

    ``embeddings="node"`` (the default) searches with LlamaIndex's query embedding
    among the nodes' own embeddings: the memory indexes with ``embed_model``
    (``Settings.embed_model`` when not given; give the index the same one). An
    ``AgentMemory`` passed as ``memory=`` must then have been made with
    ``embedder=LlamaIndexEmbedder(embed_model)``. ``embeddings="memory"`` uses
    the memory's own embedder and keyword index instead, from the query text:
    any ``AgentMemory`` will do, and LlamaIndex's embeddings are not used.

    Nodes are learned with ``importance`` (0.8 by default: at or above the
    promotion threshold, 0.7 by default, a memory is shared with the other
    agents; below it, it stays on this agent), ``confidence``, ``memory_type``
    and ``tags`` (plus ``"llamaindex"``). ``collection`` scopes the store to
    the memories tagged ``llamaindex:<collection>``; without one the store sees
    every memory of the collective, whoever wrote it, and :meth:`clear` forgets
    them all, on every agent.
    """

    stores_text: bool = True
    is_embedding_query: bool = True
    flat_metadata: bool = False

    collection: str | None = Field(
        default=None,
        description="Scope: only memories tagged llamaindex:<collection> (None: all of them).",
    )
    embeddings: Literal["node", "memory"] = Field(
        default="node",
        description="node: search LlamaIndex's embeddings; memory: the memory's own recall.",
    )
    importance: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Importance of learned nodes (shared when >= the promotion threshold).",
    )
    confidence: float = Field(default=0.8, ge=0.0, le=1.0, description="Of learned nodes.")
    memory_type: str = Field(default="semantic", description="Of learned nodes.")
    tags: list[str] = Field(default_factory=list, description="Added to learned nodes.")
    record_access: bool = Field(
        default=True,
        description="Count an access to each memory a query returns (summed across agents).",
    )

    _kind: ClassVar[str] = "ChrysalisVectorStore"
    _replica: Replica = PrivateAttr()
    _embedder: LlamaIndexEmbedder | None = PrivateAttr(default=None)
    _checked: bool = PrivateAttr(default=False)
    _closed: bool = PrivateAttr(default=False)

    def __init__(
        self,
        *,
        memory: AgentMemory | BlockingAgentMemory | None = None,
        embed_model: BaseEmbedding | None = None,
        config: AgentMemoryConfig | None = None,
        agent_id: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        hub_url: str | None = None,
        hub_token: str | None = None,
        embeddings: Literal["node", "memory"] = "node",
        **data: Any,
    ) -> None:
        super().__init__(embeddings=embeddings, is_embedding_query=embeddings == "node", **data)
        embedder: LlamaIndexEmbedder | None = None
        if embeddings == "node":
            embedder = LlamaIndexEmbedder(embed_model)
        elif embed_model is not None:
            raise ValueError(
                "embed_model is used with embeddings='node' only: with embeddings='memory' "
                "the memory's own embedder is used"
            )
        replica = replica_for(
            memory,
            config,
            embedder=embedder,
            agent_id=agent_id,
            data_dir=data_dir,
            hub_url=hub_url,
            hub_token=hub_token,
        )
        shared = replica.embedder
        if memory is None and embedder is not None and isinstance(shared, LlamaIndexEmbedder):
            embedder = shared  # another store of the same model made this replica
        self._embedder = embedder
        self._replica = replica.acquire()

    @field_validator("memory_type")
    @classmethod
    def _check_memory_type(cls, value: str) -> str:
        if value not in MemoryType._value2member_map_:
            kinds = ", ".join(t.value for t in MemoryType)
            raise ValueError(f"memory_type must be one of {kinds}; got {value!r}")
        return value

    @field_validator("collection")
    @classmethod
    def _check_collection(cls, value: str | None) -> str | None:
        if value is not None and not (value.strip() and len(value) <= MAX_COLLECTION_CHARS):
            raise ValueError(
                f"collection must be 1 to {MAX_COLLECTION_CHARS} characters, got {value!r}"
            )
        return value

    @classmethod
    def class_name(cls) -> str:
        return "ChrysalisVectorStore"

    @property
    def client(self) -> AgentMemory:
        """The ``AgentMemory`` behind the store (pass it as ``memory=`` to share it)."""
        return self._replica.memory

    @property
    def embedder(self) -> LlamaIndexEmbedder | None:
        """The embedder the memory indexes with (None with ``embeddings="memory"``)."""
        return self._embedder

    @property
    def scope_tags(self) -> list[str]:
        return [] if self.collection is None else [COLLECTION_TAG_PREFIX + self.collection]

    # --- lifecycle ------------------------------------------------------------------

    def sync_now(self, timeout: float = 30.0) -> SyncReport:
        """Push what this agent learned to the hub and pull what the others did, now
        (``AgentMemory.sync_now``; sync also runs in the background)."""
        return self._run(functools.partial(_sync_now, timeout))

    async def async_now(self, timeout: float = 30.0) -> SyncReport:
        """:meth:`sync_now`, from async code."""
        return await self._call(functools.partial(_sync_now, timeout))

    async def __aenter__(self) -> ChrysalisVectorStore:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- the VectorStore API: blocking ----------------------------------------------

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Learn nodes (with their embeddings); returns their ids."""
        return self._run(functools.partial(self._add, list(nodes)))

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Forget the nodes of a document."""
        self._run(functools.partial(self._delete_ref_doc, ref_doc_id))

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return self._run(functools.partial(self._query, query))

    def get_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
    ) -> list[BaseNode]:
        """Nodes by id and/or filters (all of them with neither), with their embeddings."""
        return self._run(functools.partial(self._get_nodes, node_ids, filters))

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Forget nodes by id and/or filters (all of them with neither)."""
        self._run(functools.partial(self._delete_nodes, node_ids, filters))

    def clear(self) -> None:
        """Forget every memory the store sees (with no collection: the whole collective)."""
        self._run(functools.partial(self._delete_nodes, None, None))

    # --- the VectorStore API: async -------------------------------------------------

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        return await self._call(functools.partial(self._add, list(nodes)))

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await self._call(functools.partial(self._delete_ref_doc, ref_doc_id))

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await self._call(functools.partial(self._query, query))

    async def aget_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
    ) -> list[BaseNode]:
        return await self._call(functools.partial(self._get_nodes, node_ids, filters))

    async def adelete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        await self._call(functools.partial(self._delete_nodes, node_ids, filters))

    async def aclear(self) -> None:
        await self._call(functools.partial(self._delete_nodes, None, None))

    # --- on the memory's loop -------------------------------------------------------

    async def _ready(self, memory: AgentMemory) -> None:
        """Check once that the memory indexes in the embed model's space."""
        if self._checked or self._embedder is None:
            return
        embedder = self._embedder
        try:
            await embedder.prepare()
        except (ImportError, ValueError) as error:  # Settings.embed_model cannot resolve
            raise UsageError(
                "ChrysalisVectorStore needs the embed model its index uses: pass "
                "embed_model=... (or set Settings.embed_model), or use embeddings='memory'"
                f" ({error})"
            ) from error
        if self._replica.embedder is None:  # a memory the caller made: which embedder?
            used = await memory.embedding_model()
            if used != embedder.model:
                raise UsageError(
                    f"this AgentMemory recalls with {used}, not with {embedder.model}: make "
                    "it with embedder=LlamaIndexEmbedder(embed_model) to search LlamaIndex's "
                    "embeddings, or use ChrysalisVectorStore(memory=..., embeddings='memory')"
                )
        self._checked = True

    async def _add(self, nodes: list[BaseNode], memory: AgentMemory) -> list[str]:
        if not nodes:
            return []
        await self._ready(memory)
        learnables = [self._learnable(node) for node in nodes]
        tags = [NODE_TAG, *self.tags, *self.scope_tags]
        for start in range(0, len(learnables), WRITE_CHUNK):
            chunk = learnables[start : start + WRITE_CHUNK]
            pinned: list[str] = []
            try:
                if self._embedder is not None:
                    for item in chunk:
                        if item.embedding is not None:
                            self._embedder.pin(item.content, item.embedding)
                            pinned.append(item.content)
                for item in chunk:
                    await memory.learn(
                        item.content,
                        importance=self.importance,
                        confidence=self.confidence,
                        memory_type=self.memory_type,
                        tags=tags,
                        related=item.related,
                        parents=item.parents,
                        metadata=item.metadata,
                        memory_id=item.node_id,
                    )
                if pinned:
                    # Index now, so that the pinned node vectors are the ones recorded
                    # (and replicated with their nodes).
                    await memory.flush_index()
            finally:
                if pinned and self._embedder is not None:
                    self._embedder.unpin(pinned)
        return [item.node_id for item in learnables]

    def _learnable(self, node: BaseNode) -> _Learnable:
        node_id = node.node_id
        if not _is_memory_id(node_id):
            raise ValueError(
                f"node id {node_id!r} cannot be a memory id: ids are 1 to {MAX_ID_CHARS} "
                "characters and do not start with 'emb:'"
            )
        content = node.get_content(metadata_mode=MetadataMode.NONE)
        if not content.strip():
            raise ValueError(
                f"node {node_id!r} has no text: Chrysalis memories are texts (store what the "
                "node stands for as its text, e.g. a caption or a summary)"
            )
        metadata = node_to_metadata_dict(node, remove_text=True, flat_metadata=self.flat_metadata)
        return _Learnable(
            node_id=node_id,
            content=content,
            metadata=metadata,
            related=_linked(node, NodeRelationship.PREVIOUS, NodeRelationship.NEXT),
            parents=_linked(node, NodeRelationship.PARENT),
            embedding=None if node.embedding is None else list(node.embedding),
        )

    async def _query(self, query: VectorStoreQuery, memory: AgentMemory) -> VectorStoreQueryResult:
        await self._ready(memory)
        node_mode = self._embedder is not None
        if query.mode == VectorStoreQueryMode.DEFAULT:
            mode: Literal["vector", "hybrid", "keyword"] = "vector" if node_mode else "hybrid"
        elif query.mode in _SEARCH_MODES:
            mode = _SEARCH_MODES[query.mode]
        else:
            raise NotImplementedError(
                f"ChrysalisVectorStore does not support {query.mode.value!r} queries: use "
                "default (vector), hybrid or text_search"
            )
        text = (query.query_str or "").strip()[:MAX_QUERY_CHARS]
        vector: list[float] | None = None
        if node_mode and mode != "keyword":
            assert self._embedder is not None
            if query.query_embedding is not None:
                vector = list(query.query_embedding)
            elif text:
                vector = await self._embedder.embed_model.aget_query_embedding(text)
            if vector is not None and len(vector) != self._embedder.dimensions:
                raise ValueError(
                    f"the query embedding has {len(vector)} dimensions; the store's embed model "
                    f"({self._embedder.model}) has {self._embedder.dimensions}: give the store "
                    "and the index the same embed_model"
                )
        if vector is None and not text:
            if mode == "keyword":
                raise ValueError("a text search needs the query's text (query_str)")
            # Nothing to search with: the most recently updated nodes, as Chroma's store does.
            docs = await self._find(memory, None, query.filters, limit=query.similarity_top_k)
            return VectorStoreQueryResult(
                nodes=[self._node_of(doc) for doc in docs], ids=[doc.id for doc in docs]
            )
        if mode == "hybrid" and not text:
            mode = "vector"
        k = query.similarity_top_k
        if mode == "hybrid" and query.hybrid_top_k:
            k = query.hybrid_top_k
        hits = await self._search(memory, text, vector, mode, k, query)
        if self.record_access:
            for hit in hits:
                with contextlib.suppress(UnknownMemoryError):  # forgotten meanwhile
                    await memory.record_access(hit.memory.id)
        return VectorStoreQueryResult(
            nodes=[self._node_of(hit.memory) for hit in hits],
            similarities=[hit.similarity if mode == "vector" else hit.score for hit in hits],
            ids=[hit.memory.id for hit in hits],
        )

    async def _search(
        self,
        memory: AgentMemory,
        text: str,
        vector: list[float] | None,
        mode: Literal["vector", "hybrid", "keyword"],
        k: int,
        query: VectorStoreQuery,
    ) -> list[RecallHit]:
        """The best ``k`` hits that pass the query's filters and id restrictions.

        Recall applies what it can of the filters; the rest are checked here, on
        more candidates than wanted, asking for more while too few pass."""
        passes = compile_filters(query.filters)
        pushed = pushdown(query.filters, self.scope_tags)
        node_ids = set(query.node_ids or ())
        doc_ids = set(query.doc_ids or ())
        filtering = bool(query.filters and query.filters.filters)
        checked_here = filtering or bool(node_ids or doc_ids)
        fetch = min(max(4 * k, 20) if checked_here else k, MAX_FETCH)
        while True:
            hits = await memory.recall(
                text,
                fetch,
                vector=vector,
                mode=mode,
                record_access=False,
                **pushed.recall_filters(),
            )
            kept = [
                hit
                for hit in hits
                if (not node_ids or hit.memory.id in node_ids)
                and (not doc_ids or hit.memory.metadata.get("ref_doc_id") in doc_ids)
                and (not filtering or passes(self._metadata_of(hit.memory), hit.memory))
            ]
            if len(kept) >= k or len(hits) < fetch or fetch >= MAX_FETCH:
                return kept[:k]
            fetch = min(fetch * 4, MAX_FETCH)

    async def _find(
        self,
        memory: AgentMemory,
        node_ids: list[str] | None,
        filters: MetadataFilters | None,
        *,
        limit: int | None = None,
    ) -> list[MemoryDocument]:
        """Live memories in scope by id and/or filters, most recently updated first."""
        passes = compile_filters(filters)
        filtering = bool(filters and filters.filters)
        scope = set(self.scope_tags)
        found: list[MemoryDocument] = []
        if node_ids:
            for node_id in dict.fromkeys(node_ids):
                doc = await memory.get(node_id) if _is_memory_id(node_id) else None
                if (
                    doc is not None
                    and scope <= set(doc.tags)
                    and (not filtering or passes(self._metadata_of(doc), doc))
                ):
                    found.append(doc)
            return found if limit is None else found[:limit]
        pushed = pushdown(filters, self.scope_tags)
        offset = 0
        while True:
            page = await memory.list(limit=PAGE, offset=offset, **pushed.recall_filters())
            found.extend(
                doc for doc in page if not filtering or passes(self._metadata_of(doc), doc)
            )
            if len(page) < PAGE or (limit is not None and len(found) >= limit):
                return found if limit is None else found[:limit]
            offset += PAGE

    async def _get_nodes(
        self, node_ids: list[str] | None, filters: MetadataFilters | None, memory: AgentMemory
    ) -> list[BaseNode]:
        await self._ready(memory)
        docs = await self._find(memory, node_ids, filters)
        vectors = await self._vectors(memory, docs)
        nodes = []
        for doc in docs:
            node = self._node_of(doc)
            node.embedding = vectors.get(doc.id)
            nodes.append(node)
        return nodes

    async def _delete_nodes(
        self, node_ids: list[str] | None, filters: MetadataFilters | None, memory: AgentMemory
    ) -> None:
        for doc in await self._find(memory, node_ids, filters):
            await memory.forget(doc.id)

    async def _delete_ref_doc(self, ref_doc_id: str, memory: AgentMemory) -> None:
        docs = await self._find(memory, None, None)
        for doc in docs:
            if _ref_doc_id(doc) == ref_doc_id:
                await memory.forget(doc.id)

    async def _vectors(
        self, memory: AgentMemory, docs: Iterable[MemoryDocument]
    ) -> dict[str, list[float]]:
        """The indexed vectors of memories, by id (only with embeddings="node")."""
        docs = list(docs)
        if self._embedder is None or not docs:
            return {}
        await memory.flush_index()  # memories received since are indexed (and embedded) now
        vectors: dict[str, list[float]] = {}
        for doc in docs:
            with contextlib.suppress(UnknownMemoryError):  # forgotten meanwhile
                vector = await memory.embedding(doc.id)
                if vector is not None:
                    vectors[doc.id] = vector
        return vectors

    # --- memories as nodes ----------------------------------------------------------

    @staticmethod
    def _metadata_of(doc: MemoryDocument) -> dict[str, Any]:
        """The node's metadata, as filters see it."""
        record = doc.metadata.get("_node_content")
        if isinstance(record, str):
            try:
                return dict(metadata_dict_to_node(doc.metadata).metadata)
            except Exception:  # not a node record after all: the memory's metadata
                pass
        return {k: v for k, v in doc.metadata.items() if not k.startswith("_node_")}

    @staticmethod
    def _node_of(doc: MemoryDocument) -> BaseNode:
        """A memory as a node: the node it was learned from, or a text node of it."""
        if isinstance(doc.metadata.get("_node_content"), str):
            try:
                return metadata_dict_to_node(doc.metadata, text=doc.content)
            except Exception as error:  # not a node record after all
                log.debug("memory %s: unreadable node record (%s)", doc.id, error)
        return TextNode(
            id_=doc.id,
            text=doc.content,
            metadata={k: v for k, v in doc.metadata.items() if not k.startswith("_node_")},
        )


async def _sync_now(timeout: float, memory: AgentMemory) -> SyncReport:
    return await memory.sync_now(timeout)


def _is_memory_id(value: str) -> bool:
    return 0 < len(value) <= MAX_ID_CHARS and not value.startswith("emb:")


def _linked(node: BaseNode, *relations: NodeRelationship) -> list[str]:
    """Ids of the nodes ``node`` names in these relationships (that can be memory ids)."""
    ids: list[str] = []
    for relation in relations:
        related = node.relationships.get(relation)
        infos = related if isinstance(related, list) else [related] if related else []
        ids.extend(
            info.node_id
            for info in infos
            if isinstance(info, RelatedNodeInfo)
            and _is_memory_id(info.node_id)
            and info.node_id != node.node_id
        )
    return ids


def _ref_doc_id(doc: MemoryDocument) -> str | None:
    value = doc.metadata.get("ref_doc_id", doc.metadata.get("doc_id"))
    return value if isinstance(value, str) else None
