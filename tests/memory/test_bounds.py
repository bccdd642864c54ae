"""An agent that receives the largest numbers an op may carry keeps working; one
that is offered larger ones refuses them, stores nothing, and keeps working.

Issue 13, item 6: an access count of 2^63 - 1 made recall() raise OverflowError
and wedged the sync worker; an op stamped [now + 590 s, 2^63 - 1] blocked every
learn() and access-recording recall() for ten minutes, across restarts.
"""

from __future__ import annotations

import msgspec
import pytest

from chrysalis_memory import AgentMemory
from chrysalis_memory.crdt import HLC
from chrysalis_memory.crdt.hlc import MAX_COUNTER, MAX_WALL_MS, system_ms
from chrysalis_memory.errors import InvalidArgumentError, MalformedOpError
from chrysalis_memory.model import MemoryPatch, Op, Signer, decode_op
from chrysalis_memory.model.ops import MAX_ACCESS, MAX_SEQ, Creation

from .conftest import OpenMemory

INT64_MAX = (1 << 63) - 1
MALLORY = Signer.from_bytes(bytes(range(32)))


def forged(doc: str, *, seq: int, hlc: tuple[int, int], patch: MemoryPatch) -> bytes:
    """A validly signed op of writer "mallory" with whatever numbers it is given."""
    unsigned = Op(
        doc=doc, writer="mallory", seq=seq, hlc=HLC(*hlc), key=MALLORY.public_key, patch=patch
    )
    return msgspec.structs.replace(unsigned, sig=MALLORY.sign(unsigned.encoded)).encoded


async def still_works(mem: AgentMemory, memory_id: str) -> None:
    """learn, recall counting accesses, record_access: and every op it minted is valid."""
    mid = await mem.learn("the agent still learns", importance=0.9)
    hits = await mem.recall("the agent still learns", k=5)
    assert mid in {hit.memory.id for hit in hits}
    await mem.record_access(memory_id)
    for op in await mem.export_ops():
        decode_op(op.encoded)  # within every bound, as peers will check


async def test_the_largest_values_an_op_may_carry_leave_the_agent_working(
    open_memory: OpenMemory,
) -> None:
    mem = await open_memory("agent-a")
    mid = await mem.learn("a memory everybody uses", importance=0.9, memory_id="shared")
    extreme = forged(
        "shared",
        seq=MAX_SEQ,
        hlc=(MAX_WALL_MS, MAX_COUNTER),
        patch=MemoryPatch(access=MAX_ACCESS, tags_remove={"t": (("mallory", MAX_SEQ),)}),
    )
    assert await mem.merge_ops([extreme]) == 1
    doc = await mem.get(mid)
    assert doc is not None and doc.access_count == MAX_ACCESS
    await still_works(mem, mid)
    doc = await mem.get(mid)
    assert doc is not None and doc.access_count >= MAX_ACCESS + 2  # two recorded here
    # The clock stayed usable (its stamps are below the top) and survives a restart.
    await mem.close()
    mem = await open_memory("agent-a")
    await still_works(mem, mid)


@pytest.mark.parametrize(
    ("what", "seq", "hlc", "patch"),
    [
        ("access", 1, None, MemoryPatch(access=INT64_MAX)),
        ("counter", 1, (1, INT64_MAX), MemoryPatch(content="poison")),
        ("wall time", 1, (INT64_MAX, 0), MemoryPatch(content="poison")),
        ("seq", 1 << 63, None, MemoryPatch(content="poison")),
    ],
)
async def test_numbers_past_the_bounds_are_refused_and_nothing_is_stored(
    open_memory: OpenMemory,
    what: str,
    seq: int,
    hlc: tuple[int, int] | None,
    patch: MemoryPatch,
) -> None:
    mem = await open_memory("agent-a")
    mid = await mem.learn("a memory everybody uses", importance=0.9, memory_id="shared")
    before = await mem.export_ops()
    stamp = hlc or (system_ms() + 590_000, 0)
    with pytest.raises(MalformedOpError, match=what):
        await mem.merge_ops([forged("shared", seq=seq, hlc=stamp, patch=patch)])
    assert await mem.export_ops() == before
    await still_works(mem, mid)
    await mem.close()  # closes cleanly: nothing half-done left behind


async def test_the_attack_stamp_of_issue_13_costs_one_millisecond_not_ten_minutes(
    open_memory: OpenMemory,
) -> None:
    # [now + 590 s, 2^32 - 1] is the largest such stamp that decodes now: the next
    # local write goes 1 ms past it instead of failing until the clock catches up.
    mem = await open_memory("agent-a")
    ahead = system_ms() + 590_000
    op = forged(
        "m", seq=1, hlc=(ahead, MAX_COUNTER), patch=MemoryPatch(create=Creation(), content="x")
    )
    await mem.merge_ops([op])
    mid = await mem.learn("written right after")
    mine = [op for op in await mem.history(mid) if op.writer == "agent-a"]
    assert mine[0].hlc == HLC(ahead + 1, 0)
    await mem.recall("written right after")


async def test_record_access_is_bounded(open_memory: OpenMemory) -> None:
    mem = await open_memory("agent-a")
    mid = await mem.learn("counted", importance=0.9)
    for bad in (0, MAX_ACCESS + 1, INT64_MAX):
        with pytest.raises(InvalidArgumentError, match="times"):
            await mem.record_access(mid, bad)
    doc = await mem.record_access(mid, MAX_ACCESS)
    assert doc.access_count == MAX_ACCESS
    ops = len(await mem.history(mid))
    doc = await mem.record_access(mid, 5)  # at its bound: nothing more is recorded
    assert doc.access_count == MAX_ACCESS
    await mem.recall("counted")
    assert len(await mem.history(mid)) == ops
