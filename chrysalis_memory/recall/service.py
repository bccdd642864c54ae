"""Recall's lifecycle for one replica: embedder, vector cache and index, started
on first use (Chroma is costly to start) and rebuilt when the cache is damaged.

An agent's :class:`~chrysalis_memory.AgentMemory` and the hub each own one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from chrysalis_memory.errors import VectorCacheCorruptError
from chrysalis_memory.recall.indexer import NewEmbedding, Progress, RecallIndex
from chrysalis_memory.recall.search import Candidate, SearchMode, search
from chrysalis_memory.store import ListQuery, OpStore

if TYPE_CHECKING:
    from chrysalis_memory.recall.embedders import Embedder, EmbedderKind

log = logging.getLogger(__name__)

WriteEmbeddings = Callable[[list[NewEmbedding]], Awaitable[None]]


async def _keep_none(embeddings: list[NewEmbedding]) -> None:
    """For a replica that does not sign ops (the hub): embeddings stay in its cache."""


class RecallService:
    """Owns a replica's recall index and everything it is built from.

    ``vector_dir`` is where the Chroma cache lives (None: a throwaway one, for
    an in-memory replica); ``vectors=False`` searches keywords only.
    ``write_embeddings`` records embeddings made here as ops (None: they are
    not recorded, and a rebuild embeds again).
    """

    def __init__(
        self,
        store: OpStore,
        *,
        embedder: Embedder | None = None,
        embedder_kind: EmbedderKind = "auto",
        embedding_model: str = "nomic-embed-text",
        ollama_host: str | None = None,
        vectors: bool = True,
        vector_dir: Path | None = None,
        write_embeddings: WriteEmbeddings | None = None,
    ) -> None:
        self._store = store
        self._custom_embedder = embedder
        self._embedder_kind: EmbedderKind = embedder_kind
        self._embedding_model = embedding_model
        self._ollama_host = ollama_host
        self._use_vectors = vectors
        self._vector_dir = vector_dir
        self._write_embeddings = write_embeddings or _keep_none
        self._index: RecallIndex | None = None
        self._building: asyncio.Future[RecallIndex] | None = None
        self._temp_dir: tempfile.TemporaryDirectory[str] | None = None
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.embedder_choice = ""
        """Which embedder recall uses, and why (set when recall is first used)."""

    @property
    def started(self) -> bool:
        return self._index is not None

    async def index(self) -> RecallIndex:
        """The recall index, created on first use.

        Built once: callers that arrive while it is being built wait for that one
        build, and a caller cancelled while waiting does not cancel it (nor leave
        a half-built index behind for the next one). A build that fails is tried
        again by the next caller.
        """
        if self._index is not None:
            return self._index
        if self._building is None:
            self._building = asyncio.ensure_future(self._build())
            self._building.add_done_callback(self._built)
        return await asyncio.shield(self._building)

    def _built(self, task: asyncio.Future[RecallIndex]) -> None:
        if self._building is task:
            self._building = None
        if not task.cancelled():
            task.exception()  # retrieved: each waiter has it raised already

    async def _build(self) -> RecallIndex:
        from chrysalis_memory.recall.embedders import select_embedder
        from chrysalis_memory.recall.vectors import ChromaVectorCache

        closers: list[Callable[[], Awaitable[None]]] = []
        try:
            if self._custom_embedder is not None:
                embedder = self._custom_embedder
                self.embedder_choice = f"{embedder.model}, passed to AgentMemory"
            else:
                embedder, self.embedder_choice = await select_embedder(
                    self._embedder_kind, model=self._embedding_model, host=self._ollama_host
                )
                closers.append(embedder.aclose)
            vectors: ChromaVectorCache | None = None
            if self._use_vectors:
                where = self._vector_dir
                if where is None:  # an in-memory replica: a throwaway cache
                    if self._temp_dir is None:
                        self._temp_dir = tempfile.TemporaryDirectory(prefix="chrysalis-vectors-")
                    where = Path(self._temp_dir.name)
                vectors = ChromaVectorCache(
                    where, model=embedder.model, dimensions=embedder.dimensions
                )
                await vectors.open()
                closers.append(vectors.close)
        except BaseException:
            while closers:  # nothing half-built is kept: the next caller starts afresh
                with contextlib.suppress(Exception):
                    await closers.pop()()
            raise
        self._closers.extend(closers)
        self._index = RecallIndex(self._store, embedder, vectors, self._write_embeddings)
        self._index.start()
        return self._index

    def notify(self) -> None:
        """Something was written: index it once writes pause."""
        if self._index is not None:
            self._index.notify()

    async def search(
        self,
        text: str,
        k: int,
        mode: SearchMode,
        filters: ListQuery,
        vector: Sequence[float] | None = None,
    ) -> list[Candidate]:
        """Search what has been written so far (``vector``: the query's embedding,
        if the caller has it). A damaged vector cache is rebuilt from the op log
        (it is derived data) and the search answered from the new one."""
        try:
            return await self._search(text, k, mode, filters, vector)
        except VectorCacheCorruptError as error:
            log.warning("vector cache damaged (%s): rebuilding it from the op log", error)
            await self._reset_vector_cache()
            return await self._search(text, k, mode, filters, vector)

    async def _search(
        self,
        text: str,
        k: int,
        mode: SearchMode,
        filters: ListQuery,
        vector: Sequence[float] | None,
    ) -> list[Candidate]:
        index = await self.index()
        await index.flush()
        return await search(
            self._store, index.embedder, index.vectors, text, k, mode, filters, vector
        )

    async def embed_query(self, text: str) -> list[float]:
        return (await (await self.index()).embedder.embed([text]))[0]

    async def embedding_model(self) -> str:
        """The model of the embedder recall uses (starting recall if need be)."""
        return (await self.index()).embedder.model

    async def rebuild(self, progress: Progress | None = None) -> int:
        """Rebuild the keyword index and the vector cache from the op log; returns
        the number of ops indexed."""
        try:
            return await (await self.index()).rebuild(progress)
        except VectorCacheCorruptError:
            await self._reset_vector_cache()
            return await (await self.index()).rebuild(progress)

    async def _reset_vector_cache(self) -> None:
        """Close everything and delete the vector cache's directory, so that the
        next use rebuilds it from the op log."""
        from chrysalis_memory.recall.vectors import ChromaVectorCache

        await self.close()
        if self._vector_dir is not None:
            await ChromaVectorCache.reset_directory(self._vector_dir)

    async def close(self) -> None:
        building, self._building = self._building, None
        if building is not None:  # let a build under way finish, then close what it made
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await building
        if self._index is not None:
            await self._index.close()
            self._index = None
        while self._closers:
            await self._closers.pop()()
        if self._temp_dir is not None:
            self._temp_dir.cleanup()
            self._temp_dir = None
