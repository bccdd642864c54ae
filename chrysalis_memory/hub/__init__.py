"""The central sync hub (spec §3.2.3).

For now this holds the hub's agent tokens (:mod:`chrysalis_memory.hub.tokens`);
the websocket gateway builds on it.
"""

from __future__ import annotations

from chrysalis_memory.hub.tokens import AgentRecord, TokenStore

__all__ = ["AgentRecord", "TokenStore"]
