"""LangChain and LangGraph components on Chrysalis collective memory.

Each component is a thin adapter over :class:`chrysalis_memory.AgentMemory`
and takes either ``memory=`` (an ``AgentMemory`` or ``BlockingAgentMemory`` to
share one replica) or the configuration keywords ``agent_id``, ``data_dir``,
``hub_url``, ``hub_token`` (or ``config=``); with none of them it works on a
local store configured from ``CHRYSALIS_*`` variables. See docs/langchain.md.
"""

from langchain_chrysalis.chat_message_histories import ChrysalisChatMessageHistory
from langchain_chrysalis.embeddings import ChrysalisEmbeddings, LangChainEmbedder
from langchain_chrysalis.memory import ChrysalisMemory
from langchain_chrysalis.retrievers import ChrysalisRetriever
from langchain_chrysalis.store import ChrysalisStore
from langchain_chrysalis.vectorstores import ChrysalisVectorStore

__all__ = [
    "ChrysalisChatMessageHistory",
    "ChrysalisEmbeddings",
    "ChrysalisMemory",
    "ChrysalisRetriever",
    "ChrysalisStore",
    "ChrysalisVectorStore",
    "LangChainEmbedder",
]
