"""ChrysalisRetriever: options in the constructor and at invoke, filters, access counts."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from langchain_chrysalis import ChrysalisEmbeddings, ChrysalisRetriever

from chrysalis_memory import BlockingAgentMemory
from chrysalis_memory.errors import InvalidArgumentError
from chrysalis_memory.recall.embedders import HashingEmbedder


@pytest.fixture
def agent(data_dir: Path) -> Iterator[BlockingAgentMemory]:
    with BlockingAgentMemory(
        agent_id="kb", data_dir=data_dir, embedder=HashingEmbedder(512)
    ) as memory:
        memory.learn(
            "The staging database is restored every Sunday.",
            importance=0.8,
            memory_type="semantic",
            tags=["ops", "db"],
            memory_id="restore",
        )
        memory.learn(
            "Deploy to staging with `make deploy ENV=staging`.",
            importance=0.8,
            memory_type="procedural",
            tags=["ops"],
            memory_id="deploy",
        )
        memory.learn(
            "The user asked about the staging database yesterday.",
            importance=0.5,
            tags=["chat"],
            memory_id="asked",
        )
        yield memory


def test_k_filters_and_mode_in_the_constructor_and_at_invoke(agent: BlockingAgentMemory) -> None:
    retriever = ChrysalisRetriever(memory=agent, k=3)
    try:
        assert len(retriever.invoke("staging database")) == 3
        assert len(retriever.invoke("staging database", k=1)) == 1
        docs = retriever.invoke("staging", filter={"tags": ["ops"]})
        assert {d.id for d in docs} == {"restore", "deploy"}
        docs = retriever.invoke("staging", filter={"memory_type": "procedural"})
        assert [d.id for d in docs] == ["deploy"]
        assert retriever.invoke("staging", filter={"source": "someone-else"}) == []
        docs = retriever.invoke("Sunday", mode="keyword")
        assert [d.id for d in docs] == ["restore"]
        assert retriever.invoke("   ") == []
        with pytest.raises(InvalidArgumentError, match="unknown retriever options"):
            retriever.invoke("staging", top_k=2)
        with pytest.raises(InvalidArgumentError, match="unknown filter keys"):
            retriever.invoke("staging", filter={"colour": "red"})
    finally:
        retriever.close()

    narrow = ChrysalisRetriever(memory=agent, filter={"tags": ["ops"]})
    try:
        # A filter at invoke adds to the constructor's.
        docs = narrow.invoke("staging", filter={"memory_type": "semantic"})
        assert [d.id for d in docs] == ["restore"]
    finally:
        narrow.close()


def test_documents_carry_the_memory_and_its_score(agent: BlockingAgentMemory) -> None:
    retriever = ChrysalisRetriever(memory=agent, k=1)
    try:
        [doc] = retriever.invoke("when is the staging database restored?")
    finally:
        retriever.close()
    assert doc.id == "restore"
    assert doc.page_content == "The staging database is restored every Sunday."
    info = doc.metadata["chrysalis"]
    assert info["memory_id"] == "restore" and info["source"] == "kb"
    assert info["tags"] == ["db", "ops"] and info["memory_type"] == "semantic"
    assert 0.0 < info["score"] <= 1.0 and 0.0 < info["similarity"] <= 1.0


def test_recalling_counts_a_use_unless_told_not_to(agent: BlockingAgentMemory) -> None:
    looking = ChrysalisRetriever(memory=agent, k=1, record_access=False)
    using = ChrysalisRetriever(memory=agent, k=1)
    try:
        looking.invoke("Sunday restore")
        before = agent.get("restore")
        assert before is not None and before.access_count == 0
        using.invoke("Sunday restore")
        after = agent.get("restore")
        assert after is not None and after.access_count == 1
    finally:
        looking.close()
        using.close()


async def test_async_and_query_embeddings_of_the_callers_model(agent: BlockingAgentMemory) -> None:
    # The agent embeds with the hashing embedder; the retriever embeds queries with the
    # same model through LangChain's interface (its query side).
    retriever = ChrysalisRetriever(
        memory=agent, k=2, embedding=ChrysalisEmbeddings(HashingEmbedder(512))
    )
    try:
        docs = await retriever.ainvoke("how do I deploy to staging?")
        assert docs[0].id == "deploy"
        again = await retriever.ainvoke("how do I deploy to staging?", k=2)
        assert [d.id for d in again] == [d.id for d in docs]
        assert [d.id for d in await retriever.ainvoke("deploy", k=1, mode="vector")] == ["deploy"]
    finally:
        await retriever.aclose()


def test_a_retriever_opens_its_own_agent_from_the_config_keywords(data_dir: Path) -> None:
    with BlockingAgentMemory(agent_id="own", data_dir=data_dir, embedder="hashing") as memory:
        memory.learn("Lunch is at noon.", importance=0.8)
    retriever = ChrysalisRetriever(
        agent_id="own", data_dir=data_dir, config=None, embedding=ChrysalisEmbeddings()
    )
    try:
        assert [d.page_content for d in retriever.invoke("when is lunch?")] == ["Lunch is at noon."]
        assert retriever.agent_memory.agent_id == "own"
    finally:
        retriever.close()
