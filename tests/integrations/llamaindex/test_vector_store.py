"""ChrysalisVectorStore on one agent: nodes round trip, queries, deletes, scopes,
and the ways to give it a memory."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.schema import MetadataMode, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import VectorStoreQuery, VectorStoreQueryMode
from llama_index.vector_stores.chrysalis import (
    ChrysalisEmbedding,
    ChrysalisVectorStore,
    LlamaIndexEmbedder,
    replica,
)

from chrysalis_memory import AgentMemory, BlockingAgentMemory
from chrysalis_memory.errors import UsageError
from chrysalis_memory.recall.embedders import HashingEmbedder

from .conftest import MakeStore
from .support import WordEmbedding


def make_node(
    node_id: str,
    text: str,
    embed_model: WordEmbedding,
    ref_doc_id: str = "doc-1",
    **metadata: object,
) -> TextNode:
    node = TextNode(id_=node_id, text=text, metadata=dict(metadata))
    node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=ref_doc_id)
    node.embedding = embed_model.vector(text)
    return node


def query_for(
    text: str, embed_model: WordEmbedding, k: int = 3, **fields: object
) -> VectorStoreQuery:
    return VectorStoreQuery(
        query_str=text,
        query_embedding=embed_model.vector(text),
        similarity_top_k=k,
        **fields,  # type: ignore[arg-type]
    )


FACTS = {
    "db": "The staging database is restored every Sunday at two in the morning.",
    "deploy": "Deploys to production happen on Tuesdays after the standup.",
    "coffee": "The office coffee machine is descaled on the first of each month.",
}


# --- round trips -----------------------------------------------------------------------


async def test_nodes_round_trip_text_metadata_relationships_and_embeddings(
    store: ChrysalisVectorStore, memory: AgentMemory, embed_model: WordEmbedding
) -> None:
    first = TextNode(
        id_="node-1",
        text="The staging database is restored every Sunday.",
        metadata={"team": "infra", "year": 2025, "score": 0.5, "nested": {"a": [1, 2]}},
        excluded_llm_metadata_keys=["year"],
        start_char_idx=0,
        end_char_idx=46,
    )
    second = TextNode(id_="node-2", text="Backups are kept for thirty days.")
    first.relationships = {
        NodeRelationship.SOURCE: RelatedNodeInfo(node_id="runbook", metadata={"f": "ops.md"}),
        NodeRelationship.NEXT: RelatedNodeInfo(node_id="node-2"),
    }
    second.relationships = {
        NodeRelationship.SOURCE: RelatedNodeInfo(node_id="runbook"),
        NodeRelationship.PREVIOUS: RelatedNodeInfo(node_id="node-1"),
    }
    for node in (first, second):  # as LlamaIndex embeds them: text and metadata
        node.embedding = embed_model.vector(node.get_content(metadata_mode=MetadataMode.EMBED))

    assert await store.async_add([first, second]) == ["node-1", "node-2"]

    back = {node.node_id: node for node in await store.aget_nodes(node_ids=["node-1", "node-2"])}
    for original in (first, second):
        got = back[original.node_id]
        assert isinstance(got, TextNode)
        assert got.text == original.text
        assert got.metadata == original.metadata
        assert got.relationships == original.relationships
        assert got.ref_doc_id == "runbook"
        assert got.excluded_llm_metadata_keys == original.excluded_llm_metadata_keys
        assert (got.start_char_idx, got.end_char_idx) == (
            original.start_char_idx,
            original.end_char_idx,
        )
        # The node's own vector was indexed (as float32), not a re-embedding of its text.
        assert original.embedding is not None and got.embedding is not None
        assert got.embedding == pytest.approx(original.embedding, abs=1e-6)
    assert set(embed_model.embedded) <= {"dimensions"}  # at most a probe of the model's size

    # Each node is a memory: a shared one (importance 0.8), linked to its neighbours.
    doc = await memory.get("node-2")
    assert doc is not None
    assert doc.content == second.text
    assert doc.importance == 0.8
    assert doc.memory_type.value == "semantic"
    assert doc.tags == ["llamaindex"]
    assert doc.sync_status.value == "pending"
    assert doc.related_memories == ["node-1"]
    assert doc.metadata["ref_doc_id"] == "runbook"

    # A query with the node's own embedding finds it first, at similarity 1.
    result = await store.aquery(
        VectorStoreQuery(query_embedding=first.embedding, similarity_top_k=2)
    )
    assert result.ids is not None and result.similarities is not None
    assert result.ids[0] == "node-1"
    assert result.similarities[0] == pytest.approx(1.0, abs=1e-5)


async def test_write_settings_choose_how_nodes_are_learned(
    make_store: MakeStore, memory: AgentMemory, embed_model: WordEmbedding
) -> None:
    store = make_store(
        memory=memory,
        importance=0.3,
        confidence=0.6,
        memory_type="procedural",
        tags=["ops"],
        collection="runbooks",
    )
    await store.async_add([make_node("n-1", "Restart the worker after deploys.", embed_model)])
    doc = await memory.get("n-1")
    assert doc is not None
    assert (doc.importance, doc.confidence, doc.memory_type.value) == (0.3, 0.6, "procedural")
    assert doc.tags == ["llamaindex", "llamaindex:runbooks", "ops"]
    assert doc.sync_status.value == "local"  # below the promotion threshold: not shared


async def test_memories_not_written_as_nodes_come_back_as_text_nodes(
    store: ChrysalisVectorStore, memory: AgentMemory, embed_model: WordEmbedding
) -> None:
    mid = await memory.learn(
        "The on-call rotation changes on Mondays.", importance=0.9, metadata={"team": "sre"}
    )
    result = await store.aquery(query_for("when does on-call rotation change", embed_model, k=1))
    assert result.nodes is not None
    (node,) = result.nodes
    assert isinstance(node, TextNode)
    assert (node.node_id, node.text, node.metadata) == (
        mid,
        "The on-call rotation changes on Mondays.",
        {"team": "sre"},
    )
    assert embed_model.embedded[-1] == "The on-call rotation changes on Mondays."


# --- queries ---------------------------------------------------------------------------


async def test_query_modes(store: ChrysalisVectorStore, embed_model: WordEmbedding) -> None:
    await store.async_add([make_node(key, text, embed_model) for key, text in FACTS.items()])
    question = "when is the staging database restored"

    for mode in (
        VectorStoreQueryMode.DEFAULT,
        VectorStoreQueryMode.HYBRID,
        VectorStoreQueryMode.TEXT_SEARCH,
    ):
        result = await store.aquery(query_for(question, embed_model, k=1, mode=mode))
        assert result.ids == ["db"], mode

    # Without an embedding, the store embeds the query text with its embed model.
    result = await store.aquery(VectorStoreQuery(query_str=question, similarity_top_k=1))
    assert result.ids == ["db"]

    # With neither, the most recently updated nodes.
    result = await store.aquery(VectorStoreQuery(similarity_top_k=5))
    assert result.ids is not None and set(result.ids) == set(FACTS)

    with pytest.raises(NotImplementedError, match="mmr"):
        await store.aquery(query_for(question, embed_model, mode=VectorStoreQueryMode.MMR))
    with pytest.raises(ValueError, match="dimensions"):
        await store.aquery(VectorStoreQuery(query_embedding=[1.0, 0.0], similarity_top_k=1))


async def test_node_and_doc_id_restrictions(
    store: ChrysalisVectorStore, embed_model: WordEmbedding
) -> None:
    await store.async_add(
        [
            make_node("db", FACTS["db"], embed_model, ref_doc_id="ops"),
            make_node("deploy", FACTS["deploy"], embed_model, ref_doc_id="ops"),
            make_node("coffee", FACTS["coffee"], embed_model, ref_doc_id="office"),
        ]
    )
    question = "staging database restored"
    result = await store.aquery(query_for(question, embed_model, k=3, node_ids=["deploy"]))
    assert result.ids == ["deploy"]
    result = await store.aquery(query_for(question, embed_model, k=3, doc_ids=["office"]))
    assert result.ids == ["coffee"]


async def test_queries_count_accesses_unless_told_not_to(
    make_store: MakeStore, memory: AgentMemory, embed_model: WordEmbedding
) -> None:
    store = make_store(memory=memory)
    await store.async_add([make_node("db", FACTS["db"], embed_model)])
    await store.aquery(query_for("staging database", embed_model, k=1))
    doc = await memory.get("db")
    assert doc is not None and doc.access_count == 1

    quiet = make_store(memory=memory, record_access=False)
    await quiet.aquery(query_for("staging database", embed_model, k=1))
    doc = await memory.get("db")
    assert doc is not None and doc.access_count == 1


# --- deletes ---------------------------------------------------------------------------


async def test_delete_by_ref_doc_id_nodes_and_clear(
    store: ChrysalisVectorStore, memory: AgentMemory, embed_model: WordEmbedding
) -> None:
    await store.async_add(
        [
            make_node("db", FACTS["db"], embed_model, ref_doc_id="ops"),
            make_node("deploy", FACTS["deploy"], embed_model, ref_doc_id="ops"),
            make_node("coffee", FACTS["coffee"], embed_model, ref_doc_id="office"),
        ]
    )
    await store.adelete("ops")
    assert [n.node_id for n in await store.aget_nodes()] == ["coffee"]
    # Forgotten, not erased: the ops are kept (nothing is ever lost).
    forgotten = await memory.get("db", include_forgotten=True)
    assert forgotten is not None and forgotten.forgotten
    result = await store.aquery(query_for("staging database", embed_model, k=3))
    assert result.ids == ["coffee"]

    await store.async_add([make_node("tea", "Tea is in the left cupboard.", embed_model)])
    await store.adelete_nodes(node_ids=["coffee"])
    assert [n.node_id for n in await store.aget_nodes()] == ["tea"]

    await store.aclear()
    assert await store.aget_nodes() == []

    # Adding a deleted node again brings its memory back, with the new node's text.
    await store.async_add([make_node("db", "The staging DB moved to Tuesdays.", embed_model)])
    assert [n.node_id for n in await store.aget_nodes()] == ["db"]
    (back,) = await store.aget_nodes(node_ids=["db"])
    assert back.get_content() == "The staging DB moved to Tuesdays."
    moved = embed_model.vector("The staging DB moved to Tuesdays.")
    assert back.embedding == pytest.approx(moved, abs=1e-6)
    result = await store.aquery(query_for("staging DB Tuesdays", embed_model, k=1))
    assert result.ids == ["db"]


async def test_nodes_without_text_are_refused(
    store: ChrysalisVectorStore, memory: AgentMemory, embed_model: WordEmbedding
) -> None:
    good = make_node("good", "Some text.", embed_model)
    empty = make_node("empty", "   ", embed_model)
    with pytest.raises(ValueError, match="no text"):
        await store.async_add([good, empty])
    assert await memory.get("good") is None  # checked before anything is written


# --- collections -----------------------------------------------------------------------


async def test_collections_scope_a_store(
    make_store: MakeStore, memory: AgentMemory, embed_model: WordEmbedding
) -> None:
    runbooks = make_store(memory=memory, collection="runbooks")
    office = make_store(memory=memory, collection="office")
    everything = make_store(memory=memory)
    await runbooks.async_add([make_node("db", FACTS["db"], embed_model)])
    await office.async_add([make_node("coffee", FACTS["coffee"], embed_model)])

    assert [n.node_id for n in await runbooks.aget_nodes()] == ["db"]
    assert [n.node_id for n in await office.aget_nodes(node_ids=["db", "coffee"])] == ["coffee"]
    assert {n.node_id for n in await everything.aget_nodes()} == {"db", "coffee"}
    result = await office.aquery(query_for("staging database restored", embed_model, k=5))
    assert result.ids == ["coffee"]

    await office.aclear()
    assert {n.node_id for n in await everything.aget_nodes()} == {"db"}


# --- LlamaIndex on top -----------------------------------------------------------------


async def test_vector_store_index_retriever_and_query_engine(
    store: ChrysalisVectorStore, embed_model: WordEmbedding
) -> None:
    index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
    for key, text in FACTS.items():
        await index.ainsert(Document(text=text, id_=key))
    retrieved = await index.as_retriever(similarity_top_k=1).aretrieve("coffee machine descaled")
    assert [r.node.get_content() for r in retrieved] == [FACTS["coffee"]]
    assert retrieved[0].node.ref_doc_id == "coffee"

    engine = VectorStoreIndex.from_vector_store(store, embed_model=embed_model).as_query_engine(
        llm=MockLLM(), similarity_top_k=1
    )
    response = await engine.aquery("When are deploys to production?")
    assert FACTS["deploy"] in str(response)  # MockLLM echoes its prompt, context included
    assert [n.node.ref_doc_id for n in response.source_nodes] == ["deploy"]

    await index.adelete_ref_doc("deploy")
    response = await engine.aquery("When are deploys to production?")
    assert FACTS["deploy"] not in str(response)


def test_blocking_api_from_plain_code(tmp_path: Path, embed_model: WordEmbedding) -> None:
    """Made from config keywords, the store runs its own loop: sync calls just work."""
    with ChrysalisVectorStore(
        agent_id="agent-s", data_dir=tmp_path, embed_model=embed_model
    ) as store:
        assert store.add([make_node(k, t, embed_model) for k, t in FACTS.items()]) == list(FACTS)
        assert store.query(query_for("coffee machine", embed_model, k=1)).ids == ["coffee"]
        assert {n.node_id for n in store.get_nodes()} == set(FACTS)
        store.delete("doc-1")
        assert store.get_nodes() == []
        store.add([make_node("tea", "Tea is in the left cupboard.", embed_model)])
        store.delete_nodes(node_ids=["tea"])
        store.clear()
        assert store.get_nodes() == []

        # LlamaIndex's blocking entry points, which run coroutines on loops of their own.
        index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
        index.insert(Document(text=FACTS["db"], id_="db-doc"))
        response = index.as_query_engine(llm=MockLLM()).query("staging database")
        assert FACTS["db"] in str(response)
    assert (tmp_path / "agent-s" / "memory.db").exists()


# --- which memory ----------------------------------------------------------------------


def test_a_blocking_agent_memory_is_shared_on_its_own_loop(
    tmp_path: Path, embed_model: WordEmbedding
) -> None:
    with BlockingAgentMemory(
        agent_id="agent-k", data_dir=tmp_path, embedder=LlamaIndexEmbedder(embed_model)
    ) as memory:
        with ChrysalisVectorStore(memory=memory, embed_model=embed_model) as store:
            assert store.client is memory.memory
            store.add([make_node(k, t, embed_model) for k, t in FACTS.items()])
            assert store.query(query_for("coffee machine", embed_model, k=1)).ids == ["coffee"]
        doc = memory.get("coffee")  # still open: the store did not open it
        assert doc is not None and doc.access_count == 1


async def test_with_no_memory_and_no_keywords_it_works_on_a_local_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, embed_model: WordEmbedding
) -> None:
    monkeypatch.chdir(tmp_path)
    store = ChrysalisVectorStore(embed_model=embed_model)
    try:
        await store.async_add([make_node("db", FACTS["db"], embed_model)])
        assert (await store.aquery(query_for("staging", embed_model, k=1))).ids == ["db"]
        assert store.client.agent_id == "local-agent"
    finally:
        await store.aclose()
    assert (tmp_path / "data" / "local-agent" / "memory.db").exists()


async def test_stores_of_one_agent_share_one_replica(
    tmp_path: Path, embed_model: WordEmbedding
) -> None:
    first = ChrysalisVectorStore(agent_id="agent-x", data_dir=tmp_path, embed_model=embed_model)
    second = ChrysalisVectorStore(agent_id="agent-x", data_dir=tmp_path, embed_model=embed_model)
    try:
        assert first.client is second.client
        await first.async_add([make_node("db", FACTS["db"], embed_model)])
        assert [n.node_id for n in await second.aget_nodes()] == ["db"]
        with pytest.raises(UsageError, match="another embedder"):
            ChrysalisVectorStore(
                agent_id="agent-x",
                data_dir=tmp_path,
                embed_model=WordEmbedding(model_name="another-model"),
            )
    finally:
        await first.aclose()
        await second.aclose()
    # The last one closed the memory: the directory is free for the next owner.
    async with AgentMemory(agent_id="agent-x", data_dir=tmp_path) as reopened:
        assert await reopened.get("db") is not None


async def test_a_memory_with_its_own_embedder_needs_embeddings_memory(
    make_store: MakeStore, tmp_path: Path, embed_model: WordEmbedding
) -> None:
    async with AgentMemory(
        agent_id="agent-h", data_dir=tmp_path, embedder=HashingEmbedder()
    ) as hashing:
        store = make_store(memory=hashing)
        with pytest.raises(UsageError, match="LlamaIndexEmbedder"):
            await store.async_add([make_node("db", FACTS["db"], embed_model)])

        # embeddings="memory": the memory's own recall, from the query's text.
        text_store = make_store(memory=hashing, embeddings="memory")
        assert text_store.is_embedding_query is False
        await text_store.async_add([make_node(k, t, embed_model) for k, t in FACTS.items()])
        result = await text_store.aquery(
            VectorStoreQuery(query_str="staging database restored", similarity_top_k=1)
        )
        assert result.ids == ["db"]
        index = VectorStoreIndex.from_vector_store(text_store, embed_model=embed_model)
        retrieved = await index.as_retriever(similarity_top_k=1).aretrieve("coffee machine")
        assert retrieved[0].node.node_id == "coffee"
    with pytest.raises(ValueError, match="embeddings='node' only"):
        ChrysalisVectorStore(memory=hashing, embeddings="memory", embed_model=embed_model)
    with pytest.raises(ValueError, match="not both"):
        ChrysalisVectorStore(memory=hashing, agent_id="agent-h")


async def test_blocking_calls_inside_the_memorys_own_loop_are_refused(
    store: ChrysalisVectorStore, embed_model: WordEmbedding, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UsageError, match="async method"):
        store.add([make_node("db", FACTS["db"], embed_model)])

    # LlamaIndex's blocking methods run coroutines on a worker thread while the loop
    # that owns the memory waits for them: an error after a deadline, not a hang.
    monkeypatch.setattr(replica, "START_TIMEOUT", 0.2)
    with pytest.raises(UsageError, match="blocked"):
        VectorStoreIndex.from_documents(
            [Document(text=FACTS["db"])],
            storage_context=StorageContext.from_defaults(vector_store=store),
            embed_model=embed_model,
            use_async=True,
        )
    # The loop is free again: the async methods work.
    await store.async_add([make_node("db", FACTS["db"], embed_model)])


async def test_an_embedder_over_settings_embed_model(
    monkeypatch: pytest.MonkeyPatch, embed_model: WordEmbedding
) -> None:
    from llama_index.core import Settings

    monkeypatch.setattr(Settings, "_embed_model", embed_model)
    embedder = LlamaIndexEmbedder()
    assert embedder.embed_model is embed_model
    assert embedder.model == "llamaindex/WordEmbedding/word-buckets/64"
    assert await embedder.embed(["a b", "c"]) == [
        embed_model.vector("a b"),
        embed_model.vector("c"),
    ]


async def test_chrysalis_embedding_shares_the_agents_own_vectors(
    make_store: MakeStore, tmp_path: Path
) -> None:
    """With Chrysalis's embedder as the embed model, any AgentMemory using that embedder
    (the hashing one here, as every agent without Ollama) serves the node mode."""
    embed_model = ChrysalisEmbedding()
    assert embed_model.get_text_embedding("x") == await embed_model.aget_query_embedding("x")
    async with AgentMemory(
        agent_id="agent-c", data_dir=tmp_path, embedder=HashingEmbedder()
    ) as plain:
        store = make_store(memory=plain, embed_model=embed_model)
        assert store.embedder is not None
        assert store.embedder.model == HashingEmbedder().model
        index = VectorStoreIndex.from_vector_store(store, embed_model=embed_model)
        for key, text in FACTS.items():
            await index.ainsert(Document(text=text, id_=key))
        retrieved = await index.as_retriever(similarity_top_k=1).aretrieve("coffee machine")
        assert retrieved[0].node.ref_doc_id == "coffee"
        # Plain recall, LlamaIndex aside, finds the same memories.
        (hit,) = await plain.recall("when are production deploys", k=1)
        assert hit.memory.content == FACTS["deploy"]
