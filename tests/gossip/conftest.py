"""Gossip agents for the tests: AgentMemory replicas on loopback websockets, real
SQLite stores, members listed in a members file that grows as agents are opened
(each agent reads it again when it changes)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from chrysalis_memory import AgentMemory, GossipConfig
from chrysalis_memory.errors import GossipAuthError
from chrysalis_memory.gossip.auth import ClientHandshake, Membership, ServerHandshake
from chrysalis_memory.keys import load_or_create_signer
from chrysalis_memory.model.ops import Signer

INTERVAL_MS = 100
AE_MS = 1000

OpenAgent = Callable[..., Awaitable[AgentMemory]]


class Members:
    """A members file: ``{agent id: public key}``, written whole (atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keys: dict[str, str] = {}
        self.write()

    def add(self, agent_id: str, key: str) -> None:
        self.keys[agent_id] = key
        self.write()

    def remove(self, agent_id: str) -> None:
        del self.keys[agent_id]
        self.write()

    def write(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.keys))
        os.replace(temporary, self.path)


def signer_of(data_dir: Path, agent_id: str) -> Signer:
    """The agent's signing key, created now if it has none (as `chrysalis key` does)."""
    return load_or_create_signer(data_dir / agent_id / "keys" / "signing.key")


@pytest.fixture
def members(tmp_path: Path) -> Members:
    return Members(tmp_path / "members.json")


@pytest.fixture
async def open_agent(tmp_path: Path, members: Members) -> AsyncIterator[OpenAgent]:
    """Open an agent with gossip on a free loopback port (closed at the end, if
    the test did not close it); keywords override config fields, ``gossip`` ones
    included. The agent is a member (listed in the members file) unless
    ``member=False``; ``members_file=None`` in ``gossip`` leaves the file out."""
    async with AsyncExitStack() as stack:

        async def factory(
            agent_id: str, *, seeds: Sequence[str] = (), member: bool = True, **fields: Any
        ) -> AgentMemory:
            data_dir = tmp_path / agent_id
            if member:
                members.add(agent_id, signer_of(data_dir, agent_id).public_key)
            settings: dict[str, Any] = {"members_file": members.path}
            settings.update(fields.pop("gossip", {}))
            gossip = GossipConfig(
                enabled=True,
                interval_ms=INTERVAL_MS,
                anti_entropy_interval_ms=AE_MS,
                seeds=list(seeds),
                **settings,
            )
            memory = AgentMemory(
                agent_id=agent_id,
                data_dir=data_dir,
                embedder="hashing",
                gossip=gossip,
                **fields,
            )
            await memory.open()
            stack.push_async_callback(memory.close)
            return memory

        yield factory


# --- raw peers: a member or an outsider speaking the protocol by hand ----------------------


async def connect_as(
    url: str,
    agent_id: str,
    signer: Signer,
    known: dict[str, str],
    *,
    addr: str = "ws://127.0.0.1:9",
) -> tuple[ClientConnection, str]:
    """Connect to a gossip peer as ``agent_id`` and prove it with ``signer``'s key
    (``known``: the members this side accepts the peer as). Returns the connection,
    ready for gossip frames, and who the peer proved to be."""
    membership = Membership(agent_id, signer.public_key, max_members=1000)
    membership.set_source("test", known)
    connection = await connect(url, proxy=None, max_size=None)
    handshake = ClientHandshake(agent_id, addr, signer, membership)
    hello = handshake.challenge(await asyncio.wait_for(connection.recv(decode=False), 10))
    await connection.send(hello, text=True)
    server = handshake.welcome(await asyncio.wait_for(connection.recv(decode=False), 10))
    return connection, server


class Listener:
    """A websocket server on loopback that records what it is sent. With
    ``identity`` (an id and its signer), it answers the gossip handshake as that
    agent (``known``: whom it accepts); with ``stall``, it then stops reading from
    the socket altogether (its receive buffer is tiny), as a peer that never
    reads would."""

    def __init__(
        self,
        identity: tuple[str, Signer] | None = None,
        known: dict[str, str] | None = None,
        *,
        stall: bool = False,
    ) -> None:
        self.identity = identity
        self.known = known or {}
        self.stall = stall
        self.frames: list[bytes] = []
        self.connections = 0
        self.handshakes = 0
        self._server: Server | None = None
        self._held: list[ServerConnection] = []
        self.url = ""

    async def __aenter__(self) -> Listener:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self.stall:  # no autotuning: the kernel holds little of what is not read
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        self._server = await serve(self._handle, sock=sock, max_size=None, compression=None)
        self.url = f"ws://127.0.0.1:{sock.getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        for connection in self._held:
            connection.transport.abort()
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, connection: ServerConnection) -> None:
        self.connections += 1
        self._held.append(connection)
        try:
            if self.identity is not None:
                me, signer = self.identity
                membership = Membership(me, signer.public_key, max_members=1000)
                membership.set_source("test", self.known)
                handshake = ServerHandshake(me, signer, membership)
                await connection.send(handshake.challenge(), text=True)
                hello = await connection.recv(decode=False)
                self.frames.append(hello)
                _, _, welcome = handshake.hello(hello)
                await connection.send(welcome, text=True)
                self.handshakes += 1
            if self.stall:
                connection.transport.pause_reading()
                await connection.wait_closed()
                return
            async for frame in connection:
                self.frames.append(frame if isinstance(frame, bytes) else frame.encode())
        except (ConnectionClosed, GossipAuthError):
            pass
