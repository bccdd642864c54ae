"""recall(vector=...): searching with a query embedding the caller already has."""

from __future__ import annotations

import math

import pytest

from chrysalis_memory.errors import InvalidArgumentError
from chrysalis_memory.recall.embedders import HashingEmbedder
from tests.recall.test_recall import FACTS, Open, learn_facts, open_agent  # noqa: F401


async def test_a_query_vector_finds_what_its_text_finds(open_agent: Open) -> None:  # noqa: F811
    mem = await open_agent()
    ids = await learn_facts(mem)
    query = "When is the staging DB restored each night?"
    (vector,) = await HashingEmbedder().embed([query])
    by_text = await mem.recall(query, k=3, mode="vector", record_access=False)
    by_vector = await mem.recall(vector=vector, k=3, record_access=False)
    assert [h.memory.id for h in by_vector] == [h.memory.id for h in by_text]
    assert by_vector[0].memory.id == ids["backup"]
    assert by_vector[0].similarity == pytest.approx(by_text[0].similarity)
    # With text as well, the vector replaces embedding the text in a hybrid search.
    hybrid = await mem.recall(query, k=3, vector=vector, record_access=False)
    assert [h.memory.id for h in hybrid] == [
        h.memory.id for h in await mem.recall(query, k=3, record_access=False)
    ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"vector": [1.0, 2.0]}, "dimensions"),
        ({"vector": [math.nan] * 2048}, "finite"),
        ({"vector": []}, "non-empty"),
        ({"vector": "not a vector"}, "sequence of numbers"),
        ({"vector": [0.1] * 2048, "mode": "keyword"}, "needs query text"),
        ({}, "must not be empty"),
    ],
)
async def test_bad_query_vectors_are_refused(
    open_agent: Open,  # noqa: F811
    kwargs: dict[str, object],
    message: str,
) -> None:
    mem = await open_agent()
    await learn_facts(mem)
    with pytest.raises(InvalidArgumentError, match=message):
        await mem.recall(**kwargs)  # type: ignore[arg-type]
