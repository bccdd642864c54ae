"""The central sync hub (spec §3.2.3): a replica with no agent of its own
behind a websocket gateway (:mod:`~chrysalis_memory.hub.server`), its agent
tokens (:mod:`~chrysalis_memory.hub.tokens`), its registry of agents and its
Prometheus metrics. ``chrysalis hub`` runs it; see ``docs/hub.md``.
"""

from __future__ import annotations

from chrysalis_memory.hub.tokens import AgentRecord, TokenStore

__all__ = ["AgentRecord", "TokenStore"]
