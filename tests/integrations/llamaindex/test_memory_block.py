"""ChrysalisMemoryBlock inside LlamaIndex's Memory, with a mock LLM."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from llama_index.core.base.llms.types import ChatMessage, MessageRole
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import MockLLM
from llama_index.core.memory import Memory
from llama_index.core.schema import TextNode
from llama_index.memory.chrysalis import ChrysalisMemoryBlock
from llama_index.vector_stores.chrysalis import ChrysalisVectorStore
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from chrysalis_memory import AgentMemory
from chrysalis_memory.errors import UsageError
from chrysalis_memory.recall.embedders import HashingEmbedder

from .support import WordEmbedding

FACT = "The staging database is restored every Sunday at 02:00."


@pytest.fixture
async def agent(tmp_path: Path) -> AsyncIterator[AgentMemory]:
    """An agent memory with the offline embedder, open on the test's loop."""
    async with AgentMemory(
        agent_id="agent-a", data_dir=tmp_path / "agents", embedder=HashingEmbedder()
    ) as opened:
        yield opened


@pytest.fixture
async def block(agent: AgentMemory) -> AsyncIterator[ChrysalisMemoryBlock]:
    made = ChrysalisMemoryBlock(memory=agent)
    yield made
    await made.aclose()


SmallMemory = Callable[..., Memory]


@pytest.fixture
async def small_memory() -> AsyncIterator[SmallMemory]:
    """Memories whose short-term queue holds about one turn: older turns are flushed.
    Their chat stores' engines are disposed of at the end."""
    engines: list[AsyncEngine] = []

    def factory(block: ChrysalisMemoryBlock, session_id: str = "chat-1") -> Memory:
        engine = create_async_engine("sqlite+aiosqlite:///:memory:", poolclass=StaticPool)
        engines.append(engine)
        return Memory.from_defaults(
            session_id=session_id,
            memory_blocks=[block],
            token_limit=60,
            chat_history_token_ratio=0.5,
            token_flush_size=10,
            tokenizer_fn=str.split,
            async_engine=engine,
        )

    yield factory
    for engine in engines:
        await engine.dispose()


async def test_inside_memory_turns_are_learned_and_recalled(
    agent: AgentMemory, block: ChrysalisMemoryBlock, small_memory: SmallMemory
) -> None:
    await agent.learn(FACT, importance=0.9, memory_type="semantic")
    engine = SimpleChatEngine.from_defaults(llm=MockLLM(), memory=small_memory(block))

    # What the collective knows reaches the LLM (MockLLM echoes its prompt).
    response = await engine.achat("When is the staging database restored?")
    assert FACT in str(response)
    assert "<collective_memory>" in str(response)

    # Older turns leave the short-term queue and become memories of the agent.
    await engine.achat("Remember that the launch of project Falcon moved to March.")
    await engine.achat("Also the design review for Falcon is on Thursday afternoon.")
    await engine.achat("Thanks, that is all for today about anything at all.")
    turns = await agent.list(tags=["chat"])
    assert turns, "no turn was flushed"
    falcon = next(t for t in turns if t.content.startswith("user: Remember that the launch"))
    assert "\nassistant: " in falcon.content
    assert falcon.tags == ["chat", "session:chat-1"]
    assert (falcon.memory_type.value, falcon.importance) == ("episodic", 0.8)
    assert falcon.sync_status.value == "pending"  # shared with the other agents
    assert falcon.metadata == {
        "kind": "chat_turn",
        "roles": ["user", "assistant"],
        "session_id": "chat-1",
    }

    # Another conversation recalls it.
    later = SimpleChatEngine.from_defaults(llm=MockLLM(), memory=small_memory(block, "chat-2"))
    response = await later.achat("When is the Falcon launch?")
    assert "launch of project Falcon moved to March" in str(response)


async def test_aget_recalls_what_is_relevant_to_the_latest_messages(
    agent: AgentMemory,
) -> None:
    await agent.learn(FACT, importance=0.9)
    await agent.learn("Lunch is served at noon in the canteen.", importance=0.9)
    block = ChrysalisMemoryBlock(
        memory=agent,
        similarity_top_k=1,
        retrieval_context_window=1,
        format_template="Known: {{ text }}",
        record_access=False,
    )
    try:
        messages = [
            ChatMessage(role=MessageRole.SYSTEM, content="You are terse."),
            ChatMessage(role=MessageRole.USER, content="Where is lunch?"),
            ChatMessage(role=MessageRole.ASSISTANT, content="In the canteen."),
            ChatMessage(role=MessageRole.USER, content="When is the staging database restored?"),
        ]
        assert await block.aget(messages) == f"Known: {FACT}"
        assert await block.aget([]) == ""
        assert await block.aget(messages[:1]) == ""  # a system prompt alone is no query
        assert all(doc.access_count == 0 for doc in await agent.list())
    finally:
        await block.aclose()


async def test_aput_learns_one_memory_per_turn_once(
    agent: AgentMemory, block: ChrysalisMemoryBlock
) -> None:
    def turn() -> list[ChatMessage]:
        return [
            ChatMessage(role=MessageRole.SYSTEM, content="You are terse."),
            ChatMessage(role=MessageRole.USER, content="Ping?"),
            ChatMessage(role=MessageRole.ASSISTANT, content="Pong."),
            ChatMessage(role=MessageRole.USER, content="What is our SLA?"),
            ChatMessage(role=MessageRole.ASSISTANT, content="Let me look."),
            ChatMessage(role=MessageRole.TOOL, content="sla: 99.9%"),
            ChatMessage(role=MessageRole.ASSISTANT, content="99.9%."),
        ]

    await block.aput(turn(), from_short_term_memory=True, session_id="s-1")
    await block.aput(turn(), from_short_term_memory=True, session_id="s-1")  # flushed again
    contents = sorted(doc.content for doc in await agent.list(tags=["session:s-1"]))
    assert contents == [
        "user: Ping?\nassistant: Pong.",
        "user: What is our SLA?\nassistant: Let me look.\ntool: sla: 99.9%\nassistant: 99.9%.",
    ]

    choosy = ChrysalisMemoryBlock(
        memory=agent, name="choosy", accept_short_term_memory=False, importance=0.2
    )
    await choosy.aput(turn(), from_short_term_memory=True)
    assert len(await agent.list(tags=["chat"])) == 2
    await choosy.aput([ChatMessage(role=MessageRole.USER, content="Kept here only.")])
    (local,) = [d for d in await agent.list(tags=["chat"]) if d.content.endswith("only.")]
    assert local.sync_status.value == "local"  # importance 0.2: below the threshold
    await choosy.aclose()


async def test_with_no_memory_and_no_keywords_it_works_on_a_local_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    block = ChrysalisMemoryBlock()
    try:
        await block.aput([ChatMessage(role=MessageRole.USER, content="My name is Ada.")])
        text = await block.aget([ChatMessage(role=MessageRole.USER, content="What is my name?")])
        assert "user: My name is Ada." in text
        assert block.client.agent_id == "local-agent"
    finally:
        await block.aclose()
    assert (tmp_path / "data" / "local-agent" / "memory.db").exists()


async def test_a_block_and_a_store_of_one_agent_share_its_replica(
    tmp_path: Path, embed_model: WordEmbedding
) -> None:
    store = ChrysalisVectorStore(agent_id="agent-s", data_dir=tmp_path, embed_model=embed_model)
    block = ChrysalisMemoryBlock(agent_id="agent-s", data_dir=tmp_path)
    shared = ChrysalisMemoryBlock(memory=store.client, name="shared")
    try:
        assert block.client is store.client is shared.client
        node = TextNode(id_="db", text=FACT)
        node.embedding = embed_model.vector(FACT)
        await store.async_add([node])
        question = [ChatMessage(role=MessageRole.USER, content="staging database restore day?")]
        assert FACT in await block.aget(question)
        assert FACT in await shared.aget(question)
    finally:
        for each in (shared, block):
            await each.aclose()
        await store.aclose()
    with pytest.raises(UsageError, match="closed"):
        await block.aget(question)


async def test_settings_are_checked(agent: AgentMemory) -> None:
    with pytest.raises(ValueError, match="memory_type"):
        ChrysalisMemoryBlock(memory=agent, memory_type="dreamy")
    with pytest.raises(ValueError, match="not both"):
        ChrysalisMemoryBlock(memory=agent, agent_id="agent-b")


def test_blocking_memory_from_plain_code(tmp_path: Path) -> None:
    """Memory's blocking methods run the block's coroutines on loops of their own: a
    block made from config keywords serves them from its own loop."""
    import asyncio

    engine = create_async_engine("sqlite+aiosqlite:///:memory:", poolclass=StaticPool)
    with ChrysalisMemoryBlock(agent_id="agent-s", data_dir=tmp_path) as block:
        memory = Memory.from_defaults(
            session_id="chat-s",
            memory_blocks=[block],
            token_limit=40,
            chat_history_token_ratio=0.5,
            token_flush_size=10,
            tokenizer_fn=str.split,
            async_engine=engine,
        )
        chat = SimpleChatEngine.from_defaults(llm=MockLLM(max_tokens=5), memory=memory)
        chat.chat("The backup window is from one to three at night, every night.")
        chat.chat("And the restore drill happens on the first Monday of the quarter.")
        chat.chat("What else should I know about backups and restores and drills?")
        messages = memory.get()
        assert "The backup window is from one to three" in str(messages[0].content)
    # LlamaIndex's asyncio_run may have left this thread a loop of its own: close it.
    try:
        leftover: asyncio.AbstractEventLoop | None = (
            asyncio.get_event_loop_policy().get_event_loop()
        )
    except RuntimeError:
        leftover = None
    if leftover is not None and not leftover.is_running():
        leftover.close()
        asyncio.set_event_loop(None)
    asyncio.run(engine.dispose())
