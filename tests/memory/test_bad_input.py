"""Bad input gets a typed, explanatory error and changes nothing that is stored."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from typing import Any

import msgspec
import pytest

from chrysalis_memory import AgentMemory, ChrysalisError
from chrysalis_memory.errors import (
    EquivocationError,
    ForgedWriterError,
    InvalidArgumentError,
    InvalidOpError,
    MalformedOpError,
    SignatureError,
    UnknownMemoryError,
    UsageError,
)
from chrysalis_memory.model.ops import MemoryPatch, OpAuthor, Signer, b64encode
from tests.memory.conftest import OpenMemory


class Snapshot:
    """Everything observable about a replica, to prove a failed call changed nothing."""

    @staticmethod
    async def of(mem: AgentMemory) -> tuple[Any, ...]:
        docs = await mem.list(limit=10_000, include_forgotten=True)
        return (
            await mem.state_root(),
            await mem.store.counts(),
            [d.model_dump() for d in docs],
        )


@pytest.fixture
async def seeded(mem: AgentMemory) -> AsyncIterator[tuple[AgentMemory, str]]:
    mid = await mem.learn("stored fact", importance=0.9, tags=["keep"])
    yield mem, mid
    assert (await mem.verify()).ok


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"importance": 1.5}, "importance must be between 0.0 and 1.0, got 1.5"),
        ({"importance": -0.1}, "importance must be between 0.0 and 1.0"),
        ({"importance": math.nan}, "importance must be between 0.0 and 1.0"),
        ({"importance": "high"}, "importance must be a number"),
        ({"importance": True}, "importance must be a number"),
        ({"confidence": 2}, "confidence must be between 0.0 and 1.0"),
        ({"memory_type": "dream"}, "memory_type must be one of episodic, semantic, procedural"),
        ({"tags": "geo"}, "tags must be a list of strings, not a single string"),
        ({"tags": ["ok", ""]}, "every item of tags must be a non-empty string"),
        ({"tags": [3]}, "every item of tags must be a non-empty string"),
        ({"metadata": {"x": object()}}, "metadata must be JSON-serialisable"),
        ({"metadata": {"x": math.inf}}, "metadata must not contain NaN or infinite numbers"),
        ({"metadata": [1]}, "metadata must be a mapping"),
        ({"memory_id": ""}, "memory id must be 1 to 256 characters"),
        ({"memory_id": "emb:x"}, "reserved for embeddings"),
        ({"related": ["emb:x"]}, "reserved for embeddings"),
    ],
)
async def test_learn_rejects_bad_arguments(
    seeded: tuple[AgentMemory, str], kwargs: dict[str, Any], message: str
) -> None:
    mem, _ = seeded
    before = await Snapshot.of(mem)
    with pytest.raises(InvalidArgumentError, match=message) as caught:
        await mem.learn("content", **kwargs)
    assert isinstance(caught.value, ChrysalisError) and isinstance(caught.value, ValueError)
    assert await Snapshot.of(mem) == before


@pytest.mark.parametrize("content", ["", "   \n", None, 42, "x" * (512 * 1024 + 1)])
async def test_learn_rejects_bad_content(seeded: tuple[AgentMemory, str], content: Any) -> None:
    mem, _ = seeded
    before = await Snapshot.of(mem)
    with pytest.raises(InvalidArgumentError, match="content"):
        await mem.learn(content)
    assert await Snapshot.of(mem) == before


async def test_calls_on_unknown_ids_raise(seeded: tuple[AgentMemory, str]) -> None:
    mem, _ = seeded
    before = await Snapshot.of(mem)
    calls = [
        mem.update("ghost", content="x"),
        mem.tag("ghost", "t"),
        mem.untag("ghost", "t"),
        mem.reinforce("ghost", importance=0.9),
        mem.link("ghost", "other"),
        mem.forget("ghost"),
        mem.record_access("ghost"),
        mem.history("ghost"),
    ]
    for call in calls:
        with pytest.raises(UnknownMemoryError, match="no memory with id 'ghost'") as caught:
            await call
        assert isinstance(caught.value, UsageError)
        assert isinstance(caught.value, LookupError)
    assert await Snapshot.of(mem) == before


async def test_calls_with_nothing_to_do_raise(seeded: tuple[AgentMemory, str]) -> None:
    mem, mid = seeded
    before = await Snapshot.of(mem)
    with pytest.raises(InvalidArgumentError, match="update needs at least one"):
        await mem.update(mid)
    with pytest.raises(InvalidArgumentError, match="reinforce needs"):
        await mem.reinforce(mid)
    with pytest.raises(InvalidArgumentError, match="cannot be linked to itself"):
        await mem.link(mid, mid)
    with pytest.raises(InvalidArgumentError, match="at least one other"):
        await mem.link(mid)
    with pytest.raises(InvalidArgumentError, match="times must be a positive integer"):
        await mem.record_access(mid, 0)
    with pytest.raises(InvalidArgumentError, match="limit must be a non-negative integer"):
        await mem.list(limit=-1)
    with pytest.raises(InvalidArgumentError, match="since must be a datetime"):
        await mem.list(since="yesterday")
    assert await Snapshot.of(mem) == before


async def _foreign_ops(open_memory: OpenMemory) -> list[bytes]:
    other = await open_memory("agent-b")
    mid = await other.learn("from b", importance=0.9)
    await other.update(mid, content="from b, edited")
    return [op.encoded for op in await other.export_ops()]


def _tamper(encoded: bytes, **changes: Any) -> bytes:
    data = msgspec.json.decode(encoded)
    for key, value in changes.items():
        if key == "content":
            data["patch"]["content"] = value
        else:
            data[key] = value
    return msgspec.json.encode(data)


async def test_merge_rejects_corrupt_and_forged_ops(
    seeded: tuple[AgentMemory, str], open_memory: OpenMemory
) -> None:
    mem, _ = seeded
    good = await _foreign_ops(open_memory)
    mallory = Signer.generate()
    forged = OpAuthor("agent-b", mallory).make("victim", MemoryPatch(content="lies")).encoded
    impostor_of_a = OpAuthor("agent-a", mallory).make("mine", MemoryPatch(content="x")).encoded
    other_key = b64encode(Signer.generate().private_bytes()[:32])
    cases: list[tuple[list[Any], type[InvalidOpError], str]] = [
        ([good[0], b"{not json"], MalformedOpError, "op #1: op is not valid JSON"),
        ([good[0], b"[]"], MalformedOpError, "invalid op"),
        ([good[0], {"v": 1}], MalformedOpError, "invalid op"),
        ([_tamper(good[0], v=2)], MalformedOpError, "invalid op"),
        ([_tamper(good[0], seq=0)], MalformedOpError, "seq"),
        ([_tamper(good[0], sig="")], MalformedOpError, "not signed"),
        ([_tamper(good[0], content="altered")], SignatureError, "does not verify"),
        ([_tamper(good[0], key=other_key)], SignatureError, "does not verify"),
        ([b"x" * (1 << 20 | 1)], MalformedOpError, "over the 1048576 byte limit"),
        # valid signatures, but two keys claim to be agent-b
        ([good[0], forged], ForgedWriterError, "signed by different keys"),
        # a valid signature by a key that is not agent-a's pinned key
        ([impostor_of_a], ForgedWriterError, "pinned to another public key"),
    ]
    for batch, error, message in cases:
        before = await Snapshot.of(mem)
        with pytest.raises(error, match=message):
            await mem.merge_ops(batch)
        assert await Snapshot.of(mem) == before, f"{error.__name__} batch changed the store"
    # the good ops alone are still accepted afterwards
    assert await mem.merge_ops(good) == len(good)


async def test_merge_rejects_equivocation(
    seeded: tuple[AgentMemory, str], open_memory: OpenMemory
) -> None:
    mem, _ = seeded
    b = await open_memory("agent-b")
    await b.learn("b's first op", importance=0.9)
    await mem.merge_ops(await b.export_ops())
    # agent-b's key signs a *different* op claiming the same sequence number 1
    signer = b._require_author().signer
    twin = OpAuthor("agent-b", signer).make("elsewhere", MemoryPatch(content="fork"))
    before = await Snapshot.of(mem)
    with pytest.raises(EquivocationError, match="already has a different op with sequence"):
        await mem.merge_ops([twin])
    assert await Snapshot.of(mem) == before


async def test_merge_rejects_a_single_op_passed_bare(seeded: tuple[AgentMemory, str]) -> None:
    mem, _ = seeded
    op = (await mem.export_ops())[0]
    with pytest.raises(InvalidArgumentError, match="a list of ops"):
        await mem.merge_ops(op.encoded)  # type: ignore[arg-type]


async def test_a_bad_op_late_in_a_large_batch_rolls_back_every_chunk(
    seeded: tuple[AgentMemory, str], open_memory: OpenMemory
) -> None:
    mem, _ = seeded
    other = await open_memory("agent-b", promotion_enabled=False)
    for i in range(600):  # more than two ingest chunks: checking and writing overlap
        await other.learn(f"fact {i}")
    batch: list[bytes] = [op.encoded for op in await other.export_ops()]
    batch[550] = _tamper(batch[550], content="altered late in the batch")
    before = await Snapshot.of(mem)
    with pytest.raises(SignatureError, match="op #550"):
        await mem.merge_ops(batch)
    assert await Snapshot.of(mem) == before
    batch[550] = (await other.export_ops())[550].encoded
    assert await mem.merge_ops(batch) == 600
