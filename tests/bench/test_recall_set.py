"""The labelled recall set is well formed, and what lexical retrieval makes of it.

The reference retrievers here are deliberately small and independent of
AgentMemory: brute-force cosine over :class:`HashingEmbedder` vectors (vector
only), SQLite FTS5 with ``porter unicode61`` and BM25 (keyword only), and
reciprocal rank fusion of their top-50 lists (fused). The figures are printed
(run with ``-s``), not asserted: the set measures retrieval, it does not pin it.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterator, Sequence

import pytest

from chrysalis_memory.bench import recall_set
from chrysalis_memory.bench.recall_eval import (
    evaluate,
    first_relevant_rank,
    reciprocal_rank_fusion,
)
from chrysalis_memory.bench.recall_set import (
    CATEGORIES,
    DISTRACTOR_IDS,
    FACTS,
    FACTS_BY_ID,
    QUERIES,
    TARGET_IDS,
    LabelledQuery,
)
from chrysalis_memory.recall.embedders import HashingEmbedder

TOP_N = 50  # each mode's list handed to fusion

# The usual English stopwords; a query made only of them searches for them.
_STOPWORDS = frozenset(
    """
    a an the and or but if of to in on at by for with from as into onto about over than then so
    is are was were be been being am do does did done have has had
    i me my mine you your yours he him his she her hers it its we us our ours they them their
    theirs this that these those there here what which who whom whose how when where why
    will would shall should can could may might must just also very
    """.split()  # noqa: SIM905 (a word list reads better than 90 quoted strings)
)
_WORD = re.compile(r"[^\W_]+")

Ranker = Callable[[str], list[str]]


# --- the set is well formed ----------------------------------------------------------


def test_ids_are_unique() -> None:
    fact_ids = [fact.id for fact in FACTS]
    query_ids = [query.id for query in QUERIES]
    assert len(fact_ids) == len(set(fact_ids))
    assert len(query_ids) == len(set(query_ids))
    assert set(FACTS_BY_ID) == set(fact_ids)


def test_every_query_names_existing_facts() -> None:
    for query in QUERIES:
        assert query.text.strip(), query.id
        assert query.relevant, query.id
        assert len(query.relevant) == len(set(query.relevant)), query.id
        assert set(query.relevant) <= set(FACTS_BY_ID), query.id
        assert query.category in CATEGORIES, query.id


def test_size_and_composition() -> None:
    assert len(FACTS) >= 150
    assert len(TARGET_IDS) >= 50
    assert len(DISTRACTOR_IDS) >= 90
    assert set(FACTS_BY_ID) == TARGET_IDS | DISTRACTOR_IDS
    assert not TARGET_IDS & DISTRACTOR_IDS
    for category in ("shared-words", "morphology", "rare-keyword"):
        assert sum(q.category == category for q in QUERIES) >= 15, category
    for fact in FACTS:
        assert fact.text.strip() and fact.domain, fact.id
    assert len({fact.text for fact in FACTS}) == len(FACTS)
    assert recall_set.RECALL_SET_VERSION


# --- reference retrievers -------------------------------------------------------------


def _query_terms(text: str) -> list[str]:
    tokens = _WORD.findall(text.casefold())
    kept = [t for t in tokens if t not in _STOPWORDS] or tokens
    return list(dict.fromkeys(kept))


class KeywordReference:
    """SQLite FTS5 (``porter unicode61``), BM25, the query's words OR-ed."""

    def __init__(self) -> None:
        self._db = sqlite3.connect(":memory:")
        self._db.execute(
            "CREATE VIRTUAL TABLE facts USING fts5(id UNINDEXED, text, tokenize='porter unicode61')"
        )
        self._db.executemany(
            "INSERT INTO facts (id, text) VALUES (?, ?)", [(f.id, f.text) for f in FACTS]
        )

    def close(self) -> None:
        self._db.close()

    def __call__(self, text: str) -> list[str]:
        terms = _query_terms(text)
        if not terms:
            return []
        match = " OR ".join('"' + term.replace('"', '""') + '"' for term in terms)
        rows = self._db.execute(
            "SELECT id FROM facts WHERE facts MATCH ? ORDER BY bm25(facts), id LIMIT ?",
            (match, TOP_N),
        ).fetchall()
        return [row[0] for row in rows]


class VectorReference:
    """HashingEmbedder vectors, brute-force cosine (a dot product: vectors are unit)."""

    def __init__(self) -> None:
        self._embedder = HashingEmbedder()
        self._ids = [fact.id for fact in FACTS]
        self._vectors = self._embedder.embed_sync([fact.text for fact in FACTS])

    def __call__(self, text: str) -> list[str]:
        query = self._embedder.embed_sync([text])[0]
        nonzero = [(i, v) for i, v in enumerate(query) if v]
        scores = {
            fact_id: sum(v * vector[i] for i, v in nonzero)
            for fact_id, vector in zip(self._ids, self._vectors, strict=True)
        }
        return sorted(scores, key=lambda fact_id: (-scores[fact_id], fact_id))[:TOP_N]


@pytest.fixture(scope="module")
def rankers() -> Iterator[dict[str, Ranker]]:
    keyword = KeywordReference()
    vector = VectorReference()

    def fused(text: str) -> list[str]:
        return reciprocal_rank_fusion([vector(text), keyword(text)])

    def fused_keyword_x2(text: str) -> list[str]:
        return reciprocal_rank_fusion([vector(text), keyword(text)], weights=[1.0, 2.0])

    # The last one is a variant shown for comparison, not the reference fusion.
    yield {"vector": vector, "keyword": keyword, "fused": fused, "fused-kw2": fused_keyword_x2}
    keyword.close()


# --- measured, not asserted -----------------------------------------------------------


def _row(label: str, metrics: dict[str, float], n: int) -> str:
    return (
        f"  {label:<22} n={n:<3} recall@1={metrics['recall@1']:.3f}  "
        f"recall@5={metrics['recall@5']:.3f}  MRR={metrics['mrr']:.3f}"
    )


def _subsets() -> list[tuple[str, Sequence[LabelledQuery]]]:
    subsets: list[tuple[str, Sequence[LabelledQuery]]] = [("all", QUERIES)]
    subsets += [(c, [q for q in QUERIES if q.category == c]) for c in CATEGORIES]
    return [(label, queries) for label, queries in subsets if queries]


def test_reference_retrieval_quality(rankers: dict[str, Ranker]) -> None:
    lines = [
        "",
        f"recall set v{recall_set.RECALL_SET_VERSION}: {len(FACTS)} facts "
        f"({len(TARGET_IDS)} targets, {len(DISTRACTOR_IDS)} distractors), "
        f"{len(QUERIES)} queries",
    ]
    for mode, ranker in rankers.items():
        lines.append(f"{mode}:")
        for label, queries in _subsets():
            metrics = evaluate(ranker, queries)
            assert set(metrics) == {"recall@1", "recall@5", "mrr"}
            assert all(0.0 <= value <= 1.0 for value in metrics.values()), metrics
            lines.append(_row(label, metrics, len(queries)))
    lines.append(
        "queries some mode misses at 5 (rank of the first relevant fact, - = not in top 50):"
    )
    for query in QUERIES:
        ranks = {
            mode: first_relevant_rank(ranker(query.text), query.relevant)
            for mode, ranker in rankers.items()
        }
        if any(rank is None or rank > 5 for rank in ranks.values()):
            shown = "  ".join(f"{mode}={rank or '-'}" for mode, rank in ranks.items())
            lines.append(f"  {query.id:<24} {query.category:<13} {shown}")
    print("\n".join(lines))
