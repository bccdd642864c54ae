"""ChrysalisChatMessageHistory: sessions of messages kept as memories."""

from __future__ import annotations

from pathlib import Path

import pytest
from langchain_chrysalis import ChrysalisChatMessageHistory, ChrysalisRetriever
from langchain_core.language_models import FakeListChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder
from langchain_core.runnables.history import RunnableWithMessageHistory

from chrysalis_memory import AgentMemory
from chrysalis_memory.errors import InvalidArgumentError
from chrysalis_memory.recall.embedders import HashingEmbedder

from .conftest import DEPRECATED_CHAINS

CONVERSATION: list[BaseMessage] = [
    SystemMessage(content="You are terse."),
    HumanMessage(content="What is 6 x 7?", id="h1"),
    AIMessage(
        content="",
        tool_calls=[{"name": "multiply", "args": {"a": 6, "b": 7}, "id": "call-1"}],
    ),
    ToolMessage(content="42", tool_call_id="call-1"),
    AIMessage(content=[{"type": "text", "text": "It is 42."}]),
    HumanMessage(content="Thanks!", additional_kwargs={"lang": "en"}),
]


@pytest.fixture
def memory(data_dir: Path) -> AgentMemory:
    """Not open: the first history that uses it opens it (on a thread of its own)."""
    return AgentMemory(agent_id="chat", data_dir=data_dir, embedder=HashingEmbedder(512))


def test_messages_come_back_as_they_were_in_order(memory: AgentMemory) -> None:
    with ChrysalisChatMessageHistory("s1", memory=memory) as history:
        assert history.messages == []
        history.add_messages(CONVERSATION[:3])
        history.add_messages(CONVERSATION[3:])
        for i in range(20):  # many within one millisecond keep their order
            history.add_user_message(f"message {i}")
        assert history.messages == [
            *CONVERSATION,
            *(HumanMessage(f"message {i}") for i in range(20)),
        ]


def test_sessions_are_separate_and_clear_forgets_one(memory: AgentMemory) -> None:
    with (
        ChrysalisChatMessageHistory("alice", memory=memory) as alice,
        ChrysalisChatMessageHistory("bob", memory=memory) as bob,
    ):
        alice.add_user_message("I am Alice")
        bob.add_user_message("I am Bob")
        alice.add_ai_message("Hello Alice")
        assert [m.content for m in alice.messages] == ["I am Alice", "Hello Alice"]
        assert [m.content for m in bob.messages] == ["I am Bob"]
        alice.clear()
        assert alice.messages == []
        assert [m.content for m in bob.messages] == ["I am Bob"]
        alice.add_user_message("Back again")
        assert [m.content for m in alice.messages] == ["Back again"]


def test_messages_are_memories_that_recall_finds(memory: AgentMemory) -> None:
    long_text = "The deployment runbook says: " + "check the dashboards. " * 5000  # > 64 KiB
    with ChrysalisChatMessageHistory("s1", memory=memory) as history:
        history.add_messages([HumanMessage(long_text), AIMessage("I will read the runbook.")])
        assert history.messages[0].content == long_text
        retriever = ChrysalisRetriever(memory=memory, k=2, filter={"tags": ["chat"]})
        try:
            docs = retriever.invoke("check the dashboards")
        finally:
            retriever.close()
        [doc] = [d for d in docs if d.page_content == long_text]
        assert set(doc.metadata["chrysalis"]["tags"]) == {"chat", "chat-session:s1"}
        stored = history._handle.run(lambda mem: mem.get(doc.metadata["chrysalis"]["memory_id"]))
        assert stored is not None and stored.importance == 0.8  # shared through the hub


async def test_async_methods(memory: AgentMemory) -> None:
    history = ChrysalisChatMessageHistory("async", memory=memory)
    try:
        await history.aadd_messages(CONVERSATION)
        assert await history.aget_messages() == CONVERSATION
        await history.aclear()
        assert await history.aget_messages() == []
    finally:
        await history.aclose()


@pytest.mark.filterwarnings(DEPRECATED_CHAINS)
def test_runnable_with_message_history(memory: AgentMemory) -> None:
    prompt = ChatPromptTemplate.from_messages(
        [MessagesPlaceholder("history"), ("human", "{question}")]
    )
    model = FakeListChatModel(responses=["Hi Ada.", "You are Ada."])
    made: list[ChrysalisChatMessageHistory] = []

    def history_of(session_id: str) -> ChrysalisChatMessageHistory:
        made.append(ChrysalisChatMessageHistory(session_id, memory=memory))
        return made[-1]

    chain = RunnableWithMessageHistory(
        prompt | model,
        history_of,
        input_messages_key="question",
        history_messages_key="history",
    )
    config = {"configurable": {"session_id": "ada"}}
    try:
        chain.invoke({"question": "I am Ada."}, config)  # type: ignore[arg-type]
        chain.invoke({"question": "Who am I?"}, config)  # type: ignore[arg-type]
        assert [m.content for m in made[-1].messages] == [
            "I am Ada.",
            "Hi Ada.",
            "Who am I?",
            "You are Ada.",
        ]
    finally:
        for history in made:
            history.close()
    assert not memory.is_open


def test_bad_arguments(memory: AgentMemory) -> None:
    with pytest.raises(InvalidArgumentError, match="session_id"):
        ChrysalisChatMessageHistory("  ", memory=memory)
    with (
        ChrysalisChatMessageHistory("s", memory=memory) as history,
        pytest.raises(InvalidArgumentError, match="LangChain messages"),
    ):
        history.add_messages(["not a message"])  # type: ignore[list-item]
