"""What an agent is told when its hub_url leads nowhere useful: a port where
nothing listens, or the hub's HTTP port instead of its websocket port. Real
hubs and agents on loopback; the port is closed by binding and closing it."""

from __future__ import annotations

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chrysalis_memory.errors import HubUnreachableError
from tests.hub.conftest import OpenAgent, StartHub


async def test_the_hubs_http_port_tells_a_websocket_client_where_to_go(
    start_hub: StartHub,
) -> None:
    hub = await start_hub()
    with pytest.raises(InvalidStatus) as caught:
        async with connect(f"ws://127.0.0.1:{hub.http_port}", proxy=None):
            pass
    response = caught.value.response
    assert response.status_code == 404
    body = response.body.decode()
    assert "websocket port" in body and str(hub.port) in body


async def test_an_agent_pointed_at_the_http_port_is_told_to_use_the_websocket_port(
    start_hub: StartHub, open_agent: OpenAgent
) -> None:
    hub = await start_hub()
    url = f"ws://127.0.0.1:{hub.http_port}"
    a = await open_agent("agent-a", hub, hub_url=url)
    with pytest.raises(HubUnreachableError) as caught:
        await a.sync_now(timeout=3)
    message = str(caught.value)
    assert url in message
    assert "websocket port" in message and "4444" in message  # the default, for the user
    assert str(hub.port) in message  # the hub's answer names its real websocket port
