"""Gossip between real agents: AgentMemory replicas on loopback websockets, one
event loop, real SQLite stores, no hub (except where the hub's peer list is the
point), members listed in a members file (see conftest). Convergence is polled
with a deadline, never waited for with a sleep."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from chrysalis_memory import AgentMemory, GossipConfig
from chrysalis_memory.config import HubConfig
from chrysalis_memory.gossip.messages import Member, Ping
from chrysalis_memory.gossip.node import GossipNode
from chrysalis_memory.gossip.peer import GossipPeer, members_url, peers_url, settings_from
from chrysalis_memory.hub.server import Hub
from chrysalis_memory.model.document import SyncStatus
from chrysalis_memory.model.ops import Signer
from chrysalis_memory.recall.embedders import HashingEmbedder
from tests.gossip.conftest import OpenAgent
from tests.waiting import wait_until


async def roots(agents: Sequence[AgentMemory]) -> list[str]:
    return [await m.state_root() for m in agents]


async def wait_converged(agents: Sequence[AgentMemory], *, timeout: float, what: str) -> None:
    async def one_root() -> bool:
        return len(set(await roots(agents))) == 1

    await wait_until(one_root, timeout=timeout, poll=0.1, what=what)


async def cids(memory: AgentMemory) -> set[str]:
    return {op.cid for op in await memory.export_ops()}


def state(memory: AgentMemory) -> Any:
    found = memory.gossip_state()
    assert found is not None
    return found


def peer_of(memory: AgentMemory) -> GossipPeer:
    peer = memory._gossip
    assert peer is not None
    return peer


# --- a network of 20 ------------------------------------------------------------------------


async def test_twenty_agents_with_a_few_seeds_converge_without_a_hub(
    open_agent: OpenAgent,
) -> None:
    started = time.monotonic()
    agents: list[AgentMemory] = []
    for i in range(20):
        # A chain: each agent knows one other; membership gossip does the rest.
        seeds = [agents[-1].gossip_url or ""] if agents else []
        agents.append(await open_agent(f"agent-{i:02d}", seeds=seeds))
    assert len({m.gossip_url for m in agents}) == 20
    written = []
    for i, memory in enumerate(agents):
        for j in range(3):
            written.append(
                await memory.learn(
                    f"fact {j} from agent {i}", importance=0.7 + j / 10, tags=[f"a{i}"]
                )
            )
    keeper = agents[5]
    secret = await keeper.learn("a short-term note, never shared", importance=0.2)
    others = [m for m in agents if m is not keeper]
    await wait_converged(others, timeout=30, what="one state root on 19 agents")
    # Everyone holds everything shared; the keeper holds that plus its short-term note.
    shared = await cids(others[0])
    assert len(shared) == 60
    (secret_op,) = await keeper.history(secret)
    assert await cids(keeper) == shared | {secret_op.cid}
    for memory in others:
        assert await memory.get(secret) is None
        assert not await memory.store.known_cids([secret_op.cid])
    for memory in agents:
        for mid in written[::7]:
            assert await memory.get(mid) is not None
        assert state(memory).alive >= 3  # it learned peers beyond its one seed
        assert state(memory).frames_rejected == 0
        doc = await memory.get(written[0])
        assert doc is not None
        # Gossiped ops are synced (nothing for this agent to push to a hub); the
        # writer's own are pending until a hub acknowledges them.
        expected = SyncStatus.PENDING if memory is agents[0] else SyncStatus.SYNCED
        assert doc.sync_status == expected
    assert sum(state(m).ops_received for m in agents) >= 19 * 60 - 60
    print(f"20 agents converged in {time.monotonic() - started:.1f} s")


async def test_a_promoted_memory_is_gossiped_with_its_history(open_agent: OpenAgent) -> None:
    a = await open_agent("agent-a")
    b = await open_agent("agent-b", seeds=[a.gossip_url])
    note = await a.learn("short-term at first", importance=0.3)
    await a.tag(note, "draft")
    marker = await a.learn("shared at once", importance=0.9)

    async def marker_arrived() -> bool:
        return await b.get(marker) is not None

    await wait_until(marker_arrived, timeout=10, what="the shared memory at B")
    assert await b.get(note) is None
    await a.reinforce(note, importance=0.8)  # promoted: its earlier ops are shared too
    await wait_converged([a, b], timeout=10, what="the promoted memory's history at B")
    doc = await b.get(note)
    assert doc is not None and doc.tags == ["draft"] and doc.version == 3


# --- what is verified: see test_members.py ----------------------------------------------


# --- membership: failures and restarts -----------------------------------------------------


async def test_a_stopped_agent_is_declared_dead_and_catches_up_when_restarted(
    open_agent: OpenAgent,
) -> None:
    first = await open_agent("agent-0")
    seed = first.gossip_url or ""
    agents = [first] + [await open_agent(f"agent-{i}", seeds=[seed]) for i in range(1, 5)]
    for memory in agents:
        await memory.learn(f"before the stop, by {memory.agent_id}", importance=0.9)
    await wait_converged(agents, timeout=15, what="convergence before the stop")
    leaver = agents[3]
    await leaver.close()
    assert leaver.gossip_url is None and leaver.gossip_state() is None
    rest = [m for m in agents if m is not leaver]

    async def seen_dead() -> bool:
        return all(peer_of(m).node.state_of("agent-3") == "dead" for m in rest)

    await wait_until(seen_dead, timeout=15, what="agent-3 declared dead by all")
    assert all(state(m).dead == 1 and state(m).alive == 3 for m in rest)
    for memory in rest:
        await memory.learn(f"while agent-3 was away, by {memory.agent_id}", importance=0.9)
    await wait_converged(rest, timeout=15, what="convergence without agent-3")

    async def rumours_over() -> bool:
        return all(state(m).rumours == 0 for m in rest)

    # Rumours have stopped: only anti-entropy can bring agent-3 what it missed.
    await wait_until(rumours_over, timeout=15, what="the rumours to die down")
    back = await open_agent("agent-3", seeds=[seed])  # same data, a new port
    await wait_converged([*rest, back], timeout=15, what="agent-3 caught up")

    async def seen_alive() -> bool:
        return all(peer_of(m).node.state_of("agent-3") == "alive" for m in rest)

    await wait_until(seen_alive, timeout=15, what="agent-3 alive again everywhere")
    assert all(peer_of(m).node.members()["agent-3"] == back.gossip_url for m in rest)


def test_a_later_incarnation_brings_a_peers_new_address() -> None:
    """A restarted agent may listen on a new port: news of its new life carries it."""
    node = GossipNode("agent-a", "ws://h:1")
    node.add_peers({"agent-c": "ws://h:3"}, 0.0)
    news = (Member("agent-b", "ws://h:2", "alive", 5), Member("agent-c", "ws://h:33", "alive", 9))
    node.receive("agent-b", "ws://h:2", Ping(1, news), 0.0)
    assert node.members()["agent-c"] == "ws://h:33"
    stale = (Member("agent-c", "ws://h:3", "suspect", 9),)  # same life: the address stays
    node.receive("agent-b", "ws://h:2", Ping(2, stale), 0.0)
    assert node.members(None)["agent-c"] == "ws://h:33"


# --- membership from the hub ----------------------------------------------------------------


async def http_get(url: str, token: str | None = None) -> tuple[int, bytes]:
    def get() -> tuple[int, bytes]:
        request = urllib.request.Request(url)
        if token is not None:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return int(response.status), bytes(response.read())
        except urllib.error.HTTPError as error:
            return int(error.code), bytes(error.read())

    return await asyncio.to_thread(get)


async def test_the_hub_lists_peers_to_agents_that_announce_themselves(tmp_path: Path) -> None:
    config = HubConfig(data_dir=tmp_path / "hub", websocket_port=0, http_port=0)
    async with Hub(config, embedder=HashingEmbedder()) as hub:
        tokens = {a: hub.tokens.create(a) for a in ("agent-a", "agent-b", "agent-c")}
        url = peers_url(hub.url)
        assert url == f"http://127.0.0.1:{hub.port}/peers"
        http = f"http://127.0.0.1:{hub.http_port}/peers"
        assert (await http_get(url))[0] == 401
        assert (await http_get(url, "chr_" + "x" * 43))[0] == 401
        for bad in ("http://h:1", "ws://h", "ws://h:1/a%20b", "x" * 600):
            status, _ = await http_get(f"{url}?announce={bad}", tokens["agent-a"])
            assert status == 400, bad
        status, _ = await http_get(f"{url}?announce=ws://h:1&announce=ws://h:2", tokens["agent-a"])
        assert status == 400
        status, body = await http_get(f"{url}?announce=ws://10.0.0.1:7400", tokens["agent-a"])
        assert (status, json.loads(body)) == (200, {})
        status, body = await http_get(
            f"{http}?announce=ws%3A%2F%2F10.0.0.2%3A7400", tokens["agent-b"]
        )
        assert (status, json.loads(body)) == (200, {"agent-a": "ws://10.0.0.1:7400"})
        status, body = await http_get(url, tokens["agent-c"])  # listens, announces nothing
        assert json.loads(body) == {
            "agent-a": "ws://10.0.0.1:7400",
            "agent-b": "ws://10.0.0.2:7400",
        }
        status, body = await http_get(f"{url}?announce=ws://10.0.0.9:7400", tokens["agent-a"])
        assert json.loads(body) == {"agent-b": "ws://10.0.0.2:7400"}  # never itself
        status, body = await http_get(url, tokens["agent-b"])
        assert json.loads(body) == {"agent-a": "ws://10.0.0.9:7400"}  # the latest address


async def test_the_hub_lists_gossip_members_with_their_keys_to_token_holders(
    tmp_path: Path,
) -> None:
    config = HubConfig(data_dir=tmp_path / "hub", websocket_port=0, http_port=0)
    async with Hub(config, embedder=HashingEmbedder()) as hub:
        keys = {a: Signer.generate().public_key for a in ("agent-a", "agent-b", "agent-c")}
        tokens = {a: hub.tokens.create(a, public_key=k) for a, k in keys.items()}
        hub.tokens.create("agent-new")  # no key bound yet: not a member until it connects
        hub.tokens.revoke("agent-c")
        url = members_url(hub.url)
        assert url == f"http://127.0.0.1:{hub.port}/members"
        assert (await http_get(url))[0] == 401
        assert (await http_get(url, "chry_" + "x" * 43))[0] == 401
        status, body = await http_get(url, tokens["agent-a"])
        assert status == 200
        assert json.loads(body) == {
            "members": {"agent-a": keys["agent-a"], "agent-b": keys["agent-b"]},
            "revoked": {"agent-c": keys["agent-c"]},
        }
        http = f"http://127.0.0.1:{hub.http_port}/members"
        assert json.loads((await http_get(http, tokens["agent-b"]))[1]) == json.loads(body)
        assert (await http_get(http, tokens["agent-c"]))[0] == 401  # revoked


async def test_agents_find_each_other_through_the_hub_and_go_on_without_it(
    tmp_path: Path, open_agent: OpenAgent
) -> None:
    config = HubConfig(data_dir=tmp_path / "hub", websocket_port=0, http_port=0)
    hub = await Hub(config, embedder=HashingEmbedder()).start()
    try:
        agents = []
        for i in range(6):
            agent_id = f"agent-{i}"
            agents.append(  # no members file: the hub's registered agents are the members
                await open_agent(
                    agent_id,
                    member=False,
                    hub_url=hub.url,
                    hub_token=hub.tokens.create(agent_id),
                    gossip={"members_file": None},
                )
            )

        async def everyone_known() -> bool:
            return all(state(m).alive == 5 for m in agents)

        await wait_until(everyone_known, timeout=15, what="peers learned through the hub")
        for memory in agents:
            await memory.learn(f"with the hub up, by {memory.agent_id}", importance=0.9)
        await wait_converged(agents, timeout=15, what="convergence with the hub")
    finally:
        await hub.close()
    for memory in agents:
        await memory.learn(f"with the hub down, by {memory.agent_id}", importance=0.9)
    await wait_converged(agents, timeout=15, what="convergence after the hub closed")
    assert len(await cids(agents[0])) == 12
    # Restarted while the hub is down, an agent still knows the members (the hub's
    # list, kept in its store) and gossips with them.
    config = agents[0].config
    await agents[0].close()
    agents[0] = await open_agent(
        config.agent_id,
        member=False,
        hub_url=config.hub_url,
        hub_token=config.hub_token,
        seeds=[agents[1].gossip_url or ""],
        gossip={"members_file": None},
    )
    assert state(agents[0]).members == 5
    await agents[0].learn("after a restart without the hub", importance=0.9)
    await wait_converged(agents, timeout=15, what="convergence after the restart")
    assert len(await cids(agents[1])) == 13


def test_gossip_settings_follow_the_config() -> None:
    settings = settings_from(GossipConfig(fanout=4, interval_ms=250, anti_entropy_interval_ms=2000))
    assert (settings.fanout, settings.interval_ms, settings.anti_entropy_interval_ms) == (
        4,
        250.0,
        2000.0,
    )
    assert settings_from(GossipConfig(anti_entropy_enabled=False)).anti_entropy_interval_ms is None
    assert peers_url("wss://hub.example/chrysalis/") == "https://hub.example/chrysalis/peers"
