"""Benchmarks of the core, each figure next to a baseline measured in the same run.

A machine that is shared or noisy makes absolute numbers drift from one run to
the next; a baseline measured in the same run, interleaved with the figure,
drifts with it. So every figure comes with its baseline and their ratio
(``value / baseline``: for latencies above 1 means slower than the baseline,
for throughputs below 1 means slower than the baseline).

* **learn** — latency of :meth:`AgentMemory.learn` (no embedding) against a raw
  aiosqlite single-row ``INSERT`` + ``COMMIT`` of a ~300 B blob into a fresh WAL
  database with the same ``synchronous`` setting, interleaved call by call.
* **get** — latency of :meth:`AgentMemory.get`, warm (document cache hit) and
  cold (a freshly reopened replica: first read of each id) against a raw
  aiosqlite ``SELECT`` by primary key.
* **fold** — folding already-verified ops into documents in memory against a
  plain dict-update loop over the same patches (the floor of touching each op
  in Python).
* **ingest** — :meth:`AgentMemory.merge_ops` of fresh remote ops from several
  writers in batches (decoded, CIDs and signatures verified, stored in SQLite)
  against a raw aiosqlite ``executemany`` insert of the same bytes in the same
  batches.
"""

from __future__ import annotations

import asyncio
import gc
import math
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, Literal, Protocol

import aiosqlite
import msgspec
from pydantic import BaseModel, Field

from chrysalis_memory.config import AgentMemoryConfig
from chrysalis_memory.crdt.hlc import HybridClock
from chrysalis_memory.memory import AgentMemory
from chrysalis_memory.model.ops import (
    Creation,
    MemoryPatch,
    Op,
    OpAuthor,
    Signer,
    decode_op,
)
from chrysalis_memory.model.state import fold
from chrysalis_memory.verifier import SignatureVerifier

Durability = Literal["normal", "full"]

# --- targets (issue 2: benchmarks, not timed tests) -----------------------------------

LEARN_P50_MS = 1.0
LEARN_P99_MS = 5.0
LEARN_MAX_RATIO = 3.0
GET_P50_MS = 0.2
FOLD_OPS_S = 100_000.0
INGEST_OPS_S = 10_000.0

RAW_BLOB_BYTES = 300
_BOTH: tuple[Durability, ...] = ("normal", "full")
_CACHED_IDS = 2048


# --- results --------------------------------------------------------------------------


class Check(BaseModel):
    """One target and whether this run met it."""

    stat: str
    """Which statistic of the figure it applies to: p50, p99, value, ratio."""
    target: str
    measured: float
    limit: float
    met: bool


class Figure(BaseModel):
    """One measured figure with its same-run baseline.

    ``value`` is the headline statistic (p50 for latencies, ops/s for
    throughputs) and ``ratio`` is ``value / baseline``.
    """

    name: str
    short: str
    """A few words for table rows, e.g. ``learn (normal)``."""
    label: str
    unit: Literal["ms", "ops/s", "score", "bytes"]
    value: float
    baseline: float
    ratio: float
    baseline_label: str
    target: str
    met: bool | None
    """True/False when a target applies; None when the figure is informational."""
    checks: list[Check] = Field(default_factory=list)
    n: int
    p50: float | None = None
    p99: float | None = None
    baseline_p50: float | None = None
    baseline_p99: float | None = None
    ratio_p99: float | None = None
    details: dict[str, Any] = Field(default_factory=dict)


class Settings(BaseModel):
    """What to run and how much of it."""

    n: int = Field(default=2000, ge=20)
    """Samples per latency figure; fold uses 25 n ops and ingest 10 n ops."""
    durabilities: list[Durability] = Field(default_factory=lambda: list(_BOTH))
    batch: int = Field(default=500, ge=1)
    writers: int = Field(default=10, ge=1)
    fold_repeats: int = Field(default=5, ge=1)
    warmup: int = Field(default=100, ge=0)
    seed: int = 20261120
    workdir: Path | None = None
    """Where the temporary databases go (default: the system temp dir)."""
    core: bool = True
    """Run the core figures (learn, get, fold, ingest)."""
    recall: bool = True
    """Run the recall figures (latency by store size, learn with embedding, quality)."""
    recall_sizes: list[int] = Field(default_factory=lambda: [10_000, 100_000])
    """Store sizes the recall latency is measured at (memories)."""
    hub: bool = True
    """Run the hub figures (propagation, ingest with several agents, bytes per op)."""
    hub_agents: list[int] = Field(default_factory=lambda: [1, 10, 50])
    """Numbers of agents pushing to the hub at once, one ingest figure each."""

    @classmethod
    def quick(cls, **overrides: Any) -> Settings:
        values: dict[str, Any] = {"n": 200, "warmup": 20, "recall_sizes": [1000]}
        values.update(overrides)
        return cls(**values)

    @property
    def fold_ops(self) -> int:
        return 25 * self.n

    @property
    def ingest_ops(self) -> int:
        return 10 * self.n


class Report(BaseModel):
    """Everything ``chrysalis bench --json`` prints."""

    date: str
    machine: dict[str, Any]
    settings: dict[str, Any]
    figures: dict[str, Figure]
    all_met: bool
    seconds: float

    def to_json_data(self) -> dict[str, Any]:
        """One flat object: machine, settings, then each figure by name."""
        data: dict[str, Any] = {
            "date": self.date,
            "machine": self.machine,
            "settings": self.settings,
        }
        for name, figure in self.figures.items():
            data[name] = figure.model_dump(mode="json")
        data["all_met"] = self.all_met
        data["seconds"] = self.seconds
        return data


# --- progress -------------------------------------------------------------------------


class Reporter(Protocol):
    """Receives progress; the CLI draws it as a progress bar."""

    def phase(self, description: str, total: int) -> None: ...

    def advance(self, steps: int = 1) -> None: ...


class SilentReporter:
    def phase(self, description: str, total: int) -> None:
        pass

    def advance(self, steps: int = 1) -> None:
        pass


# --- statistics -----------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in (0, 1])."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 4)


def _ratio(value: float, baseline: float) -> float:
    """value / baseline to four significant figures (a fixed number of decimals
    would blur small ratios such as a throughput's 0.04)."""
    return float(f"{value / baseline:.4g}") if baseline > 0 else math.inf


def _latency_summary(samples: Sequence[float]) -> dict[str, float]:
    return {
        "p50_ms": _ms(percentile(samples, 0.5)),
        "p90_ms": _ms(percentile(samples, 0.9)),
        "p99_ms": _ms(percentile(samples, 0.99)),
        "mean_ms": _ms(statistics.fmean(samples)),
        "min_ms": _ms(min(samples)),
        "max_ms": _ms(max(samples)),
    }


def _check(stat: str, measured: float, op: Literal["<=", ">="], limit: float, unit: str) -> Check:
    met = measured <= limit if op == "<=" else measured >= limit
    if stat == "value":
        text = f"{op} {limit:,.0f}{unit}"
    elif stat == "ratio":
        text = f"{op} {limit:g}{unit} baseline"
    else:
        text = f"{stat} {op} {limit:g}{unit}"
    return Check(stat=stat, target=text, measured=measured, limit=limit, met=met)


def _latency_figure(
    name: str,
    short: str,
    label: str,
    samples: Sequence[float],
    base: Sequence[float],
    baseline_label: str,
    checks: Callable[[float, float, float], list[Check]],
    target: str,
    details: dict[str, Any],
) -> Figure:
    p50, p99 = _ms(percentile(samples, 0.5)), _ms(percentile(samples, 0.99))
    b50, b99 = _ms(percentile(base, 0.5)), _ms(percentile(base, 0.99))
    ratio = _ratio(p50, b50)
    found = checks(p50, p99, ratio)
    return Figure(
        name=name,
        short=short,
        label=label,
        unit="ms",
        value=p50,
        baseline=b50,
        ratio=ratio,
        baseline_label=baseline_label,
        target=target,
        met=all(c.met for c in found) if found else None,
        checks=found,
        n=len(samples),
        p50=p50,
        p99=p99,
        baseline_p50=b50,
        baseline_p99=b99,
        ratio_p99=_ratio(p99, b99),
        details={
            **details,
            "value": _latency_summary(samples),
            "baseline": _latency_summary(base),
        },
    )


# --- machine --------------------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith(("model name", "Hardware", "Processor")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _filesystem_of(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (Linux), e.g. ext4 or tmpfs."""
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            entries = [line.split() for line in mounts]
    except OSError:
        return None
    target = str(path.resolve())
    best: tuple[int, str] | None = None
    for entry in entries:
        if len(entry) < 3:
            continue
        point = entry[1]
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > best[0]):
            best = (len(point), entry[2])
    return best[1] if best else None


def _version_of(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def machine_info(workdir: Path | None = None) -> dict[str, Any]:
    """Where the figures were measured."""
    affinity = getattr(os, "sched_getaffinity", None)
    where = workdir or Path(tempfile.gettempdir())
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(affinity(0)) if affinity else os.cpu_count(),
        "sqlite": sqlite3.sqlite_version,
        "aiosqlite": _version_of("aiosqlite"),
        "cryptography": _version_of("cryptography"),
        "pynacl": _version_of("pynacl"),
        "msgspec": _version_of("msgspec"),
        "chromadb": _version_of("chromadb"),
        "chrysalis_memory": _version_of("chrysalis-memory"),
        "workdir": str(where),
        "workdir_filesystem": _filesystem_of(where),
        "loadavg_start": None if load is None else [round(x, 2) for x in load],
    }


# --- raw aiosqlite baselines ----------------------------------------------------------


async def _raw_db(path: Path, durability: Durability) -> aiosqlite.Connection:
    """A fresh WAL database set up like :class:`OpStore`'s."""
    db = await aiosqlite.connect(str(path))
    await db.execute("PRAGMA journal_mode = WAL")
    await db.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
    # An ordinary rowid table with a unique text key, like the op log's.
    await db.execute("CREATE TABLE IF NOT EXISTS rows (id TEXT PRIMARY KEY, body BLOB NOT NULL)")
    await db.commit()
    return db


@contextmanager
def _collected() -> Iterator[None]:
    """Start a timed section from a clean heap (GC stays enabled inside)."""
    gc.collect()
    yield


async def _timed_pairs(
    count: int,
    first: Callable[[int], Awaitable[Any]],
    second: Callable[[int], Awaitable[Any]],
    reporter: Reporter,
    warmup: int = 0,
) -> tuple[list[float], list[float]]:
    """Time ``first(i)`` and ``second(i)`` for each i, alternating which runs first."""
    clock = time.perf_counter

    async def timed(call: Callable[[int], Awaitable[Any]], i: int) -> float:
        start = clock()
        await call(i)
        return clock() - start

    a: list[float] = []
    b: list[float] = []
    with _collected():
        for i in range(count):
            # Alternate which of the pair goes first, so neither always runs warm.
            if i % 2 == 0:
                da = await timed(first, i)
                db = await timed(second, i)
            else:
                db = await timed(second, i)
                da = await timed(first, i)
            if i >= warmup:
                a.append(da)
                b.append(db)
            reporter.advance()
    return a, b


# --- learn ----------------------------------------------------------------------------

_VOCABULARY = (
    "user prefers concise answers about the deployment pipeline and asks for citations when "
    "the topic is medical or legal data retention policy schema migration latency budget "
    "customer region Berlin Tokyo invoice refund"
)
_WORDS = tuple(_VOCABULARY.split())


def _sentence(rng: random.Random, words: int = 24) -> str:
    return " ".join(rng.choice(_WORDS) for _ in range(words)).capitalize() + "."


def _config(workdir: Path, agent_id: str, durability: Durability) -> AgentMemoryConfig:
    return AgentMemoryConfig.build(
        agent_id=agent_id,
        data_dir=workdir,
        durability=durability,
        sync_enabled=False,
        hub_url=None,
    )


async def bench_learn(
    workdir: Path,
    durability: Durability,
    settings: Settings,
    reporter: Reporter,
    *,
    keep_open: bool = False,
) -> tuple[Figure, AgentMemory | None, list[str], aiosqlite.Connection | None, list[str]]:
    """Learn latency vs a raw single-row insert, interleaved call by call.

    With ``keep_open`` the memory and the raw database stay open for the get
    benchmark; otherwise both are closed. The ids written (the first
    ``settings.warmup`` of them during warm-up) are returned either way.
    """
    rng = random.Random(settings.seed)
    n, warmup = settings.n, settings.warmup
    texts = [_sentence(rng) for _ in range(n + warmup)]
    blobs = [rng.randbytes(RAW_BLOB_BYTES) for _ in range(n + warmup)]
    # Random UUIDs, like learn's ids: the same B-tree insertion pattern.
    raw_ids = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(n + warmup)]
    mem = await AgentMemory(_config(workdir, f"learner-{durability}", durability)).open()
    raw = await _raw_db(workdir / f"raw-learn-{durability}.db", durability)
    ids: list[str] = []
    insert = "INSERT INTO rows (id, body) VALUES (?, ?)"

    async def learn(i: int) -> None:
        ids.append(await mem.learn(texts[i], importance=0.9))

    async def insert_raw(i: int) -> None:
        await raw.execute(insert, (raw_ids[i], blobs[i]))
        await raw.commit()

    reporter.phase(f"learn ({durability})", n + warmup)
    try:
        samples, base = await _timed_pairs(n + warmup, learn, insert_raw, reporter, warmup)
        op_bytes = len((await mem.history(ids[-1]))[0].encoded)
    except BaseException:
        await mem.close()
        await raw.close()
        raise
    absolute = durability == "normal"

    def checks(p50: float, p99: float, ratio: float) -> list[Check]:
        found = []
        if absolute:
            found += [
                _check("p50", p50, "<=", LEARN_P50_MS, " ms"),
                _check("p99", p99, "<=", LEARN_P99_MS, " ms"),
            ]
        found.append(_check("ratio", ratio, "<=", LEARN_MAX_RATIO, "x"))
        return found

    target = (
        f"p50 <= {LEARN_P50_MS:g} ms, p99 <= {LEARN_P99_MS:g} ms, "
        f"p50 <= {LEARN_MAX_RATIO:g}x baseline"
        if absolute
        else f"p50 <= {LEARN_MAX_RATIO:g}x baseline (absolute targets are for durability normal)"
    )
    figure = _latency_figure(
        "learn" if durability == settings.durabilities[0] else f"learn_{durability}",
        f"learn ({durability})",
        f"learn latency (durability={durability})",
        samples,
        base,
        f"raw aiosqlite INSERT + COMMIT of a {RAW_BLOB_BYTES} B row, WAL, "
        f"synchronous={durability.upper()}",
        checks,
        target,
        {
            "durability": durability,
            "warmup": warmup,
            "interleaved": True,
            "op_bytes": op_bytes,
            "raw_row_bytes": RAW_BLOB_BYTES,
            "importance": 0.9,
            "embedding": False,
        },
    )
    if keep_open:
        return figure, mem, ids, raw, raw_ids
    await mem.close()
    await raw.close()
    return figure, None, ids, None, raw_ids


# --- get ------------------------------------------------------------------------------


async def bench_get(
    workdir: Path,
    mem: AgentMemory,
    ids: list[str],
    raw: aiosqlite.Connection,
    raw_ids: list[str],
    settings: Settings,
    reporter: Reporter,
) -> tuple[Figure, Figure]:
    """Warm and cold get latency vs a raw SELECT by primary key.

    Warm: the memory's document cache holds the document. Cold: the replica is
    closed and reopened (empty cache) and each id is read once. The raw
    database is reopened too, so its page cache is cold as well (the OS file
    cache is warm in both cases).
    """
    rng = random.Random(settings.seed + 1)
    n, warmup = settings.n, settings.warmup
    warm_up_ids, ids = ids[:warmup], ids[warmup:]
    raw_ids = raw_ids[warmup:]
    cached = ids[-_CACHED_IDS:]  # well within the store's document cache (4096)
    pick = [rng.randrange(len(cached)) for _ in range(n + warmup)]
    pick_raw = [rng.randrange(len(raw_ids)) for _ in range(n + warmup)]
    select = "SELECT body FROM rows WHERE id = ?"
    missing = 0

    async def get_warm(i: int) -> None:
        nonlocal missing
        if await mem.get(cached[pick[i]]) is None:
            missing += 1

    async def select_warm(i: int) -> None:
        await raw.execute_fetchall(select, (raw_ids[pick_raw[i]],))

    reporter.phase("get (warm)", n + warmup)
    warm, warm_base = await _timed_pairs(n + warmup, get_warm, select_warm, reporter, warmup)
    durability: Durability = mem.config.durability
    config = mem.config
    await mem.close()
    await raw.close()

    # Cold: fresh replica and fresh raw connection; first read of each id.
    mem2 = await AgentMemory(config).open()
    raw2 = await aiosqlite.connect(str(workdir / f"raw-learn-{durability}.db"))
    cold_ids = ids[:]
    rng.shuffle(cold_ids)
    cold_raw = raw_ids[:]
    rng.shuffle(cold_raw)
    count = min(n, len(cold_ids), len(cold_raw))
    try:
        # Warm the code paths (not the cache) on ids that are not measured.
        for doc_id in warm_up_ids:
            await mem2.get(doc_id)

        async def get_cold(i: int) -> None:
            nonlocal missing
            if await mem2.get(cold_ids[i]) is None:
                missing += 1

        async def select_cold(i: int) -> None:
            await raw2.execute_fetchall(select, (cold_raw[i],))

        reporter.phase("get (cold)", count)
        cold, cold_base = await _timed_pairs(count, get_cold, select_cold, reporter)
    finally:
        await mem2.close()
        await raw2.close()
    if missing:
        raise RuntimeError(f"benchmark bug: {missing} learned memories were not found by get")

    def checks(p50: float, p99: float, ratio: float) -> list[Check]:
        return [_check("p50", p50, "<=", GET_P50_MS, " ms")]

    baseline_label = "raw aiosqlite execute_fetchall SELECT by primary key"
    warm_figure = _latency_figure(
        "get",
        "get (warm)",
        "get latency, warm (document cache hit)",
        warm,
        warm_base,
        baseline_label,
        checks,
        f"p50 <= {GET_P50_MS:g} ms",
        {"cache": "hit", "documents": len(ids)},
    )
    cold_figure = _latency_figure(
        "get_cold",
        "get (cold)",
        "get latency, cold (reopened replica, first read of each id)",
        cold,
        cold_base,
        baseline_label + " (fresh connection, each id once)",
        checks,
        f"p50 <= {GET_P50_MS:g} ms",
        {"cache": "miss", "documents": len(ids)},
    )
    return warm_figure, cold_figure


# --- realistic op streams -------------------------------------------------------------


def build_ops(
    count: int, writers: int, seed: int, reporter: Reporter, *, prefix: str = "bench-writer"
) -> list[Op]:
    """A realistic stream of signed ops over ``count // 10`` memories.

    Every tenth op creates a memory; the others update content, add or remove
    tags, reinforce, or count accesses on a memory created earlier (recent ones
    more often), by a random one of ``writers`` agents, each op naming the
    memory's latest op as its parent. Any prefix is itself a realistic mix.
    """
    rng = random.Random(seed)
    # One clock for every writer: each op names the memory's latest op as its parent,
    # so its writer has seen that op, and an honest clock stamps it later (replicas
    # refuse an op stamped before a parent it names).
    clock = HybridClock()
    authors = [OpAuthor(f"{prefix}-{w:02d}", Signer.generate(), clock) for w in range(writers)]
    docs: list[str] = []
    head: dict[str, str] = {}
    tags: dict[str, list[tuple[str, tuple[str, int]]]] = {}
    access: dict[tuple[str, str], int] = {}
    ops: list[Op] = []
    reporter.phase("building signed ops", count)
    for i in range(count):
        author = rng.choice(authors)
        if i % 10 == 0 or not docs:
            doc = f"{seed:x}-{len(docs):08d}"
            docs.append(doc)
            tag = rng.choice(_WORDS)
            patch = MemoryPatch(
                create=Creation(),
                content=_sentence(rng),
                memory_type=rng.choice(("episodic", "semantic", "procedural")),
                importance=round(rng.uniform(0.3, 0.95), 3),
                confidence=round(rng.uniform(0.5, 0.95), 3),
                tags_add=(tag,),
            )
        else:
            # Recent memories are touched more often than old ones.
            doc = docs[max(0, len(docs) - 1 - int(rng.expovariate(1 / 20)))]
            kind = rng.random()
            tag = rng.choice(_WORDS)
            if kind < 0.30:
                patch = MemoryPatch(content=_sentence(rng))
            elif kind < 0.55:
                patch = MemoryPatch(tags_add=(tag,))
            elif kind < 0.85:
                patch = MemoryPatch(
                    importance=round(rng.uniform(0.5, 1.0), 3),
                    confidence=round(rng.uniform(0.5, 1.0), 3),
                    evidence=(f"observation {i}",),
                )
            elif kind < 0.95 or not tags.get(doc):
                key = (doc, author.writer)
                access[key] = access.get(key, 0) + 1
                patch = MemoryPatch(access=access[key])
            else:
                removed_tag, dot = rng.choice(tags[doc])
                patch = MemoryPatch(tags_remove={removed_tag: (dot,)})
        parents = (head[doc],) if doc in head else ()
        op = author.make(doc, patch, parents)
        if patch.tags_add:
            tags.setdefault(doc, []).extend((t, (op.writer, op.seq)) for t in patch.tags_add)
        head[doc] = op.cid
        ops.append(op)
        reporter.advance()
    return ops


# --- fold -----------------------------------------------------------------------------


def _dict_fold(ops: Sequence[Op]) -> dict[str, dict[str, Any]]:
    """The floor: merge each op's patch fields into a plain per-document dict."""
    docs: dict[str, dict[str, Any]] = {}
    asdict = msgspec.structs.asdict
    for op in ops:
        doc = docs.get(op.doc)
        if doc is None:
            doc = docs[op.doc] = {}
        doc.update(asdict(op.patch))
    return docs


def bench_fold(ops: Sequence[Op], settings: Settings, reporter: Reporter) -> Figure:
    """In-memory fold throughput vs a dict-update loop, repetitions interleaved."""
    for op in ops:
        _ = op.cid  # cached: the fold measures folding, not hashing
    warm = ops[: min(len(ops), 2000)]
    fold(warm)
    _dict_fold(warm)
    clock = time.perf_counter
    fold_times: list[float] = []
    base_times: list[float] = []
    documents = 0
    reporter.phase("fold (in memory)", settings.fold_repeats)
    for r in range(settings.fold_repeats):
        pair: list[float] = [0.0, 0.0]
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            with _collected():
                t0 = clock()
                if which == 0:
                    documents = len(fold(ops))
                else:
                    _dict_fold(ops)
                pair[which] = clock() - t0
        fold_times.append(pair[0])
        base_times.append(pair[1])
        reporter.advance()
    # How much of the fold is the cyclic garbage collector (informational).
    gc.collect()
    gc.disable()
    try:
        t0 = clock()
        fold(ops)
        no_gc = clock() - t0
    finally:
        gc.enable()
    value = len(ops) / statistics.median(fold_times)
    baseline = len(ops) / statistics.median(base_times)
    check = _check("value", round(value), ">=", FOLD_OPS_S, " ops/s")
    return Figure(
        name="fold",
        short="fold (in memory)",
        label="fold of verified ops into documents, in memory",
        unit="ops/s",
        value=round(value),
        baseline=round(baseline),
        ratio=_ratio(value, baseline),
        baseline_label="dict-update loop: msgspec.structs.asdict(op.patch) into per-doc dicts",
        target=f">= {FOLD_OPS_S:,.0f} ops/s",
        met=check.met,
        checks=[check],
        n=len(ops),
        details={
            "documents": documents,
            "writers": settings.writers,
            "repeats": settings.fold_repeats,
            "seconds_median": round(statistics.median(fold_times), 4),
            "baseline_seconds_median": round(statistics.median(base_times), 4),
            "ops_s_gc_disabled_once": round(len(ops) / no_gc),
            "mix": "1/10 creates; then ~30% content updates, 25% tag adds, 30% reinforce "
            "(+evidence), 10% access counts, 5% untags",
        },
    )


# --- ingest ---------------------------------------------------------------------------


async def bench_ingest(
    workdir: Path,
    ops: Sequence[Op],
    durability: Durability,
    settings: Settings,
    reporter: Reporter,
) -> Figure:
    """``merge_ops`` of fresh encoded ops in batches vs raw executemany of the same bytes."""
    encoded = [op.encoded for op in ops]
    cids = [op.cid for op in ops]  # the sender's; the receiver recomputes its own
    batch = settings.batch
    batches = [(start, min(start + batch, len(ops))) for start in range(0, len(ops), batch)]
    mem = await AgentMemory(_config(workdir, f"receiver-{durability}", durability)).open()
    raw = await _raw_db(workdir / f"raw-ingest-{durability}.db", durability)
    insert = "INSERT INTO rows (id, body) VALUES (?, ?)"
    clock = time.perf_counter
    reporter.phase(f"ingest ({durability})", len(batches) + 1)
    try:
        # Warm-up: another writer's ops (the thread pool starts, code paths warm up).
        warm_ops = build_ops(
            min(64, settings.batch), 1, settings.seed + 7, SilentReporter(), prefix="warm-up"
        )
        await mem.merge_ops([op.encoded for op in warm_ops])
        await raw.executemany(insert, [(f"warm-{op.cid}", op.encoded) for op in warm_ops])
        await raw.commit()
        reporter.advance()

        merge_s = 0.0
        raw_s = 0.0
        new = 0
        per_batch: list[float] = []
        with _collected():
            for index, (start, end) in enumerate(batches):
                chunk = encoded[start:end]
                rows = list(zip(cids[start:end], chunk, strict=True))
                for which in (0, 1) if index % 2 == 0 else (1, 0):
                    t0 = clock()
                    if which == 0:
                        new += await mem.merge_ops(chunk)
                        took = clock() - t0
                        merge_s += took
                        per_batch.append(took)
                    else:
                        await raw.executemany(insert, rows)
                        await raw.commit()
                        raw_s += clock() - t0
                reporter.advance()
        if new != len(ops):
            raise RuntimeError(f"benchmark bug: {new} of {len(ops)} ops were new to the receiver")
        counts = await mem.store.counts()
    finally:
        await mem.close()
        await raw.close()

    # Where the time goes: the CPU-bound steps alone, on the same ops.
    components = await _ingest_components(encoded)
    total_us = 1e6 * merge_s / len(ops)
    decode_us = 1e6 / components["decode_and_cid"]
    verify_us = 1e6 / components["verify_signatures_pool"]
    value = len(ops) / merge_s
    baseline = len(ops) / raw_s
    check = _check("value", round(value), ">=", INGEST_OPS_S, " ops/s")
    return Figure(
        name="ingest",
        short=f"ingest ({durability})",
        label=f"remote-op ingest via merge_ops, verified, into SQLite (durability={durability})",
        unit="ops/s",
        value=round(value),
        baseline=round(baseline),
        ratio=_ratio(value, baseline),
        baseline_label=f"raw aiosqlite executemany INSERT + COMMIT of the same op bytes, "
        f"same batches, WAL, synchronous={durability.upper()}",
        target=f">= {INGEST_OPS_S:,.0f} ops/s",
        met=check.met,
        checks=[check],
        n=len(ops),
        details={
            "durability": durability,
            "batch": batch,
            "batches": len(batches),
            "writers": settings.writers,
            "documents": counts["memories_live"] + counts["memories_incomplete"],
            "mean_op_bytes": round(statistics.fmean(len(e) for e in encoded)),
            "batch_p50_ms": _ms(percentile(per_batch, 0.5)),
            "batch_p99_ms": _ms(percentile(per_batch, 0.99)),
            "seconds": round(merge_s, 4),
            "baseline_seconds": round(raw_s, 4),
            "components_ops_s": components,
            "per_op_us": {
                "total": round(total_us, 1),
                "decode_and_cid": round(decode_us, 1),
                "verify_signatures": round(verify_us, 1),
                "rest": round(max(0.0, total_us - decode_us - verify_us), 1),
            },
            "per_op_us_note": "decode and verify are timed alone on the same ops; rest is "
            "the remainder: the SQLite transaction (aiosqlite hops, inserts, state loads and "
            "writes), the fold and the duplicate/equivocation checks",
        },
    )


async def _ingest_components(encoded: Sequence[bytes]) -> dict[str, float]:
    """Throughput of decoding (parse + canonical check + CID) and of signature
    verification (the thread pool merge_ops uses), each alone."""
    clock = time.perf_counter
    with _collected():
        t0 = clock()
        decoded = [decode_op(data) for data in encoded]
        for op in decoded:
            _ = op.cid
        decode_s = clock() - t0
    verifier = SignatureVerifier()
    try:
        await verifier.invalid(decoded[:64])  # start the pool
        with _collected():
            t0 = clock()
            await verifier.invalid(decoded)
            verify_s = clock() - t0
    finally:
        verifier.close()
    single = decoded[: min(len(decoded), 2000)]
    verifier1 = SignatureVerifier(workers=1)
    try:
        t0 = clock()
        await verifier1.invalid(single)
        single_s = clock() - t0
    finally:
        verifier1.close()
    return {
        "decode_and_cid": round(len(decoded) / decode_s),
        "verify_signatures_pool": round(len(decoded) / verify_s),
        "verify_signatures_pool_workers": float(verifier.workers),
        "verify_signatures_one_thread": round(len(single) / single_s),
    }


# --- everything -----------------------------------------------------------------------


async def _run_core(
    root: Path,
    primary: Durability,
    settings: Settings,
    reporter: Reporter,
    figures: dict[str, Figure],
) -> None:
    for durability in settings.durabilities:
        workdir = root / durability
        workdir.mkdir()
        is_primary = durability == primary
        figure, mem, ids, raw, raw_ids = await bench_learn(
            workdir, durability, settings, reporter, keep_open=is_primary
        )
        figures[figure.name] = figure
        if is_primary:
            assert mem is not None
            assert raw is not None
            warm, cold = await bench_get(workdir, mem, ids, raw, raw_ids, settings, reporter)
            figures["get"] = warm
            figures["get_cold"] = cold
    count = max(settings.fold_ops, settings.ingest_ops)
    ops = build_ops(count, settings.writers, settings.seed, reporter)
    figures["fold"] = bench_fold(ops[: settings.fold_ops], settings, reporter)
    ingest_dir = root / "ingest"
    ingest_dir.mkdir()
    figures["ingest"] = await bench_ingest(
        ingest_dir, ops[: settings.ingest_ops], primary, settings, reporter
    )


async def run_benchmarks(
    settings: Settings | None = None, reporter: Reporter | None = None
) -> Report:
    """Run every benchmark in a fresh temporary directory and return the report."""
    settings = settings or Settings()
    reporter = reporter or SilentReporter()
    if not settings.durabilities:
        raise ValueError("choose at least one durability")
    started = time.perf_counter()
    date = datetime.now(timezone.utc).isoformat(timespec="seconds")
    base = settings.workdir
    if base is not None:
        base.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="chrysalis-bench-", dir=base))
    machine = machine_info(root)
    figures: dict[str, Figure] = {}
    try:
        primary = settings.durabilities[0]
        if settings.core:
            await _run_core(root, primary, settings, reporter, figures)
        if settings.recall:
            from chrysalis_memory.bench.recall import run_recall_benchmarks

            figures.update(await run_recall_benchmarks(root, settings, reporter))
        if settings.hub:
            from chrysalis_memory.bench.hub import run_hub_benchmarks

            figures.update(await run_hub_benchmarks(root, settings, reporter))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if hasattr(os, "getloadavg"):
        machine["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    ordered = {
        name: figures[name]
        for name in ("learn", *(f"learn_{d}" for d in ("normal", "full")), "get", "get_cold")
        if name in figures
    }
    ordered.update((name, f) for name, f in figures.items() if name not in ordered)
    return Report(
        date=date,
        machine=machine,
        settings={
            **settings.model_dump(mode="json", exclude={"workdir"}),
            "fold_ops": settings.fold_ops,
            "ingest_ops": settings.ingest_ops,
        },
        figures=ordered,
        all_met=all(f.met is not False for f in ordered.values()),
        seconds=round(time.perf_counter() - started, 2),
    )


def run(settings: Settings | None = None, reporter: Reporter | None = None) -> Report:
    """Synchronous wrapper of :func:`run_benchmarks`."""
    return asyncio.run(run_benchmarks(settings, reporter))
