"""``ChrysalisChatMessageHistory``: a conversation's messages, replicated like any memory."""

from __future__ import annotations

import hashlib
import itertools
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.embeddings import Embeddings
from langchain_core.messages import BaseMessage, message_to_dict, messages_from_dict

from chrysalis_memory import AgentMemory, AgentMemoryConfig, MemoryDocument
from chrysalis_memory.errors import InvalidArgumentError
from langchain_chrysalis._documents import Writer
from langchain_chrysalis._runtime import HandleLifecycle, MemoryArg, MemoryHandle
from langchain_chrysalis.embeddings import as_embedder

__all__ = ["ChrysalisChatMessageHistory"]

CHAT_TAG: Final = "chat"
CHAT_KEY: Final = "chat"
"""Memory metadata key of a message: ``{"session_id", "order", "message"}``."""
_PAGE: Final = 1000

_order_lock = threading.Lock()
_last_order = 0


def _next_order() -> int:
    """Nanoseconds since the epoch, strictly increasing within this process: orders
    the messages one agent adds within the same millisecond."""
    global _last_order
    with _order_lock:
        _last_order = max(_last_order + 1, time.time_ns())
        return _last_order


def session_tag(session_id: str) -> str:
    """The tag every message of a session carries."""
    if not isinstance(session_id, str) or not session_id.strip():
        raise InvalidArgumentError("session_id must be a non-empty string")
    tag = f"chat-session:{session_id}"
    if len(tag) > 256:
        return "chat-session#" + hashlib.sha256(session_id.encode("utf-8")).hexdigest()
    return tag


class ChrysalisChatMessageHistory(HandleLifecycle, BaseChatMessageHistory):
    """The messages of one chat session, stored as memories of a Chrysalis agent.

    Every message is a memory (episodic, tagged ``chat`` and
    ``chat-session:<session_id>``, with ``importance`` 0.8 by default so that
    it replicates to every agent through the hub: several agents can take
    part in one session, and each sees the whole conversation). Messages are
    ordered by creation (hybrid logical clock, so a reply sorts after what it
    answers, whichever agent wrote it). Being memories, they are also found
    by recall (``ChrysalisRetriever``, ``ChrysalisMemory``).

    With ``RunnableWithMessageHistory``::

        memory = AgentMemory(agent_id="agent-a", data_dir="./data")   # not open yet
        chain = RunnableWithMessageHistory(
            runnable,
            lambda session_id: ChrysalisChatMessageHistory(session_id, memory=memory),
        )

    ``clear()`` forgets the session's messages, for every agent (forgetting
    replicates).
    """

    def __init__(
        self,
        session_id: str,
        *,
        memory: MemoryArg | None = None,
        agent_id: str | None = None,
        data_dir: str | Path | None = None,
        hub_url: str | None = None,
        hub_token: str | None = None,
        config: AgentMemoryConfig | None = None,
        embedding: Embeddings | None = None,
        importance: float = 0.8,
        confidence: float = 0.8,
        memory_type: str = "episodic",
        tags: Sequence[str] = (),
    ) -> None:
        self.session_id = session_id
        self._tag = session_tag(session_id)
        self._writer = Writer(
            importance=importance,
            confidence=confidence,
            memory_type=memory_type,
            tags=[CHAT_TAG, self._tag, *tags],
        )
        self._handle = MemoryHandle(
            memory,
            config=config,
            agent_id=agent_id,
            data_dir=data_dir,
            hub_url=hub_url,
            hub_token=hub_token,
            embedder=None if embedding is None else as_embedder(embedding),
        )

    @property
    def memory(self) -> AgentMemory:
        return self._handle.memory

    # --- reads ----------------------------------------------------------------------------

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """The session's messages, oldest first."""
        return self._handle.run(self._messages)

    async def aget_messages(self) -> list[BaseMessage]:
        return await self._handle.arun(self._messages)

    async def _messages(self, mem: AgentMemory) -> list[BaseMessage]:
        memories = await _all(mem, self._tag)
        memories.sort(key=_position)
        return messages_from_dict([_message_dict(memory) for memory in memories])

    # --- writes ---------------------------------------------------------------------------

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        rows = self._rows(messages)
        self._handle.run(lambda mem: self._add(mem, rows))

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        rows = self._rows(messages)
        await self._handle.arun(lambda mem: self._add(mem, rows))

    def _rows(self, messages: Sequence[BaseMessage]) -> list[tuple[str, dict[str, Any]]]:
        rows = []
        for message in messages:
            if not isinstance(message, BaseMessage):
                raise InvalidArgumentError(
                    f"add_messages takes LangChain messages, got {type(message).__name__}"
                )
            stored = message_to_dict(message)
            data = stored["data"]
            if isinstance(message.content, str) and message.content.strip():
                # The text is the memory's content (what recall searches): not stored twice.
                content, data["content"], stored["content_in_memory"] = message.content, None, True
            else:
                content = message.text.strip() or f"({message.type} message without text)"
            chat = {"session_id": self.session_id, "order": _next_order(), "message": stored}
            rows.append((content, {CHAT_KEY: chat}))
        return rows

    async def _add(self, mem: AgentMemory, rows: list[tuple[str, dict[str, Any]]]) -> None:
        for content, metadata in rows:
            await self._writer.learn(mem, content, metadata)

    def clear(self) -> None:
        self._handle.run(self._clear)

    async def aclear(self) -> None:
        await self._handle.arun(self._clear)

    async def _clear(self, mem: AgentMemory) -> None:
        while batch := await mem.list(tags=[self._tag], limit=_PAGE):
            for memory in batch:
                await mem.forget(memory.id)


async def _all(mem: AgentMemory, tag: str) -> list[MemoryDocument]:
    found: dict[str, MemoryDocument] = {}
    for offset in itertools.count(0, _PAGE):
        page = await mem.list(tags=[tag], limit=_PAGE, offset=offset)
        found.update((memory.id, memory) for memory in page)
        if len(page) < _PAGE:
            return list(found.values())
    raise AssertionError("unreachable")  # pragma: no cover


def _position(memory: MemoryDocument) -> tuple[float, int, str]:
    chat = memory.metadata.get(CHAT_KEY)
    order = chat.get("order") if isinstance(chat, dict) else None
    return memory.created_at, order if isinstance(order, int) else 0, memory.id


def _message_dict(memory: MemoryDocument) -> dict[str, Any]:
    chat = memory.metadata.get(CHAT_KEY)
    stored = chat.get("message") if isinstance(chat, dict) else None
    if not isinstance(stored, dict) or not isinstance(stored.get("data"), dict):
        # A memory tagged into the session by other means: its text, as said by a human.
        return {"type": "human", "data": {"content": memory.content, "type": "human"}}
    result = {"type": stored["type"], "data": dict(stored["data"])}
    if stored.get("content_in_memory"):
        result["data"]["content"] = memory.content
    return result
