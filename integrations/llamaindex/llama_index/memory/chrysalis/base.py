"""``ChrysalisMemoryBlock``: long-term memory for LlamaIndex's ``Memory``, shared by agents.

Chat turns that ``Memory`` flushes from its short-term queue are learned into
the agent's memory, and so reach the other agents; before each LLM call the
block recalls what the collective knows that is relevant to the latest messages.
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

from llama_index.core.base.llms.types import ChatMessage, MessageRole, TextBlock
from llama_index.core.bridge.pydantic import Field, PrivateAttr, field_validator
from llama_index.core.memory.memory import BaseMemoryBlock
from llama_index.core.prompts import BasePromptTemplate, PromptTemplate, RichPromptTemplate
from llama_index.vector_stores.chrysalis.replica import Replica, ReplicaUser, replica_for

from chrysalis_memory import AgentMemory, AgentMemoryConfig, BlockingAgentMemory
from chrysalis_memory.model.document import MemoryType
from chrysalis_memory.validation import MAX_QUERY_CHARS

if TYPE_CHECKING:
    from chrysalis_memory.sync.client import SyncReport

__all__ = ["ChrysalisMemoryBlock"]


_SKIPPED_ROLES: Final = frozenset({MessageRole.SYSTEM, MessageRole.DEVELOPER})
DEFAULT_TEMPLATE: Final = RichPromptTemplate("{{ text }}")


class ChrysalisMemoryBlock(ReplicaUser, BaseMemoryBlock[str]):
    """A memory block backed by the agents' collective memory.

    ::

        block = ChrysalisMemoryBlock(agent_id="agent-a", hub_url=..., hub_token=...)
        memory = Memory.from_defaults(session_id="chat-1", memory_blocks=[block])

    Pass ``memory=<AgentMemory>`` to share a replica (for example
    ``ChrysalisVectorStore(...).client``), or its config keywords (``agent_id``,
    ``data_dir``, ``hub_url``, ``hub_token``, or a whole ``config``); with none,
    the ``CHRYSALIS_*`` environment (a local store by default).

    **Writing**: each turn (a user message and the replies that follow it) that
    ``Memory`` flushes from its short-term queue becomes one memory, with
    ``importance`` (0.8 by default: at or above the promotion threshold, 0.7
    by default, it is shared with the other agents; below, it stays on this
    agent), ``confidence``, ``memory_type`` (episodic) and ``tags`` (``chat``,
    and ``session:<id>``). The same turn flushed twice is one memory.

    **Reading**: the text of the last ``retrieval_context_window`` messages is
    the query; the ``similarity_top_k`` best memories (of any agent: facts,
    documents, other conversations) are returned, one paragraph each, through
    ``format_template``. ``recall_memory_type`` and ``recall_tags`` narrow
    them; ``mode`` and ``scope`` are those of ``AgentMemory.recall``.
    """

    name: str = Field(default="collective_memory", description="The name of the block.")
    description: str | None = Field(
        default="What the agents' collective memory holds that is relevant to this chat.",
        description="A description of the block.",
    )
    similarity_top_k: int = Field(default=3, ge=1, le=1000, description="Memories recalled.")
    retrieval_context_window: int = Field(
        default=5, ge=1, description="Latest messages whose text is the query."
    )
    mode: Literal["hybrid", "vector", "keyword"] = Field(
        default="hybrid", description="Recall mode."
    )
    scope: Literal["local", "collective"] = Field(
        default="local", description="collective: also ask the hub's collective index."
    )
    recall_memory_type: str | None = Field(default=None, description="Recall only this type.")
    recall_tags: list[str] | None = Field(default=None, description="Recall only these tags.")
    record_access: bool = Field(
        default=True, description="Count an access to each recalled memory."
    )
    importance: float = Field(
        default=0.8,
        ge=0.0,
        le=1.0,
        description="Importance of learned turns (shared when >= the promotion threshold).",
    )
    confidence: float = Field(default=0.8, ge=0.0, le=1.0, description="Of learned turns.")
    memory_type: str = Field(default="episodic", description="Of learned turns.")
    tags: list[str] = Field(default_factory=lambda: ["chat"], description="Of learned turns.")
    max_turn_chars: int = Field(
        default=16_000, ge=100, description="Longer turns are cut to this many characters."
    )
    format_template: BasePromptTemplate = Field(
        default=DEFAULT_TEMPLATE, description="Formats the recalled text (as {{ text }})."
    )

    _kind: ClassVar[str] = "ChrysalisMemoryBlock"
    _replica: Replica = PrivateAttr()
    _closed: bool = PrivateAttr(default=False)

    def __init__(
        self,
        *,
        memory: AgentMemory | BlockingAgentMemory | None = None,
        config: AgentMemoryConfig | None = None,
        agent_id: str | None = None,
        data_dir: str | os.PathLike[str] | None = None,
        hub_url: str | None = None,
        hub_token: str | None = None,
        **data: Any,
    ) -> None:
        super().__init__(**data)
        replica = replica_for(
            memory,
            config,
            agent_id=agent_id,
            data_dir=data_dir,
            hub_url=hub_url,
            hub_token=hub_token,
        )
        self._replica = replica.acquire()

    @field_validator("memory_type", "recall_memory_type")
    @classmethod
    def _check_memory_type(cls, value: str | None) -> str | None:
        if value is not None and value not in MemoryType._value2member_map_:
            kinds = ", ".join(t.value for t in MemoryType)
            raise ValueError(f"memory_type must be one of {kinds}; got {value!r}")
        return value

    @field_validator("format_template", mode="before")
    @classmethod
    def _template(cls, value: Any) -> Any:
        if isinstance(value, str):
            return RichPromptTemplate(value) if "{{" in value else PromptTemplate(value)
        return value

    @property
    def client(self) -> AgentMemory:
        """The ``AgentMemory`` behind the block."""
        return self._replica.memory

    # --- lifecycle ------------------------------------------------------------------

    async def async_now(self, timeout: float = 30.0) -> SyncReport:
        """Push this agent's memories to the hub and pull the others', now
        (``AgentMemory.sync_now``; sync also runs in the background)."""
        return await self._call(functools.partial(_sync_now, timeout))

    # --- BaseMemoryBlock ------------------------------------------------------------

    async def _aget(self, messages: list[ChatMessage] | None = None, **block_kwargs: Any) -> str:
        """What the collective memory recalls about the latest messages."""
        context = (messages or [])[-self.retrieval_context_window :]
        query = " ".join(text for message in context if (text := _spoken_text(message))).strip()
        if not query:
            return ""
        # The latest words matter most: keep the end of a long context.
        contents = await self._call(functools.partial(self._recall, query[-MAX_QUERY_CHARS:]))
        if not contents:
            return ""
        return self.format_template.format(text="\n\n".join(contents))

    async def _recall(self, query: str, memory: AgentMemory) -> list[str]:
        hits = await memory.recall(
            query,
            self.similarity_top_k,
            mode=self.mode,
            memory_type=self.recall_memory_type,
            tags=self.recall_tags,
            record_access=self.record_access,
            scope=self.scope,
        )
        return [hit.memory.content for hit in hits]

    async def _aput(self, messages: list[ChatMessage]) -> None:
        """Learn the flushed turns."""
        turns = _turns(messages)
        if turns:
            await self._call(functools.partial(self._learn, turns))

    async def _learn(self, turns: list[list[ChatMessage]], memory: AgentMemory) -> None:
        for turn in turns:
            lines = [
                f"{message.role.value}: {text}"
                for message in turn
                if (text := _spoken_text(message))
            ]
            if not lines:
                continue
            content = "\n".join(lines)
            if len(content) > self.max_turn_chars:
                content = content[: self.max_turn_chars - 1] + "…"
            session = next(
                (
                    str(m.additional_kwargs["session_id"])
                    for m in turn
                    if m.additional_kwargs.get("session_id") is not None
                ),
                None,
            )
            tags = list(self.tags)
            metadata: dict[str, Any] = {
                "kind": "chat_turn",
                "roles": [message.role.value for message in turn],
            }
            if session is not None:
                metadata["session_id"] = session
                tags.append(f"session:{session}"[:256])
            digest = hashlib.sha256(f"{session or ''}\0{content}".encode()).hexdigest()
            await memory.learn(
                content,
                importance=self.importance,
                confidence=self.confidence,
                memory_type=self.memory_type,
                tags=tags,
                metadata=metadata,
                memory_id=f"chat-turn-{digest[:32]}",
            )


async def _sync_now(timeout: float, memory: AgentMemory) -> SyncReport:
    return await memory.sync_now(timeout)


def _spoken_text(message: ChatMessage) -> str:
    """The text of a user, assistant or tool message (system prompts are not chat)."""
    if message.role in _SKIPPED_ROLES:
        return ""
    return " ".join(
        block.text.strip()
        for block in message.blocks
        if isinstance(block, TextBlock) and block.text.strip()
    )


def _turns(messages: list[ChatMessage]) -> list[list[ChatMessage]]:
    """Messages grouped in turns: each user message with the replies that follow it."""
    turns: list[list[ChatMessage]] = []
    for message in messages:
        if message.role in _SKIPPED_ROLES:
            continue
        if message.role == MessageRole.USER or not turns:
            turns.append([message])
        else:
            turns[-1].append(message)
    return turns
