"""Fusion and ranking of recall candidates (pure).

Two retrievers rank candidates: vector similarity (Chroma) and keyword
relevance (SQLite FTS5, BM25). Reciprocal rank fusion combines their rankings
without having to calibrate their scores against each other; the fused
relevance is then blended with what the collective knows about each memory,
as in spec §5.4: relevance 0.5, confidence 0.3, how often agents used it 0.2.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

RRF_K0: Final = 60
"""The rank offset of reciprocal rank fusion (Cormack et al., 2009)."""

RELEVANCE_WEIGHT: Final = 0.5
CONFIDENCE_WEIGHT: Final = 0.3
ACCESS_WEIGHT: Final = 0.2
ACCESS_SATURATION: Final = 100
"""Access counts at or above this count fully (spec §5.4: min(count / 100, 1))."""

_WORD = re.compile(r"\w+", re.UNICODE)
_STOPWORDS: Final = frozenset(
    {
        "a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have",
        "how", "i", "in", "is", "it", "its", "of", "on", "or", "so", "that", "the",
        "this", "to", "was", "what", "when", "where", "which", "who", "why", "will",
        "with", "you", "your",
    }
)  # fmt: skip


def reciprocal_rank_fusion(rankings: Sequence[Sequence[str]], k0: int = RRF_K0) -> dict[str, float]:
    """Fused scores: the sum over rankings of 1 / (k0 + rank), rank counted from 1."""
    fused: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            fused[item] = fused.get(item, 0.0) + 1.0 / (k0 + rank)
    return fused


def relevance(fused: dict[str, float], rankings: int, k0: int = RRF_K0) -> dict[str, float]:
    """Fused scores scaled to [0, 1]: 1 for a memory ranked first by every retriever."""
    best = rankings / (k0 + 1)
    return {item: score / best for item, score in fused.items()}


def collective_score(relevance: float, confidence: float, access_count: int) -> float:
    """Spec §5.4's blend of relevance with the collective's confidence and use."""
    usage = min(access_count / ACCESS_SATURATION, 1.0)
    return RELEVANCE_WEIGHT * relevance + CONFIDENCE_WEIGHT * confidence + ACCESS_WEIGHT * usage


def query_words(query: str) -> list[str]:
    """The words of a query worth searching for: lower-cased, without stopwords
    (unless it has nothing else), each once."""
    words = _WORD.findall(query.lower())
    kept = [w for w in words if w not in _STOPWORDS] or words
    return list(dict.fromkeys(kept))
