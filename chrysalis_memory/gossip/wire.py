"""The gossip wire format between agents: one JSON text frame per message.

A frame is an envelope naming the protocol version, the sender and the address
it listens at, around one message tagged by its type::

    {"v": 1, "from": "agent-7", "addr": "ws://10.0.0.7:7400",
     "msg": {"type": "push", "ops": [<op>, ...], "members": [[id, addr, state, inc], ...]}}

Ops travel as their canonical encoding embedded verbatim (as in the hub
protocol, :mod:`chrysalis_memory.sync.messages`) and are re-validated one by one
with :func:`~chrysalis_memory.model.ops.decode_op` on receipt, so an op's CID is
the hash of the bytes that travelled. Digests are 8 bytes in base64; ranges of
sequence numbers are ``{writer: [[first, last], ...]}``. Everything is checked
when a frame is decoded (unknown fields, wrong types, sizes, counts); anything
bad raises :class:`~chrysalis_memory.sync.messages.SyncProtocolError` (a
:class:`~chrysalis_memory.errors.ProtocolError`) and nothing of the frame is
used. Signatures are not checked here: that is the store's job, before an op
is stored or forwarded.

Pure: no I/O. See ``docs/gossip.md`` ("The wire format").
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence
from typing import Annotated, Final, Literal, Union
from urllib.parse import urlsplit

import msgspec
from msgspec import Meta, Struct

from chrysalis_memory.gossip.messages import (
    Ack,
    Digest,
    Entries,
    Member,
    Message,
    OpLike,
    Ops,
    Ping,
    PingReq,
    Push,
    PushReply,
    Want,
)
from chrysalis_memory.gossip.summary import BUCKETS, Interval
from chrysalis_memory.model.ops import MAX_SEQ, AgentId, Cid, Op
from chrysalis_memory.sync.messages import (
    MAX_ID,
    RawOps,
    SyncProtocolError,
    decode_frame,
    decode_ops,
    raw_ops,
)

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)

MAX_FRAME_BYTES: Final = 4 << 20
"""Largest frame accepted (4 MiB; one op may be 1 MiB). Senders split pushes and
op batches to stay under it."""
MAX_ADDR_CHARS: Final = 512
MAX_OPS: Final = 1000
"""Ops in one ``push`` or ``ops`` message."""
MAX_MEMBERS: Final = 64
"""Membership updates riding on one message."""
MAX_HAD: Final = MAX_OPS
MAX_WRITERS: Final = 1 << 16
"""Writers named in one ``entries`` or ``want`` message."""
MAX_INTERVALS: Final = 1 << 18
"""Intervals in one ``entries`` or ``want`` message, all writers together."""
DIGEST_BYTES: Final = 8
ENVELOPE_BYTES: Final = 34
"""Bytes of the envelope around a message, besides the sender's id and address."""

Counter = Annotated[int, Meta(ge=0, le=MAX_ID)]
"""Probe and session numbers and incarnations: at most ``MAX_ID`` (2^53 - 1, see
:data:`chrysalis_memory.sync.messages.MAX_ID`)."""
SeqNo = Annotated[int, Meta(ge=1, le=MAX_SEQ)]
"""A writer's sequence number, in the same range as in an op (``MAX_SEQ``)."""
Address = Annotated[str, Meta(min_length=1, max_length=MAX_ADDR_CHARS)]
WireInterval = tuple[SeqNo, SeqNo]
Intervals = Annotated[tuple[WireInterval, ...], Meta(min_length=1, max_length=MAX_INTERVALS)]
Ranges = Annotated[dict[AgentId, Intervals], Meta(max_length=MAX_WRITERS)]
WireDigest = Annotated[bytes, Meta(min_length=DIGEST_BYTES, max_length=DIGEST_BYTES)]


class WireMember(Struct, frozen=True, array_like=True, forbid_unknown_fields=True):
    """``[id, addr, state, incarnation]``"""

    id: AgentId
    addr: Address
    state: Literal["alive", "suspect", "dead"]
    incarnation: Counter


Members = Annotated[tuple[WireMember, ...], Meta(max_length=MAX_MEMBERS)]


class _Body(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    pass


class PushBody(_Body, tag="push", frozen=True, kw_only=True):
    ops: RawOps
    members: Members = ()


class PushReplyBody(_Body, tag="push_reply", frozen=True, kw_only=True):
    had: Annotated[tuple[Cid, ...], Meta(max_length=MAX_HAD)]
    members: Members = ()


class PingBody(_Body, tag="ping", frozen=True, kw_only=True):
    probe: Counter
    members: Members = ()


class AckBody(_Body, tag="ack", frozen=True, kw_only=True):
    probe: Counter
    members: Members = ()


class PingReqBody(_Body, tag="ping_req", frozen=True, kw_only=True):
    probe: Counter
    target: AgentId
    members: Members = ()


class DigestBody(_Body, tag="digest", frozen=True, kw_only=True):
    session: Counter
    digests: Annotated[tuple[WireDigest, ...], Meta(min_length=BUCKETS, max_length=BUCKETS)]


class EntriesBody(_Body, tag="entries", frozen=True, kw_only=True):
    session: Counter
    buckets: Annotated[
        tuple[Annotated[int, Meta(ge=0, lt=BUCKETS)], ...], Meta(min_length=1, max_length=BUCKETS)
    ]
    entries: Ranges


class WantBody(_Body, tag="want", frozen=True, kw_only=True):
    session: Counter
    want: Ranges


class OpsBody(_Body, tag="ops", frozen=True, kw_only=True):
    session: Counter
    ops: RawOps


Body = Union[  # noqa: UP007 - a runtime type expression
    PushBody,
    PushReplyBody,
    PingBody,
    AckBody,
    PingReqBody,
    DigestBody,
    EntriesBody,
    WantBody,
    OpsBody,
]


class Frame(Struct, frozen=True, forbid_unknown_fields=True):
    v: Annotated[int, Meta(ge=1, le=65_535)]
    sender: AgentId = msgspec.field(name="from")
    addr: Address
    msg: Body


_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(Frame)
_URL_CHARS: Final = frozenset(string.ascii_letters + string.digits + "-._~:/[]@%!$&'()*+,;=?#")


# --- addresses ---------------------------------------------------------------------------


def check_addr(addr: object) -> str:
    """``addr`` if it is a usable gossip address (``ws://host:port[/path]`` or
    ``wss://...``, printable ASCII, at most :data:`MAX_ADDR_CHARS`); otherwise
    :class:`SyncProtocolError` saying why."""
    if not isinstance(addr, str):
        raise SyncProtocolError(f"an address is a string, got {type(addr).__name__}")
    if not addr or len(addr) > MAX_ADDR_CHARS:
        raise SyncProtocolError(f"an address has 1 to {MAX_ADDR_CHARS} characters")
    if not set(addr) <= _URL_CHARS:
        raise SyncProtocolError(f"address {addr[:80]!r} has characters a URL cannot have")
    try:
        parts = urlsplit(addr)
        port = parts.port
    except ValueError as exc:
        raise SyncProtocolError(f"address {addr[:80]!r} is not a URL: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise SyncProtocolError(f"address {addr[:80]!r} must start with ws:// or wss://")
    if not parts.hostname or port is None or port == 0:
        raise SyncProtocolError(f"address {addr[:80]!r} must name a host and a port")
    if parts.username is not None or parts.password is not None or parts.fragment:
        raise SyncProtocolError(f"address {addr[:80]!r} must not carry credentials or a fragment")
    return addr


# --- encoding ----------------------------------------------------------------------------


def _members(members: Sequence[Member]) -> tuple[WireMember, ...]:
    return tuple(WireMember(m.id, m.addr, m.state, m.incarnation) for m in members)


def _ops(ops: Sequence[OpLike]) -> RawOps:
    real = [op for op in ops if isinstance(op, Op)]
    if len(real) != len(ops):
        raise TypeError("only real ops (chrysalis_memory.model.Op) go on the wire")
    return raw_ops(real)


def _ranges(ranges: Mapping[str, Sequence[Interval]]) -> dict[str, tuple[WireInterval, ...]]:
    return {writer: tuple((a, b) for a, b in intervals) for writer, intervals in ranges.items()}


def _body(message: Message) -> Body:
    if isinstance(message, Push):
        return PushBody(ops=_ops(message.ops), members=_members(message.members))
    if isinstance(message, PushReply):
        return PushReplyBody(had=tuple(message.had), members=_members(message.members))
    if isinstance(message, Ping):
        return PingBody(probe=message.probe, members=_members(message.members))
    if isinstance(message, Ack):
        return AckBody(probe=message.probe, members=_members(message.members))
    if isinstance(message, PingReq):
        return PingReqBody(
            probe=message.probe, target=message.target, members=_members(message.members)
        )
    if isinstance(message, Digest):
        return DigestBody(session=message.session, digests=tuple(message.digests))
    if isinstance(message, Entries):
        return EntriesBody(
            session=message.session,
            buckets=tuple(message.buckets),
            entries=_ranges(message.entries),
        )
    if isinstance(message, Want):
        return WantBody(session=message.session, want=_ranges(message.want))
    if isinstance(message, Ops):
        return OpsBody(session=message.session, ops=_ops(message.ops))
    raise TypeError(f"not a gossip message: {type(message).__name__}")


def encode(sender: str, addr: str, message: Message) -> bytes:
    """One frame (UTF-8 JSON): ``message`` from ``sender``, who listens at ``addr``.

    The frame is not checked against the limits here: the driver splits what is
    too big (see :data:`MAX_FRAME_BYTES`, :data:`MAX_OPS`).
    """
    return _ENCODER.encode(Frame(PROTOCOL_VERSION, sender, addr, _body(message)))


def encoded_size(message: Message) -> int:
    """Bytes ``message`` takes in a frame, the envelope aside (which adds
    :data:`ENVELOPE_BYTES` plus the sender's id and address)."""
    return len(_ENCODER.encode(_body(message)))


# --- decoding ----------------------------------------------------------------------------


def decode(
    data: bytes | bytearray | memoryview | str, *, max_bytes: int = MAX_FRAME_BYTES
) -> tuple[str, str, Message]:
    """Parse and check one frame: ``(sender, sender's address, message)``.

    Raises only :class:`SyncProtocolError` (``code`` ``too_large`` for a frame
    or a batch over the limits, ``unsupported_version``, else ``bad_message``).
    """
    frame = decode_frame(
        data, _DECODER, max_bytes=max_bytes, versions=SUPPORTED_VERSIONS, what="gossip message"
    )
    if frame.v not in SUPPORTED_VERSIONS:
        raise SyncProtocolError(
            f"gossip protocol version {frame.v} is not supported", code="unsupported_version"
        )
    check_addr(frame.addr)
    return frame.sender, frame.addr, _message(frame.msg)


def _checked_members(members: Sequence[WireMember]) -> tuple[Member, ...]:
    for member in members:
        check_addr(member.addr)
    return tuple(Member(m.id, m.addr, m.state, m.incarnation) for m in members)


def _checked_ranges(
    ranges: Mapping[str, Sequence[WireInterval]], what: str
) -> dict[str, tuple[Interval, ...]]:
    total = sum(len(intervals) for intervals in ranges.values())
    if total > MAX_INTERVALS:
        raise SyncProtocolError(
            f"{what} carries {total} intervals, over the limit of {MAX_INTERVALS}",
            code="too_large",
        )
    for writer, intervals in ranges.items():
        for first, last in intervals:
            if first > last:
                raise SyncProtocolError(f"{what}: interval [{first}, {last}] of {writer} is empty")
    return {writer: tuple(intervals) for writer, intervals in ranges.items()}


def _message(body: Body) -> Message:
    if isinstance(body, PushBody):
        ops = decode_ops(body.ops, limit=MAX_OPS, what="push")
        return Push(ops, _checked_members(body.members))
    if isinstance(body, PushReplyBody):
        return PushReply(tuple(body.had), _checked_members(body.members))
    if isinstance(body, PingBody):
        return Ping(body.probe, _checked_members(body.members))
    if isinstance(body, AckBody):
        return Ack(body.probe, _checked_members(body.members))
    if isinstance(body, PingReqBody):
        return PingReq(body.probe, body.target, _checked_members(body.members))
    if isinstance(body, DigestBody):
        return Digest(body.session, tuple(body.digests))
    if isinstance(body, EntriesBody):
        if len(set(body.buckets)) != len(body.buckets):
            raise SyncProtocolError("entries: buckets repeat")
        return Entries(body.session, tuple(body.buckets), _checked_ranges(body.entries, "entries"))
    if isinstance(body, WantBody):
        return Want(body.session, _checked_ranges(body.want, "want"))
    return Ops(body.session, decode_ops(body.ops, limit=MAX_OPS, what="ops"))
