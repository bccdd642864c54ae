"""ChrysalisVectorStore beyond the standard suite: upserts on a CRDT store, deletes
and re-adds, filters, scores, MMR, construction, and sharing one agent."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_chrysalis import ChrysalisEmbeddings, ChrysalisRetriever, ChrysalisVectorStore
from langchain_chrysalis._documents import LC_ID, LC_METADATA, stored_vectors
from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding

from chrysalis_memory import AgentMemory
from chrysalis_memory.errors import InvalidArgumentError

FRUIT = [
    "Apples grow on trees in cool orchards.",
    "Apple pie is baked with apples, butter and cinnamon.",
    "A car engine burns petrol to turn the wheels.",
    "Bananas are yellow fruit that grow in warm climates.",
]


@pytest.fixture
def store(data_dir: Path, embedding: ChrysalisEmbeddings) -> ChrysalisVectorStore:
    with ChrysalisVectorStore(embedding, agent_id="vs", data_dir=data_dir) as store:
        yield store  # type: ignore[misc]


def test_adding_an_existing_id_overwrites_content_and_replaces_metadata(
    store: ChrysalisVectorStore,
) -> None:
    store.add_texts(["first"], [{"a": 1, "b": 2}], ids=["doc"])
    store.add_texts(["second"], [{"a": 3}], ids=["doc"])

    assert store.get_by_ids(["doc"]) == [
        Document(id="doc", page_content="second", metadata={"a": 3})
    ]
    live = store.memory
    assert len(store._handle.run(lambda mem: mem.list())) == 1
    assert live.agent_id == "vs"


def test_re_adding_an_unchanged_document_writes_nothing(store: ChrysalisVectorStore) -> None:
    store.add_texts(["same"], [{"n": 1}], ids=["doc"])
    before = len(store._handle.run(lambda mem: mem.history("doc")))
    store.add_texts(["same"], [{"n": 1}], ids=["doc"])
    assert len(store._handle.run(lambda mem: mem.history("doc"))) == before


def test_a_deleted_document_can_be_added_again(store: ChrysalisVectorStore) -> None:
    store.add_texts(["old text"], ids=["doc"])
    store.delete(["doc"])
    assert store.get_by_ids(["doc"]) == []
    assert store.similarity_search("old text", k=5) == []

    store.add_texts(["new text"], [{"v": 2}], ids=["doc"])
    assert store.get_by_ids(["doc"]) == [
        Document(id="doc", page_content="new text", metadata={"v": 2})
    ]
    assert store.similarity_search("new text", k=1)[0].id == "doc"
    # The forgotten memory is brought back, with the new text: no second memory.
    back = store._handle.run(lambda mem: mem.get("doc"))
    assert back is not None and back.content == "new text"
    assert [m.id for m in store._handle.run(lambda mem: mem.list())] == ["doc"]

    store.delete(["doc"])
    store.add_texts(["third"], ids=["doc"])
    assert [d.page_content for d in store.get_by_ids(["doc"])] == ["third"]


def test_a_re_added_document_keeps_no_tag_of_its_deleted_memory(
    data_dir: Path, embedding: ChrysalisEmbeddings
) -> None:
    with ChrysalisVectorStore(embedding, agent_id="vs", data_dir=data_dir, tags=["a"]) as a:
        a.add_texts(["in collection a"], ids=["doc"])
        a.delete(["doc"])
        with ChrysalisVectorStore(embedding, memory=a.memory, tags=["b"]) as b:
            b.add_texts(["in collection b"], ids=["doc"])
            assert [d.page_content for d in b.similarity_search("collection", k=5)] == [
                "in collection b"
            ]
            assert a.similarity_search("collection", k=5) == []


def test_documents_re_added_as_tilde_memories_by_earlier_versions_are_found(
    store: ChrysalisVectorStore,
) -> None:
    # Earlier versions re-added a deleted document as a new memory, <id>~1.
    async def old_layout(mem: AgentMemory) -> None:
        await mem.learn("first", memory_id="doc", metadata={LC_ID: "doc", LC_METADATA: {}})
        await mem.forget("doc")
        meta = {LC_ID: "doc", LC_METADATA: {"v": 1}}
        await mem.learn("second", memory_id="doc~1", metadata=meta)

    store._handle.run(old_layout)
    assert store.get_by_ids(["doc"]) == [
        Document(id="doc", page_content="second", metadata={"v": 1})
    ]
    store.add_texts(["third"], ids=["doc"])  # updates the live one
    assert store._handle.run(lambda mem: mem.get("doc~1")).content == "third"  # type: ignore[union-attr]
    store.delete(["doc"])
    assert store.get_by_ids(["doc"]) == []
    store.add_texts(["fourth"], ids=["doc"])  # brings the first memory back
    assert store._handle.run(lambda mem: mem.get("doc")).content == "fourth"  # type: ignore[union-attr]
    assert store._handle.run(lambda mem: mem.get("doc~1")) is None
    assert [d.page_content for d in store.get_by_ids(["doc"])] == ["fourth"]


def test_ids_that_are_not_memory_ids_work(store: ChrysalisVectorStore) -> None:
    odd = ["emb:not-an-embedding", "x" * 400]
    store.add_texts(["reserved prefix", "very long id"], ids=odd)
    assert [d.id for d in store.get_by_ids(odd)] == odd
    store.delete(odd)
    assert store.get_by_ids(odd) == []


def test_scores_are_cosine_similarities_and_relevance_is_within_0_and_1(
    store: ChrysalisVectorStore,
) -> None:
    store.add_texts(FRUIT, ids=["trees", "pie", "car", "banana"])
    scored = store.similarity_search_with_score(FRUIT[1], k=4)
    assert scored[0][0].id == "pie"
    scores = [score for _, score in scored]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(1.0, abs=1e-4)  # the same text: the same vector
    assert scores[1] < 0.9
    relevant = store.similarity_search_with_relevance_scores("apple pie", k=4)
    assert all(0.0 <= score <= 1.0 for _, score in relevant)
    vector = store.embeddings.embed_query(FRUIT[1])
    assert [d.id for d in store.similarity_search_by_vector(vector, k=4)] == [
        d.id for d, _ in scored
    ]


def test_filters_on_chrysalis_fields_and_on_document_metadata(
    store: ChrysalisVectorStore, data_dir: Path, embedding: ChrysalisEmbeddings
) -> None:
    store.add_texts(
        FRUIT,
        [{"kind": "fruit"}, {"kind": "food", "year": 2020}, {"kind": "machine"}, {"kind": "fruit"}],
        ids=["trees", "pie", "car", "banana"],
    )
    found = store.similarity_search("apples", k=4, filter={"kind": "fruit"})
    assert {d.id for d in found} == {"trees", "banana"}
    found = store.similarity_search("apples", k=4, filter={"kind": {"$in": ["food", "machine"]}})
    assert {d.id for d in found} == {"pie", "car"}
    assert [d.id for d in store.similarity_search("x", k=4, filter={"year": {"$gte": 2000}})] == [
        "pie"
    ]
    assert store.similarity_search("apples", k=4, filter={"memory_type": "procedural"}) == []
    assert len(store.similarity_search("apples", k=4, filter={"source": "vs"})) == 4

    # A store with tags is a collection within the agent's memory.
    with ChrysalisVectorStore(embedding, memory=store.memory, tags=["recipes"]) as recipes:
        recipes.add_texts(["Bake the apple crumble for forty minutes."], ids=["crumble"])
        assert [d.id for d in recipes.similarity_search("apples", k=4)] == ["crumble"]
        assert "crumble" in {d.id for d in store.similarity_search("apples", k=5)}
        recipes.delete()
        assert recipes.similarity_search("apples", k=4) == []
        assert len(store.similarity_search("apples", k=5)) == 4


def test_delete_without_ids_or_tags_is_refused(store: ChrysalisVectorStore) -> None:
    store.add_texts(["keep me"], ids=["doc"])
    with pytest.raises(InvalidArgumentError, match="whole memory"):
        store.delete()
    assert store.get_by_ids(["doc"])


def test_max_marginal_relevance_prefers_diverse_documents(store: ChrysalisVectorStore) -> None:
    store.add_texts(
        [
            "Apple pie with apples and cinnamon.",
            "Apple pie with apples and cinnamon and butter.",
            "Apple crumble with apples and oats.",
            "A car engine burns petrol.",
        ],
        ids=["pie", "pie-butter", "crumble", "car"],
    )
    closest = [d.id for d in store.similarity_search("apple pie with apples", k=2)]
    assert set(closest) == {"pie", "pie-butter"}
    diverse = store.max_marginal_relevance_search(
        "apple pie with apples", k=2, fetch_k=4, lambda_mult=0.1
    )
    assert len(diverse) == 2 and {d.id for d in diverse} != {"pie", "pie-butter"}
    # MMR reads the vectors recall stored (nothing is embedded again).
    [pie, car, unknown] = store._handle.run(
        lambda mem: stored_vectors(mem, store._embedder.model, ["pie", "car", "no-such-doc"])
    )
    assert unknown is None
    assert pie == pytest.approx(
        store.embeddings.embed_documents(["Apple pie with apples and cinnamon."])[0], abs=1e-5
    )
    assert car is not None
    assert store._handle.run(lambda mem: stored_vectors(mem, "another-model", ["pie"])) == [None]


async def test_async_methods_match_the_sync_ones(store: ChrysalisVectorStore) -> None:
    ids = await store.aadd_texts(FRUIT, [{"i": i} for i in range(4)])
    assert len(ids) == 4 and len(set(ids)) == 4
    sync = store.similarity_search_with_score("apples", k=3)
    assert await store.asimilarity_search_with_score("apples", k=3) == sync
    assert await store.asimilarity_search("apples", k=3) == [d for d, _ in sync]
    vector = await store.embeddings.aembed_query("apples")
    assert await store.asimilarity_search_by_vector(vector, k=3) == [d for d, _ in sync]
    mmr = await store.amax_marginal_relevance_search("apples", k=2, fetch_k=4)
    assert mmr == store.max_marginal_relevance_search("apples", k=2, fetch_k=4)
    assert await store.aget_by_ids(ids[:2]) == store.get_by_ids(ids[:2])
    await store.adelete(ids[:2])
    assert await store.aget_by_ids(ids) == store.get_by_ids(ids[2:])
    relevant = await store.asimilarity_search_with_relevance_scores("apples", k=2)
    assert all(0.0 <= score <= 1.0 for _, score in relevant)


def test_from_texts_and_a_fake_embedding_model(data_dir: Path) -> None:
    embedding = DeterministicFakeEmbedding(size=16)
    store = ChrysalisVectorStore.from_texts(
        ["alpha", "beta"],
        embedding,
        [{"n": 1}, {"n": 2}],
        ids=["a", "b"],
        agent_id="from-texts",
        data_dir=data_dir,
        tags=["greek"],
        importance=0.9,
    )
    try:
        assert store.similarity_search("beta", k=1) == [
            Document(id="b", page_content="beta", metadata={"n": 2})
        ]
        memory = store._handle.run(lambda mem: mem.get("b"))
        assert memory is not None
        assert memory.importance == 0.9 and "greek" in memory.tags
        assert memory.memory_type.value == "semantic"
    finally:
        store.close()


async def test_afrom_texts(data_dir: Path) -> None:
    store = await ChrysalisVectorStore.afrom_texts(
        ["alpha", "beta"], DeterministicFakeEmbedding(size=16), agent_id="afrom", data_dir=data_dir
    )
    try:
        assert [d.page_content for d in await store.asimilarity_search("alpha", k=1)] == ["alpha"]
    finally:
        await store.aclose()


def test_memories_learned_directly_are_documents_too(store: ChrysalisVectorStore) -> None:
    store._handle.run(
        lambda mem: mem.learn(
            "Standup is at 9:30.", importance=0.8, metadata={"team": "core"}, memory_id="standup"
        )
    )
    assert store.get_by_ids(["standup"]) == [
        Document(id="standup", page_content="Standup is at 9:30.", metadata={"team": "core"})
    ]
    assert store.similarity_search("when is standup?", k=1)[0].id == "standup"


def test_a_retriever_on_the_same_agent_finds_what_the_store_added(
    store: ChrysalisVectorStore,
) -> None:
    store.add_texts(FRUIT, [{"n": i} for i in range(4)], ids=["trees", "pie", "car", "banana"])
    retriever = ChrysalisRetriever(memory=store.memory, k=1)
    try:
        [doc] = retriever.invoke("what is in an apple pie?")
        assert doc.id == "pie" and doc.metadata["n"] == 1
        assert doc.metadata["chrysalis"]["memory_id"] == "pie"
        assert doc.metadata["chrysalis"]["source"] == "vs"
    finally:
        retriever.close()
    # As_retriever works too (similarity over the store's embeddings).
    assert store.as_retriever(search_kwargs={"k": 1}).invoke("engine petrol")[0].id == "car"
