"""Through a real hub on loopback: out-of-range numbers and provenance takeovers
are refused with a reason, nothing of them is stored or relayed, and the hub and
its agents serve on (issue 13, items 6 and 2)."""

from __future__ import annotations

import time
from contextlib import AsyncExitStack

import msgspec
import pytest
from websockets.exceptions import ConnectionClosed

from chrysalis_memory import AgentMemory
from chrysalis_memory.crdt import HLC
from chrysalis_memory.model import MemoryPatch, Op, Signer
from chrysalis_memory.model.ops import Creation
from chrysalis_memory.sync import Acked, ServerError, Welcome
from tests.hub.conftest import OpenAgent, StartHub, raw_agent

MALLORY = Signer.from_bytes(bytes(range(32)))
INT64_MAX = (1 << 63) - 1
TAKEOVER = MemoryPatch(create=Creation(), content="mallory's now")


def signed(
    doc: str,
    *,
    hlc: tuple[int, int],
    patch: MemoryPatch,
    seq: int = 1,
    parents: tuple[str, ...] = (),
) -> Op:
    """A validly signed op by "mallory", carrying whatever it is given."""
    unsigned = Op(
        doc=doc,
        writer="mallory",
        seq=seq,
        hlc=HLC(*hlc),
        parents=parents,
        key=MALLORY.public_key,
        patch=patch,
    )
    return msgspec.structs.replace(unsigned, sig=MALLORY.sign(unsigned.encoded))


async def creator(mem: AgentMemory, mid: str) -> tuple[str, float]:
    doc = await mem.get(mid)
    assert doc is not None
    return doc.source_instance, doc.created_at


@pytest.mark.parametrize(
    ("what", "op"),
    [
        (
            "hlc counter",  # blocked every learn() on every replica for ~585 s
            signed(
                "poison",
                hlc=(time.time_ns() // 1_000_000 + 590_000, INT64_MAX),
                patch=MemoryPatch(create=Creation(), content="poison"),
            ),
        ),
        (
            "access",  # made recall() raise OverflowError and wedged the sync worker
            signed("poison", hlc=(1_700_000_000_000, 0), patch=MemoryPatch(access=INT64_MAX)),
        ),
        (
            "seq",
            signed(
                "poison",
                hlc=(1_700_000_000_000, 0),
                seq=1 << 63,
                patch=MemoryPatch(create=Creation(), content="poison"),
            ),
        ),
    ],
)
async def test_an_out_of_range_op_is_refused_with_a_reason_and_never_relayed(
    start_hub: StartHub, open_agent: OpenAgent, what: str, op: Op
) -> None:
    hub = await start_hub()
    observer = await open_agent("agent-b", hub)
    token = hub.tokens.create("mallory")
    async with AsyncExitStack() as stack:
        raw = await raw_agent(stack, hub, "mallory", token, MALLORY.public_key)
        await raw.send(raw.protocol.hello(0))
        assert isinstance((await raw.receive())[0], Welcome)
        _, frame = raw.protocol.push([op])
        await raw.send(frame)
        (error,) = await raw.receive()
        assert isinstance(error, ServerError)
        assert error.code == "bad_message" and what in error.message
        with pytest.raises(ConnectionClosed):
            await raw.connection.recv()
    assert hub.head == 0
    assert await hub.store.known_cids([op.cid]) == set()
    # The hub and its agents serve on, and the agents' writes and recalls work.
    mid = await observer.learn("still fine", importance=0.9)
    await observer.sync_now()
    assert hub.head == 1
    assert await observer.recall("still fine")
    assert await hub.store.get_state(mid) is not None


async def test_a_backdated_creation_of_another_agents_memory_is_refused_by_the_hub(
    start_hub: StartHub, open_agent: OpenAgent
) -> None:
    hub = await start_hub()
    a = await open_agent("agent-a", hub)
    b = await open_agent("agent-b", hub)
    mid = await a.learn("alice's finding", importance=0.9, memory_id="finding")
    await a.sync_now()
    genuine = await creator(a, mid)
    heads = tuple(sorted(op.cid for op in await a.history(mid)))
    now = time.time_ns() // 1_000_000
    # mallory pulls the memory and uses it (an access, as recall records) ...
    used = signed(mid, hlc=(now, 0), patch=MemoryPatch(access=1), parents=heads)
    # ... then claims to have created it in 1970: naming no parents, or naming them.
    unnamed = signed(mid, seq=2, hlc=(1000, 0), patch=TAKEOVER)
    named = signed(mid, seq=3, hlc=(1001, 0), patch=TAKEOVER, parents=heads)
    token = hub.tokens.create("mallory")
    async with AsyncExitStack() as stack:
        raw = await raw_agent(stack, hub, "mallory", token, MALLORY.public_key)
        await raw.send(raw.protocol.hello(0))
        await raw.receive()
        _, frame = raw.protocol.push([used, unnamed, named])
        await raw.send(frame)
        ack = await raw.answer()
    assert isinstance(ack, Acked)
    assert ack.accepted == (used.cid,)
    for attack in (unnamed, named):
        reason = ack.rejected[attack.cid]
        assert reason.startswith("backdated: ") and "mallory" in reason
    assert await hub.store.known_cids([unnamed.cid, named.cid]) == set()
    await b.sync_now()
    await a.sync_now()
    for replica in (a, b):
        assert await creator(replica, mid) == genuine
        assert await replica.list(source="mallory") == []
        assert await replica.store.known_cids([used.cid]) == {used.cid}
        assert await replica.store.known_cids([unnamed.cid, named.cid]) == set()
    state = (await hub.store.get_state(mid) or (None,))[0]
    assert state is not None and state.to_document().source_instance == "agent-a"


@pytest.mark.parametrize("first_to_sync", ["agent-a", "agent-b"])
async def test_two_agents_creating_one_id_apart_agree_on_its_creator(
    start_hub: StartHub, open_agent: OpenAgent, first_to_sync: str
) -> None:
    """Concurrent genuine creations of one chosen id, offline: nothing is refused,
    and every replica, both creators included, ends with the same memory, creator
    (the earliest creation) and state root, whichever reached the hub first."""
    hub = await start_hub()
    a = await open_agent("agent-a", hub, sync_enabled=False)
    b = await open_agent("agent-b", hub, sync_enabled=False)
    await a.learn("a's settings", importance=0.9, memory_id="settings", tags=["a"])
    await b.learn("b's settings", importance=0.9, memory_id="settings", tags=["b"])
    await a.close()
    await b.close()
    order = ["agent-a", "agent-b"] if first_to_sync == "agent-a" else ["agent-b", "agent-a"]
    agents = {name: await open_agent(name, hub) for name in order}
    for name in order:
        await agents[name].sync_now()
    for name in order:
        await agents[name].sync_now()
    a, b = agents["agent-a"], agents["agent-b"]
    assert await creator(a, "settings") == await creator(b, "settings")
    assert (await creator(a, "settings"))[0] == "agent-a"  # the earlier creation
    doc = await a.get("settings")
    assert doc is not None and doc.tags == ["a", "b"]  # nothing of either was lost
    assert await a.state_root() == await b.state_root() == await hub.store.state_root()
