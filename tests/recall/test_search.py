"""recall.search on a real store: the reads it makes, and the similarity of keyword-only hits."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from chrysalis_memory import AgentMemory
from chrysalis_memory.model.ops import embedding_id, text_hash
from chrysalis_memory.model.state import EmbeddingState
from chrysalis_memory.recall.search import search
from chrysalis_memory.recall.vectors import VectorHit
from chrysalis_memory.store import ListQuery

TEXTS = {
    "deploy": "Deploy the billing service on Fridays only after review.",
    "billing": "The billing service retries failed card payments twice.",
    "other": "The office plants are watered on Mondays.",
}


class NoVectors:
    """A vector cache that finds nothing: every hit of a hybrid search is keyword-only."""

    async def query(
        self, vector: Sequence[float], k: int, where: Mapping[str, Any] | None = None
    ) -> list[VectorHit]:
        return []


@pytest.fixture
async def mem(tmp_path: Path) -> AsyncIterator[AgentMemory]:
    async with AgentMemory(agent_id="agent-s", data_dir=tmp_path, embedder="hashing") as memory:
        yield memory


async def _learn(mem: AgentMemory, **confidence: float) -> dict[str, str]:
    ids = {
        key: await mem.learn(text, importance=0.9, confidence=confidence.get(key, 0.5))
        for key, text in TEXTS.items()
    }
    await (await mem._recall_index()).flush()
    return ids


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


@pytest.mark.parametrize("k", [1, 2])
async def test_keyword_only_hits_get_their_cosine_similarity(mem: AgentMemory, k: int) -> None:
    ids = await _learn(mem)
    embedder = (await mem._recall_index()).embedder
    query = "billing service"
    vector = (await embedder.embed([query]))[0]
    found = await search(mem.store, embedder, NoVectors(), query, k, "hybrid", ListQuery())
    assert len(found) == k
    assert {c.state.id for c in found} <= {ids["deploy"], ids["billing"]}
    for c in found:
        expected = _cosine(vector, (await embedder.embed([c.state.content.value or ""]))[0])
        assert c.similarity == pytest.approx(expected, abs=1e-5)
        assert not math.isnan(c.similarity)


async def test_a_hit_lifted_by_confidence_gets_its_similarity_too(mem: AgentMemory) -> None:
    # Two memories match alike; the one fused second wins on confidence, so its
    # embedding was not among those read with the ranking fields: it is read after.
    ids = await _learn(mem, deploy=1.0, billing=0.0)
    embedder = (await mem._recall_index()).embedder
    query = "billing service"
    vector = (await embedder.embed([query]))[0]
    ranked = await mem.store.search_text(["billing", "service"], 10)
    assert [hit.doc_id for hit in ranked][:2] == [ids["billing"], ids["deploy"]]
    found = await search(mem.store, embedder, NoVectors(), query, 1, "hybrid", ListQuery())
    assert [c.state.id for c in found] == [ids["deploy"]]
    expected = _cosine(vector, (await embedder.embed([TEXTS["deploy"]]))[0])
    assert found[0].similarity == pytest.approx(expected, abs=1e-5)


async def test_rank_rows_reads_other_documents_in_the_same_round_trip(mem: AgentMemory) -> None:
    ids = await _learn(mem)
    model = (await mem._recall_index()).embedder.model
    emb = {key: embedding_id(model, text_hash(text)) for key, text in TEXTS.items()}
    await mem.forget(ids["other"])
    rows, extra = await mem.store.rank_rows(
        [ids["deploy"], ids["billing"], ids["other"], "no-such-memory"],
        also=[emb["deploy"], emb["billing"], "emb:no-such-embedding"],
    )
    assert set(rows) == {ids["deploy"], ids["billing"]}  # live memories only
    assert rows[ids["billing"]].fields.confidence == 0.5
    assert set(extra) == {emb["deploy"], emb["billing"]}
    assert all(isinstance(state, EmbeddingState) for state, _ in extra.values())
    state, _ = mem.store.ranked_state(ids["deploy"], rows[ids["deploy"]])
    assert state.content.value == TEXTS["deploy"]  # type: ignore[union-attr]
    # Without documents to read besides, and for more ids than one statement takes.
    many = [ids["deploy"], *(f"missing-{i}" for i in range(700))]
    rows, extra = await mem.store.rank_rows(many, also=[emb["billing"]] * 600)
    assert set(rows) == {ids["deploy"]} and set(extra) == {emb["billing"]}
    billing, _ = await mem.store.rank_rows([ids["billing"]])
    assert await mem.store.rank_fields([ids["billing"]]) == {
        ids["billing"]: billing[ids["billing"]].fields
    }


async def test_text_match_is_the_query_search_text_runs(mem: AgentMemory) -> None:
    await _learn(mem)
    assert await mem.store.text_match([]) is None
    mem.store._common_words.clear()
    assert await mem.store.text_match(["billing", "service", "billing"]) == (
        '"billing" OR "service"'
    )
    assert mem.store._common_words == {}  # a benchmark's raw query warms nothing for recall
    hits = await mem.store.search_text(["billing"], 5)
    assert {hit.content for hit in hits} == {TEXTS["deploy"], TEXTS["billing"]}
    assert all(hit.score > 0 for hit in hits)
