"""Provenance on real replicas: a later writer cannot take a memory over.

Issue 13, item 2: a ``create`` op on another agent's memory with a backdated
clock made the attacker the memory's ``source_instance``, with ``created_at``
near 0, and recall's ``source=`` filter followed it. The rule
(docs/concepts.md, "Provenance"): an op stamped before something its writer had
provably seen (a parent it names, or its own earlier op) is refused on ingest,
with a reason; honest creations (learning an id again, reviving a forgotten
memory, concurrent creations of one id) are all accepted and converge.
"""

from __future__ import annotations

import msgspec
import pytest

from chrysalis_memory import AgentMemory
from chrysalis_memory.crdt import HLC
from chrysalis_memory.crdt.hlc import system_ms
from chrysalis_memory.errors import BackdatedError
from chrysalis_memory.model import MemoryPatch, Op, Signer
from chrysalis_memory.model.ops import Creation

from .conftest import OpenMemory

MALLORY = Signer.from_bytes(bytes(range(32)))


def mallory(
    doc: str, seq: int, wall_ms: int, patch: MemoryPatch, parents: tuple[str, ...] = ()
) -> Op:
    """A validly signed op of writer "mallory", stamped as mallory likes."""
    unsigned = Op(
        doc=doc,
        writer="mallory",
        seq=seq,
        hlc=HLC(wall_ms, 0),
        parents=tuple(sorted(parents)),
        key=MALLORY.public_key,
        patch=patch,
    )
    return msgspec.structs.replace(unsigned, sig=MALLORY.sign(unsigned.encoded))


TAKEOVER = MemoryPatch(create=Creation(), content="mallory wrote this first")


async def provenance(mem: AgentMemory, mid: str) -> tuple[str, float]:
    doc = await mem.get(mid, include_forgotten=True)
    assert doc is not None
    return doc.source_instance, doc.created_at


async def assert_unchanged(mem: AgentMemory, mid: str, before: tuple[str, float]) -> None:
    assert await provenance(mem, mid) == before
    assert [d.id for d in await mem.list(source=before[0])] == [mid]
    assert await mem.list(source="mallory") == []
    hits = await mem.recall("alice's finding", source="mallory", record_access=False)
    assert hits == []


async def test_a_backdated_creation_naming_the_memorys_ops_is_refused(
    open_memory: OpenMemory,
) -> None:
    a = await open_memory("agent-a")
    mid = await a.learn("alice's finding", importance=0.9, memory_id="finding")
    before = await provenance(a, mid)
    heads = tuple(op.cid for op in await a.history(mid))
    attack = mallory(mid, 1, 1000, TAKEOVER, heads)  # 1970 plus a second
    with pytest.raises(BackdatedError, match="parent") as caught:
        await a.merge_ops([attack])
    assert caught.value.cid == attack.cid
    assert await a.store.known_cids([attack.cid]) == set()  # nothing stored
    await assert_unchanged(a, mid, before)


async def test_a_backdated_creation_by_a_writer_who_wrote_after_seeing_it_is_refused(
    open_memory: OpenMemory,
) -> None:
    a = await open_memory("agent-a")
    mid = await a.learn("alice's finding", importance=0.9, memory_id="finding")
    before = await provenance(a, mid)
    history = await a.history(mid)
    heads = tuple(op.cid for op in history)
    # mallory saw the memory and used it (recall records an access: an op), its
    # clock past what it saw (in the same millisecond it would be refused) ...
    seen_ms = max(op.hlc[0] for op in history)
    used = mallory(mid, 1, max(system_ms(), seen_ms + 1), MemoryPatch(access=1), heads)
    assert await a.merge_ops([used]) == 1
    # ... then claims, naming no parents, to have created it in 1970.
    attack = mallory(mid, 2, 1000, TAKEOVER)
    with pytest.raises(BackdatedError, match="never goes back"):
        await a.merge_ops([attack])
    assert await a.store.known_cids([attack.cid]) == set()
    await assert_unchanged(a, mid, before)
    # Sent together, the batch is refused as a whole, and nothing of it is stored.
    b = await open_memory("agent-b")
    await b.merge_ops(await a.export_ops())
    with pytest.raises(BackdatedError):
        await b.merge_ops([mallory(mid, 3, system_ms() + 1, MemoryPatch(access=2)), attack])


async def test_learning_an_id_another_agent_created_keeps_its_creator(
    open_memory: OpenMemory,
) -> None:
    a = await open_memory("agent-a")
    b = await open_memory("agent-b")
    mid = await a.learn("shared fact", importance=0.9, memory_id="fact")
    await b.merge_ops(await a.export_ops())
    await b.learn("shared fact, as b puts it", importance=0.9, memory_id="fact")
    assert await a.merge_ops(await b.export_ops()) == 1
    assert (await provenance(a, mid))[0] == (await provenance(b, mid))[0] == "agent-a"
    assert await a.state_root() == await b.state_root()


async def test_learning_a_forgotten_memory_again_brings_it_back_with_its_creator(
    open_memory: OpenMemory,
) -> None:
    a = await open_memory("agent-a")
    b = await open_memory("agent-b")
    mid = await a.learn("old news", importance=0.9, memory_id="news")
    created = await provenance(a, mid)
    await a.forget(mid)
    await b.merge_ops(await a.export_ops())
    assert await b.get(mid) is None
    await b.learn("news again", importance=0.9, memory_id="news")  # revives it on b
    await a.merge_ops(await b.export_ops())
    for replica in (a, b):
        doc = await replica.get(mid)
        assert doc is not None and doc.content == "news again"
        assert await provenance(replica, mid) == created
    # And the creator's own revival works too.
    await a.forget(mid)
    await a.learn("news, third time", importance=0.9, memory_id="news")
    assert (await a.get(mid)) is not None


async def test_concurrent_creations_of_one_id_converge_on_the_earliest(
    open_memory: OpenMemory,
) -> None:
    a = await open_memory("agent-a")
    b = await open_memory("agent-b")
    await a.learn("a's preferences", importance=0.9, memory_id="prefs")
    await b.learn("b's preferences", importance=0.9, memory_id="prefs")  # stamped later
    assert await a.merge_ops(await b.export_ops()) == 1
    assert await b.merge_ops(await a.export_ops()) == 1
    assert await provenance(a, "prefs") == await provenance(b, "prefs")
    assert (await provenance(a, "prefs"))[0] == "agent-a"
    assert await a.state_root() == await b.state_root()
