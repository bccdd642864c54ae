"""The gossip wire format: every message round trips with real signed ops, sizes
are exact, and anything malformed raises the typed protocol error, never
anything else (hypothesis fuzzing as for the hub protocol)."""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chrysalis_memory.crdt import HLC
from chrysalis_memory.crdt.hlc import MAX_COUNTER
from chrysalis_memory.gossip import wire
from chrysalis_memory.gossip.messages import (
    Ack,
    Digest,
    Entries,
    Member,
    Message,
    Ops,
    Ping,
    PingReq,
    Push,
    PushReply,
    Want,
)
from chrysalis_memory.gossip.summary import BUCKETS, Summary
from chrysalis_memory.model.ops import MAX_ACCESS, MAX_SEQ, MemoryPatch
from chrysalis_memory.sync.messages import MAX_ID, SyncProtocolError
from tests.sync.helpers import make_ops, signer_for

SENDER = "agent-a"
ADDR = "ws://127.0.0.1:7400"
OPS = make_ops(SENDER, 4) + make_ops("agent-b", 2)
MEMBERS = (
    Member("agent-b", "ws://127.0.0.1:7401", "alive", 1_700_000_000_000),
    Member("agent-c", "wss://peer.example:443/gossip", "suspect", 3),
    Member("agent-d", "ws://[::1]:7403", "dead", 0),
)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def summary() -> Summary:
    held = Summary()
    for writer, seqs in {"agent-a": [1, 2, 3, 7], "agent-b": [1, 5], "agent-c": [2]}.items():
        for seq in seqs:
            held.add(writer, seq)
    return held


def every_message() -> list[Message]:
    held = summary()
    buckets = sorted({b for b in range(BUCKETS) if held.entries([b])})
    entries = {w: tuple(iv) for w, iv in held.entries(buckets).items()}
    return [
        Push(tuple(OPS), MEMBERS),
        Push((), ()),
        PushReply(tuple(op.cid for op in OPS[:3]), MEMBERS[:1]),
        Ping(0, MEMBERS),
        Ping(42),
        Ack(42, MEMBERS[1:]),
        PingReq(7, "agent-c", MEMBERS),
        Digest(3, tuple(held.digests())),
        Entries(3, tuple(buckets), entries),
        Want(3, {"agent-a": ((4, 6), (8, 8)), "agent-c": ((1, 1),)}),
        Ops(3, tuple(OPS[2:])),
        Ops(9, ()),
    ]


@pytest.mark.parametrize("message", every_message(), ids=lambda m: type(m).__name__)
def test_every_message_round_trips(message: Message) -> None:
    frame = wire.encode(SENDER, ADDR, message)
    sender, addr, back = wire.decode(frame)
    assert (sender, addr) == (SENDER, ADDR)
    assert back == message
    assert type(back) is type(message)
    assert json.loads(frame)["msg"]["type"] in {
        "push",
        "push_reply",
        "ping",
        "ack",
        "ping_req",
        "digest",
        "entries",
        "want",
        "ops",
    }
    # Text in, as websockets hands it over, works as well as bytes.
    assert wire.decode(frame.decode())[2] == message
    # The envelope costs what encoded_size says it does.
    assert len(frame) == wire.ENVELOPE_BYTES + len(SENDER) + len(ADDR) + wire.encoded_size(message)


def test_ops_travel_as_their_canonical_bytes_verbatim() -> None:
    frame = wire.encode(SENDER, ADDR, Push(tuple(OPS)))
    for op in OPS:
        assert op.encoded in frame
    _, _, back = wire.decode(frame)
    assert isinstance(back, Push)
    assert [op.cid for op in back.ops] == [op.cid for op in OPS]


def test_the_envelope_is_as_documented() -> None:
    frame = json.loads(wire.encode(SENDER, ADDR, Ping(5, MEMBERS[:1])))
    assert frame == {
        "v": 1,
        "from": SENDER,
        "addr": ADDR,
        "msg": {
            "type": "ping",
            "probe": 5,
            "members": [["agent-b", "ws://127.0.0.1:7401", "alive", 1_700_000_000_000]],
        },
    }
    digest = json.loads(wire.encode(SENDER, ADDR, Digest(1, tuple(summary().digests()))))
    assert len(digest["msg"]["digests"]) == BUCKETS
    assert all(len(d) == 12 for d in digest["msg"]["digests"])  # 8 bytes in base64


def test_only_real_ops_can_be_encoded() -> None:
    from chrysalis_memory.gossip.simulator import SimOp

    with pytest.raises(TypeError):
        wire.encode(SENDER, ADDR, Push((SimOp("w", 1, "c" * 64),)))


# --- bad frames --------------------------------------------------------------------------


def frame_of(msg: dict[str, Any], **envelope: Any) -> bytes:
    data = {"v": 1, "from": SENDER, "addr": ADDR, "msg": msg, **envelope}
    return json.dumps(data, separators=(",", ":")).encode()


def op_json(op: Any) -> Any:
    return json.loads(op.encoded)


GOOD_DIGESTS = json.loads(wire.encode(SENDER, ADDR, Digest(1, tuple(summary().digests()))))["msg"][
    "digests"
]
TAMPERED = msgspec.structs.replace(
    OPS[0], patch=MemoryPatch(content="changed after signing", create=OPS[0].patch.create)
)

BAD_FRAMES: dict[str, bytes | str] = {
    "not json": b"{nope",
    "not an object": b"[1, 2]",
    "empty": b"",
    "bad utf-8": b'{"v":1,"from":"\xff"}',
    "no message": json.dumps({"v": 1, "from": SENDER, "addr": ADDR}).encode(),
    "unknown envelope field": frame_of({"type": "ping", "probe": 1}, extra=1),
    "unknown type": frame_of({"type": "gossip", "probe": 1}),
    "unknown message field": frame_of({"type": "ping", "probe": 1, "x": 2}),
    "bad sender": frame_of({"type": "ping", "probe": 1}, **{"from": "has spaces"}),
    "empty sender": frame_of({"type": "ping", "probe": 1}, **{"from": ""}),
    "http address": frame_of({"type": "ping", "probe": 1}, addr="http://127.0.0.1:1"),
    "address without port": frame_of({"type": "ping", "probe": 1}, addr="ws://127.0.0.1"),
    "address with port 0": frame_of({"type": "ping", "probe": 1}, addr="ws://127.0.0.1:0"),
    "address with credentials": frame_of({"type": "ping", "probe": 1}, addr="ws://u:p@h:1"),
    "address with spaces": frame_of({"type": "ping", "probe": 1}, addr="ws://h:1/a b"),
    "address too long": frame_of({"type": "ping", "probe": 1}, addr="ws://h:1/" + "a" * 600),
    "negative probe": frame_of({"type": "ping", "probe": -1}),
    "probe as text": frame_of({"type": "ping", "probe": "1"}),
    "member with a bad state": frame_of(
        {"type": "ack", "probe": 1, "members": [["agent-b", ADDR, "zombie", 1]]}
    ),
    "member with a bad address": frame_of(
        {"type": "ack", "probe": 1, "members": [["agent-b", "tcp://x:1", "alive", 1]]}
    ),
    "member as object": frame_of(
        {
            "type": "ack",
            "probe": 1,
            "members": [{"id": "b", "addr": ADDR, "state": "alive", "incarnation": 1}],
        }
    ),
    "too many members": frame_of(
        {"type": "ping", "probe": 1, "members": [["agent-b", ADDR, "alive", 1]] * 65}
    ),
    "ping_req without target": frame_of({"type": "ping_req", "probe": 1}),
    "digests too few": frame_of({"type": "digest", "session": 1, "digests": GOOD_DIGESTS[:-1]}),
    "digest too short": frame_of(
        {"type": "digest", "session": 1, "digests": ["AAAAAAAAAA==", *GOOD_DIGESTS[1:]]}
    ),
    "digest not base64": frame_of(
        {"type": "digest", "session": 1, "digests": ["!!!!!!!!!!!=", *GOOD_DIGESTS[1:]]}
    ),
    "bucket out of range": frame_of(
        {"type": "entries", "session": 1, "buckets": [BUCKETS], "entries": {}}
    ),
    "buckets repeat": frame_of({"type": "entries", "session": 1, "buckets": [3, 3], "entries": {}}),
    "no buckets": frame_of({"type": "entries", "session": 1, "buckets": [], "entries": {}}),
    "empty interval": frame_of({"type": "want", "session": 1, "want": {"agent-a": [[5, 4]]}}),
    "sequence number 0": frame_of({"type": "want", "session": 1, "want": {"agent-a": [[0, 4]]}}),
    "interval of three": frame_of({"type": "want", "session": 1, "want": {"agent-a": [[1, 2, 3]]}}),
    "writer without intervals": frame_of({"type": "want", "session": 1, "want": {"agent-a": []}}),
    "bad writer id": frame_of({"type": "want", "session": 1, "want": {"a b": [[1, 1]]}}),
    "bad cid in had": frame_of({"type": "push_reply", "had": ["xyz"]}),
    "op not canonical": b'{"v":1,"from":"agent-a","addr":"ws://127.0.0.1:7400","msg":'
    b'{"type":"push","ops":[' + json.dumps(op_json(OPS[0]), indent=1).encode() + b"]}}",
    "op malformed": frame_of({"type": "push", "ops": [{"doc": "x"}]}),
    "op repeated": frame_of({"type": "ops", "session": 1, "ops": [op_json(OPS[0])] * 2}),
    "op as text": frame_of({"type": "ops", "session": 1, "ops": [OPS[0].encoded.decode()]}),
    "too many ops": b'{"v":1,"from":"agent-a","addr":"ws://127.0.0.1:7400","msg":'
    b'{"type":"ops","session":1,"ops":['
    + b",".join(op.encoded for op in make_ops("agent-z", wire.MAX_OPS + 1))
    + b"]}}",
}


@pytest.mark.parametrize("frame", BAD_FRAMES.values(), ids=BAD_FRAMES.keys())
def test_bad_frames_raise_the_protocol_error(frame: bytes | str) -> None:
    with pytest.raises(SyncProtocolError):
        wire.decode(frame)


def test_limits_are_reported_as_too_large() -> None:
    with pytest.raises(SyncProtocolError) as caught:
        wire.decode(BAD_FRAMES["too many ops"])
    assert caught.value.code == "too_large"
    frame = wire.encode(SENDER, ADDR, Push(tuple(OPS)))
    with pytest.raises(SyncProtocolError) as caught:
        wire.decode(frame, max_bytes=len(frame) - 1)
    assert caught.value.code == "too_large"
    assert wire.decode(frame, max_bytes=len(frame))[2] == Push(tuple(OPS))


def test_a_later_protocol_version_is_named() -> None:
    with pytest.raises(SyncProtocolError) as caught:
        wire.decode(frame_of({"type": "ping", "probe": 1, "new_field": 1}, v=2))
    assert caught.value.code == "unsupported_version"
    with pytest.raises(SyncProtocolError) as caught:
        wire.decode(frame_of({"type": "ping", "probe": 1}, v=2))
    assert caught.value.code == "unsupported_version"


def test_an_op_with_a_bad_signature_passes_the_codec_for_the_store_to_refuse() -> None:
    """The codec checks form, not signatures: the store refuses it (test_peers.py)."""
    _, _, back = wire.decode(wire.encode(SENDER, ADDR, Push((TAMPERED,))))
    assert isinstance(back, Push) and back.ops[0].cid == TAMPERED.cid != OPS[0].cid


def test_the_op_that_broke_a_batch_is_named() -> None:
    frame = frame_of({"type": "push", "ops": [op_json(OPS[0]), {"doc": "x"}]})
    with pytest.raises(SyncProtocolError) as caught:
        wire.decode(frame)
    assert caught.value.index == 1


def test_check_addr() -> None:
    for good in ("ws://127.0.0.1:1", "wss://host.example:443/x/y", "ws://[::1]:7400"):
        assert wire.check_addr(good) == good
    for bad in (None, 7, "", "ws://", "ws://h", "ws://h:99999", "ftp://h:1", "ws://h:1#f"):
        with pytest.raises(SyncProtocolError):
            wire.check_addr(bad)


# --- fuzzing -------------------------------------------------------------------------------

TYPES = ["push", "push_reply", "ping", "ack", "ping_req", "digest", "entries", "want", "ops"]
FIELDS = [
    "type",
    "ops",
    "members",
    "had",
    "probe",
    "target",
    "session",
    "digests",
    "buckets",
    "entries",
    "want",
]
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from([*TYPES, SENDER, ADDR, "a" * 64, "AAAAAAAAAAA=", "alive"])
    | st.just(op_json(OPS[0])),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES)}, optional=dict.fromkeys(FIELDS[1:], json_values)
)
envelopes = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 1, 2, 0, "1"]), "msg": messages},
    optional={"from": st.sampled_from([SENDER, "", "x y"]) | st.text(max_size=5)}
    | {"addr": st.sampled_from([ADDR, "ws://h", "http://h:1"]) | st.text(max_size=10)},
)


def decodes_or_refuses(data: bytes | str) -> None:
    try:
        sender, addr, message = wire.decode(data)
    except SyncProtocolError:
        return  # the typed error; anything else (another ProtocolError too) fails
    # Whatever passes re-encodes to an equivalent frame.
    assert wire.decode(wire.encode(sender, addr, message))[2] == message


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_protocol_error(data: bytes) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_only_ever_raises_protocol_error(data: str) -> None:
    decodes_or_refuses(data)


@FUZZ
@given(envelopes)
def test_arbitrary_json_frames_only_ever_raise_protocol_error(frame: dict[str, Any]) -> None:
    decodes_or_refuses(json.dumps(frame, separators=(",", ":")))


VALID_FRAMES = [json.loads(wire.encode(SENDER, ADDR, m)) for m in every_message()]


@FUZZ
@given(st.sampled_from(VALID_FRAMES), st.data())
def test_valid_frames_with_one_field_changed_only_raise_protocol_error(
    frame: dict[str, Any], data: st.DataObject
) -> None:
    frame = json.loads(json.dumps(frame))
    target = frame["msg"] if data.draw(st.booleans()) else frame
    name = data.draw(st.sampled_from(sorted(target)) | st.sampled_from(FIELDS))
    if data.draw(st.booleans()) and name in target:
        del target[name]
    else:
        target[name] = data.draw(json_values)
    decodes_or_refuses(json.dumps(frame, separators=(",", ":")))


# --- every number has a range ------------------------------------------------------------

NUMBER_FIELDS: dict[str, Any] = {
    # name: a frame carrying the number n
    "probe": lambda n: frame_of({"type": "ping", "probe": n}),
    "session": lambda n: frame_of({"type": "want", "session": n, "want": {}}),
    "incarnation": lambda n: frame_of(
        {"type": "ack", "probe": 1, "members": [["agent-b", ADDR, "alive", n]]}
    ),
    "first of a wanted interval": lambda n: frame_of(
        {"type": "want", "session": 1, "want": {"agent-a": [[n, n]]}}
    ),
    "last of an interval held": lambda n: frame_of(
        {"type": "entries", "session": 1, "buckets": [0], "entries": {"agent-a": [[1, n]]}}
    ),
    "seq of a pushed op": lambda n: frame_of({"type": "push", "ops": [forged_op(seq=n)]}),
    "hlc counter of a pushed op": lambda n: frame_of(
        {"type": "push", "ops": [forged_op(hlc=[1_700_000_000_000, n])]}
    ),
    "access count of a pushed op": lambda n: frame_of(
        {"type": "push", "ops": [forged_op(patch=MemoryPatch(access=n))]}
    ),
}
BOUND = {
    "probe": MAX_ID,
    "session": MAX_ID,
    "incarnation": MAX_ID,
    "first of a wanted interval": MAX_SEQ,
    "last of an interval held": MAX_SEQ,
    "seq of a pushed op": MAX_SEQ,
    "hlc counter of a pushed op": MAX_COUNTER,
    "access count of a pushed op": MAX_ACCESS,
}


def forged_op(
    *, seq: int = 1, hlc: list[int] | None = None, patch: MemoryPatch | None = None
) -> Any:
    """A validly signed op of agent-a carrying any numbers (signing checks no range)."""
    unsigned = msgspec.structs.replace(
        OPS[0],
        seq=seq,
        hlc=HLC(*(hlc or OPS[0].hlc)),
        patch=patch or OPS[0].patch,
        sig="",
    )
    return op_json(msgspec.structs.replace(unsigned, sig=signer_for(SENDER).sign(unsigned.encoded)))


@pytest.mark.parametrize("field", sorted(NUMBER_FIELDS))
def test_every_number_in_a_frame_has_a_range(field: str) -> None:
    build, bound = NUMBER_FIELDS[field], BOUND[field]

    @FUZZ
    @given(
        inside=st.integers(1, bound) | st.sampled_from([1, bound]),
        outside=st.integers(bound + 1, 1 << 200)
        | st.sampled_from([bound + 1, (1 << 63) - 1, 1 << 63, 1 << 64]),
    )
    def check(inside: int, outside: int) -> None:
        wire.decode(build(inside))
        with pytest.raises(SyncProtocolError) as caught:
            wire.decode(build(outside))
        assert caught.value.code == "bad_message"

    check()


def test_the_push_that_crashed_a_handler_is_refused_by_the_codec() -> None:
    # Issue 13: a push with seq = 2^63 raised in the gossip handler (SQLite overflow).
    with pytest.raises(SyncProtocolError, match="seq"):
        wire.decode(frame_of({"type": "push", "ops": [forged_op(seq=1 << 63)]}))
