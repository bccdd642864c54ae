"""What an agent is told when its hub_url leads nowhere useful: a port where
nothing listens, or the hub's HTTP port instead of its websocket port. Real
hubs and agents on loopback; the port is closed by binding and closing it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chrysalis_memory.errors import HubUnreachableError
from chrysalis_memory.hub.tokens import TokenStore
from chrysalis_memory.model.document import SyncStatus
from tests.hub.conftest import OpenAgent, StartHub, free_port
from tests.waiting import wait_until


async def test_sync_now_gives_up_soon_on_a_port_where_nothing_listens(
    start_hub: StartHub, open_agent: OpenAgent, tmp_path: Path
) -> None:
    port = free_port()  # bound, then closed: nothing listens there
    url = f"ws://127.0.0.1:{port}"
    tokens = tmp_path / "tokens.json"
    token = TokenStore(tokens).create("agent-a")
    a = await open_agent("agent-a", hub_url=url, hub_token=token, sync_connect_timeout_s=0.3)
    mid = await a.learn("written while the hub is down", importance=0.9)

    started = time.monotonic()
    with pytest.raises(HubUnreachableError) as caught:
        await a.sync_now(timeout=60)
    # Generous: the point is that it does not wait out the 60 s timeout.
    assert time.monotonic() - started < 30
    message = str(caught.value)
    assert url in message and "sync_connect_timeout_s" in message

    # Only the explicit call gave up: the background worker goes on retrying and
    # pushes the write once a hub listens there, with no call from the user.
    hub = await start_hub(websocket_port=port, tokens_file=tokens)

    async def pushed() -> bool:
        return hub.head >= 1

    await wait_until(pushed, timeout=60, what="the write pushed by background sync")
    await a.sync_now(timeout=30)
    assert (await a.get(mid)).sync_status == SyncStatus.SYNCED  # type: ignore[union-attr]


async def test_a_connection_under_way_is_not_cut_short(
    start_hub: StartHub, open_agent: OpenAgent
) -> None:
    hub = await start_hub()
    # The setting bounds retries of failed attempts, not a handshake in progress.
    a = await open_agent("agent-a", hub, sync_connect_timeout_s=0.001)
    await a.learn("a fact", importance=0.9)
    report = await a.sync_now(timeout=30)
    assert report.cursor == hub.head == 1


async def test_a_busy_hub_is_waited_for_not_given_up_on(
    start_hub: StartHub, open_agent: OpenAgent
) -> None:
    hub = await start_hub(max_connections_per_agent=1)
    token = hub.tokens.create("agent-a")
    headers = {"Authorization": f"Bearer {token}"}
    async with connect(hub.url, additional_headers=headers, proxy=None):
        # The agent's one connection slot is taken: the hub answers it HTTP 503.
        a = await open_agent("agent-a", hub, hub_token=token, sync_connect_timeout_s=0.2)
        await a.learn("a fact", importance=0.9)
        sync = asyncio.ensure_future(a.sync_now(timeout=60))

        async def refused_as_busy() -> bool:
            state = a.sync_state()
            return state is not None and "HTTP 503" in (state.last_error or "")

        await wait_until(refused_as_busy, timeout=20, what="the busy hub's 503")
        # Let sync_connect_timeout_s pass several times over: had the 503 counted as
        # "no hub there", sync_now would have given up by now.
        await asyncio.sleep(1.0)
        assert not sync.done()
    report = await sync  # the slot is free again: the agent gets in and pushes
    assert report.pushed == 1


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
    a = await open_agent("agent-a", hub, hub_url=url, sync_connect_timeout_s=0.3)
    with pytest.raises(HubUnreachableError) as caught:
        await a.sync_now(timeout=20)
    message = str(caught.value)
    assert url in message
    assert "websocket port" in message and "4444" in message  # the default, for the user
    assert str(hub.port) in message  # the hub's answer names its real websocket port
