"""The Chroma vector cache: real Chroma (1.5) in ``tmp_path``, no network.

Damage behaviour found with Chroma 1.5 and pinned here:

* directory deleted while open: Chroma keeps answering queries from its
  in-memory HNSW index (only writes fail), so the cache ``stat``s its database
  file before every call and raises ``VectorCacheCorruptError``;
* ``chroma.sqlite3`` overwritten with garbage or truncated to half: Chroma fails
  ("file is not a database", "database disk image is malformed") at start or at
  the next call; the cache raises ``VectorCacheCorruptError`` and forgets the
  failed Chroma ``System`` (Chroma 1.5 would hand it to the next client);
* truncated to 0 bytes: SQLite would see a new empty database and Chroma would
  silently start empty, so the cache treats a file shorter than SQLite's header
  as damage;
* HNSW index files missing for a persisted segment: Chroma would silently
  answer from the few vectors left in its log, so ``open()`` checks them.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt
import pytest

from chrysalis_memory.errors import (
    ClosedError,
    InvalidArgumentError,
    StoreError,
    VectorCacheCorruptError,
    VectorCacheError,
)
from chrysalis_memory.recall.vectors import (
    SQLITE_FILE,
    ChromaVectorCache,
    VectorHit,
    collection_name,
)

if TYPE_CHECKING:
    from chromadb.api.client import Client

DIM = 16
MODEL = "test-model"

Factory = Callable[..., ChromaVectorCache]


def _vectors(count: int, dimensions: int = DIM, seed: int = 0) -> npt.NDArray[np.float64]:
    """Random vectors of random lengths (cosine must not care about the length)."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((count, dimensions))
    return vectors * rng.uniform(0.1, 10.0, size=(count, 1))


def _cosine_top(
    matrix: npt.NDArray[np.float64], query: npt.NDArray[np.float64], k: int
) -> list[tuple[int, float]]:
    """Brute-force top ``k`` by cosine similarity (float32, as Chroma stores them)."""
    stored = matrix.astype(np.float32).astype(np.float64)
    q = query.astype(np.float32).astype(np.float64)
    sims = stored @ q / (np.linalg.norm(stored, axis=1) * np.linalg.norm(q))
    order = np.argsort(-sims)[:k]
    return [(int(i), float(sims[i])) for i in order]


def _ids(count: int, prefix: str = "m") -> list[str]:
    return [f"{prefix}{i}" for i in range(count)]


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "vectors"


@pytest.fixture
async def open_cache(cache_dir: Path) -> AsyncIterator[Factory]:
    """Make caches (default: ``cache_dir``, MODEL, DIM); all are closed at the end."""
    made: list[ChromaVectorCache] = []

    def factory(
        path: Path | None = None, *, model: str = MODEL, dimensions: int = DIM
    ) -> ChromaVectorCache:
        cache = ChromaVectorCache(path or cache_dir, model=model, dimensions=dimensions)
        made.append(cache)
        return cache

    yield factory
    for cache in made:
        await cache.close()


@pytest.fixture
async def cache(open_cache: Factory) -> ChromaVectorCache:
    opened = open_cache()
    await opened.open()
    return opened


# --- round trip ---------------------------------------------------------------------


async def test_query_returns_nearest_neighbours_by_cosine(cache: ChromaVectorCache) -> None:
    matrix = _vectors(300)
    ids = _ids(300)
    await cache.upsert(ids, matrix.tolist())
    assert await cache.count() == 300
    for query in _vectors(10, seed=1):
        hits = await cache.query(query.tolist(), 5)
        expected = _cosine_top(matrix, query, 5)
        assert all(isinstance(hit, VectorHit) for hit in hits)
        assert [hit.id for hit in hits] == [ids[i] for i, _ in expected]
        for hit, (_, similarity) in zip(hits, expected, strict=True):
            assert hit.similarity == pytest.approx(similarity, abs=1e-4)
        assert [hit.similarity for hit in hits] == sorted(
            (hit.similarity for hit in hits), reverse=True
        )


async def test_a_stored_vector_is_its_own_nearest_neighbour(cache: ChromaVectorCache) -> None:
    matrix = _vectors(50)
    await cache.upsert(_ids(50), matrix)  # numpy arrays are accepted too
    hits = await cache.query(matrix[7], 1)
    assert hits[0].id == "m7"
    assert hits[0].similarity == pytest.approx(1.0, abs=1e-5)
    assert -1.0 <= hits[0].similarity <= 1.0
    opposite = await cache.query((-matrix[7]).tolist(), 50)
    assert opposite[-1].id == "m7"
    assert opposite[-1].similarity == pytest.approx(-1.0, abs=1e-5)


async def test_upsert_replaces_a_vector(cache: ChromaVectorCache) -> None:
    matrix = _vectors(20)
    await cache.upsert(_ids(20), matrix.tolist())
    await cache.upsert(["m0"], [matrix[5].tolist()])
    assert await cache.count() == 20
    hits = await cache.query(matrix[5].tolist(), 2)
    assert {hit.id for hit in hits} == {"m0", "m5"}
    assert all(hit.similarity == pytest.approx(1.0, abs=1e-5) for hit in hits)


async def test_k_larger_than_the_collection_returns_everything(cache: ChromaVectorCache) -> None:
    assert await cache.query([1.0] * DIM, 10) == []  # empty collection
    await cache.upsert(_ids(4), _vectors(4).tolist())
    hits = await cache.query([1.0] * DIM, 1_000_000)
    assert sorted(hit.id for hit in hits) == _ids(4)


async def test_where_filters_on_scalar_metadata(cache: ChromaVectorCache) -> None:
    matrix = _vectors(200)
    ids = _ids(200)
    metadatas: list[dict[str, str | int | float | bool]] = [
        {"kind": "a" if i % 2 else "b", "n": i, "flag": i % 3 == 0, "score": i / 200}
        for i in range(200)
    ]
    await cache.upsert(ids, matrix.tolist(), metadatas)
    query = _vectors(1, seed=2)[0]

    async def check(where: dict[str, Any], keep: Callable[[int], bool]) -> None:
        hits = await cache.query(query.tolist(), 5, where=where)
        subset = [i for i in range(200) if keep(i)]
        expected = _cosine_top(matrix[subset], query, 5)
        assert [hit.id for hit in hits] == [ids[subset[i]] for i, _ in expected]

    await check({"kind": "a"}, lambda i: i % 2 == 1)
    await check({"n": {"$gte": 150}}, lambda i: i >= 150)
    await check({"flag": True}, lambda i: i % 3 == 0)
    await check({"score": {"$lt": 0.1}}, lambda i: i / 200 < 0.1)
    await check({"$and": [{"kind": "b"}, {"flag": True}]}, lambda i: i % 2 == 0 and i % 3 == 0)
    await check({"n": {"$in": [3, 4, 5]}}, lambda i: i in (3, 4, 5))
    assert await cache.query(query.tolist(), 5, where={"kind": "nope"}) == []
    assert len(await cache.query(query.tolist(), 5, where={})) == 5  # empty filter: all


async def test_vectors_without_metadata_are_not_matched_by_filters(
    cache: ChromaVectorCache,
) -> None:
    await cache.upsert(["x", "y"], _vectors(2).tolist(), [{"kind": "a"}, {}])
    hits = await cache.query([1.0] * DIM, 5, where={"kind": "a"})
    assert [hit.id for hit in hits] == ["x"]


async def test_delete(cache: ChromaVectorCache) -> None:
    matrix = _vectors(30)
    await cache.upsert(_ids(30), matrix.tolist())
    await cache.delete(["m3", "m4", "never-stored"])
    await cache.delete([])
    assert await cache.count() == 28
    assert await cache.ids() == set(_ids(30)) - {"m3", "m4"}
    hits = await cache.query(matrix[3].tolist(), 30)
    assert "m3" not in {hit.id for hit in hits}
    assert len(hits) == 28


async def test_large_inputs_are_batched_and_ids_paged(cache: ChromaVectorCache) -> None:
    cache._batch_size = 7  # Chroma's real limit is thousands; make the loop run
    cache._page_size = 5
    await cache.upsert(_ids(53), _vectors(53).tolist(), [{"n": i} for i in range(53)])
    assert await cache.count() == 53
    assert await cache.ids() == set(_ids(53))
    await cache.delete(_ids(40))
    assert await cache.ids() == set(_ids(53)) - set(_ids(40))


async def test_clear_empties_the_collection_and_removes_its_files(
    cache: ChromaVectorCache, cache_dir: Path
) -> None:
    await cache.upsert(_ids(1200), _vectors(1200).tolist())  # > sync_threshold: files on disk
    segments_before = [p for p in cache_dir.iterdir() if p.is_dir()]
    assert segments_before
    await cache.clear()
    assert await cache.count() == 0
    assert await cache.ids() == set()
    assert await cache.query([1.0] * DIM, 3) == []
    assert not any(p.exists() for p in segments_before)  # Chroma 1.5 would leave them
    await cache.upsert(["a"], _vectors(1).tolist())
    assert [hit.id for hit in await cache.query([1.0] * DIM, 3)] == ["a"]


async def test_reopen_keeps_the_vectors(open_cache: Factory) -> None:
    matrix = _vectors(1500)  # above Chroma's sync threshold: the HNSW index is persisted
    first = open_cache()
    await first.open()
    assert first.created
    await first.upsert(_ids(1500), matrix.tolist(), [{"n": i} for i in range(1500)])
    query = _vectors(1, seed=3)[0].tolist()
    before = await first.query(query, 5)
    await first.close()

    second = open_cache()
    await second.open()
    assert not second.created
    assert await second.count() == 1500
    assert await second.query(query, 5) == before
    assert await second.query(query, 5, where={"n": {"$lt": 10}})


async def test_two_models_get_two_collections(open_cache: Factory) -> None:
    small = open_cache(model="model-a", dimensions=8)
    large = open_cache(model="model-b", dimensions=DIM)
    await small.open()
    await large.open()
    assert small.collection_name != large.collection_name
    await small.upsert(_ids(5), _vectors(5, 8).tolist())
    await large.upsert(_ids(7), _vectors(7).tolist())
    assert (await small.count(), await large.count()) == (5, 7)
    await small.clear()
    assert (await small.count(), await large.count()) == (0, 7)
    await small.upsert(["s"], _vectors(1, 8).tolist())
    await large.close()
    again = open_cache(model="model-b", dimensions=DIM)
    await again.open()
    assert await again.count() == 7
    assert await small.ids() == {"s"}


def test_collection_names_follow_chromas_rules() -> None:
    rule = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{1,510}[a-zA-Z0-9]$")
    models = [
        "nomic-embed-text",
        "nomic-embed-text:latest",
        "Nomic Embed Text",
        "hf/BAAI/bge-small-en-v1.5",
        "模型",
        "..",
        "x" * 2000,
        "hashing-v1",
    ]
    names = {collection_name(model, dims) for model in models for dims in (8, 768)}
    assert len(names) == len(models) * 2  # unique, even where the slugs are equal
    for name in names:
        assert rule.match(name), name
        assert ".." not in name
    assert collection_name("nomic-embed-text", 768).startswith("emb-nomic-embed-text-768-")


# --- bad input ----------------------------------------------------------------------


async def test_vectors_of_the_wrong_dimension_are_rejected(cache: ChromaVectorCache) -> None:
    with pytest.raises(InvalidArgumentError, match="dimensions"):
        await cache.upsert(["a", "b"], [[1.0] * DIM, [1.0] * (DIM - 1)])
    with pytest.raises(InvalidArgumentError, match="dimensions"):
        await cache.query([1.0] * (DIM + 1), 3)
    with pytest.raises(InvalidArgumentError):
        await cache.upsert(["a"], [[[1.0]] * DIM])  # type: ignore[list-item]
    assert await cache.count() == 0  # nothing half-written


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda c: c.query([1.0] * DIM, 0), "k must be"),
        (lambda c: c.query([1.0] * DIM, -1), "k must be"),
        (lambda c: c.query([1.0] * DIM, True), "k must be"),
        (lambda c: c.query([float("nan")] + [1.0] * (DIM - 1), 3), "NaN"),
        (lambda c: c.query([1e300] + [1.0] * (DIM - 1), 3), "NaN"),
        (lambda c: c.upsert(["a"], [[float("inf")] * DIM]), "NaN"),
        (lambda c: c.upsert(["a", "a"], [[1.0] * DIM] * 2), "unique"),
        (lambda c: c.upsert(["a"], [[1.0] * DIM] * 2), "must match"),
        (lambda c: c.upsert(["a"], [[1.0] * DIM], [{}, {}]), "must match"),
        (lambda c: c.upsert([""], [[1.0] * DIM]), "non-empty string"),
        (lambda c: c.upsert("ab", [[1.0] * DIM] * 2), "not one string"),
        (lambda c: c.upsert(["a"], [[1.0] * DIM], [{"k": [1, 2]}]), "must be a str"),
        (lambda c: c.upsert(["a"], [[1.0] * DIM], [{"k": float("nan")}]), "must be a str"),
        (lambda c: c.upsert(["a"], [["x"] * DIM]), "numbers"),
        (lambda c: c.delete([3]), "non-empty string"),
        (lambda c: c.query([1.0] * DIM, 3, where={"$bogus": 1}), "Chroma rejected"),
    ],
)
async def test_bad_arguments_are_rejected(
    cache: ChromaVectorCache, call: Callable[[ChromaVectorCache], Any], match: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        await call(cache)
    assert await cache.count() == 0


def test_constructor_checks_its_arguments(tmp_path: Path) -> None:
    for model, dimensions in [("", 8), ("  ", 8), ("m", 0), ("m", True), ("m", 8.0)]:
        with pytest.raises(InvalidArgumentError):
            ChromaVectorCache(tmp_path, model=model, dimensions=dimensions)  # type: ignore[arg-type]


async def test_use_before_open_and_after_close(open_cache: Factory) -> None:
    unopened = open_cache()
    with pytest.raises(ClosedError):
        await unopened.count()
    await unopened.close()  # closing an unopened cache is fine
    await unopened.open()
    await unopened.open()  # idempotent
    assert await unopened.count() == 0
    await unopened.close()
    await unopened.close()
    with pytest.raises(ClosedError):
        await unopened.query([1.0] * DIM, 1)
    async with open_cache() as reopened:
        assert reopened.is_open
    assert not reopened.is_open


def _raw_client(path: Path) -> Client:
    """A plain Chroma client, to plant collections the cache did not make."""
    import chromadb
    from chromadb.config import Settings

    settings = Settings(anonymized_telemetry=False)
    return cast("Client", chromadb.PersistentClient(path=str(path), settings=settings))


async def test_a_collection_made_for_another_model_is_refused(
    open_cache: Factory, cache_dir: Path
) -> None:
    client = _raw_client(cache_dir)
    client.create_collection(
        collection_name(MODEL, DIM),
        metadata={"hnsw:space": "cosine", "model": "another", "dimensions": DIM},
        embedding_function=None,
    )
    client.close()
    with pytest.raises(VectorCacheError, match="chrysalis reindex") as caught:
        await open_cache().open()
    assert not isinstance(caught.value, VectorCacheCorruptError)
    assert "another" in str(caught.value)


async def test_a_collection_holding_other_dimensions_is_refused(
    open_cache: Factory, cache_dir: Path
) -> None:
    client = _raw_client(cache_dir)
    collection = client.create_collection(
        collection_name(MODEL, DIM),
        metadata={"hnsw:space": "cosine", "model": MODEL, "dimensions": DIM, "chrysalis_format": 1},
        embedding_function=None,
    )
    collection.upsert(ids=["a"], embeddings=np.array([[1.0, 0.0, 0.0]], dtype=np.float32))
    client.close()
    with pytest.raises(VectorCacheError, match=r"3-dimensional.*chrysalis reindex"):
        await open_cache().open()


# --- damage -------------------------------------------------------------------------


async def _filled(factory: Factory, count: int = 1500, **kwargs: Any) -> ChromaVectorCache:
    """A cache above Chroma's sync threshold (1000): its HNSW index is on disk and in memory."""
    cache = factory(**kwargs)
    await cache.open()
    await cache.upsert(_ids(count), _vectors(count).tolist())
    return cache


async def _assert_every_call_refused(cache: ChromaVectorCache) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: cache.query([1.0] * DIM, 3),
        lambda: cache.upsert(["new"], [[1.0] * DIM]),
        cache.count,
        cache.ids,
        lambda: cache.delete(["m1"]),
        cache.clear,
    ]
    for call in calls:
        with pytest.raises(VectorCacheCorruptError, match="chrysalis reindex"):
            await call()


async def _assert_recovers(factory: Factory, path: Path, **kwargs: Any) -> None:
    await ChromaVectorCache.reset_directory(path)
    assert not path.exists()
    fresh = factory(path, **kwargs)
    await fresh.open()
    assert fresh.created
    assert await fresh.count() == 0
    await fresh.upsert(["a"], [[1.0] * DIM])
    assert [hit.id for hit in await fresh.query([1.0] * DIM, 3)] == ["a"]


async def test_directory_deleted_while_open(open_cache: Factory, cache_dir: Path) -> None:
    cache = await _filled(open_cache)
    shutil.rmtree(cache_dir)
    # Chroma itself would still answer this query from memory.
    await _assert_every_call_refused(cache)
    assert isinstance(VectorCacheCorruptError("x"), StoreError)
    await cache.close()
    await _assert_recovers(open_cache, cache_dir)


async def test_directory_deleted_and_reset_without_closing(
    open_cache: Factory, cache_dir: Path
) -> None:
    cache = await _filled(open_cache)
    shutil.rmtree(cache_dir)
    with pytest.raises(VectorCacheCorruptError):
        await cache.count()
    # The caller forgot close(): resetting must still give a working cache...
    await _assert_recovers(open_cache, cache_dir)
    # ...whose Chroma the late close() of the broken one does not shut down.
    await cache.close()
    survivor = open_cache()
    await survivor.open()
    assert await survivor.ids() == {"a"}


async def test_directory_replaced_while_open(open_cache: Factory, cache_dir: Path) -> None:
    cache = await _filled(open_cache, count=20)
    other = open_cache(model="other")
    await other.open()
    await other.close()
    await ChromaVectorCache.reset_directory(cache_dir)
    replacement = open_cache(model="other")
    await replacement.open()  # a new, empty directory at the same path
    await replacement.upsert(["x"], [[1.0] * DIM])
    await _assert_every_call_refused(cache)
    assert await replacement.count() == 1


@pytest.mark.parametrize("live", [False, True], ids=["closed", "open"])
async def test_database_overwritten_with_garbage(
    open_cache: Factory, cache_dir: Path, live: bool
) -> None:
    cache = await _filled(open_cache)
    database = cache_dir / SQLITE_FILE
    if not live:
        await cache.close()
    database.write_bytes(np.random.default_rng(0).bytes(database.stat().st_size))
    if live:
        await _assert_every_call_refused(cache)
        await cache.close()
    else:
        for _ in range(2):  # the failed Chroma System must not be reused (AttributeError)
            with pytest.raises(VectorCacheCorruptError, match="is damaged"):
                await open_cache().open()
    await _assert_recovers(open_cache, cache_dir)


@pytest.mark.parametrize("live", [False, True], ids=["closed", "open"])
@pytest.mark.parametrize("keep", [0.5, 0.0], ids=["half", "empty"])
async def test_database_truncated(
    open_cache: Factory, cache_dir: Path, live: bool, keep: float
) -> None:
    cache = await _filled(open_cache)
    database = cache_dir / SQLITE_FILE
    if not live:
        await cache.close()
    os.truncate(database, int(database.stat().st_size * keep))
    if live:
        await _assert_every_call_refused(cache)
        await cache.close()
    else:
        # Truncated to nothing, SQLite would see a new empty database: Chroma
        # would start empty. The cache calls that damage, not an empty cache.
        with pytest.raises(VectorCacheCorruptError, match="is damaged"):
            await open_cache().open()
    await _assert_recovers(open_cache, cache_dir)


async def test_missing_hnsw_index_is_damage(open_cache: Factory, cache_dir: Path) -> None:
    cache = await _filled(open_cache)
    await cache.close()
    (segment,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    shutil.rmtree(segment)
    # Chroma 1.5 would open it and answer from the ~500 vectors left in its log.
    with pytest.raises(VectorCacheCorruptError, match="HNSW"):
        await open_cache().open()
    await _assert_recovers(open_cache, cache_dir)


async def test_garbage_hnsw_index_is_damage(open_cache: Factory, cache_dir: Path) -> None:
    cache = await _filled(open_cache)
    await cache.close()
    (segment,) = [p for p in cache_dir.iterdir() if p.is_dir()]
    rng = np.random.default_rng(1)
    for file in segment.glob("*.bin"):
        file.write_bytes(rng.bytes(file.stat().st_size))
    reopened = open_cache()
    await reopened.open()  # Chroma loads the index lazily...
    with pytest.raises(VectorCacheCorruptError, match="is damaged"):
        await reopened.query([1.0] * DIM, 3)  # ...and fails on first use
    await _assert_every_call_refused(reopened)  # from then on, every call
    await reopened.close()
    await _assert_recovers(open_cache, cache_dir)


async def test_a_missing_directory_opens_empty(open_cache: Factory, cache_dir: Path) -> None:
    cache = await _filled(open_cache, count=10)
    await cache.close()
    shutil.rmtree(cache_dir)
    fresh = open_cache()
    await fresh.open()
    assert fresh.created  # the caller learns it must rebuild
    assert await fresh.count() == 0


async def test_reset_directory_refuses_what_chroma_did_not_make(
    open_cache: Factory, tmp_path: Path
) -> None:
    await ChromaVectorCache.reset_directory(tmp_path / "missing")  # nothing to do
    cache = await _filled(open_cache, count=10)
    await cache.close()
    precious = tmp_path / "vectors" / "notes.txt"
    precious.write_text("not Chroma's")
    with pytest.raises(VectorCacheError, match=r"notes\.txt"):
        await ChromaVectorCache.reset_directory(tmp_path / "vectors")
    assert precious.read_text() == "not Chroma's"
    with pytest.raises(VectorCacheError, match="not a vector cache directory"):
        await ChromaVectorCache.reset_directory(precious)


async def test_opening_a_file_as_the_cache_fails_clearly(
    open_cache: Factory, tmp_path: Path
) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    with pytest.raises(VectorCacheError, match="not a directory"):
        await open_cache(path).open()


# --- no network, no model download --------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record (and refuse) every attempt to reach a non-loopback address."""
    attempts: list[str] = []
    real_connect = socket.socket.connect
    real_getaddrinfo = socket.getaddrinfo

    def is_local(host: object) -> bool:
        return str(host) in {"localhost", "127.0.0.1", "::1", ""} or str(host).startswith("/")

    def connect(self: socket.socket, address: Any) -> None:
        host = address[0] if isinstance(address, tuple) else address
        if not is_local(host):
            attempts.append(f"connect {address!r}")
            raise OSError("network access is not allowed in this test")
        real_connect(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if not is_local(host):
            attempts.append(f"getaddrinfo {host!r}")
            raise OSError("network access is not allowed in this test")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return attempts


async def test_no_network_and_no_embedding_model(
    open_cache: Factory, no_network: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from chromadb.utils.embedding_functions import onnx_mini_lm_l6_v2

    model_used: list[str] = []

    def refuse(self: object, *args: object, **kwargs: object) -> Any:
        model_used.append(type(self).__name__)
        raise AssertionError("Chroma tried to use its default embedding model")

    onnx = onnx_mini_lm_l6_v2.ONNXMiniLM_L6_V2
    monkeypatch.setattr(onnx, "__call__", refuse)
    monkeypatch.setattr(onnx, "_download_model_if_not_exists", refuse)

    cache = open_cache()
    await cache.open()
    await cache.upsert(_ids(20), _vectors(20).tolist(), [{"n": i} for i in range(20)])
    assert len(await cache.query([1.0] * DIM, 5, where={"n": {"$gt": 2}})) == 5
    await cache.clear()
    await cache.close()
    assert no_network == []
    assert model_used == []
    assert cache._client is None


async def test_chroma_telemetry_is_off(cache: ChromaVectorCache) -> None:
    assert cache._client is not None
    assert cache._client.get_settings().anonymized_telemetry is False


async def test_asking_for_everything_finds_an_outlier_among_near_duplicates(
    cache: ChromaVectorCache,
) -> None:
    """HNSW can leave a vector far from many near-duplicates with no incoming link;
    a query for at least as many neighbours as stored compares with every vector."""
    rng = np.random.default_rng(3)
    base = rng.standard_normal(DIM)
    crowd = base + 1e-4 * rng.standard_normal((150, DIM))
    outlier = -base + rng.standard_normal(DIM)
    ids = [*_ids(150, "crowd"), "outlier"]
    await cache.upsert(
        ids,
        [*crowd.tolist(), outlier.tolist()],
        [{"kind": "crowd"}] * 150 + [{"kind": "odd"}],
    )
    hits = await cache.query(base.tolist(), 200)
    assert len(hits) == 151 and hits[-1].id == "outlier"
    expected = _cosine_top(np.vstack([crowd, outlier]), base, 151)
    assert [h.similarity for h in hits] == pytest.approx([s for _, s in expected], abs=1e-5)
    filtered = await cache.query(base.tolist(), 200, {"kind": "odd"})
    assert [h.id for h in filtered] == ["outlier"]
