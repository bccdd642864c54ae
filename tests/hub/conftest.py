"""Fixtures for hub tests: a real hub on loopback ports, real agent stores."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from chrysalis_memory import AgentMemory
from chrysalis_memory.config import HubConfig
from chrysalis_memory.hub.server import Hub
from chrysalis_memory.recall.embedders import HashingEmbedder
from chrysalis_memory.sync import ClientEvent, ClientProtocol, UpdateReceived

StartHub = Callable[..., Awaitable[Hub]]
OpenAgent = Callable[..., Awaitable[AgentMemory]]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def start_hub(tmp_path: Path) -> AsyncIterator[StartHub]:
    """Start hubs (closed at the end); each keyword overrides a HubConfig field
    (``rate_clock`` is passed to the hub itself)."""
    async with AsyncExitStack() as stack:

        async def factory(**fields: Any) -> Hub:
            fields.setdefault("data_dir", tmp_path / "hub")
            fields.setdefault("websocket_port", 0)
            fields.setdefault("http_port", 0)
            rate_clock = fields.pop("rate_clock", time.monotonic)
            hub = Hub(HubConfig(**fields), embedder=HashingEmbedder(), rate_clock=rate_clock)
            return await stack.enter_async_context(hub)

        yield factory


@pytest.fixture
async def hub(start_hub: StartHub) -> Hub:
    return await start_hub()


@pytest.fixture
async def open_agent(tmp_path: Path) -> AsyncIterator[OpenAgent]:
    """Open agents syncing with a hub: ``await open_agent("a", hub)``; a token is
    created unless ``hub_token`` is given."""
    async with AsyncExitStack() as stack:

        async def factory(agent_id: str, hub: Hub | None = None, **fields: Any) -> AgentMemory:
            fields.setdefault("data_dir", tmp_path / "agents")
            if hub is not None:
                fields.setdefault("hub_url", hub.url)
                if "hub_token" not in fields:
                    fields["hub_token"] = hub.tokens.create(agent_id)
            memory = AgentMemory(agent_id=agent_id, embedder=HashingEmbedder(), **fields)
            return await stack.enter_async_context(memory)

        yield factory


async def http_get(hub: Hub, path: str) -> tuple[int, bytes]:
    """GET a path of the hub's HTTP port (in a thread: the hub runs on this loop)."""
    import asyncio

    def get() -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{hub.http_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), bytes(error.read())

    return await asyncio.to_thread(get)


async def health(hub: Hub) -> dict[str, Any]:
    status, body = await http_get(hub, "/health")
    assert status == 200
    result: dict[str, Any] = json.loads(body)
    return result


def metric(text: str, name: str) -> float:
    """The value of one sample line of Prometheus text (0 if absent)."""
    for line in text.splitlines():
        if line.startswith(name + " ") or (line.startswith(name + "{") and "} " in line):
            head, _, value = line.rpartition(" ")
            if head == name or head.startswith(name + "{"):
                return float(value)
    return 0.0


class RawAgent:
    """Speaks the protocol directly over a websocket, to do what AgentMemory never does."""

    def __init__(self, connection: ClientConnection, protocol: ClientProtocol) -> None:
        self.connection = connection
        self.protocol = protocol

    async def send(self, frame: bytes | str) -> None:
        await self.connection.send(frame, text=True)

    async def receive(self) -> list[ClientEvent]:
        import asyncio

        frame = await asyncio.wait_for(self.connection.recv(), 10)
        return self.protocol.receive(frame)

    async def answer(self) -> ClientEvent:
        """The next event that is not a live update (the hub relays our own pushes
        to us as empty updates that move our cursor)."""
        while True:
            events = [e for e in await self.receive() if not isinstance(e, UpdateReceived)]
            if events:
                return events[0]


async def raw_agent(
    stack: AsyncExitStack, hub: Hub, agent_id: str, token: str, public_key: str
) -> RawAgent:
    connection = await stack.enter_async_context(
        connect(
            hub.url,
            additional_headers={"Authorization": f"Bearer {token}"},
            proxy=None,
            max_size=None,
        )
    )
    return RawAgent(connection, ClientProtocol(agent_id, public_key))
