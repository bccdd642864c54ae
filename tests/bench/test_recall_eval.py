"""recall@k, MRR and reciprocal rank fusion on hand-checked examples."""

from __future__ import annotations

import pytest

from chrysalis_memory.bench.recall_eval import (
    aevaluate,
    evaluate,
    first_relevant_rank,
    recall_at_k,
    reciprocal_rank_fusion,
)
from chrysalis_memory.bench.recall_set import LabelledQuery

RANKED = ["a", "b", "c", "d", "e", "f"]


def test_recall_at_k() -> None:
    assert recall_at_k(RANKED, ["a"], 1) == 1.0
    assert recall_at_k(RANKED, ["b"], 1) == 0.0
    assert recall_at_k(RANKED, ["e"], 5) == 1.0
    assert recall_at_k(RANKED, ["f"], 5) == 0.0
    assert recall_at_k(RANKED, ["zz"], 5) == 0.0
    assert recall_at_k([], ["a"], 5) == 0.0
    # two relevant facts: at k=1 one of them is all that fits
    assert recall_at_k(RANKED, ["a", "c"], 1) == 1.0
    assert recall_at_k(RANKED, ["b", "c"], 1) == 0.0
    assert recall_at_k(RANKED, ["a", "f"], 5) == 0.5
    assert recall_at_k(RANKED, ["a", "c"], 5) == 1.0
    # a repeated result is not found twice
    assert recall_at_k(["a", "a", "x"], ["a", "b"], 3) == 0.5


@pytest.mark.parametrize(("k", "relevant"), [(0, ["a"]), (-1, ["a"]), (True, ["a"]), (1, [])])
def test_recall_at_k_rejects_bad_arguments(k: int, relevant: list[str]) -> None:
    with pytest.raises(ValueError, match=r"k must|relevant"):
        recall_at_k(RANKED, relevant, k)


def test_first_relevant_rank() -> None:
    assert first_relevant_rank(RANKED, ["c", "e"]) == 3
    assert first_relevant_rank(RANKED, ["zz"]) is None


def test_rrf_scores_by_reciprocal_rank() -> None:
    # k0 = 60: a = 1/61 + 1/63, b = 1/62 + 1/61, c = 1/63 + 1/62, d = 1/64
    assert reciprocal_rank_fusion([["a", "b", "c", "d"], ["b", "c", "a"]]) == ["b", "a", "c", "d"]
    # k0 = 0: x and z (1 each) and y (1/2 + 1/2) tie exactly, so the order is by id
    assert reciprocal_rank_fusion([["x", "y"], ["z", "y"]], k0=0) == ["x", "y", "z"]


def test_rrf_breaks_ties_by_id_and_ignores_input_order() -> None:
    first, second = ["m", "k"], ["k", "m"]
    assert reciprocal_rank_fusion([first, second]) == ["k", "m"]
    assert reciprocal_rank_fusion([second, first]) == ["k", "m"]
    assert reciprocal_rank_fusion([["q"], ["p"]]) == ["p", "q"]


def test_rrf_edge_cases() -> None:
    assert reciprocal_rank_fusion([]) == []
    assert reciprocal_rank_fusion([[], []]) == []
    assert reciprocal_rank_fusion([["a", "b"]]) == ["a", "b"]
    # a repeat within one ranking counts at its best rank only
    assert reciprocal_rank_fusion([["b", "a", "b", "b"], ["a", "b"]], k0=0) == ["a", "b"]


def test_rrf_weights() -> None:
    vector, keyword = ["v", "w"], ["k", "w"]
    # unweighted: v and k tie (1/61 each, so by id), w is second in both (2/62)
    assert reciprocal_rank_fusion([vector, keyword]) == ["w", "k", "v"]
    assert reciprocal_rank_fusion([["v"], ["k"]]) == ["k", "v"]
    assert reciprocal_rank_fusion([["v"], ["k"]], weights=[2.0, 1.0]) == ["v", "k"]
    # keyword x3: w = 1/62 + 3/62 still beats k = 3/61, and v = 1/61 is last
    assert reciprocal_rank_fusion([vector, keyword], weights=[1.0, 3.0]) == ["w", "k", "v"]
    assert reciprocal_rank_fusion([vector, keyword], weights=[1.0, 0.0]) == ["v", "w", "k"]
    with pytest.raises(ValueError, match="weights"):
        reciprocal_rank_fusion([vector, keyword], weights=[1.0])
    with pytest.raises(ValueError, match="weights"):
        reciprocal_rank_fusion([vector, keyword], weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="k0"):
        reciprocal_rank_fusion([vector], k0=-1)


QUERIES = [
    LabelledQuery("q1", "shared-words", "one", ("a",)),
    LabelledQuery("q2", "shared-words", "two", ("b",)),
    LabelledQuery("q3", "shared-words", "three", ("z",)),
]
ANSWERS = {"one": ["a", "b"], "two": ["a", "x", "y", "b"], "three": ["a"]}


def _sync_search(text: str) -> list[str]:
    return ANSWERS[text]


async def _async_search(text: str) -> list[str]:
    return ANSWERS[text]


EXPECTED = {"recall@1": 1 / 3, "recall@5": 2 / 3, "mrr": (1 + 1 / 4) / 3}


def test_evaluate_sync_and_async_searches() -> None:
    assert evaluate(_sync_search, QUERIES) == pytest.approx(EXPECTED)
    assert evaluate(_async_search, QUERIES) == pytest.approx(EXPECTED)
    assert evaluate(_sync_search, QUERIES, ks=(2,)) == pytest.approx(
        {"recall@2": 1 / 3, "mrr": EXPECTED["mrr"]}
    )


async def test_aevaluate_and_evaluate_inside_a_loop() -> None:
    assert await aevaluate(_async_search, QUERIES) == pytest.approx(EXPECTED)
    assert await aevaluate(_sync_search, QUERIES) == pytest.approx(EXPECTED)
    with pytest.raises(RuntimeError, match="aevaluate"):
        evaluate(_async_search, QUERIES)


def test_evaluate_rejects_bad_results() -> None:
    with pytest.raises(TypeError, match="sequence of ids"):
        evaluate(lambda text: "a", QUERIES)
    with pytest.raises(TypeError, match="string ids"):
        evaluate(lambda text: [1], QUERIES)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no queries"):
        evaluate(_sync_search, [])
