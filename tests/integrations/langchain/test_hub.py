"""Two agents with separate data directories share memory through a real hub
(on loopback), each through the LangChain and LangGraph components."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_chrysalis import (
    ChrysalisChatMessageHistory,
    ChrysalisEmbeddings,
    ChrysalisMemory,
    ChrysalisStore,
    ChrysalisVectorStore,
)
from langchain_core.messages import AIMessage, HumanMessage

from tests.waiting import wait_until

from .conftest import StartHub


async def test_two_agents_share_memory_through_a_hub(
    start_hub: StartHub, tmp_path: Path, embedding: ChrysalisEmbeddings
) -> None:
    hub = await start_hub()
    index: Any = {"dims": 512, "embed": embedding, "fields": ["text"]}

    def store(agent_id: str) -> ChrysalisStore:
        return ChrysalisStore(
            agent_id=agent_id,
            data_dir=tmp_path / agent_id,  # separate data directories
            hub_url=hub.url,
            hub_token=hub.tokens.create(agent_id),
            index=index,
        )

    store_a, store_b = store("agent-a"), store("agent-b")
    memory_a = ChrysalisMemory(memory=store_a.memory)
    memory_b = ChrysalisMemory(memory=store_b.memory, k=1)
    chat_a = ChrysalisChatMessageHistory("standup", memory=store_a.memory)
    chat_b = ChrysalisChatMessageHistory("standup", memory=store_b.memory)
    vectors_b = ChrysalisVectorStore(embedding, memory=store_b.memory)
    try:
        await store_a.aput(("users", "ada"), "prefs", {"text": "Ada prefers green tea"})
        await memory_a.asave_context(
            {"input": "The office closes at 6pm on Fridays."}, {"output": "Noted."}
        )
        await chat_a.aadd_messages([HumanMessage("Standup moved to 9:30"), AIMessage("Got it")])

        async def b_sees_the_item() -> bool:
            return await store_b.aget(("users", "ada"), "prefs") is not None

        await wait_until(b_sees_the_item, what="agent-b seeing agent-a's store item")
        [hit] = await store_b.asearch(("users",), query="what does Ada drink?")
        assert hit.value == {"text": "Ada prefers green tea"}

        async def b_recalls_the_exchange() -> bool:
            recalled = await memory_b.aload_memory_variables(
                {"input": "When does the office close?"}
            )
            return "closes at 6pm" in recalled["history"]

        await wait_until(b_recalls_the_exchange, what="agent-b recalling agent-a's exchange")

        async def b_reads_the_chat() -> bool:
            return [m.content for m in await chat_b.aget_messages()] == [
                "Standup moved to 9:30",
                "Got it",
            ]

        await wait_until(b_reads_the_chat, what="agent-b reading agent-a's chat")
        # agent-b answers in the same session; agent-a sees the whole conversation, in order.
        await chat_b.aadd_messages([HumanMessage("Thanks, see you at 9:30")])

        async def a_reads_the_answer() -> bool:
            return len(await chat_a.aget_messages()) == 3

        await wait_until(a_reads_the_answer, what="agent-a reading agent-b's answer")
        assert [m.content for m in await chat_a.aget_messages()] == [
            "Standup moved to 9:30",
            "Got it",
            "Thanks, see you at 9:30",
        ]

        # Both write the same item concurrently: one value wins, the same on both.
        await store_a.aput(("team",), "lead", {"text": "Grace leads the team"})
        await store_b.aput(("team",), "lead", {"text": "Linus leads the team"})

        async def converged() -> bool:
            a = await store_a.aget(("team",), "lead")
            b = await store_b.aget(("team",), "lead")
            return a is not None and b is not None and a.value == b.value

        await wait_until(converged, what="the concurrent puts converging")

        # A delete reaches the other agent too, and so does the item put again.
        await store_a.adelete(("users", "ada"), "prefs")

        async def b_sees_the_delete() -> bool:
            return await store_b.aget(("users", "ada"), "prefs") is None

        await wait_until(b_sees_the_delete, what="agent-b seeing the delete")
        await store_a.aput(("users", "ada"), "prefs", {"text": "Ada now prefers coffee"})

        async def b_sees_it_again() -> bool:
            item = await store_b.aget(("users", "ada"), "prefs")
            return item is not None and item.value == {"text": "Ada now prefers coffee"}

        await wait_until(b_sees_it_again, what="agent-b seeing the item put again")

        # What agent-b received is in its vector store too (memories are documents).
        docs = await vectors_b.asimilarity_search("Ada now prefers coffee", k=1)
        assert docs[0].page_content == "Ada now prefers coffee"
    finally:
        for component in (vectors_b, chat_a, chat_b, memory_a, memory_b, store_a, store_b):
            await component.aclose()
