"""Only members gossip: outsiders are refused before any frame and learn nothing,
members cannot write as anyone else, and nobody can make a peer hold unbounded
memory (issue 13, items 5, 7 and 9). Real agents on loopback websockets, real
SQLite stores; raw peers speak the protocol by hand (see conftest)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from chrysalis_memory import AgentMemory, GossipConfig
from chrysalis_memory.errors import ConfigError
from chrysalis_memory.gossip import wire
from chrysalis_memory.gossip.messages import Digest, Member, Ping, Push, Want
from chrysalis_memory.gossip.peer import GossipPeer, GossipState
from chrysalis_memory.gossip.summary import BUCKETS
from chrysalis_memory.model.ops import Creation, MemoryPatch, Op, OpAuthor, Signer
from tests.gossip.conftest import Listener, Members, OpenAgent, connect_as, signer_of
from tests.waiting import wait_until

UNREACHABLE = "ws://127.0.0.1:9"  # a raw peer's "address": nothing listens there


def state(memory: AgentMemory) -> GossipState:
    found = memory.gossip_state()
    assert found is not None
    return found


def peer_of(memory: AgentMemory) -> GossipPeer:
    peer = memory._gossip
    assert peer is not None
    return peer


def key_of(memory: AgentMemory) -> str:
    return peer_of(memory).signer.public_key


def create(writer: str, signer: Signer, doc: str, content: str, *, seq: int = 1) -> Op:
    author = OpAuthor(writer, signer, last_seq=seq - 1)
    return author.make(doc, MemoryPatch(create=Creation(), content=content))


async def holds(memory: AgentMemory, *ops: Op) -> bool:
    return bool(await memory.store.known_cids([op.cid for op in ops]))


async def everywhere(agents: list[AgentMemory], memory_id: str) -> None:
    async def arrived() -> bool:
        return all([await m.get(memory_id) is not None for m in agents])

    await wait_until(arrived, timeout=20, what=f"memory {memory_id} on every agent")


async def reads_member(memory: AgentMemory, agent_id: str) -> None:
    async def listed() -> bool:
        return agent_id in peer_of(memory).membership

    await wait_until(listed, timeout=10, what=f"{agent_id} on {memory.agent_id}'s member list")


async def frames_until_closed(connection: ClientConnection) -> list[dict[str, Any]]:
    """What the peer sent on this connection until it closed it (10 s at most)."""
    received = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            received.append(json.loads(await asyncio.wait_for(connection.recv(), 10)))
    return received


# --- outsiders ---------------------------------------------------------------------------


async def test_an_outsider_is_refused_and_cannot_inject_pre_empt_or_edit(
    open_agent: OpenAgent, members: Members, tmp_path: Path
) -> None:
    """An outsider (no member key) sends gossip frames straight away, then tries the
    handshake under its own id and under a member's: every attempt is closed before
    a frame is used. It cannot add a new writer, take over the id of a member that
    has not written yet, nor edit a memory; it is never sent anything but the
    handshake's nonce, not even to the address it names."""
    a = await open_agent("agent-a")
    b = await open_agent("agent-b", seeds=[a.gossip_url])
    original = await a.learn("the original words", importance=0.9, memory_id="m-original")
    await everywhere([a, b], original)
    late_key = signer_of(tmp_path / "agent-late", "agent-late").public_key
    members.add("agent-late", late_key)  # a member that has not written anything yet
    outsider = Signer.generate()
    (head,) = await a.history(original)
    new_writer = create("intruder", outsider, "m-injected", "an outsider's memory")
    pre_empted = create("agent-late", outsider, "m-late", "the outsider as agent-late")
    author = OpAuthor("intruder", outsider)
    edit = author.make(original, MemoryPatch(content="defaced"), parents=[head.cid])
    attack = (new_writer, pre_empted, edit)
    wanted = dict.fromkeys(("agent-a", "agent-b"), ((1, 1000),))
    async with (
        Listener() as ear,  # where the outsider says it listens
        connect(a.gossip_url or "", proxy=None, max_size=None) as raw,
    ):
        for message in (
            Push(attack, (Member("intruder", ear.url, "alive", 1),)),
            Ping(0),
            Digest(1, (b"\0" * 8,) * BUCKETS),
            Want(1, wanted),
        ):
            await raw.send(wire.encode("intruder", ear.url, message), text=True)
        with pytest.raises(ConnectionClosed):
            await connect_as(a.gossip_url or "", "intruder", outsider, {}, addr=ear.url)
        with pytest.raises(ConnectionClosed):  # a member's id without its key
            await connect_as(a.gossip_url or "", "agent-b", outsider, {}, addr=ear.url)
        # The agents gossip on: had anything of the attack been taken, or answered,
        # it would be seen by now.
        later = await a.learn("written after the attack", importance=0.9)
        await everywhere([a, b], later)
        for memory in (a, b):
            for op in attack:
                assert not await holds(memory, op)
            doc = await memory.get(original)
            assert doc is not None and doc.content == "the original words"
            assert await memory.get("m-injected") is None
        assert ear.connections == 0 and ear.frames == []
        received = await frames_until_closed(raw)
        assert raw.close_code in (1008, 1009)
        assert [sorted(frame) for frame in received] in ([], [["nonce", "type", "v"]])
    assert state(a).peers_refused >= 3
    assert state(a).rejections == {}  # nothing the outsider sent got as far as its ops
    assert state(a).members == 2  # agent-b and agent-late
    # The real agent-late is not locked out by the outsider's attempt at its id.
    late = await open_agent("agent-late", seeds=[a.gossip_url])
    assert key_of(late) == late_key
    first = await late.learn("agent-late's first words", importance=0.9)
    await everywhere([a, b, late], first)


async def test_an_agent_sends_nothing_to_a_peer_that_cannot_prove_membership(
    open_agent: OpenAgent,
) -> None:
    """A seed (or a stale address) where an outsider listens: the agent's handshake
    fails there, and no gossip (pings, pushes, membership) is sent to it."""
    impostor = Signer.generate()
    async with Listener(identity=("agent-b", impostor)) as fake:  # claims a member's id
        a = await open_agent("agent-a", seeds=[fake.url])
        await a.learn("not for outsiders", importance=0.9)

        async def tried() -> bool:
            return state(a).handshakes_failed >= 2

        await wait_until(tried, timeout=10, what="two handshakes with the impostor")
        assert fake.handshakes == 0  # its hello was refused: agent-b is no member here
        assert all(json.loads(frame)["type"] == "hello" for frame in fake.frames)
    # Listed as a member but signing with another key, the impostor fails the other way.
    b = await open_agent("agent-b")
    async with Listener(identity=("agent-b", impostor), known={"agent-a": key_of(a)}) as fake:
        c = await open_agent("agent-c", seeds=[fake.url])

        async def refused() -> bool:
            return state(c).handshakes_failed >= 2

        await wait_until(refused, timeout=10, what="the impostor's welcome refused")
        assert all(json.loads(frame)["type"] == "hello" for frame in fake.frames)
    assert key_of(b) != impostor.public_key


# --- members -------------------------------------------------------------------------------


async def test_a_member_cannot_write_as_another_writer_nor_bring_in_a_stranger(
    open_agent: OpenAgent, members: Members, tmp_path: Path
) -> None:
    agents = [await open_agent("agent-0")]
    for i in range(1, 3):
        agents.append(await open_agent(f"agent-{i}", seeds=[agents[0].gossip_url or ""]))
    victim, target = agents[1], agents[0]
    written = await victim.learn("the victim's words", importance=0.9)
    await everywhere(agents, written)
    (real,) = await victim.history(written)
    m_signer = signer_of(tmp_path / "agent-m", "agent-m")
    w_key = signer_of(tmp_path / "agent-w", "agent-w").public_key
    members.add("agent-m", m_signer.public_key)  # the forger: a member
    members.add("agent-w", w_key)  # a member that has not written yet
    await reads_member(target, "agent-w")
    forged_unseen = create("agent-w", m_signer, "m-w", "agent-m as agent-w")
    forged_seen = create(victim.agent_id, m_signer, "m-v", "agent-m as the victim", seq=50)
    stranger = create("stranger", Signer.generate(), "m-s", "a writer nobody listed")
    tampered = msgspec.structs.replace(
        real, seq=real.seq + 40, patch=MemoryPatch(content="words the writer never signed")
    )
    good = create("agent-m", m_signer, "m-m", "agent-m's own words")
    connection, proved = await connect_as(
        target.gossip_url or "", "agent-m", m_signer, {"agent-0": key_of(target)}
    )
    assert proved == "agent-0"
    async with connection:
        push = Push((forged_unseen, forged_seen, stranger, tampered, good))
        await connection.send(wire.encode("agent-m", UNREACHABLE, push), text=True)
        await everywhere(agents, "m-m")
        # A frame that names another sender than the one authenticated: closed.
        lie = wire.encode(victim.agent_id, UNREACHABLE, Push((forged_seen,)))
        await connection.send(lie, text=True)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(connection.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    connection, _ = await connect_as(
        target.gossip_url or "", "agent-m", m_signer, {"agent-0": key_of(target)}
    )
    async with connection:  # a malformed frame from a member: closed too
        await connection.send(b'{"v":1,"from":"agent-m"', text=True)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(connection.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert state(target).rejections == {"wrong_key": 2, "not_member": 1, "invalid": 1}
    assert state(target).frames_rejected == 2
    # agent-w is not locked out: its real ops are taken everywhere.
    w = await open_agent("agent-w", seeds=[target.gossip_url or ""])
    mine = await w.learn("agent-w's own words", importance=0.9)
    await everywhere([*agents, w], mine)
    for memory in [*agents, w]:
        for op in (forged_unseen, forged_seen, stranger, tampered):
            assert not await holds(memory, op)
        assert (await memory.verify()).ok
    node = peer_of(target).node
    assert ("stranger", 1) not in node.summary and ("agent-w", 1) in node.summary


async def test_fake_members_are_not_admitted(open_agent: OpenAgent, members: Members) -> None:
    """A member that spreads news of 64 made-up members per message, 200 times:
    none of them enters the table of peers, and no one is pinged on their account."""
    a = await open_agent("agent-a")
    b = await open_agent("agent-b", seeds=[a.gossip_url])
    m_signer = Signer.generate()
    members.add("agent-m", m_signer.public_key)
    await reads_member(a, "agent-m")

    async def b_known() -> bool:
        return peer_of(a).node.state_of("agent-b") == "alive"

    await wait_until(b_known, timeout=10, what="agent-b alive at agent-a")
    async with Listener(("agent-m", m_signer), {"agent-a": key_of(a)}) as home:
        connection, _ = await connect_as(
            a.gossip_url or "", "agent-m", m_signer, {"agent-a": key_of(a)}, addr=home.url
        )
        async with connection:
            for frame in range(200):
                fakes = tuple(
                    Member(f"fake-{frame}-{i}", f"ws://10.9.{frame}.{i}:7400", "alive", 1)
                    for i in range(wire.MAX_MEMBERS)
                )
                ping = wire.encode("agent-m", home.url, Ping(0, fakes))
                await connection.send(ping, text=True)
            await connection.send(wire.encode("agent-m", home.url, Ping(777)), text=True)

            async def acked() -> bool:  # frames are handled in order: all 200 were
                messages = [json.loads(f) for f in home.frames]
                return any(m.get("msg", {}).get("probe") == 777 for m in messages)

            await wait_until(acked, timeout=20, what="the last ping answered")
    assert set(peer_of(a).node.members(None)) <= {"agent-b", "agent-m"}
    assert state(a).alive + state(a).suspect + state(a).dead <= 2
    assert b.agent_id in peer_of(a).node.members(None)


# --- bounded memory --------------------------------------------------------------------------


# Known defect, not yet fixed: now and then a connection cut when its peer is dropped
# leaves its socket to the garbage collector (a ResourceWarning, once in a CI run).
# What this test asserts, the drop and the peer staying up, holds either way.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_a_member_that_does_not_read_is_dropped_and_the_peer_stays_up(
    open_agent: OpenAgent, members: Members, tmp_path: Path
) -> None:
    """A member asks for everything, again and again, and never reads the answers:
    what waits for it stays within its byte budget, it is dropped (its connection
    cut, its queue freed) each time it is over, and the agent goes on gossiping."""
    budget = 1 << 20
    a = await open_agent(
        "agent-a", gossip={"send_queue_bytes": budget, "want_answer_bytes": 256 << 10}
    )
    w_signer = signer_of(tmp_path / "agent-w", "agent-w")
    members.add("agent-w", w_signer.public_key)
    author = OpAuthor("agent-w", w_signer)
    bulk = [
        author.make(f"m-{i}", MemoryPatch(create=Creation(), content=f"{i} " + "x" * 10_000))
        for i in range(100)
    ]
    assert await a.merge_ops(bulk) == 100
    n_signer = signer_of(tmp_path / "agent-n", "agent-n")
    members.add("agent-n", n_signer.public_key)
    await reads_member(a, "agent-n")
    async with Listener(("agent-n", n_signer), {"agent-a": key_of(a)}, stall=True) as sink:
        connection, _ = await connect_as(
            a.gossip_url or "", "agent-n", n_signer, {"agent-a": key_of(a)}, addr=sink.url
        )
        async with connection:
            want = wire.encode("agent-n", sink.url, Want(1, {"agent-w": ((1, 100),)}))
            await connection.send(want, text=True)

            async def answering() -> bool:
                return sink.handshakes >= 1

            await wait_until(answering, timeout=10, what="the answer's connection open")
            for _ in range(80):  # 256 KB of answer each time: 20 MB in all
                await connection.send(want, text=True)

            async def dropped() -> bool:
                return state(a).peers_dropped >= 1

            await wait_until(dropped, timeout=30, what="the non-reader dropped")
        assert state(a).queued_bytes_high <= budget
    b = await open_agent("agent-b", seeds=[a.gossip_url])
    after = await a.learn("the agent is still up", importance=0.9)
    await everywhere([a, b], after)
    await everywhere([a, b], "m-99")
    assert state(a).queued_bytes <= budget


async def test_inbound_connections_are_bounded_and_strangers_are_timed_out(
    open_agent: OpenAgent,
) -> None:
    a = await open_agent(
        "agent-a", gossip={"max_inbound_connections": 3, "handshake_timeout_s": 1.0}
    )
    url = a.gossip_url or ""
    silent = [await connect(url, proxy=None) for _ in range(3)]  # never answer the challenge
    with pytest.raises(InvalidStatus) as refused:
        await connect(url, proxy=None)
    assert refused.value.response.status_code == 503
    for connection in silent:  # each was sent its nonce, then closed for saying nothing
        frame = json.loads(await asyncio.wait_for(connection.recv(), 10))
        assert frame["type"] == "challenge" and sorted(frame) == ["nonce", "type", "v"]
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(connection.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008

    # Many at once: no more than the limit are held, however they interleave.
    async def attempt() -> ClientConnection | None:
        try:
            return await connect(url, proxy=None)
        except InvalidStatus:
            return None

    burst = await asyncio.gather(*(attempt() for _ in range(12)))
    held = [c for c in burst if c is not None]
    assert len(peer_of(a)._inbound) <= 3
    for connection in held:
        await connection.close()
    # A frame larger than a handshake, before the handshake: closed, not read.
    async with connect(url, proxy=None) as big:
        await big.recv()
        await big.send("x" * 100_000)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(big.recv(), 10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    b = await open_agent("agent-b", seeds=[url])  # members still get in
    written = await b.learn("after the strangers left", importance=0.9)
    await everywhere([a, b], written)
    assert state(a).peers_refused >= 5


# --- configuration ---------------------------------------------------------------------------


async def test_gossip_without_a_member_source_refuses_to_start(tmp_path: Path) -> None:
    memory = AgentMemory(agent_id="agent-a", data_dir=tmp_path, gossip=GossipConfig(enabled=True))
    with pytest.raises(ConfigError, match="members_file") as refused:
        await memory.open()
    assert "gossip.members" in str(refused.value) and "hub_url" in str(refused.value)
    assert not memory.is_open
    async with AgentMemory(agent_id="agent-a", data_dir=tmp_path) as again:  # lock released
        assert again.gossip_url is None


@pytest.mark.parametrize(
    ("members_file", "problem"),
    [
        ("missing.json", "cannot be read"),
        ('{"agent-b": "not a key"}', "not an ed25519 public key"),
        ("[1, 2]", "not a JSON object"),
        ("{", "not JSON"),
    ],
)
async def test_a_bad_members_file_is_a_config_error(
    tmp_path: Path, members_file: str, problem: str
) -> None:
    path = tmp_path / "members.json"
    if members_file != "missing.json":
        path.write_text(members_file)
    memory = AgentMemory(
        agent_id="agent-a",
        data_dir=tmp_path,
        gossip=GossipConfig(enabled=True, members_file=path),
    )
    with pytest.raises(ConfigError, match=problem):
        await memory.open()
    assert not memory.is_open


async def test_members_listing_this_agent_with_another_key_is_a_config_error(
    tmp_path: Path,
) -> None:
    other = Signer.generate().public_key
    memory = AgentMemory(
        agent_id="agent-a",
        data_dir=tmp_path,
        gossip=GossipConfig(enabled=True, members={"agent-a": other}),
    )
    with pytest.raises(ConfigError, match="another key"):
        await memory.open()
    key = signer_of(tmp_path, "agent-a").public_key  # its own key is fine
    config: dict[str, Any] = {"enabled": True, "members": {"agent-a": key}}
    async with AgentMemory(
        agent_id="agent-a", data_dir=tmp_path, gossip=GossipConfig(**config)
    ) as memory:
        assert state(memory).members == 0


async def test_chrysalis_key_writes_a_members_file_the_agents_accept(tmp_path: Path) -> None:
    """The members can be listed before the agents first run: `chrysalis key` makes
    their keys where AgentMemory looks for them, and prints a members file."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRYSALIS_")}
    command = ["-m", "chrysalis_memory.cli", "key", "agent-a", "agent-b", "-d", str(tmp_path)]
    process = await asyncio.create_subprocess_exec(
        sys.executable, *command, stdout=asyncio.subprocess.PIPE, env=env
    )
    stdout, _ = await asyncio.wait_for(process.communicate(), 120)
    assert process.returncode == 0
    path = tmp_path / "members.json"
    path.write_bytes(stdout)
    gossip = {"enabled": True, "interval_ms": 100, "members_file": path}
    async with (
        AgentMemory(agent_id="agent-a", data_dir=tmp_path, gossip=GossipConfig(**gossip)) as a,
        AgentMemory(
            agent_id="agent-b",
            data_dir=tmp_path,
            gossip=GossipConfig(**gossip, seeds=[a.gossip_url or ""]),
        ) as b,
    ):
        assert json.loads(stdout) == {"agent-a": key_of(a), "agent-b": key_of(b)}
        written = await a.learn("listed before it ran", importance=0.9)
        await everywhere([a, b], written)
