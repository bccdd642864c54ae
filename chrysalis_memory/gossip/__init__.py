"""Peer-to-peer gossip: rumour mongering, anti-entropy and SWIM membership.

The logic is sans-I/O (:mod:`~chrysalis_memory.gossip.node`), so the same code
runs between agents over websockets and in the deterministic simulator
(:mod:`~chrysalis_memory.gossip.simulator`, ``chrysalis simulate``). See
``docs/gossip.md``.
"""

from chrysalis_memory.gossip.node import (
    Deliver,
    GossipNode,
    GossipSettings,
    Output,
    Send,
    SendOps,
)
from chrysalis_memory.gossip.summary import SeqSet, Summary

__all__ = [
    "Deliver",
    "GossipNode",
    "GossipSettings",
    "Output",
    "Send",
    "SendOps",
    "SeqSet",
    "Summary",
]
