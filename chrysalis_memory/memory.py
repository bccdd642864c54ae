"""``AgentMemory``: one agent's replica of the collective memory.

Every call becomes a signed op (pure), which is appended to the local op log
and folded into the document in one transaction. Nothing here waits on the
network: with no hub, every operation works; sync picks up what is pending.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import uuid
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import msgspec
from filelock import FileLock, Timeout
from msgspec import UNSET

from chrysalis_memory import validation as check
from chrysalis_memory.config import AgentMemoryConfig
from chrysalis_memory.crdt.hlc import HybridClock
from chrysalis_memory.errors import (
    ClosedError,
    ConfigError,
    DataDirError,
    DataDirLockedError,
    ForgedWriterError,
    InvalidArgumentError,
    InvalidOpError,
    KeyMismatchError,
    MalformedOpError,
    UnknownMemoryError,
)
from chrysalis_memory.keys import load_or_create_signer
from chrysalis_memory.model.document import MemoryDocument, RecallHit, SyncStatus
from chrysalis_memory.model.ops import (
    MAX_ACCESS,
    Creation,
    EmbeddingPatch,
    MemoryPatch,
    Op,
    OpAuthor,
    Signer,
    decode_op,
    decode_vector,
    embedding_id,
    encode_vector,
    text_hash,
)
from chrysalis_memory.model.state import DocState, EmbeddingState, MemoryState
from chrysalis_memory.recall.indexer import NewEmbedding, Progress, RecallIndex
from chrysalis_memory.recall.search import Candidate, SearchMode, passes_filters
from chrysalis_memory.recall.service import RecallService
from chrysalis_memory.store import ListQuery, OpStore
from chrysalis_memory.store.sqlite import Refusal, combine_status
from chrysalis_memory.store.verify import VerifyReport, verify_store
from chrysalis_memory.verifier import SignatureVerifier

if TYPE_CHECKING:
    from chrysalis_memory.gossip.peer import GossipPeer, GossipState
    from chrysalis_memory.recall.embedders import Embedder
    from chrysalis_memory.sync.client import SyncClient, SyncReport, SyncState

log = logging.getLogger(__name__)

OpInput = Op | bytes | str | Mapping[str, Any]
"""What :meth:`AgentMemory.merge_ops` accepts: ops, or their encodings."""


class AgentMemory:
    """One agent's memory: a local, offline-first replica of the collective.

    Use it as an async context manager::

        async with AgentMemory(agent_id="agent-001", data_dir="./data") as mem:
            mid = await mem.learn("The user prefers concise answers.", importance=0.9)

    Pass an :class:`AgentMemoryConfig`, or its fields as keywords, or nothing
    (``AgentMemoryConfig.from_env()`` is read then). ``embedder`` replaces the
    configured one (any object with ``model``, ``dimensions`` and an async
    batch ``embed``). One process owns an agent's data directory at a time.
    """

    def __init__(
        self,
        config: AgentMemoryConfig | None = None,
        /,
        *,
        embedder: Embedder | str | None = None,
        **fields: Any,
    ) -> None:
        if isinstance(embedder, str):  # the config's choice: "auto", "hashing" or "ollama"
            fields["embedder"], embedder = embedder, None
        if config is None:
            config = AgentMemoryConfig.from_env(**fields)
        elif fields:
            config = AgentMemoryConfig.build(**{**config.model_dump(), **fields})
        self.config = config
        self._custom_embedder = embedder
        self._store: OpStore | None = None
        self._author: OpAuthor | None = None
        self._lock_file: FileLock | None = None
        self._verifier = SignatureVerifier()
        # Local writes are serialised so that sequence numbers commit in order.
        self._write_lock = asyncio.Lock()
        self._recall: RecallService | None = None
        self._sync: SyncClient | None = None
        self._gossip: GossipPeer | None = None

    # --- lifecycle --------------------------------------------------------------

    @property
    def agent_id(self) -> str:
        return self.config.agent_id

    @property
    def embedder_choice(self) -> str:
        """Which embedder recall uses, and why (empty until recall is first used)."""
        return self._recall.embedder_choice if self._recall is not None else ""

    @property
    def is_open(self) -> bool:
        return self._store is not None

    @property
    def store(self) -> OpStore:
        """The underlying op store (for sync, recall and tools)."""
        if self._store is None:
            raise ClosedError(
                "this AgentMemory is not open: use `async with AgentMemory(...) as mem` "
                "or `await mem.open()`"
            )
        return self._store

    async def open(self) -> AgentMemory:
        """Open the store (creating it, and this agent's key, on first use)."""
        if self._store is not None:
            return self
        cfg = self.config
        db_path = cfg.resolved_db_path
        if db_path is None:
            signer = Signer.generate()  # an in-memory agent is a new writer every time
        else:
            self._acquire_data_dir(cfg.agent_dir)
            try:
                key_path = cfg.agent_dir / "keys" / "signing.key"
                with _data_dir_errors(key_path, "data_dir"):
                    signer = load_or_create_signer(key_path)
                if cfg.db_path is not None:
                    _make_dir(db_path.parent, "db_path", for_path=db_path)
            except BaseException:
                self._release_data_dir()
                raise
        store = OpStore(db_path, durability=cfg.durability)
        try:
            await store.open()
            try:
                await store.pin_writer_key(cfg.agent_id, signer.public_key)
            except ForgedWriterError:
                raise KeyMismatchError(
                    f"the store at {db_path} holds ops by {cfg.agent_id!r} signed with another "
                    f"key than {cfg.agent_dir / 'keys' / 'signing.key'}: restore that agent's key, "
                    "or use a new agent_id"
                ) from None
            clock = HybridClock(last=await store.max_hlc())
            self._author = OpAuthor(
                cfg.agent_id, signer, clock, last_seq=await store.last_seq(cfg.agent_id)
            )
        except BaseException:
            await store.close()
            self._release_data_dir()
            raise
        self._store = store
        if cfg.hub_url is not None and cfg.sync_enabled:
            from chrysalis_memory.sync.client import SyncClient

            self._sync = SyncClient(
                store,
                self._merge_from_hub,
                retry=self._retry_quarantined,
                quarantine=await store.quarantine_summary(),
                agent_id=cfg.agent_id,
                public_key=signer.public_key,
                url=cfg.hub_url,
                token=cfg.hub_token.get_secret_value() if cfg.hub_token else None,
                batch_size=cfg.sync_batch_size,
                interval_s=cfg.sync_interval_s,
                connect_timeout_s=cfg.sync_connect_timeout_s,
            )
            self._sync.start()
        if cfg.gossip.enabled:
            from chrysalis_memory.gossip.peer import GossipPeer

            gossip = GossipPeer(
                store,
                self._merge,
                agent_id=cfg.agent_id,
                signer=signer,
                config=cfg.gossip,
                hub_url=cfg.hub_url,
                hub_token=cfg.hub_token.get_secret_value() if cfg.hub_token else None,
            )
            try:
                await gossip.start()
            except BaseException:
                await self.close()
                raise
            self._gossip = gossip
        return self

    async def close(self) -> None:
        """Close the store; everything acknowledged is already durable (and ops
        not yet pushed to the hub are pushed at the next open)."""
        if self._gossip is not None:
            gossip, self._gossip = self._gossip, None
            await gossip.close()
        if self._sync is not None:
            sync, self._sync = self._sync, None
            await sync.close()
        await self._close_recall()
        store, self._store = self._store, None
        if store is not None:
            await store.close()
        self._verifier.close()
        self._release_data_dir()

    async def __aenter__(self) -> AgentMemory:
        return await self.open()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _acquire_data_dir(self, agent_dir: Path) -> None:
        _make_dir(agent_dir, "data_dir")
        lock = FileLock(agent_dir / "agent.lock", timeout=0)
        try:
            lock.acquire()
        except Timeout:  # a TimeoutError, hence an OSError: caught first
            raise DataDirLockedError(
                f"{agent_dir} is in use by another AgentMemory (this or another process): "
                "one process owns an agent's data directory. Close the other one, or use "
                "another agent_id or data_dir."
            ) from None
        except OSError as exc:
            raise _unusable(exc, agent_dir / "agent.lock", "data_dir") from None
        self._lock_file = lock

    def _release_data_dir(self) -> None:
        if self._lock_file is not None:
            self._lock_file.release()
            self._lock_file = None

    # --- writes -------------------------------------------------------------------

    async def learn(
        self,
        content: str,
        *,
        importance: float = 0.5,
        confidence: float = 0.8,
        memory_type: str = "episodic",
        tags: Iterable[str] = (),
        evidence: Iterable[str] = (),
        related: Iterable[str] = (),
        parents: Iterable[str] = (),
        metadata: Mapping[str, Any] | None = None,
        memory_id: str | None = None,
        doc_type: Literal["memory", "bead", "metadata"] = "memory",
    ) -> str:
        """Remember something; returns the new memory's id.

        ``memory_id`` picks the id (a UUID by default). Learning an id that
        already exists merges into it, as concurrent creations do; learning a
        forgotten one brings it back.
        """
        patch = MemoryPatch(
            create=Creation(kind=doc_type) if doc_type != "memory" else Creation(),
            content=check.content(content),
            memory_type=check.memory_type(memory_type),
            importance=check.unit_interval("importance", importance),
            confidence=check.unit_interval("confidence", confidence),
            tags_add=check.tags(tags),
            evidence=check.strings("evidence", evidence, max_chars=check.MAX_EVIDENCE_CHARS),
            related_memories=check.ids("related", related),
            parent_memories=check.ids("parents", parents),
            metadata=check.metadata(metadata) or UNSET,
        )
        if doc_type not in ("memory", "bead", "metadata"):
            raise InvalidArgumentError(
                f"doc_type must be memory, bead or metadata; got {doc_type!r}"
            )
        doc_id = str(uuid.uuid4()) if memory_id is None else check.memory_id(memory_id)

        def build(current: MemoryState) -> MemoryPatch:
            # Learning a forgotten id again brings it back (a later write wins the
            # forgotten flag, as any last-writer-wins field).
            return (
                msgspec.structs.replace(patch, forgotten=False) if current.is_forgotten else patch
            )

        await self._write(doc_id, build, creating=True, fresh=memory_id is None)
        return doc_id

    async def update(
        self,
        memory_id: str,
        *,
        content: str | None = None,
        memory_type: str | None = None,
        embedding_ref: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> MemoryDocument:
        """Overwrite fields (last writer wins by HLC); metadata merges key by key."""
        fields: dict[str, Any] = {}
        if content is not None:
            fields["content"] = check.content(content)
        if memory_type is not None:
            fields["memory_type"] = check.memory_type(memory_type)
        if embedding_ref is not None:
            fields["embedding_ref"] = check.reference("embedding_ref", embedding_ref)
        if metadata is not None:
            fields["metadata"] = check.metadata(metadata)
        if not fields:
            raise InvalidArgumentError(
                "update needs at least one of content, memory_type, embedding_ref, metadata"
            )
        return await self._write_view(memory_id, lambda _: MemoryPatch(**fields))

    async def tag(self, memory_id: str, *tags: str) -> MemoryDocument:
        """Add tags. A tag added concurrently with its removal elsewhere survives.

        Every call writes an add, even of a tag the memory already has here: a
        replica that has not seen this add may be removing the tag right now,
        and the add must win over that remove (spec §2.2.2).
        """
        wanted = check.tags(tags)

        def patch(state: MemoryState) -> MemoryPatch | None:
            # A fresh op is a fresh dot for each tag, even a tag already present:
            # skipping those would let a concurrent untag of the dots seen so far
            # remove them everywhere.
            return MemoryPatch(tags_add=wanted) if wanted else None

        return await self._write_view(memory_id, patch)

    async def untag(self, memory_id: str, *tags: str) -> MemoryDocument:
        """Remove tags as this replica sees them (observed-remove)."""
        unwanted = check.tags(tags)

        def patch(state: MemoryState) -> MemoryPatch | None:
            removed = {t: tuple(state.observed_dots(t)) for t in unwanted if t in state.tags}
            return MemoryPatch(tags_remove=removed) if removed else None

        return await self._write_view(memory_id, patch)

    async def reinforce(
        self,
        memory_id: str,
        *,
        importance: float | None = None,
        confidence: float | None = None,
        evidence: Iterable[str] = (),
    ) -> MemoryDocument:
        """Raise importance or confidence (they never decrease) and add evidence."""
        fields: dict[str, Any] = {}
        if importance is not None:
            fields["importance"] = check.unit_interval("importance", importance)
        if confidence is not None:
            fields["confidence"] = check.unit_interval("confidence", confidence)
        proof = check.strings("evidence", evidence, max_chars=check.MAX_EVIDENCE_CHARS)
        if not fields and not proof:
            raise InvalidArgumentError("reinforce needs importance, confidence or evidence")

        def patch(state: MemoryState) -> MemoryPatch | None:
            changed = {
                name: value
                for name, value in fields.items()
                if (getattr(state, name).value or 0.0) < value
            }
            fresh = tuple(e for e in proof if e not in state.evidence)
            return MemoryPatch(**changed, evidence=fresh) if changed or fresh else None

        return await self._write_view(memory_id, patch)

    async def link(
        self,
        memory_id: str,
        *others: str,
        relation: Literal["related", "parent"] = "related",
    ) -> MemoryDocument:
        """Relate this memory to others (or name them as its parents)."""
        targets = check.ids("others", others)
        if not targets:
            raise InvalidArgumentError("link needs at least one other memory id")
        if memory_id in targets:
            raise InvalidArgumentError("a memory cannot be linked to itself")
        if relation not in ("related", "parent"):
            raise InvalidArgumentError(f"relation must be 'related' or 'parent', got {relation!r}")

        def patch(state: MemoryState) -> MemoryPatch | None:
            links = state.related_memories if relation == "related" else state.parent_memories
            new = tuple(t for t in targets if t not in links)
            if not new:
                return None
            if relation == "related":
                return MemoryPatch(related_memories=new)
            return MemoryPatch(parent_memories=new)

        return await self._write_view(memory_id, patch)

    async def forget(self, memory_id: str) -> None:
        """Hide a memory from recall and lists. Its ops are kept: nothing is lost."""
        state = await self._memory_state(memory_id, allow_forgotten=True)
        if not state.is_forgotten:
            await self._write(memory_id, lambda _: MemoryPatch(forgotten=True))

    async def record_access(self, memory_id: str, times: int = 1) -> MemoryDocument:
        """Count accesses (a G-Counter: concurrent accesses on all agents add up).

        This agent's count of a memory stops at ``MAX_ACCESS`` (2^40 - 1): past it,
        nothing more is recorded.
        """
        if isinstance(times, bool) or not isinstance(times, int) or not 1 <= times <= MAX_ACCESS:
            raise InvalidArgumentError(
                f"times must be a positive integer, at most {MAX_ACCESS} (MAX_ACCESS); "
                f"got {times!r}"
            )
        me = self.agent_id
        return await self._write_view(memory_id, lambda state: _access(state, me, times))

    async def _write_view(
        self, memory_id: str, build: Callable[[MemoryState], MemoryPatch | None]
    ) -> MemoryDocument:
        state, status = await self._write(memory_id, build)
        assert isinstance(state, MemoryState)
        return state.to_document(status)

    async def _write(
        self,
        memory_id: str,
        build: Callable[[MemoryState], MemoryPatch | None],
        *,
        creating: bool = False,
        fresh: bool = False,
    ) -> tuple[DocState, SyncStatus]:
        """Mint an op from the memory's current state, persist it and fold it in.

        ``build`` returns None when the call would change nothing: no op then.
        ``fresh`` promises the id is new (a UUID just drawn): no lookup needed.
        """
        check.memory_id(memory_id)
        store, author = self.store, self._require_author()
        async with self._write_lock:
            entry = None if fresh else await store.checkout(memory_id)
            state, previous = entry if entry else (None, None)
            if not creating:
                state = self._require_live(memory_id, state)
            current = state if isinstance(state, MemoryState) else MemoryState(memory_id)
            patch = build(current)
            if patch is None:
                assert entry is not None
                store.release(memory_id, entry)
                return entry
            status, promote = self._sync_status_for(current, patch, previous)
            op = author.make(memory_id, patch, current.heads)
            current.apply(op)
            with self._minted(1):
                doc_status = await store.append_local(
                    op, current, status, previous=previous, promote=promote
                )
        self._written()
        return current, doc_status

    @contextmanager
    def _minted(self, count: int) -> Iterator[None]:
        """Around storing ``count`` ops just minted (under the write lock): if that
        fails, they were not stored, so their sequence numbers are free again."""
        try:
            yield
        except BaseException:
            self._require_author().last_seq -= count
            raise

    def _sync_status_for(
        self, state: MemoryState, patch: MemoryPatch, current: SyncStatus | None
    ) -> tuple[SyncStatus, bool]:
        """Promotion (spec §3.2.1): short-term memories stay local until important enough."""
        cfg = self.config
        if not cfg.promotion_enabled:
            return SyncStatus.PENDING, False
        importance = max(
            state.importance.value or 0.0,
            patch.importance if patch.importance is not UNSET else 0.0,
        )
        if importance < cfg.promotion_threshold:
            return SyncStatus.LOCAL, False
        return SyncStatus.PENDING, current is SyncStatus.LOCAL

    def _require_author(self) -> OpAuthor:
        if self._author is None:
            raise ClosedError("this AgentMemory is not open")
        return self._author

    @staticmethod
    def _require_live(memory_id: str, state: DocState | None) -> MemoryState:
        if not isinstance(state, MemoryState) or not state.exists:
            raise UnknownMemoryError(memory_id)
        if state.is_forgotten:
            raise UnknownMemoryError(memory_id, forgotten=True)
        return state

    async def _memory_state(self, memory_id: str, *, allow_forgotten: bool = False) -> MemoryState:
        entry = await self.store.get_state(check.memory_id(memory_id))
        state = entry[0] if entry else None
        if allow_forgotten and isinstance(state, MemoryState) and state.exists:
            return state
        return self._require_live(memory_id, state)

    # --- reads ------------------------------------------------------------------------

    async def get(
        self, memory_id: str, *, include_forgotten: bool = False
    ) -> MemoryDocument | None:
        """The memory with this id, or None if it is unknown here (or forgotten)."""
        entry = await self.store.get_state(check.memory_id(memory_id))
        if entry is None:
            return None
        state, status = entry
        if not isinstance(state, MemoryState) or not state.exists:
            return None
        if state.is_forgotten and not include_forgotten:
            return None
        return state.to_document(status)

    async def list(
        self,
        *,
        memory_type: str | None = None,
        tags: Iterable[str] | None = None,
        source: str | None = None,
        since: Any = None,
        until: Any = None,
        limit: int = 100,
        offset: int = 0,
        include_forgotten: bool = False,
    ) -> list[MemoryDocument]:
        """Memories, most recently updated first.

        Filters combine with AND; ``tags`` matches memories carrying *all* of
        them; ``source`` is the creating agent; ``since``/``until`` bound the
        last update (datetime or Unix seconds).
        """
        query = _filters(
            memory_type,
            tags,
            source,
            since,
            until,
            include_forgotten=include_forgotten,
            limit=check.limit(limit),
            offset=check.limit(offset, "offset"),
        )
        return [
            state.to_document(status) for state, status in await self.store.list_memories(query)
        ]

    async def history(self, memory_id: str) -> builtins.list[Op]:
        """The ops behind a memory, oldest first (by HLC, then writer)."""
        ops = await self.store.ops_of(check.memory_id(memory_id))
        if not ops:
            raise UnknownMemoryError(memory_id)
        return ops

    # --- recall -----------------------------------------------------------------------

    async def recall(
        self,
        query: str = "",
        k: int = 5,
        *,
        vector: Sequence[float] | None = None,
        mode: SearchMode = "hybrid",
        memory_type: str | None = None,
        tags: Iterable[str] | None = None,
        source: str | None = None,
        since: Any = None,
        until: Any = None,
        record_access: bool = True,
        scope: Literal["local", "collective"] = "local",
    ) -> builtins.list[RecallHit]:
        """The ``k`` memories most relevant to ``query``, best first.

        ``hybrid`` fuses vector similarity and keyword (BM25) relevance by
        reciprocal rank; ``vector`` and ``keyword`` use one retriever. Hits are
        ranked by 0.5 relevance + 0.3 confidence + 0.2 usage (spec §5.4).
        Filters are those of :meth:`list`; forgotten memories never come back.
        Each hit's access count goes up (``record_access=False`` to only look).

        ``vector`` is the query's embedding, when the caller has one (made by
        the same model as this replica's embedder): it is used instead of
        embedding ``query``, which may then be empty (vector search alone).

        ``scope="collective"`` also asks the hub to search the collective index
        and merges its hits with the local ones (one hit per memory, the better
        score); it needs a hub, and raises
        :class:`~chrysalis_memory.errors.SyncError` if the hub cannot answer.
        """
        query_vector = None if vector is None else check.query_vector(vector)
        if query_vector is None or query:
            text = check.query(query)
        elif mode == "keyword":
            raise InvalidArgumentError("a keyword search needs query text, not just a vector")
        else:
            text, mode = "", "vector"
        wanted = check.positive("k", k, maximum=1000)
        if mode not in ("hybrid", "vector", "keyword"):
            raise InvalidArgumentError(f"mode must be hybrid, vector or keyword; got {mode!r}")
        filters = _filters(memory_type, tags, source, since, until)
        if mode == "vector" and not self.config.local_vector_cache:
            raise InvalidArgumentError(
                "vector search needs the local vector cache (local_vector_cache=True)"
            )
        if scope not in ("local", "collective"):
            raise InvalidArgumentError(f"scope must be local or collective; got {scope!r}")
        sync = self._require_sync() if scope == "collective" else None
        recall = self._recall_service()
        if sync is not None and query_vector is None and mode != "keyword":
            # Embedded once, for the local search and the hub's alike.
            query_vector = await recall.embed_query(text)
        found = await recall.search(text, wanted, mode, filters, query_vector)
        if sync is not None:
            found = await self._with_collective(sync, text, wanted, filters, found, query_vector)
        views = {c.state.id: c.state.to_document(c.status) for c in found}
        if record_access and found:
            views.update(await self._record_accesses([c.state.id for c in found]))
        return [
            RecallHit(
                memory=views[c.state.id],
                score=c.score,
                similarity=c.similarity,
                relevance=c.relevance,
            )
            for c in found
        ]

    async def _with_collective(
        self,
        sync: SyncClient,
        text: str,
        k: int,
        filters: ListQuery,
        local: builtins.list[Candidate],
        vector: Sequence[float] | None,
    ) -> builtins.list[Candidate]:
        """Merge the hub's hits into the local ones (spec §6.3): one per memory,
        the better score first. A hit this replica does not hold yet is pulled.
        The query's embedding goes along, so the hub need not embed it again."""
        remote = await sync.search(
            text,
            vector=vector,
            model=await self._recall_service().embedding_model() if vector else None,
            k=k,
            memory_type=filters.memory_type,  # type: ignore[arg-type]
            tags=filters.tags,
            source=filters.source,
        )
        best = {c.state.id: c for c in local}
        scores = {hit.id: hit.score for hit in remote if hit.id not in best}
        if not scores:
            return local
        held = await self.store.get_states(scores)
        if len(held) < len(scores):
            await sync.sync_now()  # written moments ago: the broadcast is on its way
            held = await self.store.get_states(scores)
        fields = await self.store.rank_fields(builtins.list(held))
        for doc_id, (state, status) in held.items():
            row = fields.get(doc_id)
            if not isinstance(state, MemoryState) or row is None:
                continue  # forgotten since, or not a memory
            if not passes_filters(row, filters):  # as this replica sees it now
                continue
            best[doc_id] = Candidate(state, status, scores[doc_id], 0.0, 0.0)
        return sorted(best.values(), key=lambda c: (-c.score, c.state.id))[:k]

    async def reindex(self, progress: Progress | None = None) -> int:
        """Rebuild the keyword index and the vector cache from the op log.

        Embeddings already in the log are reused, not recomputed. A damaged
        vector cache is deleted and started afresh. Returns the number of ops
        indexed.
        """
        return await self._recall_service().rebuild(progress)

    async def flush_index(self) -> int:
        """Index everything written so far now (recall does it first anyway; the
        index otherwise catches up once writes pause). Returns the ops indexed."""
        return await (await self._recall_index()).flush()

    async def embedding_model(self) -> str:
        """The model recall embeds with (starting recall if need be)."""
        return await self._recall_service().embedding_model()

    async def embedding(self, memory_id: str) -> builtins.list[float] | None:
        """The vector recall uses for this memory's current content (under
        :meth:`embedding_model`), or None if it has not been embedded yet
        (:meth:`flush_index` embeds it)."""
        state = await self._memory_state(memory_id)
        model = await self.embedding_model()
        doc_id = embedding_id(model, text_hash(state.content.value or ""))
        entry = await self.store.get_state(doc_id)
        if entry is None or not isinstance(entry[0], EmbeddingState):
            return None
        payload = entry[0].payload.value
        return None if payload is None else decode_vector(payload.vector)

    def _recall_service(self) -> RecallService:
        if self._recall is None:
            cfg = self.config
            self._recall = RecallService(
                self.store,
                embedder=self._custom_embedder,
                embedder_kind=cfg.embedder,
                embedding_model=cfg.embedding_model,
                ollama_host=cfg.ollama_host,
                vectors=cfg.local_vector_cache,
                vector_dir=None if cfg.resolved_db_path is None else cfg.agent_dir / "vectors",
                write_embeddings=self._write_embeddings,
            )
        return self._recall

    async def _recall_index(self) -> RecallIndex:
        """The recall index, started on first use (benchmarks and tests look inside)."""
        return await self._recall_service().index()

    async def _close_recall(self) -> None:
        if self._recall is not None:
            await self._recall.close()
            self._recall = None

    def _written(self) -> None:
        """Ops were stored: index them once writes pause, and push them now."""
        if self._recall is not None:
            self._recall.notify()
        if self._sync is not None:
            self._sync.notify()
        if self._gossip is not None:
            self._gossip.notify()

    async def _write_embeddings(self, embeddings: builtins.list[NewEmbedding]) -> None:
        """Record embeddings made here as signed ops, so they replicate."""
        model = (await self._recall_index()).embedder.model
        store, author = self.store, self._require_author()
        async with self._write_lock:
            writes = []
            ids = [embedding_id(model, new.hashed_text) for new in embeddings]
            existing = await store.checkout_many(ids)
            for doc_id, new in zip(ids, embeddings, strict=True):
                patch = EmbeddingPatch(
                    text_hash=new.hashed_text,
                    model=model,
                    dimensions=len(new.vector),
                    vector=encode_vector(new.vector),
                )
                entry = existing.get(doc_id)
                state = entry[0] if entry is not None else EmbeddingState(doc_id)
                op = author.make(doc_id, patch, state.heads)
                state.apply(op)
                writes.append((op, state, new.status, new.status))
            with self._minted(len(writes)):
                await store.append_local_many(writes)

    async def _record_accesses(self, ids: builtins.list[str]) -> dict[str, MemoryDocument]:
        """Count one access to each memory, in one transaction; returns their new views."""
        store, author, me = self.store, self._require_author(), self.agent_id
        async with self._write_lock:
            entries = await store.checkout_many(ids)
            writes = []
            for doc_id in ids:
                entry = entries.get(doc_id)
                if entry is None:
                    continue
                state, previous = entry
                if not isinstance(state, MemoryState):
                    continue
                patch = _access(state, me, 1)
                if patch is None:  # this agent's count is at its bound
                    store.release(doc_id, entry)
                    continue
                status, _ = self._sync_status_for(state, patch, previous)
                op = author.make(doc_id, patch, state.heads)
                state.apply(op)
                writes.append((op, state, status, combine_status(previous, status)))
            with self._minted(len(writes)):
                await store.append_local_many(writes)
        self._written()
        return {
            op.doc: state.to_document(doc)
            for op, state, _, doc in writes
            if isinstance(state, MemoryState)
        }

    # --- replication -----------------------------------------------------------------

    async def iter_ops(self) -> AsyncIterator[Op]:
        """Every op this replica holds, streamed in local arrival order."""
        async for _, op, _ in self.store.iter_ops():
            yield op

    async def export_ops(self) -> builtins.list[Op]:
        """Every op this replica holds (see :meth:`iter_ops` to stream them)."""
        return [op async for op in self.iter_ops()]

    async def merge_ops(self, ops: Iterable[OpInput]) -> int:
        """Merge ops from another replica; returns how many were new here.

        Each op is checked (format, CID, signature, the writer's pinned key, no
        equivocation) before anything is stored; one bad op rejects the batch
        with an :class:`~chrysalis_memory.errors.InvalidOpError` and nothing
        changes. Merging ops already held is a no-op.
        """
        store = self.store
        if isinstance(ops, bytes | str | Mapping | Op):
            raise InvalidArgumentError("merge_ops takes a list of ops, not a single op")
        decoded = [decode_op(item, index=i) for i, item in enumerate(ops)]
        if not decoded:
            return 0
        position = {op.cid: i for i, op in enumerate(decoded)}
        # Ops already held need no signature check (their bytes hash to a stored CID).
        # ingest() looks again inside its transaction, for ops that arrive meanwhile.
        known = await store.known_cids(list(position))
        fresh = [op for op in decoded if op.cid not in known]
        return await self._merge(fresh, SyncStatus.PENDING, position)

    async def _merge_from_hub(
        self, ops: Sequence[Op], refused: Sequence[Refusal], meta: Mapping[str, str]
    ) -> tuple[int, builtins.list[Refusal]]:
        """Store a page of ops from the hub (decoded by the protocol; ``refused`` are
        the ones that did not decode) with ``meta`` (the sync cursor), in one
        transaction. One refused op costs no other: if the page as a whole is
        refused, its ops are stored one by one and the refused ones quarantined.
        Returns how many ops were new and every op refused."""
        store = self.store
        async with self._write_lock:
            try:
                new = await store.ingest(
                    ops, SyncStatus.SYNCED, verify=self._verifier.check, refused=refused, meta=meta
                )
                refusals = builtins.list(refused)
            except InvalidOpError:
                new, refusals = await self._ingest_each(ops, refused, meta)
        self._merged(new, SyncStatus.SYNCED)
        return len(new), refusals

    async def _retry_quarantined(self) -> tuple[int, builtins.list[Refusal]]:
        """Try the quarantined ops again (their cause may have gone away: the hub
        confirmed a key, a newer version decodes them); those stored leave the
        quarantine. Returns how many were stored and those refused again."""
        store = self.store
        ops: builtins.list[Op] = []
        undecodable: builtins.list[Refusal] = []
        for entry in await store.quarantined():
            if entry.body is None:
                continue  # too large to be an op: nothing to try
            try:
                ops.append(decode_op(entry.body))
            except MalformedOpError as error:
                undecodable.append(Refusal.undecodable(entry.body, str(error), entry.writer))
        async with self._write_lock:
            new, refusals = await self._ingest_each(ops, undecodable, {})
        self._merged(new, SyncStatus.SYNCED)
        return len(new), refusals

    async def _ingest_each(
        self, ops: Sequence[Op], refused: Sequence[Refusal], meta: Mapping[str, str]
    ) -> tuple[builtins.list[Op], builtins.list[Refusal]]:
        """:meth:`OpStore.ingest_each` of the ops whose signature verifies, the others
        quarantined as ``bad_signature``. The caller holds the write lock."""
        invalid = {error.index or 0: error for error in await self._verifier.invalid(ops)}
        refusals = [*refused, *(Refusal.of(ops[i], error) for i, error in invalid.items())]
        good = [op for i, op in enumerate(ops) if i not in invalid]
        return await self.store.ingest_each(good, SyncStatus.SYNCED, refused=refusals, meta=meta)

    async def _merge(
        self, ops: Sequence[Op], status: SyncStatus, position: Mapping[str, int] | None = None
    ) -> int:
        """Verify and store ops from elsewhere; returns how many were new here."""
        store = self.store

        def verify(chunk: Sequence[Op]) -> Awaitable[None]:
            indexes = [position[op.cid] for op in chunk] if position else None
            return self._verifier.check(chunk, indexes)

        async with self._write_lock:  # no local write between its checkout and its commit
            new = await store.ingest(ops, status, verify=verify)
        self._merged(new, status)
        return len(new)

    def _merged(self, new: Sequence[Op], status: SyncStatus) -> None:
        """After ops from elsewhere were stored: the clock, and who to tell."""
        author = self._require_author()
        for op in new:
            author.clock.observe(op.hlc)
            if op.writer == author.writer and op.seq > author.last_seq:
                author.last_seq = op.seq  # our own ops, restored from elsewhere
        if new and self._recall is not None:
            self._recall.notify()
        if new and status is SyncStatus.PENDING and self._sync is not None:
            self._sync.notify()
        if new and self._gossip is not None:
            self._gossip.notify()  # relayed by the hub or merged: gossip them on

    async def state_root(self) -> str:
        """A digest of the ops held: equal on replicas holding the same ops."""
        return await self.store.state_root()

    async def verify(self) -> VerifyReport:
        """Check every stored op (CID, signature, pinned key) and that every
        materialised document equals a replay of the op log."""
        return await verify_store(self.store, self._verifier)

    # --- the hub ---------------------------------------------------------------------

    async def sync_now(self, timeout: float = 30.0) -> SyncReport:
        """Push every pending op to the hub and pull everything new, now.

        Sync runs in the background anyway (writes are pushed as they happen,
        others' writes arrive as they are made); this waits until both are done.
        Raises :class:`~chrysalis_memory.errors.HubUnreachableError` if the hub
        cannot be reached within ``timeout``, or within ``sync_connect_timeout_s``
        when it refuses the connection (writes are kept and pushed later),
        :class:`~chrysalis_memory.errors.HubRejectedError` if it refuses the
        token, and :class:`~chrysalis_memory.errors.ConfigError` with no hub.
        """
        return await self._require_sync().sync_now(timeout)

    def sync_state(self) -> SyncState | None:
        """Where sync with the hub stands; None when no hub is configured."""
        return None if self._sync is None else self._sync.state()

    # --- gossip ------------------------------------------------------------------------

    @property
    def gossip_url(self) -> str | None:
        """The ``ws://`` address peers reach this agent at; None when gossip is off
        (``gossip.enabled``) or the memory is closed."""
        return None if self._gossip is None else self._gossip.url

    def gossip_state(self) -> GossipState | None:
        """Where peer-to-peer gossip stands (peers alive, suspect and dead, rumours
        still spreading, messages and bytes sent); None when gossip is off."""
        return None if self._gossip is None else self._gossip.state()

    def _require_sync(self) -> SyncClient:
        self.store  # noqa: B018 (raises ClosedError when closed)
        if self._sync is None:
            raise ConfigError(
                "no hub is configured: set hub_url (CHRYSALIS_HUB_URL) and hub_token "
                "(CHRYSALIS_HUB_TOKEN) to sync, e.g. "
                "AgentMemory(agent_id=..., hub_url='ws://127.0.0.1:4444', hub_token=...)"
            )
        return self._sync


def _make_dir(directory: Path, setting: str, *, for_path: Path | None = None) -> None:
    """Create ``directory`` (and its parents), or say why it (or ``for_path``, the
    file that goes in it) cannot be used."""
    with _data_dir_errors(for_path or directory, setting):
        directory.mkdir(parents=True, exist_ok=True)


@contextmanager
def _data_dir_errors(path: Path, setting: str) -> Iterator[None]:
    """Raise an ``OSError`` about ``path`` as a :class:`DataDirError` (:func:`_unusable`)."""
    try:
        yield
    except OSError as exc:
        raise _unusable(exc, path, setting) from None


def _unusable(exc: OSError, path: Path, setting: str) -> DataDirError:
    """An ``OSError`` about ``path`` as a :class:`DataDirError` that names the path,
    the problem and the ``setting`` (``data_dir`` or ``db_path``) to change."""
    variable = f"CHRYSALIS_{setting.upper()}"
    wanted = "a directory" if setting == "data_dir" else "a file in a directory"
    if isinstance(exc, NotADirectoryError | FileExistsError):
        blocker = _file_in_the_way(path) or Path(exc.filename or path)
        return DataDirError(
            f"cannot use {path}: {blocker} is a file, not a directory. Set {setting} "
            f"({variable}) to {wanted}, or move that file away."
        )
    if isinstance(exc, PermissionError):
        return DataDirError(
            f"cannot use {path}: permission denied. Set {setting} ({variable}) to "
            f"{wanted} this user can write, or change its permissions."
        )
    reason = exc.strerror or type(exc).__name__
    return DataDirError(
        f"cannot use {path}: {reason}. Set {setting} ({variable}) to {wanted} "
        "this process can create and write."
    )


def _file_in_the_way(path: Path) -> Path | None:
    """The nearest existing ancestor of ``path`` (or ``path``) if it is not a directory."""
    for candidate in (path, *path.parents):
        try:
            if candidate.exists():
                return None if candidate.is_dir() else candidate
        except OSError:
            return None
    return None


def _access(state: MemoryState, writer: str, times: int) -> MemoryPatch | None:
    """``writer``'s access count raised by ``times``, stopping at ``MAX_ACCESS``
    (None when it is there already: nothing to record)."""
    mine = state.access.of(writer)
    return MemoryPatch(access=min(mine + times, MAX_ACCESS)) if mine < MAX_ACCESS else None


def _filters(
    memory_type: str | None,
    tags: Iterable[str] | None,
    source: str | None,
    since: Any,
    until: Any,
    **rest: Any,
) -> ListQuery:
    """The filters shared by ``list`` and ``recall``, checked."""
    return ListQuery(
        memory_type=None if memory_type is None else check.memory_type(memory_type),
        tags=check.tags(tags),
        source=source,
        since_ms=check.timestamp_ms("since", since),
        until_ms=check.timestamp_ms("until", until),
        **rest,
    )
