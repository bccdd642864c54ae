"""``ChrysalisStore``: LangGraph's long-term memory store on Chrysalis.

Every item is a memory of the agent. Its id is derived from the item's
namespace and key, so agents that put the same item write the same memory
and their writes merge (last writer wins on the value, by hybrid logical
clock); items reach every agent through the hub like any memory.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Final

from langchain_core.embeddings import Embeddings
from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    ensure_embeddings,
    get_text_at_path,
    tokenize_path,
)

from chrysalis_memory import AgentMemory, AgentMemoryConfig, MemoryDocument
from chrysalis_memory.errors import InvalidArgumentError
from langchain_chrysalis._documents import (
    LC_ID,
    MAX_RECALL,
    Writer,
    find_live,
    matches,
    recall_size,
    timestamp,
)
from langchain_chrysalis._runtime import HandleLifecycle, MemoryArg, MemoryHandle
from langchain_chrysalis.embeddings import ChrysalisEmbeddings, LangChainEmbedder

try:  # recent langgraph: reject labels such as "a.b" in ops given to batch() directly
    from langgraph.store.base import validate_op_namespace as _validate
except ImportError:  # pragma: no cover
    _validate = None  # type: ignore[assignment]

__all__ = ["ChrysalisStore"]

STORE_TAG: Final = "langgraph-store"
ITEM_KEY: Final = "lg_item"
"""Memory metadata: ``{"namespace": [...], "key": ..., "value": {...}}`` (one LWW value)."""
TTL_KEY: Final = "lg_ttl"
"""Memory metadata: the item's time to live, in minutes (or None)."""
EXPIRES_KEY: Final = "lg_expires_at"
"""Memory metadata: Unix time after which the item is expired (or None)."""
_PAGE: Final = 500

Namespace = tuple[str, ...]


def item_id(namespace: Namespace, key: str) -> str:
    """The canonical name of an item (the documents' ``lc_id``)."""
    return json.dumps([list(namespace), key], ensure_ascii=False, separators=(",", ":"))


def _base_id(name: str) -> str:
    return "lgstore:" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def namespace_tag(prefix: Namespace) -> str:
    """The tag of the items whose namespace starts with ``prefix``."""
    tag = "lgns:" + json.dumps(list(prefix), ensure_ascii=False, separators=(",", ":"))
    if len(tag) <= 256:
        return tag
    return "lgns#" + hashlib.sha256(tag.encode("utf-8", "surrogatepass")).hexdigest()


class ChrysalisStore(HandleLifecycle, BaseStore):
    """A LangGraph ``BaseStore`` whose items are memories of a Chrysalis agent.

    Use it wherever LangGraph takes a store (``create_react_agent(...,
    store=ChrysalisStore(...))``, ``graph.compile(store=...)``). Agents whose
    stores sync through one hub see each other's items.

    Args:
        memory: an ``AgentMemory`` or ``BlockingAgentMemory`` to share; otherwise
            ``config`` and the keywords ``agent_id``, ``data_dir``, ``hub_url``,
            ``hub_token`` name the agent (none: a local store from
            ``AgentMemoryConfig.from_env()``).
        index: semantic search, as for LangGraph's stores: ``embed`` (LangChain
            embeddings, an embedding function or a provider string), ``dims``
            and ``fields`` (JSON paths of the text to embed; default the whole
            value). The agent's memory is opened with these embeddings. Without
            an index, ``search(query=...)`` still works, with the agent's own
            embedder and keyword search.
        ttl: ``TTLConfig`` (``default_ttl`` in minutes, ``refresh_on_read``).
            Expired items are never returned; :meth:`sweep_ttl` forgets them.
        importance, confidence, memory_type, tags: what items are learned
            with (importance 0.8 by default: at or above the agent's promotion
            threshold, 0.7, so that items are shared).
        clock: seconds since the epoch, for TTL (default ``time.time``).

    Differences from ``InMemoryStore``: an item is one memory, so its indexed
    fields are embedded as one text (joined by new lines) rather than one
    vector per field; a search without a query lists the most recently
    updated items first; a deleted item (forgotten) cannot come back as the
    same memory, so putting it again writes a new memory under a derived id.
    """

    supports_ttl: bool = True

    def __init__(
        self,
        *,
        memory: MemoryArg | None = None,
        agent_id: str | None = None,
        data_dir: str | Path | None = None,
        hub_url: str | None = None,
        hub_token: str | None = None,
        config: AgentMemoryConfig | None = None,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        importance: float = 0.8,
        confidence: float = 0.8,
        memory_type: str = "semantic",
        tags: Sequence[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self.index_config: IndexConfig | None = None
        self.embeddings: Embeddings | None = None
        self._fields: list[tuple[str, str | list[str]]] = []
        embedder = None
        if index:
            self.index_config = index.copy()
            self.embeddings = ensure_embeddings(index.get("embed"))
            self._fields = _tokenized(index.get("fields") or ["$"])
            if isinstance(self.embeddings, ChrysalisEmbeddings):
                embedder = self.embeddings.embedder
            else:
                embedder = LangChainEmbedder(self.embeddings, dimensions=index.get("dims"))
        self.ttl_config = ttl
        self._writer = Writer(
            importance=importance,
            confidence=confidence,
            memory_type=memory_type,
            tags=[STORE_TAG, *tags],
        )
        self._handle = MemoryHandle(
            memory,
            config=config,
            agent_id=agent_id,
            data_dir=data_dir,
            hub_url=hub_url,
            hub_token=hub_token,
            embedder=embedder,
        )

    @property
    def memory(self) -> AgentMemory:
        """The agent memory behind this store."""
        return self._handle.memory

    # --- batches ----------------------------------------------------------------------

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        todo = _checked(ops)
        vectors = (
            {query: self.embeddings.embed_query(query) for query in self._queries(todo)}
            if self.embeddings is not None
            else {}
        )
        return self._handle.run(lambda mem: self._batch(mem, todo, vectors))

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        todo = _checked(ops)
        vectors: dict[str, list[float]] = {}
        if self.embeddings is not None:
            for query in self._queries(todo):
                vectors[query] = await self.embeddings.aembed_query(query)
        return await self._handle.arun(lambda mem: self._batch(mem, todo, vectors))

    @staticmethod
    def _queries(ops: list[Op]) -> list[str]:
        return sorted({op.query for op in ops if isinstance(op, SearchOp) and op.query})

    async def _batch(
        self, mem: AgentMemory, ops: list[Op], vectors: dict[str, list[float]]
    ) -> list[Result]:
        """Reads first, then the puts (the last one per item wins), as LangGraph's
        in-memory store does: reads in a batch see the store as it was before it."""
        results: list[Result] = []
        puts: dict[tuple[Namespace, str], PutOp] = {}
        for op in ops:
            if isinstance(op, GetOp):
                results.append(await self._get(mem, op))
            elif isinstance(op, SearchOp):
                results.append(await self._search(mem, op, vectors.get(op.query or "")))
            elif isinstance(op, ListNamespacesOp):
                results.append(await self._list_namespaces(mem, op))
            elif isinstance(op, PutOp):
                puts[(op.namespace, op.key)] = op
                results.append(None)
            else:
                raise InvalidArgumentError(f"unknown store operation {type(op).__name__}")
        for put in puts.values():
            await self._put(mem, put)
        return results

    # --- get and put --------------------------------------------------------------------

    async def _get(self, mem: AgentMemory, op: GetOp) -> Item | None:
        memory, _ = await self._live(mem, op.namespace, op.key)
        if memory is None:
            return None
        if op.refresh_ttl:
            memory = await self._refresh(mem, memory)
        return _item(memory)

    async def _live(
        self, mem: AgentMemory, namespace: Namespace, key: str
    ) -> tuple[MemoryDocument | None, str]:
        """The item's live, unexpired memory (None if there is none)."""
        name = item_id(namespace, key)
        memory, memory_id = await find_live(mem, name, _base_id(name))
        if memory is not None and self._expired(memory):
            return None, memory_id
        return memory, memory_id

    async def _put(self, mem: AgentMemory, op: PutOp) -> None:
        name = item_id(op.namespace, op.key)
        if op.value is None:
            memory, memory_id = await find_live(mem, name, _base_id(name))
            if memory is not None:
                await mem.forget(memory_id)
            return
        if not isinstance(op.value, dict):
            raise InvalidArgumentError(f"store values must be dicts, got {type(op.value).__name__}")
        ttl = getattr(op, "ttl", None)
        fields = {
            ITEM_KEY: {"namespace": list(op.namespace), "key": op.key, "value": op.value},
            TTL_KEY: ttl,
            EXPIRES_KEY: None if ttl is None else self._clock() + ttl * 60,
        }
        await self._writer.upsert(
            mem,
            name,
            self._text(op),
            fields,
            extra_tags=[namespace_tag(op.namespace[:n]) for n in range(1, len(op.namespace) + 1)],
            base=_base_id(name),
        )

    def _text(self, op: PutOp) -> str:
        """What recall embeds and indexes for an item: its indexed fields' text, or
        the whole value as JSON."""
        assert op.value is not None
        texts: list[str] = []
        if self.index_config is not None and op.index is not False:
            paths = self._fields if op.index is None else _tokenized(list(op.index))
            for _, path in paths:
                texts.extend(t for t in get_text_at_path(op.value, path) if t.strip())
        if texts:
            return "\n".join(texts)
        return json.dumps(op.value, ensure_ascii=False, sort_keys=True, default=str)

    async def _refresh(self, mem: AgentMemory, memory: MemoryDocument) -> MemoryDocument:
        """Push the item's expiry back by its time to live (reads keep items alive)."""
        ttl = memory.metadata.get(TTL_KEY)
        if not isinstance(ttl, int | float) or isinstance(ttl, bool):
            return memory
        return await mem.update(memory.id, metadata={EXPIRES_KEY: self._clock() + ttl * 60})

    # --- search -------------------------------------------------------------------------

    async def _search(
        self, mem: AgentMemory, op: SearchOp, vector: list[float] | None
    ) -> list[SearchItem]:
        tags = [STORE_TAG]
        if op.namespace_prefix:
            tags.append(namespace_tag(tuple(op.namespace_prefix)))
        wanted = op.offset + op.limit
        if wanted <= 0:
            return []
        if op.query:
            found = await self._semantic(mem, op, vector, tags, wanted)
        else:
            found = [(memory, None) for memory in await self._scan(mem, op, tags, wanted)]
        results = []
        for memory, score in found[op.offset : wanted]:
            if op.refresh_ttl:
                memory = await self._refresh(mem, memory)
            item = _item(memory)
            results.append(
                SearchItem(
                    namespace=item.namespace,
                    key=item.key,
                    value=item.value,
                    created_at=item.created_at,
                    updated_at=item.updated_at,
                    score=score,
                )
            )
        return results

    def _keep(self, memory: MemoryDocument, op: SearchOp) -> bool:
        item = memory.metadata.get(ITEM_KEY)
        if not isinstance(item, dict) or self._expired(memory):
            return False
        namespace = tuple(item.get("namespace") or ())
        prefix = tuple(op.namespace_prefix)
        if namespace[: len(prefix)] != prefix:
            return False
        value = item.get("value")
        return not op.filter or (isinstance(value, dict) and matches(value, op.filter))

    async def _semantic(
        self,
        mem: AgentMemory,
        op: SearchOp,
        vector: list[float] | None,
        tags: list[str],
        wanted: int,
    ) -> list[tuple[MemoryDocument, float | None]]:
        """Items ranked by similarity to the query (by recall's own ranking when
        the store has no index)."""
        assert op.query
        fetch = recall_size(min(wanted, MAX_RECALL), bool(op.filter))
        while True:
            if vector is not None:
                hits = await mem.recall(
                    op.query, fetch, vector=vector, mode="vector", tags=tags, record_access=False
                )
            else:
                hits = await mem.recall(op.query, fetch, tags=tags, record_access=False)
            found: list[tuple[MemoryDocument, float | None]] = [
                (hit.memory, hit.similarity if vector is not None else hit.score)
                for hit in hits
                if self._keep(hit.memory, op)
            ]
            if len(found) >= wanted or len(hits) < fetch or fetch >= MAX_RECALL:
                break
            fetch = min(MAX_RECALL, fetch * 4)
        found.sort(key=lambda pair: -(pair[1] or 0.0))
        return found

    async def _scan(
        self, mem: AgentMemory, op: SearchOp, tags: list[str], wanted: int
    ) -> list[MemoryDocument]:
        """Items in the namespace, most recently updated first."""
        found: list[MemoryDocument] = []
        for offset in itertools.count(0, _PAGE):
            page = await mem.list(tags=tags, limit=_PAGE, offset=offset)
            found.extend(memory for memory in page if self._keep(memory, op))
            if len(found) >= wanted or len(page) < _PAGE:
                return found
        raise AssertionError("unreachable")  # pragma: no cover

    # --- namespaces and TTL -------------------------------------------------------------

    async def _list_namespaces(self, mem: AgentMemory, op: ListNamespacesOp) -> list[Namespace]:
        namespaces: set[Namespace] = set()
        for memory in await _all_items(mem):
            if self._expired(memory):
                continue
            item = memory.metadata[ITEM_KEY]
            namespace = tuple(item.get("namespace") or ())
            if all(_matches(condition, namespace) for condition in op.match_conditions or ()):
                namespaces.add(namespace if op.max_depth is None else namespace[: op.max_depth])
        return sorted(namespaces)[op.offset : op.offset + op.limit]

    def _expired(self, memory: MemoryDocument) -> bool:
        expires = memory.metadata.get(EXPIRES_KEY)
        return (
            isinstance(expires, int | float)
            and not isinstance(expires, bool)
            and expires < self._clock()
        )

    def sweep_ttl(self) -> int:
        """Forget every expired item (for every agent: forgetting replicates);
        returns how many."""
        return self._handle.run(self._sweep)

    async def asweep_ttl(self) -> int:
        return await self._handle.arun(self._sweep)

    async def _sweep(self, mem: AgentMemory) -> int:
        expired = [memory for memory in await _all_items(mem) if self._expired(memory)]
        for memory in expired:
            await mem.forget(memory.id)
        return len(expired)


def _checked(ops: Iterable[Op]) -> list[Op]:
    todo = list(ops)
    if _validate is not None:
        for op in todo:
            _validate(op)
    return todo


def _tokenized(paths: Sequence[str]) -> list[tuple[str, str | list[str]]]:
    return [(path, "$" if path == "$" else tokenize_path(path)) for path in paths]


def _item(memory: MemoryDocument) -> Item:
    item = memory.metadata[ITEM_KEY]
    return Item(
        value=dict(item["value"]),
        key=str(item["key"]),
        namespace=tuple(item["namespace"]),
        created_at=timestamp(memory.created_at),
        updated_at=timestamp(memory.updated_at),
    )


async def _all_items(mem: AgentMemory) -> list[MemoryDocument]:
    found: dict[str, MemoryDocument] = {}
    for offset in itertools.count(0, _PAGE):
        page = await mem.list(tags=[STORE_TAG], limit=_PAGE, offset=offset)
        found.update(
            (memory.id, memory)
            for memory in page
            if isinstance(memory.metadata.get(ITEM_KEY), dict) and LC_ID in memory.metadata
        )
        if len(page) < _PAGE:
            return list(found.values())
    raise AssertionError("unreachable")  # pragma: no cover


def _matches(condition: MatchCondition, namespace: Namespace) -> bool:
    path = tuple(condition.path)
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path, strict=False)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path), strict=False)
    else:
        raise InvalidArgumentError(f"unsupported namespace match type {condition.match_type!r}")
    return all(wanted == "*" or label == wanted for label, wanted in pairs)
