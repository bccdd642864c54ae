"""The local vector cache: nearest-neighbour search over memory embeddings, on Chroma.

One :class:`ChromaVectorCache` is one Chroma collection (cosine distance) inside
a ``PersistentClient`` directory under the agent's data dir. There is one
collection per embedding model: the collection name is derived from the model
name and the number of dimensions, so switching embedders never mixes vectors
of two models, and two caches (two models) can share one directory.

The cache holds *derived* data only: every vector in it can be recomputed from
the op log, which ``chrysalis reindex`` does. So the cache's rule is to never
answer from data it cannot trust:

* Chroma is never asked to embed anything (``embedding_function=None``;
  vectors and query vectors are always passed), so it can never download its
  default model. Telemetry is off.
* A vector of the wrong length or with NaN/inf is the caller's mistake:
  :class:`~chrysalis_memory.errors.InvalidArgumentError`.
* A collection of the same name made for another model or dimension raises
  :class:`~chrysalis_memory.errors.VectorCacheError` ("run ``chrysalis
  reindex``").
* Damage raises :class:`~chrysalis_memory.errors.VectorCacheCorruptError`, and
  from then on every call on that cache raises it too (it is sticky until
  ``close()``). Damage is: ``chroma.sqlite3`` deleted, replaced or truncated
  while open (checked with an ``fstat`` and a ``stat`` before every call,
  because Chroma 1.5 keeps answering queries from its in-memory HNSW index
  after its directory is deleted), a file that is not (or no longer) a valid
  SQLite database, missing HNSW index files for a collection Chroma says it has
  persisted (Chroma would otherwise silently answer from the few vectors still
  in its log), and any Chroma error that names a storage failure. Pages that are damaged but not
  read yet are only noticed when Chroma reads them.
  To recover: ``await cache.close()``, ``await
  ChromaVectorCache.reset_directory(path)``, open a new cache and rebuild it.

Every Chroma call runs on one worker thread per directory (shared by the caches
of several models on it), so the event loop never blocks (Chroma's client is
synchronous), Chroma calls on a directory are serialised, and ``chromadb``
itself (about half a second to import) is only imported by ``open()``, on that
thread.

Chroma allows one process per directory (ARCHITECTURE §6): the caller owns
that rule. Inside one process, caches on the same directory share Chroma's
per-directory ``System``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import os
import re
import shutil
import sqlite3
import sys
import threading
import uuid
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NamedTuple, NoReturn, TypeVar, cast

import numpy as np
import numpy.typing as npt

from chrysalis_memory.errors import (
    ChrysalisError,
    ClosedError,
    InvalidArgumentError,
    VectorCacheCorruptError,
    VectorCacheError,
)

if TYPE_CHECKING:
    from chromadb.api.client import Client
    from chromadb.api.models.Collection import Collection
    from chromadb.api.types import Metadata, Where
    from chromadb.config import System

__all__ = [
    "FORMAT_VERSION",
    "SQLITE_FILE",
    "ChromaVectorCache",
    "FloatArray",
    "MetadataValue",
    "VectorHit",
    "collection_name",
]

logger = logging.getLogger(__name__)

R = TypeVar("R")

MetadataValue = str | int | float | bool
"""The scalar values a vector's metadata may hold (for ``where`` filters)."""

FloatArray = npt.NDArray[np.floating[Any]]
"""Vectors may also be given as numpy arrays (one row per vector)."""

FORMAT_VERSION: Final = 1
"""Stored in each collection's metadata; a different value means: rebuild."""

SQLITE_FILE: Final = "chroma.sqlite3"
"""Chroma's database file inside the cache directory."""

_REINDEX: Final = "run `chrysalis reindex` to rebuild the vector cache from the op log"
_SQLITE_HEADER_SIZE: Final = 100  # a shorter file was truncated (SQLite's header is 100 bytes)
_ID_PAGE_SIZE: Final = 10_000
_THREAD_NAME: Final = "chrysalis-chroma"

# Files Chroma 1.x writes into a vector segment's directory once it has
# persisted the segment's HNSW index (``max_seq_id`` > 0 for the segment).
_HNSW_FILES: Final = (
    "header.bin",
    "data_level0.bin",
    "length.bin",
    "link_lists.bin",
    "index_metadata.pickle",
)
_HNSW_NONEMPTY: Final = frozenset({"header.bin", "data_level0.bin", "length.bin"})
_CHROMA_FILES: Final = frozenset(
    {SQLITE_FILE, f"{SQLITE_FILE}-journal", f"{SQLITE_FILE}-wal", f"{SQLITE_FILE}-shm"}
)

# Fragments of the messages Chroma (and SQLite under it) gives when its files
# are damaged or gone. Chroma 1.5 raises these as InternalError (or even as
# InvalidArgumentError) with the underlying error in the text, so the text is
# all there is to go on.
_CORRUPT_MARKERS: Final = (
    "file is not a database",  # SQLITE_NOTADB (26)
    "malformed",  # SQLITE_CORRUPT (11): "database disk image is malformed"
    "unable to open database",  # SQLITE_CANTOPEN (14): the file is gone
    "readonly database",  # SQLITE_READONLY_DBMOVED (1032): the file was deleted
    "no such table",  # the schema is gone (file truncated to nothing)
    "disk i/o error",  # SQLITE_IOERR
    "hnsw",  # the HNSW index files cannot be read
    "error getting embedding",  # truncated HNSW data
    "log store",  # "Failed to pull logs from the log store"
    "purging logs",
    "apply logs",
    "compactor",
    "compaction",
)
# ...unless the failure is about resources, not the files' content.
_TRANSIENT_MARKERS: Final = ("disk is full", "no space left", "database is locked", "busy")


class VectorHit(NamedTuple):
    """One nearest neighbour: its id and its cosine similarity to the query."""

    id: str
    similarity: float
    """Cosine similarity, ``1 - cosine distance`` (clamped to [-1, 1]): 1 is the same direction."""


def collection_name(model: str, dimensions: int) -> str:
    """The Chroma collection name for vectors of ``model`` with ``dimensions``.

    Readable (a slug of the model name) and unique (a hash of the exact name and
    dimensions); it satisfies Chroma's rules: 3-512 characters of
    ``[a-zA-Z0-9._-]``, starting and ending with a letter or digit.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", model.lower()).strip("-")[:48].strip("-")
    digest = hashlib.sha256(f"{model}\x00{dimensions}".encode()).hexdigest()[:12]
    return "-".join(part for part in ("emb", slug, str(dimensions), digest) if part)


EXACT_FROM: Final = 100
"""Asked for at least this many neighbours, and as many as the collection holds,
the query compares against every vector instead of walking the HNSW graph: HNSW
is approximate and can miss outliers (a vector far from many near-duplicates may
have no incoming link), while a caller that asks for everything must get it."""


def _exact(
    collection: Collection, query: npt.NDArray[np.float32], where: Where | None
) -> list[VectorHit]:
    found = collection.get(where=where, include=["embeddings"])
    embeddings = found["embeddings"]
    if embeddings is None or len(found["ids"]) == 0:
        return []
    matrix = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
    similarity = (matrix @ query) / np.maximum(norms, 1e-12)
    order = np.argsort(-similarity, kind="stable")
    return [VectorHit(found["ids"][i], min(1.0, max(-1.0, float(similarity[i])))) for i in order]


class ChromaVectorCache:
    """The vectors of one embedding model, in a Chroma collection under ``path``.

    Use ``async with ChromaVectorCache(path, model=..., dimensions=...) as cache:``
    or ``open()``/``close()``. ``created`` tells whether ``open()`` found no
    collection for this model and made an empty one (the caller should then
    fill it from the op log).
    """

    def __init__(self, path: Path | str, *, model: str, dimensions: int) -> None:
        if not isinstance(model, str) or not model.strip():
            raise InvalidArgumentError("model must be a non-empty string")
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1:
            raise InvalidArgumentError(f"dimensions must be a positive integer, not {dimensions!r}")
        self.path = Path(os.path.abspath(os.fspath(path)))
        self.model = model
        self.dimensions = dimensions
        self.collection_name = collection_name(model, dimensions)
        self.created = False
        self._sqlite_path = self.path / SQLITE_FILE
        self._metadata: dict[str, MetadataValue] = {
            "hnsw:space": "cosine",
            "model": model,
            "dimensions": dimensions,
            "chrysalis_format": FORMAT_VERSION,
        }
        self._executor: ThreadPoolExecutor | None = None
        self._client: Client | None = None
        self._system: System | None = None
        self._collection: Collection | None = None
        self._segment_id: str | None = None
        self._fd: int | None = None  # pins chroma.sqlite3's inode (see _check_files)
        self._broken: str | None = None
        self._batch_size = 1000
        self._page_size = _ID_PAGE_SIZE

    def __repr__(self) -> str:
        state = "broken" if self._broken else "open" if self.is_open else "closed"
        return (
            f"ChromaVectorCache({str(self.path)!r}, model={self.model!r}, "
            f"dimensions={self.dimensions}, {state})"
        )

    @property
    def is_open(self) -> bool:
        return self._executor is not None and self._collection is not None

    # --- lifecycle ------------------------------------------------------------------

    async def open(self) -> None:
        """Open (or create) the collection. Raises ``VectorCacheError`` if unusable."""
        if self._executor is not None:
            return
        executor = _acquire_executor(str(self.path))
        self._executor = executor
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._open_sync)
        except BaseException:
            self._executor = None
            # If open() was cancelled, _open_sync may still finish: undo it after.
            executor.submit(self._close_sync)
            last = _release_executor(str(self.path))
            if last is not None:
                last.shutdown(wait=False)
            raise

    async def close(self) -> None:
        """Release Chroma's files and the worker thread. Idempotent."""
        executor = self._executor
        if executor is None:
            return
        self._executor = None  # new calls fail fast; calls already queued run first
        try:
            await asyncio.get_running_loop().run_in_executor(executor, self._close_sync)
        finally:
            last = _release_executor(str(self.path))
            if last is not None:
                last.shutdown(wait=True)  # idle by now: returns at once

    async def __aenter__(self) -> ChromaVectorCache:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    @staticmethod
    async def reset_directory(path: Path | str) -> None:
        """Delete a vector cache directory, so that a new cache starts empty.

        For recovery from :class:`VectorCacheCorruptError`: close the cache first.
        Any Chroma state this process still holds for the directory is dropped
        (other caches open on it will raise ``VectorCacheCorruptError``).
        Refuses (``VectorCacheError``) to delete a directory holding anything
        Chroma did not create. A missing directory is fine.
        """
        name = os.fspath(path)
        executor = _executors.get(await asyncio.to_thread(os.path.abspath, name))
        if executor is None:
            await asyncio.to_thread(_reset_directory_sync, name)
        else:  # serialise with the calls of caches still open on it
            await asyncio.get_running_loop().run_in_executor(
                executor[0], _reset_directory_sync, name
            )

    # --- the API --------------------------------------------------------------------

    async def upsert(
        self,
        ids: Sequence[str],
        vectors: Sequence[Sequence[float]] | FloatArray,
        metadatas: Sequence[Mapping[str, MetadataValue]] | None = None,
    ) -> None:
        """Insert or replace vectors (and their scalar metadata) by id.

        Large inputs are split into Chroma's maximum batch size; each batch is
        atomic, the whole call is not (a failure may leave earlier batches in).
        """
        id_list = _check_ids(ids, unique=True)
        if len(vectors) != len(id_list):
            raise InvalidArgumentError(
                f"got {len(id_list)} ids but {len(vectors)} vectors; they must match"
            )
        metadata_list = _check_metadatas(metadatas, len(id_list))
        if not id_list:
            return
        matrix = self._matrix(vectors)

        def work(collection: Collection) -> None:
            size = self._batch_size
            for start in range(0, len(id_list), size):
                stop = start + size
                collection.upsert(
                    ids=id_list[start:stop],
                    embeddings=matrix[start:stop],
                    metadatas=(
                        None
                        if metadata_list is None
                        else cast("list[Metadata]", metadata_list[start:stop])
                    ),
                )

        await self._run("store vectors", work)

    async def delete(self, ids: Sequence[str]) -> None:
        """Remove vectors by id. Unknown ids are ignored."""
        id_list = _check_ids(ids, unique=False)
        if not id_list:
            return

        def work(collection: Collection) -> None:
            size = self._batch_size
            for start in range(0, len(id_list), size):
                collection.delete(ids=id_list[start : start + size])

        await self._run("delete vectors", work)

    async def query(
        self, vector: Sequence[float] | FloatArray, k: int, where: Mapping[str, Any] | None = None
    ) -> list[VectorHit]:
        """The ``k`` nearest vectors by cosine, most similar first.

        Fewer than ``k`` when the collection (or the ``where`` selection) is
        smaller. ``where`` is a Chroma metadata filter, e.g. ``{"type": "fact"}``,
        ``{"n": {"$gte": 3}}``, ``{"$and": [...]}``.
        """
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise InvalidArgumentError(f"k must be a positive integer, not {k!r}")
        query_matrix = self._query_matrix(vector)
        where_filter = None if where is None else cast("Where", dict(where))
        if where is not None and not where_filter:
            where_filter = None  # Chroma rejects an empty filter; empty means "all"

        def work(collection: Collection) -> list[VectorHit]:
            if k >= EXACT_FROM and k >= collection.count():
                return _exact(collection, query_matrix[0], where_filter)
            result = collection.query(
                query_embeddings=query_matrix,
                n_results=k,
                where=where_filter,
                include=["distances"],
            )
            distances = result["distances"]
            if distances is None:  # pragma: no cover - Chroma always returns them when asked
                raise VectorCacheError("Chroma returned no distances")
            # float32 rounding can put 1 - distance a hair outside [-1, 1]
            return [
                VectorHit(hit_id, min(1.0, max(-1.0, 1.0 - float(distance))))
                for hit_id, distance in zip(result["ids"][0], distances[0], strict=True)
            ]

        return await self._run("query", work)

    async def count(self) -> int:
        """How many vectors the collection holds."""
        return await self._run("count vectors", lambda collection: collection.count())

    async def ids(self) -> set[str]:
        """Every id in the collection (read in pages), e.g. to find stale entries."""

        def work(collection: Collection) -> set[str]:
            found: set[str] = set()
            offset = 0
            while True:
                page = collection.get(include=[], limit=self._page_size, offset=offset)["ids"]
                found.update(page)
                if len(page) < self._page_size:
                    return found
                offset += len(page)

        return await self._run("list ids", work)

    async def clear(self) -> None:
        """Drop this model's collection and start an empty one (other models keep theirs)."""
        await self._run("clear", lambda _collection: self._clear_sync())

    # --- worker-thread side ---------------------------------------------------------

    async def _run(self, action: str, work: Callable[[Collection], R]) -> R:
        executor = self._require_open()
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._guarded, action, work)

    def _require_open(self) -> ThreadPoolExecutor:
        executor = self._executor
        if executor is None or self._collection is None:
            raise ClosedError(f"the vector cache at {self.path} is not open; call open() first")
        if self._broken is not None:
            raise VectorCacheCorruptError(self._corrupt_message(self._broken))
        return executor

    def _guarded(self, action: str, work: Callable[[Collection], R]) -> R:
        """Run ``work`` on the current collection; translate what Chroma raises."""
        if self._broken is not None:
            raise VectorCacheCorruptError(self._corrupt_message(self._broken))
        collection = self._collection
        if collection is None:
            raise ClosedError(f"the vector cache at {self.path} is not open; call open() first")
        self._check_files()
        try:
            return work(collection)
        except ChrysalisError:
            raise
        except Exception as exc:
            raise self._translate(exc, action) from exc
        except BaseException as exc:
            if _is_rust_panic(exc):
                raise self._translate(exc, action) from exc
            raise

    def _check_files(self) -> None:
        """Two ``stat`` calls: the database file is still the one we opened, whole.

        The cache holds the file open, so its inode cannot be reused by a new
        file at the same path (Chroma's own handles go when its System stops).
        """
        fd = self._fd
        if fd is None:
            return
        try:
            opened = os.fstat(fd)
            current = os.stat(self._sqlite_path)
        except FileNotFoundError:
            self._mark_broken(f"{self._sqlite_path} was deleted while the cache was open")
        except OSError as exc:
            self._mark_broken(f"cannot read {self._sqlite_path}: {exc}")
        same = (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)
        if opened.st_nlink == 0 or not same:
            self._mark_broken(f"{self._sqlite_path} was deleted or replaced while open")
        if opened.st_size < _SQLITE_HEADER_SIZE:
            self._mark_broken(f"{self._sqlite_path} was truncated to {opened.st_size} bytes")

    def _mark_broken(self, detail: str) -> NoReturn:
        if self._broken is None:
            logger.warning("vector cache at %s is damaged: %s", self.path, detail)
            self._broken = detail
        raise VectorCacheCorruptError(self._corrupt_message(detail))

    def _corrupt_message(self, detail: str) -> str:
        return (
            f"the vector cache at {self.path} is damaged ({detail}); close it, delete the "
            f"directory (ChromaVectorCache.reset_directory) and {_REINDEX}"
        )

    def _translate(self, exc: BaseException, action: str) -> ChrysalisError:
        detail = _describe(exc)
        if self._fd is not None:
            try:  # files that went away explain any error
                self._check_files()
            except VectorCacheCorruptError as corrupt:
                return corrupt
        if _looks_corrupt(detail):
            try:
                self._mark_broken(detail)
            except VectorCacheCorruptError as corrupt:
                return corrupt
        if "expecting embedding with dimension" in detail.lower():
            return VectorCacheError(
                f"the vector cache collection {self.collection_name!r} at {self.path} holds "
                f"vectors of another dimension than {self.dimensions} ({detail}); {_REINDEX}"
            )
        chroma_errors = sys.modules.get("chromadb.errors")
        if isinstance(exc, ValueError | TypeError) or (
            chroma_errors is not None and isinstance(exc, chroma_errors.InvalidArgumentError)
        ):
            return InvalidArgumentError(f"Chroma rejected the request to {action}: {exc}")
        return VectorCacheError(
            f"the vector cache at {self.path} failed to {action} ({detail}); "
            f"if this keeps happening, {_REINDEX}"
        )

    def _open_sync(self) -> None:
        try:
            import chromadb
            from chromadb.api.shared_system_client import SharedSystemClient
            from chromadb.config import Settings
            from chromadb.errors import NotFoundError
        except ImportError as exc:
            raise VectorCacheError(
                f"the vector cache needs chromadb ({exc}); install it: pip install 'chromadb>=1.0'"
            ) from exc

        self._broken = None
        self._precheck()
        identifier = str(self.path)  # Chroma keys its shared System by this string
        if not self._sqlite_path.exists():
            _evict_system(identifier)  # a System this process holds for deleted files
        settings = Settings(anonymized_telemetry=False)
        try:
            # PersistentClient is typed as ClientAPI, which lacks close(); it is a Client.
            client = cast("Client", chromadb.PersistentClient(path=identifier, settings=settings))
        except Exception as exc:
            _discard_failed_system(identifier)
            raise self._open_error(exc) from exc
        try:
            system = SharedSystemClient._identifier_to_system[identifier]
            try:
                collection = client.get_collection(self.collection_name, embedding_function=None)
                created = False
            except NotFoundError:
                collection = client.create_collection(
                    self.collection_name,
                    metadata=cast("dict[str, Any]", self._metadata),
                    embedding_function=None,
                )
                created = True
            self._check_metadata(collection.metadata)
            segment_id = self._inspect_sqlite(str(collection.id))
            batch_size = client.get_max_batch_size()
            fd = os.open(self._sqlite_path, os.O_RDONLY)
        except BaseException as exc:
            with contextlib.suppress(Exception):
                client.close()
            if isinstance(exc, ChrysalisError):
                raise
            if isinstance(exc, Exception) or _is_rust_panic(exc):
                raise self._open_error(exc) from exc
            raise
        self._client = client
        self._system = system
        self._collection = collection
        self._segment_id = segment_id
        self._fd = fd
        self._batch_size = max(1, batch_size)
        self.created = created
        if created:
            logger.info("created vector cache collection %s at %s", self.collection_name, self.path)

    def _precheck(self) -> None:
        """Damage Chroma would not notice: a truncated database file."""
        if os.path.lexists(self.path) and not self.path.is_dir():
            raise VectorCacheError(
                f"the vector cache path {self.path} exists but is not a directory; "
                f"move it away, then {_REINDEX}"
            )
        try:
            size = os.stat(self._sqlite_path).st_size
        except FileNotFoundError:
            return
        except OSError as exc:
            raise VectorCacheError(f"cannot read {self._sqlite_path}: {exc}") from exc
        if size < _SQLITE_HEADER_SIZE:
            # SQLite (and so Chroma) would treat it as a new empty database and
            # leave the old index files behind.
            self._mark_broken(f"{self._sqlite_path} is truncated ({size} bytes)")

    def _open_error(self, exc: BaseException) -> VectorCacheError:
        detail = _describe(exc)
        if _looks_corrupt(detail) or (
            isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)
        ):
            self._broken = detail
            return VectorCacheCorruptError(self._corrupt_message(detail))
        return VectorCacheError(
            f"cannot open the vector cache at {self.path} ({detail}); "
            f"if this keeps happening, {_REINDEX}"
        )

    def _check_metadata(self, metadata: Mapping[str, Any] | None) -> None:
        found = dict(metadata or {})
        if all(found.get(key) == value for key, value in self._metadata.items()):
            return
        raise VectorCacheError(
            f"the vector cache collection {self.collection_name!r} at {self.path} was made for "
            f"model {found.get('model')!r} with {found.get('dimensions')!r} dimensions "
            f"(format {found.get('chrysalis_format')!r}, space {found.get('hnsw:space')!r}), "
            f"not {self.model!r} with {self.dimensions}; {_REINDEX}"
        )

    def _inspect_sqlite(self, collection_id: str) -> str | None:
        """Check what Chroma stored about the collection; return its vector segment's id.

        Chroma 1.5 does not notice a missing HNSW index: it would rebuild it from
        the few vectors still in its log and silently lose the rest. Reads
        Chroma's schema read-only; if the schema is not the one known here (a
        newer Chroma), the check is skipped.
        """
        uri = self._sqlite_path.as_uri() + "?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as db:
                row = db.execute(
                    "SELECT dimension FROM collections WHERE id = ?", (collection_id,)
                ).fetchone()
                segments = db.execute(
                    "SELECT s.id, m.seq_id FROM segments AS s "
                    "LEFT JOIN max_seq_id AS m ON m.segment_id = s.id "
                    "WHERE s.collection = ? AND s.scope = 'VECTOR'",
                    (collection_id,),
                ).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such" not in str(exc):
                raise
            logger.debug("not checking the vector cache's files: unknown Chroma schema: %s", exc)
            return None
        dimension = row[0] if row else None
        if dimension is not None and dimension != self.dimensions:
            raise VectorCacheError(
                f"the vector cache collection {self.collection_name!r} at {self.path} holds "
                f"{dimension}-dimensional vectors, not {self.dimensions}; {_REINDEX}"
            )
        segment_id: str | None = None
        for found_id, seq_id in segments:
            segment_id = str(found_id)
            if isinstance(seq_id, bytes):
                seq_id = int.from_bytes(seq_id, "big")
            if isinstance(seq_id, int) and seq_id > 0:
                self._check_segment_files(segment_id)
        return segment_id

    def _check_segment_files(self, segment_id: str) -> None:
        folder = self.path / segment_id
        for name in _HNSW_FILES:
            try:
                size = os.stat(folder / name).st_size
            except FileNotFoundError:
                self._mark_broken(f"the HNSW index file {folder / name} is missing")
            if size == 0 and name in _HNSW_NONEMPTY:
                self._mark_broken(f"the HNSW index file {folder / name} is empty")

    def _clear_sync(self) -> None:
        from chromadb.errors import NotFoundError

        client = self._client
        assert client is not None  # _guarded checked that the cache is open
        old_segment = self._segment_id
        with contextlib.suppress(NotFoundError):
            client.delete_collection(self.collection_name)
        collection = client.create_collection(
            self.collection_name,
            metadata=cast("dict[str, Any]", self._metadata),
            embedding_function=None,
        )
        self._collection = collection
        self._segment_id = self._inspect_sqlite(str(collection.id))
        if old_segment is not None and old_segment != self._segment_id:
            self._remove_orphan_segment(old_segment)
        logger.info("cleared vector cache collection %s at %s", self.collection_name, self.path)

    def _remove_orphan_segment(self, segment_id: str) -> None:
        """Chroma 1.5 leaves a deleted collection's HNSW files on disk: remove them."""
        uri = self._sqlite_path.as_uri() + "?mode=ro"
        try:
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=5.0)) as db:
                used = db.execute("SELECT 1 FROM segments WHERE id = ?", (segment_id,)).fetchone()
        except sqlite3.Error as exc:
            logger.debug("keeping segment directory %s: %s", segment_id, exc)
            return
        folder = self.path / segment_id
        if used is None and _is_uuid(segment_id) and folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder, ignore_errors=True)

    def _close_sync(self) -> None:
        client, system, fd = self._client, self._system, self._fd
        self._client = self._system = self._collection = None
        self._fd = None
        self._broken = None
        if client is not None:
            from chromadb.api.shared_system_client import SharedSystemClient

            if SharedSystemClient._identifier_to_system.get(str(self.path)) is system:
                try:
                    client.close()  # releases Chroma's System when the last user closes
                except Exception as exc:  # closing must not fail; the files are let go anyway
                    logger.debug("closing Chroma at %s failed: %s", self.path, exc)
            # Otherwise reset_directory() already stopped and dropped that System:
            # client.close() would release the reference of whoever opened it next.
        if fd is not None:
            os.close(fd)

    # --- input checks ---------------------------------------------------------------

    def _matrix(self, vectors: Sequence[Sequence[float]] | FloatArray) -> npt.NDArray[np.float32]:
        for index, vector in enumerate(vectors):
            if len(vector) != self.dimensions:
                raise InvalidArgumentError(
                    f"vector #{index} has {len(vector)} dimensions; the cache for model "
                    f"{self.model!r} holds {self.dimensions}-dimensional vectors"
                )
        return self._finite(vectors, "vectors")

    def _query_matrix(self, vector: Sequence[float] | FloatArray) -> npt.NDArray[np.float32]:
        if len(vector) != self.dimensions:
            raise InvalidArgumentError(
                f"the query vector has {len(vector)} dimensions; the cache for model "
                f"{self.model!r} holds {self.dimensions}-dimensional vectors"
            )
        return self._finite([vector], "the query vector")

    def _finite(
        self, rows: Sequence[Sequence[float]] | FloatArray | list[Any], what: str
    ) -> npt.NDArray[np.float32]:
        try:
            with np.errstate(over="ignore", invalid="ignore"):  # overflow shows up as inf
                matrix = np.asarray(rows, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InvalidArgumentError(f"{what} must be sequences of numbers: {exc}") from exc
        if matrix.ndim != 2 or matrix.shape[1] != self.dimensions:
            raise InvalidArgumentError(f"{what} must be flat sequences of numbers")
        if not np.isfinite(matrix).all():
            raise InvalidArgumentError(
                f"{what} contain NaN or infinite values (or values too large for float32)"
            )
        return matrix


# --- helpers ----------------------------------------------------------------------------


def _check_ids(ids: Sequence[str], *, unique: bool) -> list[str]:
    if isinstance(ids, str):
        raise InvalidArgumentError("ids must be a sequence of strings, not one string")
    id_list = list(ids)
    for item in id_list:
        if not isinstance(item, str) or not item:
            raise InvalidArgumentError(f"every id must be a non-empty string, not {item!r}")
    if unique and len(set(id_list)) != len(id_list):
        duplicates = sorted(item for item, n in Counter(id_list).items() if n > 1)
        raise InvalidArgumentError(f"ids must be unique; repeated: {duplicates[:5]}")
    return id_list


def _check_metadatas(
    metadatas: Sequence[Mapping[str, MetadataValue]] | None, count: int
) -> list[dict[str, MetadataValue] | None] | None:
    if metadatas is None:
        return None
    if len(metadatas) != count:
        raise InvalidArgumentError(
            f"got {count} ids but {len(metadatas)} metadatas; they must match"
        )
    checked: list[dict[str, MetadataValue] | None] = []
    for index, metadata in enumerate(metadatas):
        if not isinstance(metadata, Mapping):
            raise InvalidArgumentError(f"metadata #{index} must be a mapping, not {metadata!r}")
        for key, value in metadata.items():
            if not isinstance(key, str) or not key:
                raise InvalidArgumentError(f"metadata #{index} has a key that is not a string")
            if not isinstance(value, str | int | float | bool) or (
                isinstance(value, float) and not math.isfinite(value)
            ):
                raise InvalidArgumentError(
                    f"metadata #{index} {key!r} must be a str, int, finite float or bool, "
                    f"not {value!r}"
                )
        # Chroma rejects an empty metadata dict; "no metadata" is None.
        checked.append(dict(metadata) or None)
    return checked


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _looks_corrupt(detail: str) -> bool:
    lowered = detail.lower()
    if any(marker in lowered for marker in _TRANSIENT_MARKERS):
        return False
    return any(marker in lowered for marker in _CORRUPT_MARKERS)


def _is_rust_panic(exc: BaseException) -> bool:
    """pyo3 turns a Rust panic into ``PanicException``, a ``BaseException``."""
    return type(exc).__name__ == "PanicException"


def _is_uuid(name: str) -> bool:
    try:
        return str(uuid.UUID(name)) == name
    except ValueError:
        return False


# One worker thread per cache directory, shared by the caches open on it (one
# per model): every Chroma call on a directory's System is serialised, and the
# cache's own reads of chroma.sqlite3 never overlap Chroma's writes.
_executors_lock = threading.Lock()
_executors: dict[str, tuple[ThreadPoolExecutor, int]] = {}


def _acquire_executor(key: str) -> ThreadPoolExecutor:
    with _executors_lock:
        executor, users = _executors.get(key, (None, 0))
        if executor is None:
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=_THREAD_NAME)
        _executors[key] = (executor, users + 1)
        return executor


def _release_executor(key: str) -> ThreadPoolExecutor | None:
    """Drop one user; return the executor to shut down if that was the last one."""
    with _executors_lock:
        executor, users = _executors[key]
        if users > 1:
            _executors[key] = (executor, users - 1)
            return None
        del _executors[key]
        return executor


def _evict_system(identifier: str) -> None:
    """Stop and forget the Chroma ``System`` this process holds for a directory.

    Chroma caches one System per directory for the whole process; one whose
    files were deleted (or that failed to start) would otherwise be handed to
    the next client opened on the same path.
    """
    module = sys.modules.get("chromadb.api.shared_system_client")
    if module is None:
        return  # chromadb was never imported: nothing is cached
    shared = module.SharedSystemClient
    with shared._refcount_lock:
        system = shared._identifier_to_system.pop(identifier, None)
        shared._identifier_to_refcount.pop(identifier, None)
    if system is not None:
        with contextlib.suppress(Exception):
            system.stop()


def _discard_failed_system(identifier: str) -> None:
    """Chroma 1.5 caches a System whose start failed; the next client would get it."""
    from chromadb.api.shared_system_client import SharedSystemClient

    if (
        identifier in SharedSystemClient._identifier_to_system
        and SharedSystemClient._identifier_to_refcount.get(identifier, 0) <= 0
    ):
        _evict_system(identifier)


def _reset_directory_sync(name: str) -> None:
    path = Path(os.path.abspath(name))
    _evict_system(str(path))
    if not os.path.lexists(path):
        return
    if path.is_symlink() or not path.is_dir():
        raise VectorCacheError(
            f"refusing to delete {path}: it is not a vector cache directory; move it away, "
            f"then {_REINDEX}"
        )
    foreign = sorted(entry.name for entry in os.scandir(path) if not _made_by_chroma(entry))
    if foreign:
        raise VectorCacheError(
            f"refusing to delete {path}: it holds {', '.join(map(repr, foreign[:5]))}, "
            f"which Chroma did not create; move them away (or delete the directory yourself), "
            f"then {_REINDEX}"
        )
    try:
        shutil.rmtree(path)
    except OSError as exc:
        raise VectorCacheError(f"cannot delete the vector cache at {path}: {exc}") from exc
    logger.info("deleted vector cache directory %s", path)


def _made_by_chroma(entry: os.DirEntry[str]) -> bool:
    if entry.is_symlink():
        return False
    if entry.name in _CHROMA_FILES:
        return entry.is_file()
    return entry.is_dir() and _is_uuid(entry.name)
