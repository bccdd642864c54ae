"""Two agents through a real hub (in process, on loopback): one indexes, the other's
query engine and memory block find what it learned."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.llms import MockLLM
from llama_index.memory.chrysalis import ChrysalisMemoryBlock
from llama_index.vector_stores.chrysalis import ChrysalisVectorStore, LlamaIndexEmbedder

from chrysalis_memory import AgentMemory
from chrysalis_memory.hub.server import Hub
from tests.waiting import wait_until

from .support import WordEmbedding

DOCS = {
    "staging": "The staging database is restored from backup every Sunday at two.",
    "deploys": "Production deploys happen on Tuesdays right after the standup.",
    "coffee": "The office coffee machine is descaled on the first day of each month.",
}


@pytest.fixture
async def agent_b(hub: Hub, tmp_path: Path) -> AsyncIterator[tuple[AgentMemory, WordEmbedding]]:
    """Agent b: its own memory and its own instance of the same embed model, open on the
    test's loop (so that the test can sync it directly)."""
    embed_model = WordEmbedding()
    async with AgentMemory(
        agent_id="agent-b",
        data_dir=tmp_path / "b",
        hub_url=hub.url,
        hub_token=hub.tokens.create("agent-b"),
        embedder=LlamaIndexEmbedder(embed_model),
    ) as memory:
        yield memory, embed_model


def hub_keywords(hub: Hub, agent_id: str, data_dir: Path) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "data_dir": data_dir,
        "hub_url": hub.url,
        "hub_token": hub.tokens.create(agent_id),
    }


async def test_one_agent_indexes_the_others_query_engine_finds_it(
    hub: Hub,
    tmp_path: Path,
    agent_b: tuple[AgentMemory, WordEmbedding],
    stack: AsyncExitStack,
) -> None:
    # Agent a: a store from config keywords (it runs its own memory on its own loop).
    embed_a = WordEmbedding()
    store_a = ChrysalisVectorStore(
        **hub_keywords(hub, "agent-a", tmp_path / "a"), embed_model=embed_a
    )
    stack.push_async_callback(store_a.aclose)
    index_a = VectorStoreIndex.from_vector_store(store_a, embed_model=embed_a)
    for key, text in DOCS.items():
        await index_a.ainsert(Document(text=text, id_=key, metadata={"source": f"{key}.md"}))
    await store_a.async_now()
    written = {node.node_id: node for node in await store_a.aget_nodes()}
    assert {node.ref_doc_id for node in written.values()} == set(DOCS)

    # Agent b pulls them from the hub.
    memory_b, embed_b = agent_b
    store_b = ChrysalisVectorStore(memory=memory_b, embed_model=embed_b)
    stack.push_async_callback(store_b.aclose)

    async def arrived() -> bool:
        await memory_b.sync_now()
        return all([await memory_b.get(node_id) for node_id in written])

    await wait_until(arrived, what="agent b to receive agent a's nodes")

    engine = VectorStoreIndex.from_vector_store(store_b, embed_model=embed_b).as_query_engine(
        llm=MockLLM(), similarity_top_k=1
    )
    response = await engine.aquery("When is the staging database restored?")
    assert DOCS["staging"] in str(response)  # MockLLM echoes its prompt, context included
    (source,) = response.source_nodes
    original = written[source.node.node_id]
    assert source.node.get_content() == original.get_content()
    assert source.node.metadata == {"source": "staging.md"}
    assert source.node.ref_doc_id == "staging"

    # Agent a's embeddings came with its nodes: agent b embedded none of the documents.
    assert not [text for text in embed_b.embedded if text != "dimensions"]
    nodes_b = {node.node_id: node for node in await store_b.aget_nodes()}
    for node_id, node in written.items():
        assert node.embedding is not None
        assert nodes_b[node_id].embedding == pytest.approx(node.embedding, abs=1e-6)

    # The memories are agent a's: shared, and counted as used by agent b.
    doc = await memory_b.get(source.node.node_id)
    assert doc is not None
    assert (doc.source_instance, doc.access_count) == ("agent-a", 1)

    # What agent b forgets, agent a forgets too.
    await store_b.adelete("coffee")
    await memory_b.sync_now()

    async def forgotten() -> bool:
        await store_a.async_now()
        return not any(n.ref_doc_id == "coffee" for n in await store_a.aget_nodes())

    await wait_until(forgotten, what="agent a to forget the coffee document")


async def test_chat_turns_of_one_agent_reach_the_others_memory_block(
    hub: Hub, tmp_path: Path, stack: AsyncExitStack
) -> None:
    block_a = ChrysalisMemoryBlock(**hub_keywords(hub, "agent-a", tmp_path / "a"))
    block_b = ChrysalisMemoryBlock(**hub_keywords(hub, "agent-b", tmp_path / "b"))
    for block in (block_a, block_b):
        stack.push_async_callback(block.aclose)

    turn = [
        ChatMessage(role=MessageRole.USER, content="The Falcon launch moved to March 14."),
        ChatMessage(role=MessageRole.ASSISTANT, content="Noted: Falcon launches on March 14."),
    ]
    await block_a.aput(turn, from_short_term_memory=True, session_id="chat-a")
    await block_a.async_now()

    question = [ChatMessage(role=MessageRole.USER, content="When does Falcon launch?")]

    async def recalled() -> bool:
        await block_b.async_now()
        return "The Falcon launch moved to March 14." in await block_b.aget(question)

    await wait_until(recalled, what="agent b's block to recall agent a's chat turn")
