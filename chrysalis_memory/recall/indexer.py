"""The recall index: keyword index and vector cache, kept in step with the op log.

Writes never wait for it. It follows the op log by local op number (a cursor
stored in the database) and, for each memory that changed:

* finds the memory's embedding, embedding its text only if no embedding
  document exists for (model, text hash), local or received from a peer, and
  records new embeddings as signed ops, so they replicate with the memory;
* upserts its vector into the Chroma cache (or deletes it, once forgotten);
* rewrites its row of the FTS5 keyword index, and moves the cursor in the
  same transaction.

Vectors are written before the cursor moves, so a crash repeats work (upserts
are idempotent) but never skips it. ``recall`` calls :meth:`RecallIndex.flush`
first, so a replica always recalls what it has learned; otherwise the index
catches up in the background once writes pause.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import suppress
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from chrysalis_memory.errors import ChrysalisError, VectorCacheError
from chrysalis_memory.model.document import SyncStatus
from chrysalis_memory.model.ops import decode_vector, embedding_id, text_hash
from chrysalis_memory.model.state import EmbeddingState, MemoryState
from chrysalis_memory.recall.search import VectorHitLike
from chrysalis_memory.store import OpStore

if TYPE_CHECKING:
    from chrysalis_memory.recall.embedders import Embedder

log = logging.getLogger(__name__)

CURSOR_KEY: Final = "recall_index_seqno"
IDLE_DELAY_S: Final = 2.0
"""Background indexing starts once writes have paused this long."""


class NewEmbedding(NamedTuple):
    hashed_text: str
    vector: list[float]
    status: SyncStatus


class VectorStore(Protocol):
    """What the index needs of a vector cache (see ``recall.vectors``)."""

    async def upsert(
        self,
        ids: Sequence[str],
        vectors: Sequence[Sequence[float]],
        metadatas: Sequence[dict[str, Any]] | None = None,
    ) -> None: ...

    async def delete(self, ids: Sequence[str]) -> None: ...

    async def count(self) -> int: ...

    async def clear(self) -> None: ...

    async def query(
        self, vector: Sequence[float], k: int, where: Mapping[str, Any] | None = None
    ) -> Sequence[VectorHitLike]: ...


Progress = Callable[[int, int], None]
"""Called with (ops indexed so far, ops to index in all)."""


class RecallIndex:
    """Keeps one replica's keyword index and vector cache current."""

    def __init__(
        self,
        store: OpStore,
        embedder: Embedder,
        vectors: VectorStore | None,
        write_embeddings: Callable[[list[NewEmbedding]], Awaitable[None]],
        *,
        batch: int = 512,
    ) -> None:
        self.store = store
        self.embedder = embedder
        self.vectors = vectors
        self._write_embeddings = write_embeddings
        self._batch = batch
        self._lock = asyncio.Lock()
        self._dirty = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._checked = False
        self._current = False  # True while everything written has been indexed

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        """Index in the background whenever writes pause (see :data:`IDLE_DELAY_S`)."""
        if self._task is None:
            self._task = asyncio.create_task(self._background(), name="chrysalis-recall-index")

    def notify(self) -> None:
        """Something was written: index it once writes pause."""
        self._current = False
        self._dirty.set()

    async def close(self) -> None:
        self._stopping = True
        self._dirty.set()
        if self._task is not None:
            await self._task
            self._task = None

    async def _background(self) -> None:
        while True:
            await self._dirty.wait()
            await self._until_quiet()
            if self._stopping:
                return
            try:
                await self.flush()
            except ChrysalisError as error:  # retried on the next write or recall
                log.warning("background recall indexing failed: %s", error)

    async def _until_quiet(self) -> None:
        """Return once no write has come for :data:`IDLE_DELAY_S`, or on close."""
        while not self._stopping:
            self._dirty.clear()
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._dirty.wait(), timeout=IDLE_DELAY_S)
            if not self._dirty.is_set():
                return

    # --- indexing --------------------------------------------------------------------

    async def flush(self, progress: Progress | None = None) -> int:
        """Index everything written so far; returns how many ops were indexed."""
        if self._current:
            return 0  # nothing was written since the last flush (one process owns the store)
        async with self._lock:
            if not self._checked:
                await self._repair_if_stale()
                self._checked = True
            self._current = True  # a write during the flush clears it again
            try:
                return await self._index_pending(progress)
            except BaseException:
                self._current = False
                raise

    async def rebuild(self, progress: Progress | None = None) -> int:
        """Drop both indexes and rebuild them from the op log (embeddings are reused)."""
        async with self._lock:
            await self._clear()
            self._checked = True
            self._current = True
            try:
                return await self._index_pending(progress)
            except BaseException:
                self._current = False
                raise

    async def lag(self) -> int:
        """Ops written but not indexed yet."""
        cursor = int(await self.store.meta(CURSOR_KEY) or 0)
        return max(0, await self.store.last_seqno() - cursor)

    async def _clear(self) -> None:
        if self.vectors is not None:
            await self.vectors.clear()
        await self.store.clear_text_index(CURSOR_KEY)

    async def _repair_if_stale(self) -> None:
        """Rebuild when the vector cache disagrees with the keyword index (a cache
        deleted, damaged, or built with another embedder)."""
        if self.vectors is None:
            return
        try:
            vectors = await self.vectors.count()
        except VectorCacheError as error:
            log.warning("vector cache unusable (%s): rebuilding it", error)
            vectors = -1
        if vectors != await self.store.text_index_size():
            await self._clear()

    async def _index_pending(self, progress: Progress | None) -> int:
        cursor = int(await self.store.meta(CURSOR_KEY) or 0)
        total = max(0, await self.store.last_seqno() - cursor)
        done = 0
        while True:
            last, doc_ids = await self.store.changed_docs(cursor, self._batch)
            if last == cursor:
                return done
            memory_ids = [d for d in doc_ids if not d.startswith("emb:")]
            await self._index(memory_ids, last)
            done += last - cursor
            cursor = last
            if progress is not None:
                progress(min(done, total), total)

    async def _index(self, memory_ids: list[str], cursor: int) -> None:
        states = await self.store.get_states(memory_ids)
        live: dict[str, tuple[MemoryState, SyncStatus]] = {}
        for doc_id in memory_ids:
            entry = states.get(doc_id)
            if entry is None:
                continue
            state, status = entry
            if isinstance(state, MemoryState) and state.exists and not state.is_forgotten:
                live[doc_id] = (state, status)
        gone = [doc_id for doc_id in memory_ids if doc_id not in live]
        await self._share_promoted_embeddings(live)
        indexed = await self.store.indexed_text(memory_ids)
        for doc_id, (state, _) in list(live.items()):
            if indexed.get(doc_id) == _indexed_fields(state):
                del live[doc_id]  # only its counters changed (an access, a reinforcement)
        gone = [doc_id for doc_id in gone if doc_id in indexed]
        if self.vectors is not None:
            vectors = await self._vectors_of(live)
            if gone:
                await self.vectors.delete(gone)
            if live:
                await self.vectors.upsert(
                    list(live),
                    [vectors[doc_id] for doc_id in live],
                    [_metadata(state) for state, _ in live.values()],
                )
        rows = [(doc_id, *_indexed_fields(state)) for doc_id, (state, _) in live.items()]
        await self.store.update_text_index(CURSOR_KEY, cursor, [*live, *gone], rows)

    async def _share_promoted_embeddings(
        self, live: dict[str, tuple[MemoryState, SyncStatus]]
    ) -> None:
        """Queue for sync the local embeddings of memories that are now shared
        (a short-term memory was promoted: so is its embedding)."""
        model = self.embedder.model
        ids = [
            embedding_id(model, text_hash(state.content.value or ""))
            for state, status in live.values()
            if status is not SyncStatus.LOCAL
        ]
        if not ids:
            return
        entries = await self.store.get_states(ids)
        local = [
            cid
            for state, status in entries.values()
            if status is SyncStatus.LOCAL
            for cid in state.ops
        ]
        if local:
            await self.store.set_status(local, SyncStatus.PENDING)

    async def _vectors_of(
        self, live: dict[str, tuple[MemoryState, SyncStatus]]
    ) -> dict[str, list[float]]:
        """Each live memory's vector: from its embedding document, else embedded now."""
        model = self.embedder.model
        hashes = {
            doc_id: text_hash(state.content.value or "") for doc_id, (state, _) in live.items()
        }
        ids = {h: embedding_id(model, h) for h in hashes.values()}
        known = await self.store.get_states(ids.values())
        by_hash: dict[str, list[float]] = {}
        to_embed: dict[str, tuple[str, SyncStatus]] = {}
        for doc_id, (state, status) in live.items():
            hashed = hashes[doc_id]
            entry = known.get(ids[hashed])
            payload = (
                entry[0].payload.value if entry and isinstance(entry[0], EmbeddingState) else None
            )
            if payload is not None:
                by_hash[hashed] = decode_vector(payload.vector)
            elif hashed not in to_embed or status is not SyncStatus.LOCAL:
                to_embed[hashed] = (state.content.value or "", status)
        if to_embed:
            texts = [text for text, _ in to_embed.values()]
            embedded = await self.embedder.embed(texts)
            fresh = [
                NewEmbedding(
                    hashed,
                    vector,
                    SyncStatus.LOCAL if st is SyncStatus.LOCAL else SyncStatus.PENDING,
                )
                for (hashed, (_, st)), vector in zip(to_embed.items(), embedded, strict=True)
            ]
            await self._write_embeddings(fresh)
            by_hash.update((e.hashed_text, e.vector) for e in fresh)
        return {doc_id: by_hash[hashes[doc_id]] for doc_id in live}


def _indexed_fields(state: MemoryState) -> tuple[str, str, str]:
    """What the indexes hold of a memory: a memory is re-indexed when these change."""
    return (
        state.memory_type.value or "episodic",
        state.content.value or "",
        " ".join(sorted(state.tags.value)),
    )


def _metadata(state: MemoryState) -> dict[str, Any]:
    """Scalar fields the vector cache can filter on (they change only with re-indexing)."""
    created = state.created.value
    return {
        "memory_type": state.memory_type.value or "episodic",
        "source": created[0].writer if created else "",
    }
