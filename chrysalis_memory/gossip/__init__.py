"""Peer-to-peer gossip: rumour mongering, anti-entropy and SWIM membership.

The logic is sans-I/O (:mod:`~chrysalis_memory.gossip.node`), so the same code
runs between agents over websockets (:class:`GossipPeer`, with the wire format
of :mod:`~chrysalis_memory.gossip.wire`) and in the deterministic simulator
(:mod:`~chrysalis_memory.gossip.simulator`, ``chrysalis simulate``). See
``docs/gossip.md``.

:class:`GossipPeer` and :class:`GossipState` are imported on first use, so that
importing the pure core does not import the network stack.
"""

from typing import TYPE_CHECKING, Any

from chrysalis_memory.gossip.node import (
    Deliver,
    GossipNode,
    GossipSettings,
    Output,
    Send,
    SendOps,
)
from chrysalis_memory.gossip.summary import SeqSet, Summary

if TYPE_CHECKING:
    from chrysalis_memory.gossip.peer import GossipPeer, GossipState

__all__ = [
    "Deliver",
    "GossipNode",
    "GossipPeer",
    "GossipSettings",
    "GossipState",
    "Output",
    "Send",
    "SendOps",
    "SeqSet",
    "Summary",
]


def __getattr__(name: str) -> Any:
    if name in ("GossipPeer", "GossipState"):
        from chrysalis_memory.gossip import peer

        return getattr(peer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
