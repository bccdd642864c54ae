"""Shared fixtures of the sync protocol tests: signed ops and an in-memory link."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from chrysalis_memory.crdt import HybridClock
from chrysalis_memory.model import MemoryPatch, Op, OpAuthor, Signer
from chrysalis_memory.model.ops import Creation
from chrysalis_memory.sync import (
    ClientEvent,
    ClientProtocol,
    ServerEvent,
    ServerProtocol,
)


def signer_for(writer: str) -> Signer:
    return Signer.from_bytes(hashlib.sha256(f"chrysalis-sync-test:{writer}".encode()).digest())


def make_ops(writer: str, n: int, *, start: int = 0) -> list[Op]:
    ticks = iter(range(1_700_000_000_000 + start, 1_800_000_000_000))
    author = OpAuthor(writer, signer_for(writer), HybridClock(physical=lambda: next(ticks)))
    author.last_seq = start
    return [
        author.make(f"{writer}-m{start + i}", MemoryPatch(create=Creation(), content=f"text {i}"))
        for i in range(n)
    ]


POOL: list[Op] = make_ops("hub-writer", 60)
"""Ops of the hub's log in these tests: op number i + 1 is POOL[i]."""


class Link:
    """A client and a server joined by two in-memory queues of frames.

    ``server_handler`` plays the hub: it gets each server event and returns the
    frames to send back. ``run()`` loops until neither side has anything left to
    send, and returns the client events in order.
    """

    def __init__(
        self,
        client: ClientProtocol,
        server: ServerProtocol,
        server_handler: Callable[[ServerEvent], list[bytes]],
    ) -> None:
        self.client = client
        self.server = server
        self.handler = server_handler
        self.to_server: list[bytes] = []
        self.to_client: list[bytes] = []
        self.client_events: list[ClientEvent] = []
        self.server_events: list[ServerEvent] = []
        self.frames = 0

    def send(self, data: bytes) -> None:
        self.to_server.append(data)

    def run(self, max_steps: int = 10_000) -> list[ClientEvent]:
        start = len(self.client_events)
        for _ in range(max_steps):
            if not self.to_server and not self.to_client:
                return self.client_events[start:]
            if self.to_server:
                frame = self.to_server.pop(0)
                self.frames += 1
                for event in self.server.receive(frame):
                    self.server_events.append(event)
                    self.to_client.extend(self.handler(event))
            if self.to_client:
                frame = self.to_client.pop(0)
                self.frames += 1
                self.client_events.extend(self.client.receive(frame.decode()))
        raise AssertionError("the link never went quiet")
