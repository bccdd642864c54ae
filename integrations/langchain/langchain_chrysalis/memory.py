"""``ChrysalisMemory``: collective memory for LangChain's classic chains."""

from __future__ import annotations

import re
from typing import Any

from langchain_classic.base_memory import BaseMemory
from langchain_classic.memory.utils import get_prompt_input_key
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from pydantic import Field

from chrysalis_memory import AgentMemory, MemoryDocument, RecallHit
from chrysalis_memory.errors import InvalidArgumentError
from langchain_chrysalis._component import MemoryFields, RecallMode, Scope, recall
from langchain_chrysalis._documents import Writer

__all__ = ["ChrysalisMemory"]

CONVERSATION_TAG = "conversation"
EXCHANGE_KEY = "exchange"
"""Memory metadata key of a saved exchange: ``{"input", "output", "session_id"}``."""


class ChrysalisMemory(MemoryFields, BaseMemory):
    """A classic chain's memory that recalls from the agent's collective memory.

    ``load_memory_variables`` recalls the ``k`` memories most relevant to the
    chain's input: earlier exchanges, and everything this agent or any other
    agent learned (facts, documents...). ``save_context`` learns each exchange
    as an episodic memory, with ``importance`` 0.8 by default so that it
    reaches the other agents through the hub (below the promotion threshold,
    0.7, it would stay on this agent).

    Drop-in for ``ConversationBufferMemory``::

        from langchain_chrysalis import ChrysalisMemory

        chain = ConversationChain(llm=llm, memory=ChrysalisMemory(agent_id="agent-a"))

    The recalled memories are given oldest first, as text (``"Human: ...\\nAI:
    ..."`` lines for exchanges, the content for other memories) or, with
    ``return_messages=True``, as messages (a ``HumanMessage`` and an
    ``AIMessage`` per exchange, a ``SystemMessage`` per other memory).

    ``session_id`` tags the exchanges saved (``session:<id>``); ``clear()``
    forgets the exchanges this agent saved in this session (or, with no
    session, all the exchanges it saved). ``filter`` restricts recall (``tags``,
    ``memory_type``, ``source``, ``since``, ``until``), e.g.
    ``{"tags": ["session:abc"]}`` to recall one conversation only.
    """

    memory_key: str = "history"
    input_key: str | None = None
    output_key: str | None = None
    return_messages: bool = False
    human_prefix: str = "Human"
    ai_prefix: str = "AI"
    k: int = Field(default=4, ge=1, le=1000)
    mode: RecallMode = "hybrid"
    scope: Scope = "local"
    filter: dict[str, Any] | None = None
    record_access: bool = True
    session_id: str | None = None
    tags: list[str] = Field(default_factory=list)
    importance: float = Field(default=0.8, ge=0.0, le=1.0)
    confidence: float = Field(default=0.8, ge=0.0, le=1.0)
    memory_type: str = "episodic"

    @property
    def memory_variables(self) -> list[str]:
        return [self.memory_key]

    @property
    def _saved_tags(self) -> list[str]:
        tags = [CONVERSATION_TAG, *self.tags]
        if self.session_id is not None:
            tags.append(_session_tag(self.session_id))
        return tags

    def _writer(self) -> Writer:
        return Writer(
            importance=self.importance,
            confidence=self.confidence,
            memory_type=self.memory_type,
            tags=self._saved_tags,
        )

    # --- load ---------------------------------------------------------------------------

    def _query(self, inputs: dict[str, Any]) -> str:
        key = self.input_key or get_prompt_input_key(inputs, self.memory_variables)
        return str(inputs[key])  # an exact str (chat models give str subclasses)

    def load_memory_variables(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The memories most relevant to the chain's input, under ``memory_key``."""
        query = self._query(inputs)
        vector = self._query_vector_sync(query, self.mode)
        hits = self._handle.run(lambda mem: self._recall(mem, query, vector))
        return {self.memory_key: self._format(hits)}

    async def aload_memory_variables(self, inputs: dict[str, Any]) -> dict[str, Any]:
        query = self._query(inputs)
        vector = await self._query_vector(query, self.mode)
        hits = await self._handle.arun(lambda mem: self._recall(mem, query, vector))
        return {self.memory_key: self._format(hits)}

    async def _recall(
        self, mem: AgentMemory, query: str, vector: list[float] | None
    ) -> list[RecallHit]:
        return await recall(
            mem,
            query,
            vector,
            k=self.k,
            mode=self.mode,
            scope=self.scope,
            filter=self.filter,
            record_access=self.record_access,
        )

    def _format(self, hits: list[RecallHit]) -> str | list[BaseMessage]:
        memories = sorted((hit.memory for hit in hits), key=lambda m: (m.created_at, m.id))
        if self.return_messages:
            return [message for memory in memories for message in self._messages(memory)]
        return "\n".join(memory.content for memory in memories)

    def _messages(self, memory: MemoryDocument) -> list[BaseMessage]:
        exchange = memory.metadata.get(EXCHANGE_KEY)
        if isinstance(exchange, dict) and "input" in exchange and "output" in exchange:
            return [
                HumanMessage(content=str(exchange["input"])),
                AIMessage(content=str(exchange["output"])),
            ]
        return [SystemMessage(content=memory.content)]

    # --- save -----------------------------------------------------------------------------

    def _exchange(self, inputs: dict[str, Any], outputs: dict[str, Any]) -> tuple[str, str]:
        text_in = self._query(inputs)
        if self.output_key is not None:
            key = self.output_key
        elif len(outputs) == 1:
            key = next(iter(outputs))
        elif "output" in outputs:
            key = "output"
        else:
            raise InvalidArgumentError(
                f"got several output keys {sorted(outputs)}: set output_key to say which "
                "one to remember"
            )
        return text_in, str(outputs[key])

    def save_context(self, inputs: dict[str, Any], outputs: dict[str, str]) -> None:
        """Learn the exchange (input and output) as one memory."""
        text_in, text_out = self._exchange(inputs, outputs)
        self._handle.run(lambda mem: self._save(mem, text_in, text_out))

    async def asave_context(self, inputs: dict[str, Any], outputs: dict[str, str]) -> None:
        text_in, text_out = self._exchange(inputs, outputs)
        await self._handle.arun(lambda mem: self._save(mem, text_in, text_out))

    async def _save(self, mem: AgentMemory, text_in: str, text_out: str) -> str:
        content = f"{self.human_prefix}: {text_in}\n{self.ai_prefix}: {text_out}"
        exchange = {"input": text_in, "output": text_out, "session_id": self.session_id}
        return await self._writer().learn(mem, content, {EXCHANGE_KEY: exchange})

    # --- clear ----------------------------------------------------------------------------

    def clear(self) -> None:
        """Forget the exchanges this agent saved (in this session, if there is one).
        Forgetting replicates: the other agents stop recalling them too."""
        self._handle.run(self._clear)

    async def aclear(self) -> None:
        await self._handle.arun(self._clear)

    async def _clear(self, mem: AgentMemory) -> None:
        tags = [CONVERSATION_TAG]
        if self.session_id is not None:
            tags.append(_session_tag(self.session_id))
        while batch := await mem.list(tags=tags, source=mem.agent_id, limit=500):
            for memory in batch:
                await mem.forget(memory.id)


def _session_tag(session_id: str) -> str:
    tag = f"session:{session_id}"
    if len(tag) > 256 or not re.search(r"\S", session_id):
        raise InvalidArgumentError("session_id must be 1 to 248 characters, not only spaces")
    return tag
