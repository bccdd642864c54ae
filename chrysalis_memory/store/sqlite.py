"""The local store: an append-only SQLite op log plus materialised documents.

One :class:`OpStore` owns one database file through one aiosqlite
connection. Every write is one transaction that appends the op(s) *and*
rewrites the affected documents' state, so after a crash at any instant the
materialised state still equals a replay of the op log.

Durability (``PRAGMA synchronous`` in WAL mode):

* ``normal`` — a committed write survives the process being killed (kill -9,
  OOM, a crash); the last few writes may be lost if the *machine* loses power,
  but the database is never corrupted.
* ``full`` — a committed write also survives power loss: an fsync per commit.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections import OrderedDict
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager, contextmanager, suppress
from pathlib import Path
from typing import Any, Final, Literal, NamedTuple

import aiosqlite
import msgspec

from chrysalis_memory.crdt.hlc import HLC
from chrysalis_memory.errors import (
    ClosedError,
    EquivocationError,
    ForgedWriterError,
    InvalidOpError,
    MalformedOpError,
    SignatureError,
    StoreError,
)
from chrysalis_memory.model.document import SyncStatus
from chrysalis_memory.model.ops import MAX_OP_BYTES, Op, check_stamps
from chrysalis_memory.model.state import DocState, MemoryState, decode_state, new_state
from chrysalis_memory.store.damage import (
    OP_ROWS_SQL,
    SCHEMA_ROWS_SQL,
    StoreDamage,
    corrupt_error,
    damaged_op,
    is_corruption,
    op_of_row,
    row_problem,
    schema_problem,
)
from chrysalis_memory.store.schema import SCHEMA, SCHEMA_VERSION

Durability = Literal["normal", "full"]

_STATUS_RANK: Final = {
    SyncStatus.SYNCED: 0,
    SyncStatus.PENDING: 1,
    SyncStatus.RETRY: 2,
    SyncStatus.LOCAL: 3,
}
_RANK_SQL: Final = (
    "MAX(CASE sync_status WHEN 'synced' THEN 0 WHEN 'pending' THEN 1 "
    "WHEN 'retry' THEN 2 ELSE 3 END)"
)
_BY_RANK: Final = {rank: status for status, rank in _STATUS_RANK.items()}
_RANKED_ROWS_SQL: Final = (
    "SELECT id, doc_type, state, sync_status, COALESCE(memory_type, ''), source, updated_ms, "
    "tags, confidence, accesses FROM docs WHERE visibility = 1 AND id IN ({marks})"
)
_OTHER_ROWS_SQL: Final = (
    "SELECT id, doc_type, state, sync_status, NULL, NULL, NULL, NULL, NULL, NULL "
    "FROM docs WHERE id IN ({marks})"
)
_PAGE_CACHE_KIB: Final = 16 * 1024  # SQLite's default (2 MiB) thrashes once the log grows
_CHUNK: Final = 500  # rows per IN (...) query, well under SQLite's variable limit
_COMMON_WORD_SHARE: Final = 0.05
"""Keyword search drops words found in more than this share of memories..."""
_COMMON_WORDS_KEPT: Final = 50_000  # words whose commonness is remembered
_COMMON_WORD_MIN: Final = 1000
"""...and in at least this many: small stores never drop a word."""
_TAGS: Final = msgspec.json.Encoder(order="sorted")
_TAGS_DECODER: Final = msgspec.json.Decoder(list[str])


def combine_status(a: SyncStatus, b: SyncStatus) -> SyncStatus:
    """A document is as unsynced as its least synced op."""
    return a if _STATUS_RANK[a] >= _STATUS_RANK[b] else b


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@contextmanager
def _translated(action: str, path: Path | None = None) -> Iterator[None]:
    """Turn sqlite3 errors into :class:`StoreError` saying what we were doing; a
    :class:`~chrysalis_memory.errors.StoreCorruptError` naming ``path`` when they say
    the file is damaged.

    An integer too large for SQLite's INTEGER (``OverflowError`` from the driver)
    is a :class:`StoreError` too: every number an op carries is bounded when it is
    decoded, so this would be a bug, and it must not escape as a bare
    ``OverflowError``."""
    try:
        yield
    except (sqlite3.Error, UnicodeDecodeError) as exc:
        if is_corruption(exc):
            detail = exc if isinstance(exc, sqlite3.Error) else "text that is not UTF-8"
            raise corrupt_error(path, f"SQLite cannot read it ({detail}) while {action}") from exc
        raise StoreError(f"local store failed while {action}: {exc}") from exc
    except OverflowError as exc:
        raise StoreError(
            f"local store failed while {action}: a number too large for SQLite ({exc})"
        ) from exc


_STATUS_OF: Final = {status.value.encode(): status for status in SyncStatus}


def _op_row(op: Op, status: SyncStatus) -> tuple[Any, ...]:
    return (op.cid, op.doc, op.writer, op.seq, op.hlc[0], op.hlc[1], op.encoded, status.value)


def _doc_row(state: DocState, status: SyncStatus) -> tuple[Any, ...]:
    if isinstance(state, MemoryState):
        created = state.created.value
        visibility = 0 if not state.exists else 2 if state.is_forgotten else 1
        return (
            state.id,
            "memory",
            state.encode(),
            visibility,
            state.memory_type.value,
            state.importance.value,
            state.confidence.value,
            state.access.value,
            None if created is None else created[0].writer,
            None if created is None else created[0].wall_ms,
            None if state.updated.value is None else state.updated.value.wall_ms,
            None if state.updated.value is None else state.updated.value.counter,
            _TAGS.encode(sorted(state.tags.value)).decode(),
            status.value,
        )
    return (
        state.id,
        "embedding",
        state.encode(),
        1 if state.exists else 0,
        None,
        None,
        None,
        None,
        None,
        state.created.value,
        state.created.value,
        0,
        "[]",
        status.value,
    )


_INSERT_OP: Final = (
    "INSERT INTO ops (cid, doc_id, writer, wseq, hlc_ms, hlc_c, body, sync_status) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_LOCAL_WRITE: Final = (
    "INSERT INTO local_writes (cid, doc_id, writer, wseq, hlc_ms, hlc_c, body, op_status, "
    "promote, doc_type, state, visibility, memory_type, importance, confidence, accesses, source, "
    "created_ms, updated_ms, updated_c, tags, doc_status) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPSERT_DOC: Final = (
    "INSERT INTO docs (id, doc_type, state, visibility, memory_type, importance, confidence, "
    "accesses, source, "
    "created_ms, updated_ms, updated_c, tags, sync_status) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT (id) DO UPDATE SET state = excluded.state, visibility = excluded.visibility, "
    "memory_type = excluded.memory_type, importance = excluded.importance, "
    "confidence = excluded.confidence, accesses = excluded.accesses, "
    "source = excluded.source, created_ms = excluded.created_ms, "
    "updated_ms = excluded.updated_ms, updated_c = excluded.updated_c, tags = excluded.tags, "
    "sync_status = excluded.sync_status"
)


_UPSERT_QUARANTINE: Final = (
    "INSERT INTO quarantine (cid, writer, body, reason, detail, source, first_ms, last_ms) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (cid) DO UPDATE SET "
    "reason = excluded.reason, detail = excluded.detail, last_ms = excluded.last_ms, "
    "writer = COALESCE(quarantine.writer, excluded.writer), "
    "body = COALESCE(quarantine.body, excluded.body), attempts = quarantine.attempts + 1"
)
_UPSERT_META: Final = (
    "INSERT INTO meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
_MAX_DETAIL_CHARS: Final = 1024
MAX_QUARANTINE_BYTES: Final = 64 * 1024 * 1024
"""The refused ops' bytes the quarantine keeps, in all. Past it a refusal is still
recorded (CID, writer, reason: never a silent skip) but its bytes are not, so a
peer sending bad ops cannot fill the disk; such an op is not tried again."""
_REASONS: Final[dict[type[InvalidOpError], str]] = {
    MalformedOpError: "malformed",
    SignatureError: "bad_signature",
    ForgedWriterError: "forged_writer",
    EquivocationError: "equivocation",
}


def refusal_reason(error: InvalidOpError) -> str:
    """The reason code an op refused with ``error`` is quarantined under:
    ``malformed``, ``bad_signature``, ``forged_writer``, ``equivocation``, or the
    error's class name in snake case for any other kind of :class:`InvalidOpError`."""
    for kind in type(error).__mro__:
        if kind in _REASONS:
            return _REASONS[kind]
        if kind is InvalidOpError:
            break
    name = type(error).__name__.removesuffix("Error") or "invalid_op"
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


class Refusal(NamedTuple):
    """An op this replica refused, as the quarantine keeps it: the bytes received
    (``None`` if over the size of an op), their CID, the writer they claim (when
    it could be read), a reason code (:func:`refusal_reason`) and what was wrong."""

    cid: str
    writer: str | None
    body: bytes | None
    reason: str
    detail: str

    @classmethod
    def of(cls, op: Op, error: InvalidOpError) -> Refusal:
        return cls(op.cid, op.writer, op.encoded, refusal_reason(error), str(error))

    @classmethod
    def undecodable(cls, raw: bytes, detail: str, writer: str | None = None) -> Refusal:
        cid = hashlib.sha256(raw).hexdigest()
        return cls(cid, writer, raw if len(raw) <= MAX_OP_BYTES else None, "malformed", detail)


class QuarantinedOp(NamedTuple):
    """One op of the quarantine: refused on arrival, tried again when its cause may
    have gone away, removed once stored. Times in ms since the epoch."""

    cid: str
    writer: str | None
    body: bytes | None
    reason: str
    detail: str
    source: str
    first_seen_ms: int
    last_seen_ms: int
    attempts: int


class RankFields(NamedTuple):
    """The columns recall filters and ranks a live memory on."""

    memory_type: str
    source: str
    updated_ms: int
    tags: frozenset[str]
    confidence: float
    access_count: int


class TextHit(NamedTuple):
    """One keyword search result: a live memory, its BM25 relevance, its indexed text."""

    doc_id: str
    score: float
    content: str


class RankedRow(NamedTuple):
    """A live memory's :class:`RankFields`, with its encoded state (decoded only if it
    makes the results: see :meth:`OpStore.ranked_state`)."""

    fields: RankFields
    state: bytes
    status: SyncStatus


class ListQuery(msgspec.Struct, frozen=True, kw_only=True):
    """Filters of :meth:`OpStore.list_memories` (all optional, combined with AND)."""

    memory_type: str | None = None
    tags: tuple[str, ...] = ()
    source: str | None = None
    since_ms: int | None = None
    until_ms: int | None = None
    include_forgotten: bool = False
    limit: int = 100
    offset: int = 0


def _filters(query: ListQuery, table: str = "docs") -> tuple[list[str], list[Any]]:
    """SQL conditions on the ``docs`` table for a :class:`ListQuery`."""
    clauses = [f"{table}.doc_type = 'memory'"]
    params: list[Any] = []
    clauses.append(
        f"{table}.visibility IN (1, 2)" if query.include_forgotten else f"{table}.visibility = 1"
    )
    for column, value, op in (
        ("memory_type", query.memory_type, "="),
        ("source", query.source, "="),
        ("updated_ms", query.since_ms, ">="),
        ("updated_ms", query.until_ms, "<="),
    ):
        if value is not None:
            clauses.append(f"{table}.{column} {op} ?")
            params.append(value)
    for tag in query.tags:
        clauses.append(f"EXISTS (SELECT 1 FROM json_each({table}.tags) WHERE value = ?)")
        params.append(tag)
    return clauses, params


class OpStore:
    """A replica's op log and materialised documents in one SQLite file.

    ``path=None`` keeps everything in memory (nothing survives ``close``).
    """

    def __init__(
        self,
        path: Path | None,
        *,
        durability: Durability = "normal",
        read_only: bool = False,
        cache_size: int = 4096,
    ) -> None:
        self.path = path
        self.durability = durability
        self.read_only = read_only
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[DocState, SyncStatus]] = OrderedDict()
        self._db: aiosqlite.Connection | None = None
        self._checkpointer: _Checkpointer | None = None
        self._text_rows: int | None = None  # rows in the keyword index, when known
        self.damage = StoreDamage(path)
        """The op rows found damaged (at open, or when read since): never served."""
        # Whether each word searched for is too common to search for (see search_text);
        # forgotten whenever the keyword index changes.
        self._common_words: dict[str, bool] = {}
        self._quarantine_size = 0  # rows in the quarantine (kept after every change)
        # One connection: the lock keeps a transaction's statements together and
        # keeps readers from seeing a transaction that might still roll back.
        self._lock = asyncio.Lock()

    # --- lifecycle ---------------------------------------------------------------

    async def open(self) -> None:
        if self.path is None:
            target, uri = ":memory:", False
        elif self.read_only:
            if not self.path.exists():
                raise StoreError(f"no store at {self.path}")
            target, uri = f"file:{self.path}?mode=ro", True
        else:
            if self.path.is_dir():
                # Checked first: aiosqlite leaks its worker thread when connect() fails.
                raise StoreError(f"{self.path} is a directory, not a database file")
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target, uri = str(self.path), False
        with _translated(f"opening {target}", self.path):
            # Autocommit: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), and a
            # single statement, such as one local write, commits by itself.
            self._db = await aiosqlite.connect(target, uri=uri, isolation_level=None)
        try:
            with _translated(f"opening {target}", self.path):
                await self._prepare(self._db)
                if not self.read_only and self.path is not None:
                    await self._check_at_open()
        except BaseException:
            await self.close()  # never leave a connection (and its thread) behind
            raise

    async def _prepare(self, db: aiosqlite.Connection) -> None:
        await db.execute("PRAGMA busy_timeout = 5000")
        await db.execute(f"PRAGMA cache_size = -{_PAGE_CACHE_KIB}")
        if not self.read_only:
            await db.execute("PRAGMA journal_mode = WAL")
            sync = "FULL" if self.durability == "full" else "NORMAL"
            await db.execute(f"PRAGMA synchronous = {sync}")
            await self._check_schema(db)
            await db.executescript(SCHEMA)
            await db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                (str(SCHEMA_VERSION),),
            )
        rows = await db.execute_fetchall("SELECT value FROM meta WHERE key = 'schema_version'")
        version = int(next(iter(rows))[0]) if rows else SCHEMA_VERSION
        self._quarantine_size = await self._count_quarantine(db)
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"{self.path} was written by a newer Chrysalis (schema {version}, this "
                f"version reads up to {SCHEMA_VERSION}); upgrade chrysalis-memory"
            )
        if not self.read_only and self.path is not None:
            # Checkpoints run in the background, never inside a write's commit.
            await db.execute("PRAGMA wal_autocheckpoint = 0")
            self._checkpointer = _Checkpointer(self.path)
            await self._checkpointer.start()

    async def _check_schema(self, db: aiosqlite.Connection) -> None:
        """Before anything is created in the file: its schema must be this version's
        (see :func:`~chrysalis_memory.store.damage.schema_problem`), or a newer one's,
        which is refused as such afterwards."""
        problem = schema_problem(await db.execute_fetchall(SCHEMA_ROWS_SQL))
        if problem is None:
            return
        with suppress(sqlite3.Error, UnicodeDecodeError, ValueError):
            rows = await db.execute_fetchall("SELECT value FROM meta WHERE key = 'schema_version'")
            if rows and int(next(iter(rows))[0]) > SCHEMA_VERSION:
                return
        raise corrupt_error(self.path, problem)

    async def _check_at_open(self) -> None:
        """SQLite's ``quick_check`` of the file's structure, then every op row (see
        :mod:`chrysalis_memory.store.damage`). Damage to the structure refuses the
        store: nothing read from it could be vouched for. Damaged op rows are
        recorded in :attr:`damage`, and never served or sent."""
        started = time.perf_counter()
        problems = await self.integrity_problems()
        if problems:
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise corrupt_error(
                self.path, f"SQLite's check of its structure found {problems[0]!r}{more}"
            )
        damaged = []
        checked = 0
        async for rows in self.iter_op_rows():
            checked += len(rows)
            for row in rows:
                problem = row_problem(row)
                if problem is not None:
                    damaged.append(damaged_op(row, problem))
        self.damage.found_at_open(damaged, checked, time.perf_counter() - started)

    async def close(self) -> None:
        if self._checkpointer is not None:
            checkpointer, self._checkpointer = self._checkpointer, None
            await checkpointer.stop()
        if self._db is not None:
            db, self._db = self._db, None
            if not self.read_only and self.path is not None:
                # Best effort: the WAL is valid either way. (sqlite3 raises UnicodeDecodeError
                # for a damaged schema's error message.)
                with suppress(sqlite3.Error, UnicodeDecodeError):
                    await db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            await db.close()
        self._cache.clear()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[None]:
        """One explicit write transaction; the caller holds the lock."""
        await self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            # If even the rollback fails the connection is unusable; the error being
            # propagated already says why.
            with suppress(sqlite3.Error):
                await self.db.execute("ROLLBACK")
            raise
        await self.db.execute("COMMIT")

    def _wrote(self, ops: int) -> None:
        if self._checkpointer is not None:
            self._checkpointer.note(ops)

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise ClosedError("the store is not open")
        return self._db

    # --- the document cache --------------------------------------------------------

    def _cache_put(self, doc_id: str, entry: tuple[DocState, SyncStatus]) -> None:
        self._cache[doc_id] = entry
        self._cache.move_to_end(doc_id)
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    async def _load_states(self, doc_ids: Iterable[str]) -> dict[str, tuple[DocState, SyncStatus]]:
        """Current states of the given documents, from the cache or the database.

        Callers hold the lock. Loaded entries are *removed* from the cache: the
        caller mutates them and puts them back only after its commit succeeds.
        """
        found: dict[str, tuple[DocState, SyncStatus]] = {}
        missing: list[str] = []
        for doc_id in dict.fromkeys(doc_ids):
            entry = self._cache.pop(doc_id, None)
            if entry is None:
                missing.append(doc_id)
            else:
                found[doc_id] = entry
        rows = await self._select_in(
            "SELECT id, doc_type, state, sync_status FROM docs WHERE id IN ({marks})", missing
        )
        for doc_id, doc_type, blob, status in rows:
            found[doc_id] = (decode_state(blob, doc_type), SyncStatus(status))
        return found

    async def _select_in(self, sql: str, values: Iterable[Any]) -> list[Any]:
        """Every row of ``sql`` whose ``{marks}`` is an ``IN`` list of ``values``, asked in
        chunks under SQLite's variable limit. The caller holds the lock."""
        rows: list[Any] = []
        for chunk in _chunks(list(values)):
            marks = ",".join("?" * len(chunk))
            rows.extend(await self.db.execute_fetchall(sql.format(marks=marks), chunk))
        return rows

    def release(self, doc_id: str, entry: tuple[DocState, SyncStatus]) -> None:
        """Return an unchanged checked-out document to the cache."""
        self._cache_put(doc_id, entry)

    # --- reads ----------------------------------------------------------------------

    async def get_state(self, doc_id: str) -> tuple[DocState, SyncStatus] | None:
        """A document's current state and sync status, or None if unknown.

        The returned state is shared with the cache: read it, never mutate it
        (writers use :meth:`checkout`).
        """
        return (await self.get_states([doc_id])).get(doc_id)

    async def checkout_many(self, doc_ids: Iterable[str]) -> dict[str, tuple[DocState, SyncStatus]]:
        """:meth:`checkout` of several documents in one round trip."""
        async with self._lock:
            with _translated("reading documents"):
                return await self._load_states(doc_ids)

    async def checkout(self, doc_id: str) -> tuple[DocState, SyncStatus] | None:
        """A document's state for a writer to change and pass to :meth:`append_local`.

        It leaves the cache until the write commits, so readers never see a
        change that might still roll back.
        """
        return (await self.checkout_many([doc_id])).get(doc_id)

    async def list_memories(self, query: ListQuery) -> list[tuple[MemoryState, SyncStatus]]:
        """Memories matching ``query``, most recently updated first."""
        clauses, params = _filters(query)
        sql = (
            f"SELECT id, state, sync_status FROM docs WHERE {' AND '.join(clauses)} "
            "ORDER BY updated_ms DESC, updated_c DESC, id LIMIT ? OFFSET ?"
        )
        params += [query.limit, query.offset]
        async with self._lock:
            with _translated("listing memories"):
                rows = await self.db.execute_fetchall(sql, params)
        result: list[tuple[MemoryState, SyncStatus]] = []
        for doc_id, blob, status in rows:
            cached = self._cache.get(doc_id)
            state = cached[0] if cached else decode_state(blob, "memory")
            assert isinstance(state, MemoryState)
            result.append((state, SyncStatus(status)))
        return result

    async def get_states(self, doc_ids: Iterable[str]) -> dict[str, tuple[DocState, SyncStatus]]:
        """Current states of several documents (shared with the cache: read, never mutate)."""
        found: dict[str, tuple[DocState, SyncStatus]] = {}
        missing: list[str] = []
        for doc_id in dict.fromkeys(doc_ids):
            entry = self._cache.get(doc_id)
            if entry is None:
                missing.append(doc_id)
            else:
                self._cache.move_to_end(doc_id)
                found[doc_id] = entry
        if missing:
            async with self._lock:
                with _translated("reading documents"):
                    loaded = await self._load_states(missing)
                for doc_id, entry in loaded.items():
                    self._cache_put(doc_id, entry)
            found.update(loaded)
        return found

    async def rank_fields(self, doc_ids: Sequence[str]) -> dict[str, RankFields]:
        """What recall filters and ranks on, for live memories, without decoding states."""
        rows, _ = await self.rank_rows(doc_ids)
        return {doc_id: row.fields for doc_id, row in rows.items()}

    async def rank_rows(
        self, doc_ids: Sequence[str], also: Sequence[str] = ()
    ) -> tuple[dict[str, RankedRow], dict[str, tuple[DocState, SyncStatus]]]:
        """:meth:`rank_fields` with each memory's encoded state, in one round trip:
        recall ranks on the fields, then decodes only the states of its results.

        ``also`` names other documents (the embeddings recall expects to need) read
        in the same round trip; their states come back decoded (never cached from
        here, see :meth:`ranked_state`).
        """
        ranked: dict[str, RankedRow] = {}
        extra: dict[str, tuple[DocState, SyncStatus]] = {}
        missing: list[str] = []
        for doc_id in dict.fromkeys(also):
            cached = self._cache.get(doc_id)
            if cached is None:
                missing.append(doc_id)
            else:
                extra[doc_id] = cached
        async with self._lock:
            with _translated("reading documents"):
                if missing and len(doc_ids) + len(missing) <= _CHUNK:  # one statement for both
                    sql = (
                        _RANKED_ROWS_SQL.format(marks=",".join("?" * len(doc_ids)))
                        + " UNION ALL "
                        + _OTHER_ROWS_SQL.format(marks=",".join("?" * len(missing)))
                    )
                    rows = list(await self.db.execute_fetchall(sql, [*doc_ids, *missing]))
                else:
                    rows = await self._select_in(_RANKED_ROWS_SQL, doc_ids)
                    rows += await self._select_in(_OTHER_ROWS_SQL, missing)
        for row in rows:
            doc_id, doc_type, blob, status = row[:4]
            if row[4] is None:  # a row of ``also``
                extra[doc_id] = (decode_state(blob, doc_type), SyncStatus(status))
                continue
            kind, source, updated, tags, confidence, accesses = row[4:]
            fields = RankFields(
                kind or "episodic",
                source or "",
                updated or 0,
                frozenset(_TAGS_DECODER.decode(tags)),
                confidence or 0.0,
                accesses or 0,
            )
            ranked[doc_id] = RankedRow(fields, blob, SyncStatus(status))
        return ranked, extra

    def ranked_state(self, doc_id: str, row: RankedRow) -> tuple[DocState, SyncStatus]:
        """The state of a row from :meth:`rank_rows`: the cached one if there is one (as
        recent, or more), else the row's, decoded. Never cached from here: the row was
        read before the lock was let go, and a writer may have committed since."""
        cached = self._cache.get(doc_id)
        if cached is not None:
            return cached
        return decode_state(row.state, "memory"), row.status

    # --- keyword search and the recall indexer's bookkeeping ------------------------

    async def search_text(self, words: Sequence[str], limit: int) -> list[TextHit]:
        """Live memories matching any of ``words``, best first, with their -bm25 and the
        text indexed (what recall needs to find their embeddings).

        BM25 scores every row that matches, so a word found in a large share of
        memories makes a query cost in proportion to the store. Such words carry
        little weight in BM25 (low IDF) and are dropped from the query, unless all
        words are that common; then the memories containing all of them are asked
        for instead. A sub-query capped at that share counts each word's matches,
        so the check costs little whatever the store's size.
        """
        if not words:
            return []
        async with self._lock:
            with _translated("searching text"):
                match = await self._text_match(words)
                # Ranked by rowid first: the stored columns are read for the results only,
                # not for every row that matches.
                found = await self.db.execute_fetchall(
                    "SELECT f.doc_id, t.score, f.content FROM (SELECT rowid AS r, "
                    "bm25(memory_fts) AS score FROM memory_fts WHERE memory_fts MATCH ? "
                    "ORDER BY score, rowid LIMIT ?) AS t "
                    "JOIN memory_fts AS f ON f.rowid = t.r ORDER BY t.score, t.r",
                    (match, limit),
                )
        return [TextHit(doc_id, -score, content) for doc_id, score, content in found]

    async def text_match(self, words: Sequence[str]) -> str | None:
        """The FTS5 query :meth:`search_text` runs for ``words`` (None for no words):
        for benchmarks, to run the same query raw. What it learns of the words'
        commonness is not kept, so a later search pays for it as it would have."""
        if not words:
            return None
        async with self._lock:
            with _translated("searching text"):
                return await self._text_match(words, remember=False)

    async def _text_match(self, words: Sequence[str], *, remember: bool = True) -> str:
        """The FTS5 query for ``words``, without the too common ones (see
        :meth:`search_text`). The caller holds the lock."""
        quoted = ['"' + word.replace('"', '""') + '"' for word in dict.fromkeys(words)]
        if self._text_rows is None:
            rows = list(await self.db.execute_fetchall("SELECT COUNT(*) FROM memory_fts"))
            self._text_rows = int(rows[0][0])
        cap = max(_COMMON_WORD_MIN, int(self._text_rows * _COMMON_WORD_SHARE))
        if len(self._common_words) > _COMMON_WORDS_KEPT:
            self._common_words.clear()
        common_words = self._common_words if remember else dict(self._common_words)
        unknown = [w for w in quoted if w not in common_words]
        if unknown:
            counts = [
                "(SELECT COUNT(*) FROM (SELECT 1 FROM memory_fts WHERE memory_fts MATCH ? LIMIT ?))"
            ] * len(unknown)
            rows = list(
                await self.db.execute_fetchall(
                    f"SELECT {', '.join(counts)}",
                    [x for word in unknown for x in (word, cap)],
                )
            )
            for word, n in zip(unknown, rows[0], strict=True):
                common_words[word] = n >= cap
        common = {w for w in quoted if common_words[w]}
        rare = [w for w in quoted if w not in common]
        return " OR ".join(rare) if rare else " AND ".join(quoted)

    async def indexed_text(self, doc_ids: Sequence[str]) -> dict[str, tuple[str, str, str]]:
        """The keyword index's (memory type, content, tags) of these memories."""
        result: dict[str, tuple[str, str, str]] = {}
        async with self._lock:
            with _translated("reading the keyword index"):
                rows = await self._select_in(
                    "SELECT doc_id, memory_type, content, tags FROM memory_fts "
                    "WHERE doc_id IN ({marks})",
                    doc_ids,
                )
        result.update((d, (t, c, g)) for d, t, c, g in rows)
        return result

    async def meta(self, key: str) -> str | None:
        async with self._lock:
            with _translated("reading metadata"):
                rows = list(
                    await self.db.execute_fetchall("SELECT value FROM meta WHERE key = ?", (key,))
                )
        return str(rows[0][0]) if rows else None

    async def set_meta(self, values: Mapping[str, str]) -> None:
        """Set metadata entries (a sync cursor, the hub's registry), in one transaction."""
        async with self._lock:
            with _translated("writing metadata"):
                async with self._transaction():
                    await self.db.executemany(
                        "INSERT INTO meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        list(values.items()),
                    )

    async def changed_docs(self, after: int, limit: int) -> tuple[int, list[str]]:
        """Documents changed by ops that arrived after local op number ``after``.

        Returns the last op number read (``after`` if none) and the document ids.
        """
        async with self._lock:
            with _translated("reading the op log"):
                rows = list(
                    await self.db.execute_fetchall(
                        "SELECT seqno, doc_id FROM ops WHERE seqno > ? ORDER BY seqno LIMIT ?",
                        (after, limit),
                    )
                )
        if not rows:
            return after, []
        return int(rows[-1][0]), list(dict.fromkeys(doc_id for _, doc_id in rows))

    async def update_text_index(
        self,
        cursor_key: str,
        cursor: int,
        remove: Sequence[str],
        add: Sequence[tuple[str, str, str, str]],
    ) -> None:
        """Replace the keyword-index rows of ``remove`` with ``add`` (id, memory type,
        content, tags) and move the indexer's cursor, in one transaction."""
        async with self._lock:
            with _translated("updating the keyword index"):
                deleted = 0
                async with self._transaction():
                    for chunk in _chunks(list(remove)):
                        marks = ",".join("?" * len(chunk))
                        done = await self.db.execute(
                            f"DELETE FROM memory_fts WHERE doc_id IN ({marks})", chunk
                        )
                        deleted += done.rowcount
                    await self.db.executemany(
                        "INSERT INTO memory_fts (doc_id, memory_type, content, tags) "
                        "VALUES (?, ?, ?, ?)",
                        add,
                    )
                    await self.db.execute(
                        "INSERT INTO meta (key, value) VALUES (?, ?) "
                        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                        (cursor_key, str(cursor)),
                    )
                # Kept exact rather than recounted: COUNT(*) scans the whole index
                # (about 12 ms at 100,000 memories) and recall needs it after every write.
                if self._text_rows is not None:
                    self._text_rows += len(add) - deleted
                self._common_words.clear()

    async def clear_text_index(self, cursor_key: str) -> None:
        async with self._lock:
            with _translated("clearing the keyword index"):
                async with self._transaction():
                    await self.db.execute("DELETE FROM memory_fts")
                    await self.db.execute("DELETE FROM meta WHERE key = ?", (cursor_key,))
                self._text_rows = 0
                self._common_words.clear()

    async def text_index_size(self) -> int:
        async with self._lock:
            with _translated("counting the keyword index"):
                rows = list(await self.db.execute_fetchall("SELECT COUNT(*) FROM memory_fts"))
        return int(rows[0][0])

    async def last_seqno(self) -> int:
        async with self._lock:
            with _translated("reading the op log"):
                rows = list(
                    await self.db.execute_fetchall("SELECT COALESCE(MAX(seqno), 0) FROM ops")
                )
        return int(rows[0][0])

    async def ops_of(self, doc_id: str) -> list[Op]:
        """A document's ops in (HLC, writer) order: its history, oldest first."""
        async with self._lock:
            with _translated("reading a history"):
                rows = await self.db.execute_fetchall(
                    "SELECT seqno, CAST(cid AS BLOB), body FROM ops WHERE doc_id = ? "
                    "ORDER BY hlc_ms, hlc_c, writer, cid",
                    (doc_id,),
                )
        return [op for op in map(self._intact, rows) if op is not None]

    async def iter_ops(
        self, *, after: int = 0, batch: int = 1000, statuses: Sequence[SyncStatus] = ()
    ) -> AsyncIterator[tuple[int, Op, SyncStatus]]:
        """Every op, in local arrival order, as ``(seqno, op, status)``.

        ``after`` resumes from a previous ``seqno``; ``statuses`` filters. Damaged
        rows are left out (see :meth:`iter_log`).
        """
        async for seqno, op, status in self.iter_log(after=after, batch=batch, statuses=statuses):
            if op is not None and status is not None:
                yield seqno, op, status

    async def iter_log(
        self, *, after: int = 0, batch: int = 1000, statuses: Sequence[SyncStatus] = ()
    ) -> AsyncIterator[tuple[int, Op | None, SyncStatus | None]]:
        """:meth:`iter_ops` with the damaged rows too, as ``(seqno, None, None)``: an op
        whose bytes do not hash to its CID is recorded in :attr:`damage` and never
        handed on, but a reader that counts rows (a cursor) moves past it."""
        where = ""
        extra: list[Any] = []
        if statuses:
            where = f" AND sync_status IN ({','.join('?' * len(statuses))})"
            extra = [s.value for s in statuses]
        while True:
            async with self._lock:
                with _translated("reading the op log", self.path):
                    rows = list(
                        await self.db.execute_fetchall(
                            "SELECT seqno, CAST(cid AS BLOB), body, CAST(sync_status AS BLOB) "
                            f"FROM ops WHERE seqno > ?{where} ORDER BY seqno LIMIT ?",
                            [after, *extra, batch],
                        )
                    )
            if not rows:
                return
            for row in rows:
                op, status = self._intact(row), _STATUS_OF.get(row[3])
                if op is not None and status is None:
                    self.damage.add(damaged_op(row, "its sync status is not one the schema allows"))
                    op = None
                yield row[0], op, status if op is not None else None
            after = rows[-1][0]

    def _intact(self, row: Sequence[Any]) -> Op | None:
        """The op of a ``(seqno, CID as bytes, body, ...)`` row, if the row is intact:
        its bytes decode to an op whose CID is the one recorded. Otherwise None, and
        the row joins :attr:`damage`."""
        if row[0] in self.damage:
            return None
        found = op_of_row(row)
        if isinstance(found, Op):
            return found
        self.damage.add(damaged_op(row, found))
        return None

    # --- reads for gossip -------------------------------------------------------------

    async def gossip_index(self, *, upto: int) -> tuple[list[tuple[str, int]], set[str]]:
        """What gossip needs to start: the ``(writer, wseq)`` of every shareable op
        (status other than ``local``) numbered up to ``upto``, and the documents
        holding short-term (``local``) ops, which a promotion may share later."""
        async with self._lock:
            with _translated("reading the op log"):
                shared = await self.db.execute_fetchall(
                    "SELECT CAST(writer AS BLOB), wseq, seqno FROM ops WHERE seqno <= ? "
                    "AND sync_status != 'local' ORDER BY writer, wseq",
                    (upto,),
                )
                local = await self.db.execute_fetchall(
                    "SELECT DISTINCT doc_id FROM ops WHERE sync_status = 'local'"
                )
        damaged = self.damage
        return [
            (w.decode(), int(s)) for w, s, seqno in shared if not (damaged and seqno in damaged)
        ], {str(doc) for (doc,) in local}

    async def ops_in_ranges(
        self,
        ranges: Mapping[str, Sequence[tuple[int, int]]],
        *,
        max_ops: int = 10_000,
        max_bytes: int = 16 << 20,
        max_intervals: int = 4096,
    ) -> list[Op]:
        """The shareable ops (status other than ``local``) of these writers whose
        sequence numbers fall in the inclusive ranges ``{writer: [(first, last)]}``,
        in (writer, seq) order. Short-term ops are never returned: they never leave
        the agent. At most ``max_ops`` ops and about ``max_bytes`` of them, from the
        first ``max_intervals`` ranges: the rest is asked for again later."""
        wanted = [
            (writer, first, last)
            for writer, intervals in ranges.items()
            for first, last in intervals
            if first <= last
        ][:max_intervals]
        ops: list[Op] = []
        size = 0
        async with self._lock:
            with _translated("reading ops"):
                for chunk in _chunks(wanted, 100):
                    where = " OR ".join(["(writer = ? AND wseq BETWEEN ? AND ?)"] * len(chunk))
                    rows = await self.db.execute_fetchall(
                        f"SELECT seqno, CAST(cid AS BLOB), body FROM ops WHERE ({where}) "
                        "AND sync_status != 'local' ORDER BY writer, wseq LIMIT ?",
                        [*(x for interval in chunk for x in interval), max_ops - len(ops)],
                    )
                    for row in rows:
                        op = self._intact(row)
                        if op is None:
                            continue
                        if size + len(op.encoded) > max_bytes and ops:
                            return ops
                        ops.append(op)
                        size += len(op.encoded)
                    if len(ops) >= max_ops:
                        break
        return ops

    async def shareable_ops_of(self, doc_ids: Iterable[str]) -> tuple[list[Op], set[str]]:
        """For documents that held short-term ops: their shareable ops now (a
        promotion turned ``local`` ops ``pending``), and which of the documents
        still hold ``local`` ops. Only documents with a shareable op are read."""
        ops: list[Op] = []
        still_local: set[str] = set()
        docs = list(doc_ids)
        async with self._lock:
            with _translated("reading ops"):
                shared = await self._select_in(
                    "SELECT DISTINCT doc_id FROM ops WHERE doc_id IN ({marks}) "
                    "AND sync_status != 'local'",
                    docs,
                )
                readable = {doc for (doc,) in shared}
                rows = await self._select_in(
                    "SELECT seqno, CAST(cid AS BLOB), body, doc_id, CAST(sync_status AS BLOB) "
                    "FROM ops WHERE doc_id IN ({marks})",
                    readable,
                )
        for row in rows:
            if row[4] == b"local":
                still_local.add(row[3])
            elif (op := self._intact(row)) is not None:
                ops.append(op)
        still_local.update(doc for doc in docs if doc not in readable)
        return ops, still_local

    async def known_cids(self, cids: Sequence[str]) -> set[str]:
        async with self._lock:
            with _translated("looking up ops"):
                return await self._known(cids)

    async def _known(self, cids: Iterable[str]) -> set[str]:
        rows = await self._select_in("SELECT cid FROM ops WHERE cid IN ({marks})", cids)
        return {cid for (cid,) in rows}

    async def _pinned(self, writers: Iterable[str]) -> dict[str, str]:
        rows = await self._select_in(
            "SELECT writer, public_key FROM writers WHERE writer IN ({marks})", writers
        )
        return {writer: key for writer, key in rows}  # noqa: C416 (sqlite3 rows)

    async def pin_writer_key(self, writer: str, public_key: str) -> None:
        """Pin ``writer`` to ``public_key``, or raise if it is pinned to another key."""
        async with self._lock:
            with _translated("pinning a writer key"):
                async with self._transaction():
                    await self._pin(await self._unpinned({writer: public_key}))

    async def confirm_writer_key(self, writer: str, public_key: str) -> bool:
        """Take ``public_key`` as ``writer``'s key on the word of the hub, which binds
        each agent's key to its token. Returns whether the pin changed.

        A writer not pinned yet is pinned to it. A writer pinned to another key is
        re-pinned only while this replica holds no op of that writer: such a pin
        (from an earlier hub, say) vouches for nothing stored, and the hub's binding
        is the better word. Otherwise the pin stands, and :class:`ForgedWriterError`
        says so: the ops held were signed with the pinned key.
        """
        async with self._lock:
            with _translated("pinning a writer key"):
                async with self._transaction():
                    pinned = (await self._pinned([writer])).get(writer)
                    if pinned == public_key:
                        return False
                    if pinned is not None:
                        held = await self.db.execute_fetchall(
                            "SELECT 1 FROM ops WHERE writer = ? LIMIT 1", (writer,)
                        )
                        if held:
                            raise ForgedWriterError(
                                f"writer {writer!r} is pinned to another public key, and this "
                                "replica holds ops it signed with that key"
                            )
                        await self.db.execute("DELETE FROM writers WHERE writer = ?", (writer,))
                    await self._pin([(writer, public_key)])
        return True

    async def last_seq(self, writer: str) -> int:
        async with self._lock:
            with _translated("reading sequence numbers"):
                rows = await self.db.execute_fetchall(
                    "SELECT COALESCE(MAX(wseq), 0) FROM ops WHERE writer = ?", (writer,)
                )
        return int(next(iter(rows))[0])

    async def max_hlc(self) -> HLC:
        """The greatest timestamp in the log: a restarted clock must not go below it."""
        async with self._lock:
            with _translated("reading timestamps"):
                # A damaged row's clock columns may say anything: skip those rows.
                rows = await self.db.execute_fetchall(
                    "SELECT seqno, hlc_ms, hlc_c FROM ops ORDER BY hlc_ms DESC, hlc_c DESC LIMIT ?",
                    (len(self.damage) + 1,),
                )
        for seqno, wall_ms, counter in rows:
            if seqno not in self.damage:
                return HLC(wall_ms, counter)
        return HLC(0, 0)

    async def state_root(self) -> str:
        """SHA-256 over the sorted CIDs of every op held: equal on equal op sets.
        Damaged rows (:attr:`damage`) are not held: they are never served."""
        digest = hashlib.sha256()
        damaged = self.damage
        async with self._lock:
            with _translated("hashing the op log", self.path):
                async with self.db.execute(
                    "SELECT seqno, CAST(cid AS BLOB) FROM ops ORDER BY cid"
                ) as cursor:
                    while rows := await cursor.fetchmany(4096):
                        digest.update(
                            b"".join(
                                cid for seqno, cid in rows if not (damaged and seqno in damaged)
                            )
                        )
        return digest.hexdigest()

    async def bytes_by_writer(self) -> dict[str, int]:
        """Bytes of encoded ops each writer has in this log (the hub's quotas)."""
        async with self._lock:
            with _translated("counting"):
                rows = await self.db.execute_fetchall(
                    "SELECT writer, SUM(LENGTH(body)) FROM ops GROUP BY writer"
                )
        return {str(writer): int(total) for writer, total in rows}

    async def counts(self) -> dict[str, int]:
        """Sizes for status displays: ops by sync status and documents by visibility."""
        async with self._lock:
            with _translated("counting"):
                by_status = await self.db.execute_fetchall(
                    "SELECT sync_status, COUNT(*) FROM ops GROUP BY sync_status"
                )
                by_doc = await self.db.execute_fetchall(
                    "SELECT doc_type, visibility, COUNT(*) FROM docs GROUP BY doc_type, visibility"
                )
                writers = await self.db.execute_fetchall("SELECT COUNT(*) FROM writers")
                quarantined = await self._count_quarantine(self.db)
        result = {f"ops_{s.value}": 0 for s in SyncStatus}
        result.update({f"ops_{status}": n for status, n in by_status})
        result["ops"] = sum(n for _, n in by_status)
        names = {0: "incomplete", 1: "live", 2: "forgotten"}
        result.update(memories_live=0, memories_forgotten=0, memories_incomplete=0, embeddings=0)
        for doc_type, visibility, n in by_doc:
            if doc_type == "memory":
                result[f"memories_{names[visibility]}"] = n
            else:
                result["embeddings"] += n
        result["writers"] = int(next(iter(writers))[0])
        result["quarantined"] = quarantined
        return result

    # --- writes -----------------------------------------------------------------------

    async def _unpinned(self, keys: dict[str, str]) -> list[tuple[str, str]]:
        """Check writers against their pinned keys; returns the writers not yet pinned."""
        pinned = await self._pinned(keys)
        for writer, key in keys.items():
            if pinned.get(writer, key) != key:
                raise ForgedWriterError(
                    f"writer {writer!r} is pinned to another public key: the op was signed "
                    "by someone else claiming to be that agent"
                )
        return [(w, k) for w, k in keys.items() if w not in pinned]

    async def _pin(self, new: list[tuple[str, str]]) -> None:
        now = int(time.time() * 1000)
        await self.db.executemany(
            "INSERT INTO writers (writer, public_key, pinned_ms) VALUES (?, ?, ?)",
            [(w, k, now) for w, k in new],
        )

    async def append_local(
        self,
        op: Op,
        state: DocState,
        status: SyncStatus,
        *,
        previous: SyncStatus | None = None,
        promote: bool = False,
    ) -> SyncStatus:
        """Persist one op written here together with its document's new state.

        ``state`` already has ``op`` folded in (from :meth:`checkout`, or new).
        ``status`` is the op's sync status and ``previous`` the document's before
        it (None for a new document); ``promote`` re-queues the document's
        short-term (``local``) ops for sync. One statement, so one transaction.
        Returns the document's new sync status.
        """
        doc_status = status if previous is None or promote else combine_status(previous, status)
        async with self._lock:
            with _translated("writing an op"):
                await self.db.execute(
                    _LOCAL_WRITE,
                    # the document row without its id: the op row carries it
                    (*_op_row(op, status), promote, *_doc_row(state, doc_status)[1:]),
                )
            self._cache_put(op.doc, (state, doc_status))
        self._wrote(1)
        return doc_status

    async def append_local_many(
        self, writes: Sequence[tuple[Op, DocState, SyncStatus, SyncStatus]]
    ) -> None:
        """Persist several ops written here, each with its document's new state, in one
        transaction: ``(op, state, op status, document status)``, one op per document,
        no promotion."""
        if not writes:
            return
        rows = [
            (*_op_row(op, op_status), False, *_doc_row(state, doc_status)[1:])
            for op, state, op_status, doc_status in writes
        ]
        async with self._lock:
            with _translated("writing ops"):
                async with self._transaction():
                    await self.db.executemany(_LOCAL_WRITE, rows)
            for op, state, _, doc_status in writes:
                self._cache_put(op.doc, (state, doc_status))
        self._wrote(len(writes))

    async def ingest(
        self,
        ops: Sequence[Op],
        status: SyncStatus,
        *,
        verify: Callable[[Sequence[Op]], Awaitable[None]] | None = None,
        chunk_size: int = 256,
        refused: Sequence[Refusal] = (),
        meta: Mapping[str, str] | None = None,
        source: str = "hub",
    ) -> list[Op]:
        """Store ops received from elsewhere; returns the ones that were new.

        ``verify`` (the signature check) runs on each chunk of ``chunk_size`` ops
        while the chunk before it is written, so checking and writing overlap.
        All or nothing: everything happens in one transaction, and a bad
        signature, a forged writer or an equivocating op rolls it all back
        (:meth:`ingest_each` then stores the others). ``refused`` ops go to the
        quarantine (from ``source``) and ``meta`` entries (a sync cursor) are set
        in that same transaction.
        """
        unique = list({op.cid: op for op in ops}.values())
        if not unique and not refused and not meta:
            return []
        chunks = [unique[i : i + chunk_size] for i in range(0, len(unique), chunk_size)]
        checks = [asyncio.ensure_future(verify(chunk)) for chunk in chunks] if verify else []
        try:
            async with self._lock:
                with _translated("ingesting ops"):
                    new, touched = await self._ingest_chunks(
                        chunks, checks, status, refused, meta or {}, source
                    )
                    await self._quarantine_changed(
                        bool(refused) or (bool(new) and self._quarantine_size > 0)
                    )
                for doc_id, entry in touched.items():
                    self._cache_put(doc_id, entry)
        finally:
            for check in checks:
                check.cancel()
            await asyncio.gather(*checks, return_exceptions=True)
        self._wrote(len(new))
        return new

    async def _ingest_chunks(
        self,
        chunks: list[list[Op]],
        checks: Sequence[asyncio.Future[None]],
        status: SyncStatus,
        refused: Sequence[Refusal],
        meta: Mapping[str, str],
        source: str,
    ) -> tuple[list[Op], dict[str, tuple[DocState, SyncStatus]]]:
        new_ops: list[Op] = []
        states: dict[str, tuple[DocState, SyncStatus]] = {}
        touched: dict[str, tuple[DocState, SyncStatus]] = {}
        async with self._transaction():
            for index, chunk in enumerate(chunks):
                if checks:
                    await checks[index]
                new_ops += await self._store_chunk(chunk, status, states, touched)
            await self._unquarantine([op.cid for op in new_ops])
            await self._quarantine(refused, source)
            await self.db.executemany(_UPSERT_META, list(meta.items()))
        return new_ops, touched

    async def ingest_each(
        self,
        ops: Sequence[Op],
        status: SyncStatus,
        *,
        refused: Sequence[Refusal] = (),
        meta: Mapping[str, str] | None = None,
        source: str = "hub",
    ) -> tuple[list[Op], list[Refusal]]:
        """Store ops one by one, each on its own: an op refused (a writer pinned to
        another key, an equivocation) goes to the quarantine with its reason and
        costs no other op. Signatures are the caller's to check first; ops that
        failed go in ``refused``, with any others to quarantine.

        One transaction: the ops stored, the quarantine (ops stored leave it, ops
        refused join it or have their attempt counted) and ``meta`` (a sync
        cursor) commit together or not at all. Returns the ops that were new and
        every refusal, ``refused`` included.
        """
        unique = list({op.cid: op for op in ops}.values())
        refusals = list(refused)
        new_ops: list[Op] = []
        held: list[str] = []
        states: dict[str, tuple[DocState, SyncStatus]] = {}
        touched: dict[str, tuple[DocState, SyncStatus]] = {}
        async with self._lock:
            with _translated("ingesting ops"):
                async with self._transaction():
                    for op in unique:
                        await self.db.execute("SAVEPOINT one_op")
                        try:
                            new_ops += await self._store_chunk([op], status, states, touched)
                        except InvalidOpError as error:
                            await self.db.execute("ROLLBACK TO one_op")
                            refusals.append(Refusal.of(op, error))
                        else:
                            held.append(op.cid)
                        await self.db.execute("RELEASE one_op")
                    await self._unquarantine(held)
                    await self._quarantine(refusals, source)
                    await self.db.executemany(_UPSERT_META, list((meta or {}).items()))
                await self._quarantine_changed(True)
            for doc_id, entry in touched.items():
                self._cache_put(doc_id, entry)
        self._wrote(len(new_ops))
        return new_ops, refusals

    async def _store_chunk(
        self,
        chunk: list[Op],
        status: SyncStatus,
        states: dict[str, tuple[DocState, SyncStatus]],
        touched: dict[str, tuple[DocState, SyncStatus]],
    ) -> list[Op]:
        """Check and insert the ops of ``chunk`` not held yet, and rewrite their
        documents; returns them. Raises an :class:`InvalidOpError` before anything
        changes (in the database or in ``states``) if one of them is refused. The
        caller holds the lock and a transaction."""
        new = await self._new_ops(chunk)
        if not new:
            return []
        keys: dict[str, str] = {}
        for op in new:
            if keys.setdefault(op.writer, op.key) != op.key:
                raise ForgedWriterError(
                    f"ops claiming writer {op.writer!r} are signed by different keys",
                    cid=op.cid,
                )
        await self._pin(await self._unpinned(keys))
        await self._check_equivocation(new)
        await self._check_stamps(new)
        states.update(await self._load_states(op.doc for op in new if op.doc not in states))
        await self.db.executemany(_INSERT_OP, [_op_row(op, status) for op in new])
        changed: dict[str, tuple[DocState, SyncStatus]] = {}
        for op in new:
            entry = touched.get(op.doc) or states.get(op.doc)
            if entry is None:
                entry = (new_state(op.doc, op.doc_type), status)
            state, doc_status = entry
            state.apply(op)
            touched[op.doc] = changed[op.doc] = (state, combine_status(doc_status, status))
        # Written per chunk (a document touched again later is simply rewritten),
        # so that this write overlaps the next chunk's signature checks.
        await self.db.executemany(_UPSERT_DOC, [_doc_row(s, st) for s, st in changed.values()])
        return new

    # --- the quarantine -------------------------------------------------------------

    async def _quarantine(self, refused: Sequence[Refusal], source: str) -> None:
        """Add refused ops to the quarantine, or count another attempt. The caller
        holds the lock and a transaction."""
        if not refused:
            return
        now = int(time.time() * 1000)
        rows = await self.db.execute_fetchall(
            "SELECT COALESCE(SUM(LENGTH(body)), 0) FROM quarantine"
        )
        kept = int(next(iter(rows))[0])
        values = []
        for r in refused:
            body, detail = r.body, r.detail[:_MAX_DETAIL_CHARS]
            if body is not None and kept + len(body) > MAX_QUARANTINE_BYTES:
                body = None
                detail += f" (bytes not kept: over the quarantine's {MAX_QUARANTINE_BYTES} bytes)"
            kept += 0 if body is None else len(body)
            values.append((r.cid, r.writer, body, r.reason, detail, source, now, now))
        await self.db.executemany(_UPSERT_QUARANTINE, values)

    async def _unquarantine(self, cids: Sequence[str]) -> None:
        """Ops now held leave the quarantine. The caller holds the lock and a transaction."""
        if cids and self._quarantine_size:
            for chunk in _chunks(cids):
                marks = ",".join("?" * len(chunk))
                await self.db.execute(f"DELETE FROM quarantine WHERE cid IN ({marks})", chunk)

    async def _quarantine_changed(self, changed: bool) -> None:
        if changed:
            self._quarantine_size = await self._count_quarantine(self.db)

    @staticmethod
    async def _count_quarantine(db: aiosqlite.Connection) -> int:
        # A store written by an older version, opened read-only, has no quarantine.
        exists = await db.execute_fetchall(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'quarantine'"
        )
        if not exists:
            return 0
        rows = await db.execute_fetchall("SELECT COUNT(*) FROM quarantine")
        return int(next(iter(rows))[0])

    @property
    def quarantine_size(self) -> int:
        """How many refused ops the quarantine holds."""
        return self._quarantine_size

    async def quarantined(self, limit: int = 1000) -> list[QuarantinedOp]:
        """The quarantine, oldest first: at most ``limit`` ops."""
        if not self._quarantine_size:
            return []
        async with self._lock:
            with _translated("reading the quarantine"):
                rows = await self.db.execute_fetchall(
                    "SELECT cid, writer, body, reason, detail, source, first_ms, last_ms, "
                    "attempts FROM quarantine ORDER BY first_ms, cid LIMIT ?",
                    (limit,),
                )
        return [QuarantinedOp(*row) for row in rows]

    async def quarantine_summary(self) -> dict[str, int]:
        """How many ops the quarantine holds, by reason code."""
        async with self._lock:
            with _translated("reading the quarantine"):
                if not await self._count_quarantine(self.db):
                    return {}
                rows = await self.db.execute_fetchall(
                    "SELECT reason, COUNT(*) FROM quarantine GROUP BY reason ORDER BY reason"
                )
        return {str(reason): int(n) for reason, n in rows}

    async def _new_ops(self, ops: list[Op]) -> list[Op]:
        known = await self._known(op.cid for op in ops)
        return [op for op in ops if op.cid not in known]

    async def _check_stamps(self, ops: list[Op]) -> None:
        """Refuse an op stamped before what its writer had provably seen (its parents,
        its own earlier ops): :func:`~chrysalis_memory.model.ops.check_stamps`, against
        the stamps this replica holds. The caller holds the lock and a transaction."""
        batch = {op.cid for op in ops}
        parents = sorted({p for op in ops for p in op.parents if p not in batch})
        stamps: dict[str, HLC] = {}
        for chunk in _chunks(parents):
            marks = ",".join("?" * len(chunk))
            rows = await self.db.execute_fetchall(
                f"SELECT cid, hlc_ms, hlc_c FROM ops WHERE cid IN ({marks})", chunk
            )
            stamps.update((cid, HLC(ms, c)) for cid, ms, c in rows)
        seqs: dict[str, list[int]] = {}
        for op in ops:
            seqs.setdefault(op.writer, []).append(op.seq)
        held: dict[str, list[tuple[int, HLC]]] = {}
        for writer, mine in seqs.items():
            low, high = min(mine), max(mine)
            # The writer's held ops among these, and the nearest below and above.
            rows = await self.db.execute_fetchall(
                "SELECT wseq, hlc_ms, hlc_c FROM ops WHERE writer = ? AND wseq BETWEEN ? AND ? "
                "UNION ALL SELECT * FROM (SELECT wseq, hlc_ms, hlc_c FROM ops "
                "WHERE writer = ? AND wseq < ? ORDER BY wseq DESC LIMIT 1) "
                "UNION ALL SELECT * FROM (SELECT wseq, hlc_ms, hlc_c FROM ops "
                "WHERE writer = ? AND wseq > ? ORDER BY wseq LIMIT 1)",
                (writer, low, high, writer, low, writer, high),
            )
            held[writer] = sorted({seq: HLC(ms, c) for seq, ms, c in rows}.items())
        check_stamps(ops, stamps, held)

    async def _check_equivocation(self, ops: list[Op]) -> None:
        """Reject two different ops claiming one (writer, seq), in the batch or stored."""
        claimed: dict[tuple[str, int], str] = {}
        for op in ops:
            other = claimed.setdefault((op.writer, op.seq), op.cid)
            if other != op.cid:
                raise _equivocation(op)
        for chunk in _chunks(ops, _CHUNK // 2):
            values = ",".join(["(?, ?)"] * len(chunk))
            params = [x for op in chunk for x in (op.writer, op.seq)]
            rows = await self.db.execute_fetchall(
                f"SELECT writer, wseq, cid FROM ops WHERE (writer, wseq) IN (VALUES {values})",
                params,
            )
            for writer, seq, cid in rows:
                if claimed[(writer, seq)] != cid:
                    raise _equivocation(
                        next(op for op in chunk if op.cid == claimed[(writer, seq)])
                    )

    async def set_status(self, cids: Sequence[str], status: SyncStatus) -> None:
        """Move ops to ``status`` (e.g. synced on the hub's ack) and update their documents."""
        async with self._lock:
            with _translated("updating sync status"):
                async with self._transaction():
                    for chunk in _chunks(cids):
                        marks = ",".join("?" * len(chunk))
                        await self.db.execute(
                            f"UPDATE ops SET sync_status = ?, "
                            f"attempts = CASE WHEN ? = 'retry' THEN attempts + 1 ELSE attempts END "
                            f"WHERE cid IN ({marks})",
                            [status.value, status.value, *chunk],
                        )
                        await self.db.execute(
                            f"UPDATE docs SET sync_status = (SELECT CASE {_RANK_SQL} "
                            "WHEN 0 THEN 'synced' WHEN 1 THEN 'pending' WHEN 2 THEN 'retry' "
                            "ELSE 'local' END FROM ops WHERE ops.doc_id = docs.id) "
                            f"WHERE id IN (SELECT doc_id FROM ops WHERE cid IN ({marks}))",
                            chunk,
                        )
            self._cache.clear()  # statuses of cached documents may have changed

    async def sync_attempts(self, cids: Sequence[str]) -> dict[str, int]:
        """How many failed pushes each op has had (for backoff)."""
        async with self._lock:
            with _translated("reading sync attempts"):
                rows = await self._select_in(
                    "SELECT cid, attempts FROM ops WHERE cid IN ({marks})", cids
                )
        return {cid: attempts for cid, attempts in rows}  # noqa: C416 (sqlite3 rows)

    # --- integrity ------------------------------------------------------------------------

    async def integrity_problems(self, *, full: bool = False) -> list[str]:
        """SQLite's own check of the database file: ``quick_check`` (its structure), or
        with ``full`` ``integrity_check`` (indexes against their tables too)."""
        pragma = "integrity_check" if full else "quick_check"
        async with self._lock:
            with _translated("checking integrity", self.path):
                # As bytes: on a damaged file the messages may quote text that is not UTF-8.
                rows = await self.db.execute_fetchall(
                    f"SELECT CAST({pragma} AS BLOB) FROM pragma_{pragma}"
                )
        messages = [bytes(msg).decode("utf-8", errors="replace") for (msg,) in rows]
        return [msg for msg in messages if msg != "ok"]

    async def iter_op_rows(self, batch: int = 5000) -> AsyncIterator[list[Any]]:
        """Every op row as :data:`~chrysalis_memory.store.damage.OP_ROWS_SQL` reads it
        (all columns, text as bytes), in arrival order: what the checks read."""
        after = 0
        while True:
            async with self._lock:
                with _translated("reading the op log", self.path):
                    rows = list(await self.db.execute_fetchall(OP_ROWS_SQL, (after, batch)))
            if not rows:
                return
            yield rows
            after = rows[-1][0]

    async def stored_states(self) -> dict[str, tuple[str, bytes]]:
        """Every document's stored ``(doc_type, state bytes)``."""
        async with self._lock:
            with _translated("reading documents"):
                rows = await self.db.execute_fetchall("SELECT id, doc_type, state FROM docs")
        return {doc_id: (doc_type, blob) for doc_id, doc_type, blob in rows}

    async def all_writer_keys(self) -> dict[str, str]:
        async with self._lock:
            with _translated("reading writer keys"):
                rows = await self.db.execute_fetchall("SELECT writer, public_key FROM writers")
        return {str(writer): str(key) for writer, key in rows}


def _equivocation(op: Op) -> EquivocationError:
    return EquivocationError(
        f"writer {op.writer!r} already has a different op with sequence number {op.seq}: "
        "two histories for one agent (was its data dir wiped and reused?)",
        cid=op.cid,
    )


class _Checkpointer:
    """Copies the WAL into the database in the background.

    Automatic checkpoints run inside whichever commit crosses the threshold and
    fsync the database file there: that commit's latency jumps by milliseconds.
    Instead, the writer's connection disables them and this task runs PASSIVE
    checkpoints (which never block readers or the writer) on a connection of its
    own, after every ``every`` ops written or ``interval`` seconds of activity.
    """

    def __init__(self, path: Path, *, every: int = 128, interval: float = 1.0) -> None:
        self._path = path
        self._every = every
        self._interval = interval
        self._pending = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self._db: aiosqlite.Connection | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._db = await aiosqlite.connect(str(self._path), isolation_level=None)
        self._task = asyncio.create_task(self._run(self._db), name="chrysalis-checkpointer")

    def note(self, ops: int) -> None:
        self._pending += ops
        if self._pending >= self._every:
            self._wake.set()

    async def _run(self, db: aiosqlite.Connection) -> None:
        while True:
            with suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            if self._stopping:
                return
            if self._pending:
                self._pending = 0
                # A failed checkpoint loses nothing (the WAL keeps every page); retry later.
                with suppress(sqlite3.Error):
                    await db.execute("PRAGMA wal_checkpoint(PASSIVE)")

    async def stop(self) -> None:
        # Ask the loop to end rather than cancel it: on Python < 3.12, wait_for()
        # can swallow a cancellation that races with the event it waits on.
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            await self._task
        if self._db is not None:
            await self._db.close()
