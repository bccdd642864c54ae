"""ChrysalisMemory as the memory of LangChain's classic chains, with fake LLMs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from langchain_chrysalis import ChrysalisEmbeddings, ChrysalisMemory
from langchain_classic.chains import ConversationChain, LLMChain
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import FakeListChatModel, FakeListLLM
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder, PromptTemplate

from chrysalis_memory.errors import InvalidArgumentError

from .conftest import DEPRECATED_CHAINS

pytestmark = pytest.mark.filterwarnings(DEPRECATED_CHAINS)


class Prompts(BaseCallbackHandler):
    """Records what the chain sends to the model."""

    def __init__(self) -> None:
        self.prompts: list[str] = []
        self.messages: list[list[BaseMessage]] = []

    def on_llm_start(self, serialized: dict[str, Any], prompts: list[str], **kwargs: Any) -> None:
        self.prompts.extend(prompts)

    def on_chat_model_start(
        self, serialized: dict[str, Any], messages: list[list[BaseMessage]], **kwargs: Any
    ) -> None:
        self.messages.extend(messages)


@pytest.fixture
def memory(data_dir: Path, embedding: ChrysalisEmbeddings) -> ChrysalisMemory:
    chrysalis = ChrysalisMemory(agent_id="chat-agent", data_dir=data_dir, embedding=embedding, k=2)
    yield chrysalis  # type: ignore[misc]
    chrysalis.close()


def test_a_conversation_chain_recalls_what_is_relevant_to_the_input(
    memory: ChrysalisMemory,
) -> None:
    seen = Prompts()
    llm = FakeListLLM(responses=["Noted.", "Lovely.", "Your favourite colour is teal."])
    chain = ConversationChain(llm=llm, memory=memory)
    run = {"callbacks": [seen]}

    chain.invoke({"input": "My favourite colour is teal."}, run)
    chain.invoke({"input": "I had pasta for dinner yesterday."}, run)
    answer = chain.invoke({"input": "What is my favourite colour?"}, run)

    assert answer["response"] == "Your favourite colour is teal."
    assert "Human: My favourite colour is teal.\nAI: Noted." in seen.prompts[2]
    # The exchange was learned as a memory of the agent, ready to be shared.
    exchanges = memory._handle.run(lambda mem: mem.list(tags=["conversation"]))
    assert len(exchanges) == 3
    assert all(m.importance == 0.8 and m.memory_type.value == "episodic" for m in exchanges)


def test_an_llm_chain_recalls_facts_from_the_whole_agent_memory(
    data_dir: Path, embedding: ChrysalisEmbeddings
) -> None:
    memory = ChrysalisMemory(
        agent_id="ops-agent",
        data_dir=data_dir,
        embedding=embedding,
        memory_key="context",
        input_key="question",
        k=1,
    )
    try:
        # Learned by the agent (or received from another one): not a conversation.
        memory._handle.run(
            lambda mem: mem.learn(
                "The staging database is restored every Sunday at 02:00.", importance=0.9
            )
        )
        memory._handle.run(lambda mem: mem.learn("The office plants need water.", importance=0.9))
        seen = Prompts()
        prompt = PromptTemplate.from_template(
            "Context:\n{context}\n\nQuestion: {question}\nAnswer:"
        )
        chain = LLMChain(llm=FakeListLLM(responses=["Sunday."]), prompt=prompt, memory=memory)
        chain.invoke({"question": "When is the staging database restored?"}, {"callbacks": [seen]})
        assert seen.prompts == [
            "Context:\nThe staging database is restored every Sunday at 02:00.\n\n"
            "Question: When is the staging database restored?\nAnswer:"
        ]
    finally:
        memory.close()


def test_return_messages_gives_a_chat_prompt_messages(memory: ChrysalisMemory) -> None:
    memory.return_messages = True
    memory._handle.run(lambda mem: mem.learn("The user's name is Ada.", importance=0.9))
    prompt = ChatPromptTemplate.from_messages(
        [MessagesPlaceholder("history"), ("human", "{input}")]
    )
    seen = Prompts()
    chain = LLMChain(
        llm=FakeListChatModel(responses=["Hi Ada!", "Ada."]), prompt=prompt, memory=memory
    )
    chain.invoke({"input": "Hello, I am Ada"}, {"callbacks": [seen]})
    chain.invoke({"input": "What is my name, Ada?"}, {"callbacks": [seen]})
    sent = seen.messages[1]
    assert SystemMessage(content="The user's name is Ada.") in sent
    assert HumanMessage(content="Hello, I am Ada") in sent
    assert AIMessage(content="Hi Ada!") in sent
    assert sent[-1] == HumanMessage(content="What is my name, Ada?")


async def test_async_chains_use_the_async_methods(memory: ChrysalisMemory) -> None:
    seen = Prompts()
    llm = FakeListLLM(responses=["Noted.", "At nine."])
    chain = ConversationChain(llm=llm, memory=memory)
    await chain.ainvoke({"input": "The standup is at nine every morning."}, {"callbacks": [seen]})
    await chain.ainvoke({"input": "When is the standup?"}, {"callbacks": [seen]})
    assert "The standup is at nine every morning." in seen.prompts[1]
    assert (await memory.aload_memory_variables({"input": "standup"}))["history"].startswith(
        "Human: The standup is at nine"
    )


def test_clear_forgets_this_sessions_exchanges_only(
    data_dir: Path, embedding: ChrysalisEmbeddings
) -> None:
    one = ChrysalisMemory(agent_id="a", data_dir=data_dir, embedding=embedding, session_id="one")
    two = ChrysalisMemory(agent_id="a", data_dir=data_dir, embedding=embedding, session_id="two")
    try:
        assert one.agent_memory is two.agent_memory  # one replica per agent in a process
        one.save_context({"input": "Tea is my drink."}, {"response": "Noted."})
        two.save_context({"input": "Coffee is my drink."}, {"response": "Noted."})
        one._handle.run(lambda mem: mem.learn("Water is a drink.", importance=0.9))
        one.clear()
        recalled = one.load_memory_variables({"input": "drink"})["history"]
        assert "Tea" not in recalled
        assert "Coffee is my drink." in recalled and "Water is a drink." in recalled
        # Recall can be narrowed to one session.
        only_two = ChrysalisMemory(memory=two.agent_memory, filter={"tags": ["session:two"]})
        try:
            assert only_two.load_memory_variables({"input": "drink"})["history"] == (
                "Human: Coffee is my drink.\nAI: Noted."
            )
        finally:
            only_two.close()
    finally:
        one.close()
        two.close()


async def test_aclear_and_output_keys(memory: ChrysalisMemory) -> None:
    with pytest.raises(InvalidArgumentError, match="output_key"):
        memory.save_context({"input": "hi"}, {"text": "a", "other": "b"})
    await memory.asave_context({"input": "Pick the output"}, {"output": "this one", "x": "no"})
    assert "AI: this one" in (await memory.aload_memory_variables({"input": "output"}))["history"]
    await memory.aclear()
    assert (await memory.aload_memory_variables({"input": "output"}))["history"] == ""
    assert memory.load_memory_variables({"input": "  "}) == {"history": ""}
