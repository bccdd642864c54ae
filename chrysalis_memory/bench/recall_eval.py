"""Retrieval quality: recall@k, MRR and reciprocal rank fusion, as pure functions.

Nothing here knows about :class:`~chrysalis_memory.memory.AgentMemory`: a search
is any callable that takes a query text and returns fact ids, best first
(synchronous or a coroutine function), and the queries are
:class:`~chrysalis_memory.bench.recall_set.LabelledQuery` objects (or anything
with ``text`` and ``relevant``).

Definitions, per query, averaged over the queries:

* ``recall@k`` — the share of the query's relevant facts found in the first
  ``k`` results, out of the most that ``k`` results can hold
  (``min(len(relevant), k)``), so a perfect ranking scores 1.0 at every k.
  With one relevant fact (almost every query of the labelled set) it is the
  hit rate: 1 if the fact is in the first k, else 0.
* ``mrr`` — mean reciprocal rank of the first relevant result (0 when none is
  returned).
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol, TypeAlias

__all__ = [
    "DEFAULT_KS",
    "RRF_K0",
    "AsyncSearch",
    "Query",
    "Search",
    "SyncSearch",
    "aevaluate",
    "evaluate",
    "first_relevant_rank",
    "recall_at_k",
    "reciprocal_rank_fusion",
    "score_rankings",
]

RRF_K0 = 60
"""The usual reciprocal rank fusion constant (Cormack, Clarke and Büttcher, 2009)."""
DEFAULT_KS: tuple[int, ...] = (1, 5)


class Query(Protocol):
    """What the evaluator needs from a labelled query."""

    @property
    def text(self) -> str: ...

    @property
    def relevant(self) -> tuple[str, ...]: ...


SyncSearch: TypeAlias = Callable[[str], Sequence[str]]
AsyncSearch: TypeAlias = Callable[[str], Awaitable[Sequence[str]]]
Search: TypeAlias = SyncSearch | AsyncSearch
"""A search: query text in, fact ids out, best first (sync or async)."""


def recall_at_k(ranked_ids: Sequence[str], relevant_ids: Iterable[str], k: int) -> float:
    """Share of the relevant ids in ``ranked_ids[:k]``, out of ``min(len(relevant), k)``.

    A result repeated in the ranking counts once. Raises ``ValueError`` for
    ``k < 1`` or no relevant ids (a query nothing answers cannot be scored).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    relevant = frozenset(relevant_ids)
    if not relevant:
        raise ValueError("a query needs at least one relevant id to be scored")
    found = relevant.intersection(ranked_ids[:k])
    return len(found) / min(len(relevant), k)


def first_relevant_rank(ranked_ids: Sequence[str], relevant_ids: Iterable[str]) -> int | None:
    """1-based rank of the first relevant id in ``ranked_ids``, or None when absent."""
    relevant = frozenset(relevant_ids)
    for rank, item in enumerate(ranked_ids, start=1):
        if item in relevant:
            return rank
    return None


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]],
    k0: float = RRF_K0,
    *,
    weights: Sequence[float] | None = None,
) -> list[str]:
    """Fuse rankings: ``score(id) = sum(weight / (k0 + rank))``, rank 1-based.

    An id missing from a ranking gets nothing from it; an id repeated within a
    ranking counts at its best rank only. Ties are broken by id (ascending), so
    the result depends only on the inputs. ``weights`` (one per ranking,
    default all 1) lets one ranking count more than another.
    """
    if not k0 >= 0 or math.isinf(k0):
        raise ValueError(f"k0 must be a finite number >= 0, got {k0!r}")
    if weights is None:
        weights = [1.0] * len(rankings)
    elif len(weights) != len(rankings):
        raise ValueError(f"got {len(weights)} weights for {len(rankings)} rankings")
    elif any(not w >= 0 or math.isinf(w) for w in weights):
        raise ValueError(f"weights must be finite and >= 0, got {list(weights)!r}")
    contributions: dict[str, list[float]] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        seen: set[str] = set()
        for rank, item in enumerate(ranking, start=1):
            if item in seen:
                continue
            seen.add(item)
            contributions.setdefault(item, []).append(weight / (k0 + rank))
    # fsum is exactly rounded, so equal contributions in any order give equal scores
    # and the tie-break by id really decides ties.
    scores = {item: math.fsum(parts) for item, parts in contributions.items()}
    return sorted(scores, key=lambda item: (-scores[item], item))


def score_rankings(
    queries: Sequence[Query],
    rankings: Sequence[Sequence[str]],
    ks: Sequence[int] = DEFAULT_KS,
) -> dict[str, float]:
    """``recall@k`` for each k and ``mrr``, averaged over paired queries and rankings."""
    if len(queries) != len(rankings):
        raise ValueError(f"got {len(rankings)} rankings for {len(queries)} queries")
    if not queries:
        raise ValueError("no queries to evaluate")
    n = len(queries)
    result: dict[str, float] = {}
    for k in ks:
        total = math.fsum(
            recall_at_k(r, q.relevant, k) for q, r in zip(queries, rankings, strict=True)
        )
        result[f"recall@{k}"] = total / n
    ranks = (first_relevant_rank(r, q.relevant) for q, r in zip(queries, rankings, strict=True))
    result["mrr"] = math.fsum(1.0 / rank for rank in ranks if rank is not None) / n
    return result


def _checked(ranking: object, query: str) -> list[str]:
    if isinstance(ranking, (str, bytes)) or not isinstance(ranking, Sequence):
        raise TypeError(
            f"a search must return a sequence of ids; got {type(ranking).__name__} for {query!r}"
        )
    items = list(ranking)
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"a search must return string ids; got {item!r} for {query!r}")
    return items


async def aevaluate(
    search: Search, queries: Iterable[Query], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Run ``search`` on every query (one at a time) and score it; for async callers.

    ``search`` may be synchronous or return an awaitable.
    """
    items = list(queries)
    rankings: list[list[str]] = []
    for query in items:
        result = search(query.text)
        if inspect.isawaitable(result):
            result = await result
        rankings.append(_checked(result, query.text))
    return score_rankings(items, rankings, ks)


def evaluate(
    search: Search, queries: Iterable[Query], ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Run ``search`` on every query and return ``recall@k`` (for each k) and ``mrr``.

    ``search`` may be synchronous or a coroutine function; an asynchronous one
    is driven with :func:`asyncio.run`, so from inside a running event loop use
    :func:`aevaluate` instead.
    """
    items = list(queries)
    rankings: list[list[str]] = []
    for index, query in enumerate(items):
        result = search(query.text)
        if inspect.isawaitable(result):
            return _finish_async(search, items, rankings, result, index, ks)
        rankings.append(_checked(result, query.text))
    return score_rankings(items, rankings, ks)


def _finish_async(
    search: Search,
    items: list[Query],
    rankings: list[list[str]],
    pending: Awaitable[object],
    index: int,
    ks: Sequence[int],
) -> dict[str, float]:
    """Finish :func:`evaluate` once a search turned out to be asynchronous."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        if inspect.iscoroutine(pending):
            pending.close()  # never awaited: close it so Python does not warn
        raise RuntimeError(
            "evaluate() got an async search inside a running event loop: "
            "use `await aevaluate(...)` instead"
        )

    async def run_all() -> list[list[str]]:
        out = [*rankings, _checked(await pending, items[index].text)]
        for query in items[index + 1 :]:
            result = search(query.text)
            if inspect.isawaitable(result):
                result = await result
            out.append(_checked(result, query.text))
        return out

    return score_rankings(items, asyncio.run(run_all()), ks)
