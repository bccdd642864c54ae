"""Benchmarks of recall, each figure next to a baseline measured in the same run.

* **recall_{mode}_{size}** — latency of :meth:`AgentMemory.recall` (``k=5``,
  ``record_access=False``) over ``size`` memories with 768-dim hashing-embedder
  vectors, mode ``hybrid`` and ``vector``, against a raw Chroma
  ``collection.query(query_embeddings=[vec], n_results=5)`` on the *same*
  collection with the *same* query vectors (embedded beforehand, so the
  baseline excludes embedding), interleaved call by call. Recall's figure
  includes embedding the query, an over-fetching vector query (through the
  cache's worker thread), the FTS5 keyword search (hybrid), the fusion and
  reading the states from SQLite. For hybrid, ``details["raw_pair"]`` also
  times, in the same interleaved loop, the raw Chroma query followed by the raw
  FTS5 query recall runs (same MATCH, made beforehand) on a plain sqlite3
  connection: what any hybrid search must at least do. Informational; the
  target stays 1.5x the single raw Chroma query.
* **recall_access_{size}** — the same hybrid recall with access recording on
  (a signed G-Counter op per hit, a write): informational, smallest size only.
* **learn_embed** — ``learn()`` followed by flushing the recall index (the
  memory embedded, its embedding op written, the vector upserted, the keyword
  row written) against a plain ``learn()`` on another replica, interleaved;
  the embedder alone is timed in the same loop.
* **recall_quality** — recall@1, recall@5 and MRR on the labelled set
  (:mod:`chrysalis_memory.bench.recall_set`) through the real
  :meth:`AgentMemory.recall` in each mode; the target is that the fused
  (hybrid) recall@5 beats both single modes.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from chrysalis_memory.bench.core import (
    Check,
    Figure,
    Reporter,
    Settings,
    _check,
    _collected,
    _config,
    _latency_figure,
    _latency_summary,
    _ms,
    _ratio,
    _timed_pairs,
    percentile,
)
from chrysalis_memory.bench.recall_eval import aevaluate
from chrysalis_memory.bench.recall_set import FACTS, QUERIES, RECALL_SET_VERSION
from chrysalis_memory.crdt.hlc import HybridClock
from chrysalis_memory.memory import AgentMemory
from chrysalis_memory.model.ops import Creation, MemoryPatch, Op, OpAuthor, Signer
from chrysalis_memory.recall.embedders import HashingEmbedder
from chrysalis_memory.recall.ranking import query_words
from chrysalis_memory.recall.search import CONSIDERED, OVERFETCH
from chrysalis_memory.recall.vectors import ChromaVectorCache
from chrysalis_memory.store.sqlite import _PAGE_CACHE_KIB

RECALL_P50_MS = 5.0
RECALL_P99_MS = 20.0
RECALL_MAX_RATIO = 1.5
RECALL_K = 5
RECALL_DIMENSIONS = 768
_MERGE_BATCH = 2000

Mode = Literal["hybrid", "vector", "keyword"]

# --- synthetic corpus -----------------------------------------------------------------

_BASE_TEXT = (
    "user prefers concise answers deployment pipeline citations medical legal data retention "
    "policy schema migration latency budget customer region invoice refund password rotation "
    "backup restore incident postmortem database replica cluster kubernetes node memory cache "
    "query index search ranking model embedding vector token budget meeting calendar weekly "
    "review release branch merge conflict test flaky coverage build artifact registry docker "
    "image container network firewall certificate expiry renewal domain email newsletter "
    "invoice contract vendor supplier shipping warehouse inventory order payment card fraud "
    "alert threshold dashboard metric graph report quarterly revenue forecast hiring onboarding "
    "laptop office remote travel expense hotel flight train booking visa passport holiday "
    "vacation sick leave salary bonus equity manager team project roadmap milestone deadline "
    "feature request bug ticket priority severity escalation support chat phone timezone "
    "morning evening weekend language english german japanese spanish french coffee lunch "
    "allergy vegetarian recipe garden bicycle running music podcast book movie"
)
_BASE_WORDS = tuple(_BASE_TEXT.split())
_SYLLABLE_TEXT = (
    "ka ri to mo ne sa lu vi da pe zo fi na ke ru mi so ta be go ha ji ko la ma ni po ro "
    "su te wa yo ze an el in or us ar en il on ur"
)
_SYLLABLES = tuple(_SYLLABLE_TEXT.split())


class Corpus:
    """Seeded, varied sentences over a Zipf-distributed vocabulary, and queries
    built from the words of stored sentences (with one unrelated word)."""

    def __init__(self, seed: int, synthetic_words: int = 6000) -> None:
        self.rng = random.Random(seed)
        words = list(_BASE_WORDS)
        seen = set(words)
        while len(words) < len(_BASE_WORDS) + synthetic_words:
            word = "".join(self.rng.choice(_SYLLABLES) for _ in range(self.rng.randint(2, 4)))
            if word not in seen:
                seen.add(word)
                words.append(word)
        self.rng.shuffle(words)
        self.words = words
        weights = [1.0 / (rank + 1) ** 1.05 for rank in range(len(words))]
        total = 0.0
        self._cum: list[float] = []
        for w in weights:
            total += w
            self._cum.append(total)

    def sentence(self) -> str:
        rng = self.rng
        count = rng.randint(8, 18)
        picked = rng.choices(self.words, cum_weights=self._cum, k=count)
        if rng.random() < 0.3:  # an identifier, as real notes have
            picked.insert(
                rng.randrange(len(picked)),
                f"{rng.choice(('INC', 'JIRA', 'PR'))}-{rng.randint(1, 99999)}",
            )
        return " ".join(picked).capitalize() + "."

    def query(self, stored: str) -> str:
        rng = self.rng
        words = stored.rstrip(".").lower().split()
        picked = rng.sample(words, min(len(words), rng.randint(3, 5)))
        picked.append(rng.choice(self.words))
        rng.shuffle(picked)
        return " ".join(picked)


def build_memory_ops(texts: Sequence[str], seed: int, writers: int = 4) -> list[Op]:
    """One signed creation op per text, by ``writers`` remote agents."""
    rng = random.Random(seed)
    authors = [
        OpAuthor(f"recall-writer-{w:02d}", Signer.generate(), HybridClock()) for w in range(writers)
    ]
    ops: list[Op] = []
    for i, text in enumerate(texts):
        patch = MemoryPatch(
            create=Creation(),
            content=text,
            memory_type=rng.choice(("episodic", "semantic", "procedural")),
            importance=0.9,
            confidence=0.8,
        )
        ops.append(authors[i % writers].make(f"{seed:x}-r{i:08d}", patch, ()))
    return ops


# --- recall latency -------------------------------------------------------------------


def _recall_checks(p50: float, p99: float, ratio: float) -> list[Check]:
    return [
        _check("p50", p50, "<=", RECALL_P50_MS, " ms"),
        _check("p99", p99, "<=", RECALL_P99_MS, " ms"),
        _check("ratio", ratio, "<=", RECALL_MAX_RATIO, "x"),
    ]


async def bench_recall_size(
    workdir: Path, size: int, settings: Settings, reporter: Reporter, *, with_access: bool
) -> list[Figure]:
    """Build ``size`` memories, then time recall against a raw Chroma query."""
    corpus = Corpus(settings.seed + size)
    n, warmup = settings.n, settings.warmup
    texts = [corpus.sentence() for _ in range(size)]
    queries = [corpus.query(corpus.rng.choice(texts)) for _ in range(n + warmup)]
    embedder = HashingEmbedder(RECALL_DIMENSIONS)
    mem = await AgentMemory(_config(workdir, f"recall-{size}", "normal"), embedder=embedder).open()
    figures: list[Figure] = []
    try:
        clock = time.perf_counter
        t0 = clock()
        ops = build_memory_ops(texts, settings.seed + size)
        sign_s = clock() - t0
        reporter.phase(f"recall {size:,}: merge", len(ops))
        t0 = clock()
        for start in range(0, len(ops), _MERGE_BATCH):
            chunk = ops[start : start + _MERGE_BATCH]
            await mem.merge_ops(chunk)
            reporter.advance(len(chunk))
        merge_s = clock() - t0
        del ops
        index = await mem._recall_index()
        reporter.phase(f"recall {size:,}: index", size)
        done = 0

        def progress(indexed: int, total: int) -> None:
            nonlocal done
            reporter.advance(max(0, indexed - done))
            done = indexed

        t0 = clock()
        await mem.reindex(progress)
        index_s = clock() - t0
        vectors = index.vectors
        assert isinstance(vectors, ChromaVectorCache)
        collection: Any = vectors._collection  # the raw chromadb collection
        stored = int(collection.count())
        if stored != size:
            raise RuntimeError(f"benchmark bug: {stored} vectors for {size} memories")
        query_vectors = embedder.embed_sync(queries)
        build = {
            "size": size,
            "dimensions": RECALL_DIMENSIONS,
            "embedder": embedder.model,
            "k": RECALL_K,
            "build_seconds": round(sign_s + merge_s + index_s, 2),
            "sign_seconds": round(sign_s, 2),
            "merge_seconds": round(merge_s, 2),
            "index_seconds": round(index_s, 2),
            "index_ms_per_memory": round(1000 * index_s / size, 3),
            "queries": len(queries),
            "example_query": queries[0],
        }

        async def raw(i: int) -> None:
            collection.query(query_embeddings=[query_vectors[i]], n_results=RECALL_K)

        # A fairer baseline for hybrid recall, which must also search keywords: the raw
        # Chroma query, then the raw FTS5 query recall runs (the same MATCH, made beforehand
        # like the query vectors), on a plain read-only sqlite3 connection, in the caller.
        matches = [await mem.store.text_match(query_words(q)) for q in queries]
        assert mem.store.path is not None
        fts = sqlite3.connect(f"file:{mem.store.path}?mode=ro", uri=True)
        fts.execute(f"PRAGMA cache_size = -{_PAGE_CACHE_KIB}")

        async def raw_pair(i: int) -> None:
            collection.query(query_embeddings=[query_vectors[i]], n_results=RECALL_K)
            if matches[i] is not None:
                fts.execute(
                    "SELECT doc_id, bm25(memory_fts) AS score FROM memory_fts "
                    "WHERE memory_fts MATCH ? ORDER BY score LIMIT ?",
                    (matches[i], RECALL_K),
                ).fetchall()

        modes: list[tuple[str, Mode, bool]] = [
            ("hybrid", "hybrid", False),
            ("vector", "vector", False),
        ]
        if with_access:
            modes.append(("access", "hybrid", True))
        for label, mode, access in modes:

            async def recall(i: int, mode: Mode = mode, access: bool = access) -> None:
                await mem.recall(queries[i], RECALL_K, mode=mode, record_access=access)

            reporter.phase(f"recall {size:,}: {label}", n + warmup)
            extra: dict[str, Any] = {}
            if label == "hybrid":
                samples, base, pair = await _timed_triples(
                    n + warmup, recall, raw, raw_pair, reporter, warmup
                )
                p50, pair50 = percentile(samples, 0.5), percentile(pair, 0.5)
                extra["raw_pair"] = {
                    "what": "raw Chroma query (k=5) then the raw FTS5 query recall runs (LIMIT 5), "
                    "on the calling thread, interleaved with recall and the raw Chroma query",
                    "p50_ms": _ms(pair50),
                    "p99_ms": _ms(percentile(pair, 0.99)),
                    "ratio_p50": _ratio(_ms(p50), _ms(pair50)),
                }
            else:
                samples, base = await _timed_pairs(n + warmup, recall, raw, reporter, warmup)
            suffix = "with access recording" if access else "record_access=False"
            figures.append(
                _latency_figure(
                    name=f"recall_{label}_{size}",
                    short=f"recall {label} {size // 1000}k"
                    if size >= 1000
                    else f"recall {label} {size}",
                    label=f"AgentMemory.recall(k={RECALL_K}, mode={mode}, {suffix}) over "
                    f"{size:,} memories, {RECALL_DIMENSIONS}-dim hashing vectors, "
                    "query embedding included",
                    samples=samples,
                    base=base,
                    baseline_label=f"raw chromadb collection.query(n_results={RECALL_K}) on the "
                    "same collection with the same, pre-embedded query vectors",
                    checks=(lambda *_: []) if access else _recall_checks,
                    target="informational (a write per hit)"
                    if access
                    else f"p50 <= {RECALL_P50_MS:g} ms, p99 <= {RECALL_P99_MS:g} ms, "
                    f"<= {RECALL_MAX_RATIO:g}x raw Chroma query",
                    details={**build, "mode": mode, "record_access": access, **extra},
                )
            )
        breakdown = await _components(mem, fts, queries[: min(len(queries), 200)])
        for figure in figures:
            figure.details["components_p50_ms"] = breakdown
        fts.close()
    finally:
        await mem.close()
    return figures


async def _timed_triples(
    count: int,
    first: Callable[[int], Awaitable[Any]],
    second: Callable[[int], Awaitable[Any]],
    third: Callable[[int], Awaitable[Any]],
    reporter: Reporter,
    warmup: int = 0,
) -> tuple[list[float], list[float], list[float]]:
    """Time three calls for each i, rotating which goes first (as ``_timed_pairs``)."""
    clock = time.perf_counter
    calls = (first, second, third)
    timings: tuple[list[float], list[float], list[float]] = ([], [], [])
    with _collected():
        for i in range(count):
            taken = [0.0, 0.0, 0.0]
            for step in range(3):
                which = (i + step) % 3
                start = clock()
                await calls[which](i)
                taken[which] = clock() - start
            if i >= warmup:
                for samples, value in zip(timings, taken, strict=True):
                    samples.append(value)
            reporter.advance()
    return timings


async def _components(
    mem: AgentMemory, fts: sqlite3.Connection, queries: Sequence[str]
) -> dict[str, float]:
    """Where hybrid recall's time goes: each step alone, p50 over the same queries."""
    index = await mem._recall_index()
    vectors = index.vectors
    assert isinstance(vectors, ChromaVectorCache)
    collection: Any = vectors._collection
    fetch = max(OVERFETCH * RECALL_K, 32)
    clock = time.perf_counter
    steps: dict[str, list[float]] = {
        name: []
        for name in (
            "embed_query",
            "raw_chroma_query_k5",
            "raw_chroma_query_fetch",
            "cache_query_fetch",
            "keyword_search",
            "raw_fts5_query_k5",
            "rank_candidates",
        )
    }
    with _collected():
        for text in queries:
            t0 = clock()
            vec = (await index.embedder.embed([text]))[0]
            steps["embed_query"].append(clock() - t0)
            t0 = clock()
            collection.query(query_embeddings=[vec], n_results=RECALL_K)
            steps["raw_chroma_query_k5"].append(clock() - t0)
            t0 = clock()
            collection.query(query_embeddings=[vec], n_results=fetch)
            steps["raw_chroma_query_fetch"].append(clock() - t0)
            t0 = clock()
            hits = await vectors.query(vec, fetch, None)
            steps["cache_query_fetch"].append(clock() - t0)
            ids = [hit.id for hit in hits]
            t0 = clock()
            found = await mem.store.search_text(query_words(text), fetch)
            ids.extend(hit.doc_id for hit in found if hit.doc_id not in ids)
            steps["keyword_search"].append(clock() - t0)
            match = await mem.store.text_match(query_words(text))
            t0 = clock()
            if match is not None:
                fts.execute(
                    "SELECT doc_id, bm25(memory_fts) AS score FROM memory_fts "
                    "WHERE memory_fts MATCH ? ORDER BY score LIMIT ?",
                    (match, RECALL_K),
                ).fetchall()
            steps["raw_fts5_query_k5"].append(clock() - t0)
            t0 = clock()
            await mem.store.rank_rows(ids[: max(CONSIDERED * RECALL_K, 16)])
            steps["rank_candidates"].append(clock() - t0)
    result = {name: _ms(percentile(values, 0.5)) for name, values in steps.items()}
    result["fetch"] = float(fetch)
    return result


# --- learn with embedding -------------------------------------------------------------


async def bench_learn_embed(workdir: Path, settings: Settings, reporter: Reporter) -> Figure:
    """learn + flush of the recall index, against a plain learn on another replica."""
    corpus = Corpus(settings.seed + 1)
    n, warmup = settings.n, settings.warmup
    texts = [corpus.sentence() for _ in range(n + warmup)]
    embedder = HashingEmbedder(RECALL_DIMENSIONS)
    embedded = await AgentMemory(
        _config(workdir / "embedded", "learn-embed", "normal"), embedder=embedder
    ).open()
    plain = await AgentMemory(_config(workdir / "plain", "learn-plain", "normal")).open()
    embed_samples: list[float] = []
    clock = time.perf_counter
    try:
        index = await embedded._recall_index()
        await index.flush()

        async def learn_embed(i: int) -> None:
            await embedded.learn(texts[i], importance=0.9)
            await (await embedded._recall_index()).flush()

        async def learn_plain(i: int) -> None:
            await plain.learn(texts[i], importance=0.9)

        reporter.phase("learn + embed", n + warmup)
        samples, base = await _timed_pairs(n + warmup, learn_embed, learn_plain, reporter, warmup)
        # The embedder alone, on the same texts (a fresh embedder: nothing cached).
        alone = HashingEmbedder(RECALL_DIMENSIONS)
        with _collected():
            for text in texts[warmup:]:
                t0 = clock()
                await alone.embed([text])
                embed_samples.append(clock() - t0)
        vectors = index.vectors
        assert vectors is not None
        indexed = await vectors.count()
        if indexed != n + warmup:
            raise RuntimeError(f"benchmark bug: {indexed} vectors for {n + warmup} memories")
    finally:
        await embedded.close()
        await plain.close()
    return _latency_figure(
        name="learn_embed",
        short="learn + embed",
        label="AgentMemory.learn() then recall-index flush (embed, embedding op, Chroma "
        f"upsert, FTS5 row), {RECALL_DIMENSIONS}-dim hashing embedder",
        samples=samples,
        base=base,
        baseline_label="plain AgentMemory.learn() on another replica (durability=normal), "
        "interleaved",
        checks=lambda *_: [],
        target="informational",
        details={"embedder_alone": _latency_summary(embed_samples), "embedder": embedder.model},
    )


# --- retrieval quality ----------------------------------------------------------------


async def bench_quality(workdir: Path, reporter: Reporter) -> Figure:
    """recall@1, recall@5 and MRR per mode on the labelled set, through recall()."""
    # The default offline embedder: what a user without Ollama gets.
    mem = await AgentMemory(
        _config(workdir, "quality", "normal"), embedder=HashingEmbedder()
    ).open()
    modes: tuple[Mode, ...] = ("vector", "keyword", "hybrid")
    metrics: dict[str, dict[str, float]] = {}
    try:
        reporter.phase("recall quality", len(FACTS) + len(modes) * len(QUERIES))
        fact_of: dict[str, str] = {}
        for fact in FACTS:
            fact_of[await mem.learn(fact.text, importance=0.9, confidence=0.8)] = fact.id
            reporter.advance()
        for mode in modes:

            async def search(text: str, mode: Mode = mode) -> list[str]:
                hits = await mem.recall(text, RECALL_K, mode=mode, record_access=False)
                reporter.advance()
                return [fact_of[hit.memory.id] for hit in hits]

            scores = await aevaluate(search, QUERIES, ks=(1, RECALL_K))
            metrics[mode] = {key: round(value, 4) for key, value in scores.items()}
    finally:
        await mem.close()
    key = f"recall@{RECALL_K}"
    fused = metrics["hybrid"][key]
    best_single = max(metrics["vector"][key], metrics["keyword"][key])
    check = Check(
        stat="value",
        target=f"hybrid {key} > vector and keyword",
        measured=fused,
        limit=best_single,
        met=fused > best_single,
    )
    return Figure(
        name="recall_quality",
        short=f"quality {key}",
        label=f"hybrid {key} on the labelled set (v{RECALL_SET_VERSION}: {len(FACTS)} facts, "
        f"{len(QUERIES)} queries) through AgentMemory.recall",
        unit="score",
        value=fused,
        baseline=best_single,
        ratio=_ratio(fused, best_single),
        baseline_label=f"the better single mode's {key} (vector or keyword)",
        target=check.target,
        met=check.met,
        checks=[check],
        n=len(QUERIES),
        details={"modes": metrics, "facts": len(FACTS), "queries": len(QUERIES)},
    )


# --- everything -----------------------------------------------------------------------


async def run_recall_benchmarks(
    root: Path, settings: Settings, reporter: Reporter
) -> dict[str, Figure]:
    figures: dict[str, Figure] = {}
    sizes = sorted(settings.recall_sizes)
    for position, size in enumerate(sizes):
        workdir = root / f"recall-{size}"
        workdir.mkdir()
        for figure in await bench_recall_size(
            workdir, size, settings, reporter, with_access=position == 0
        ):
            figures[figure.name] = figure
    learn_dir = root / "learn-embed"
    learn_dir.mkdir()
    figures["learn_embed"] = await bench_learn_embed(learn_dir, settings, reporter)
    quality_dir = root / "quality"
    quality_dir.mkdir()
    figures["recall_quality"] = await bench_quality(quality_dir, reporter)
    return figures
