"""The messages of the hub sync protocol and their validation (docs/protocol.md).

Every frame is one JSON object with a ``"type"`` tag and the protocol version
``"v"``. The structs below are the whole schema: unknown fields, wrong types,
missing fields and out-of-range values are rejected when a frame is decoded,
before anything looks at its contents. Ops are embedded as their canonical
encoding (:attr:`Op.encoded`, verbatim) and re-validated one by one with
:func:`decode_op` on receipt, so an op's CID is the hash of the bytes that
travelled.

Pure: no I/O. The state machines that use these are in :mod:`.protocol`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Final, Literal, TypeVar, Union, get_args

import msgspec
from msgspec import Meta, Raw, Struct

from chrysalis_memory.errors import MalformedOpError, ProtocolError
from chrysalis_memory.model.ops import (
    AgentId,
    Cid,
    DocId,
    MemoryKind,
    Op,
    PublicKeyB64,
    Tag,
    decode_op,
)

PROTOCOL_VERSION: Final = 1
SUPPORTED_VERSIONS: Final = (1,)

MAX_SEARCH_K: Final = 1000
MAX_QUERY_CHARS: Final = 32_768
MAX_VECTOR_DIMENSIONS: Final = 65_536
MAX_VERSIONS: Final = 16
MAX_REASON_CHARS: Final = 1024
MAX_ERROR_CHARS: Final = 4096
MAX_ID: Final = (1 << 53) - 1
"""Largest log position, cursor, request or batch id, and count a frame may carry
(2^53 - 1). Positions count the ops of a hub's log, ids count one connection's
requests: none comes near it. Below it, ``+ 1`` still fits SQLite's 64-bit
INTEGER and every value is exact as a JSON double, whatever reads the frame."""

ErrorCode = Literal[
    "bad_message",
    "unsupported_version",
    "unauthorized",
    "forbidden_writer",
    "too_large",
    "rate_limited",
    "internal",
]
ERROR_CODES: Final[frozenset[str]] = frozenset(get_args(ErrorCode))


class SyncProtocolError(ProtocolError):
    """A peer broke the sync protocol; ``code`` is the wire error code to answer with.

    ``index`` is the position of the offending op in its batch, when an op was
    the problem.
    """

    def __init__(
        self, message: str, *, code: ErrorCode = "bad_message", index: int | None = None
    ) -> None:
        self.code: ErrorCode = code
        self.index = index
        super().__init__(message)


# --- field types --------------------------------------------------------------------

Version = Annotated[int, Meta(ge=1, le=65_535)]
Position = Annotated[int, Meta(ge=0, le=MAX_ID)]
"""An op number in the hub's log (1, 2, 3, ...); 0 means "before the first op"."""
RequestId = Annotated[int, Meta(ge=0, le=MAX_ID)]
Limit = Annotated[int, Meta(ge=1, le=MAX_ID)]
Reason = Annotated[str, Meta(max_length=MAX_REASON_CHARS)]
ErrorText = Annotated[str, Meta(max_length=MAX_ERROR_CHARS)]
QueryText = Annotated[str, Meta(max_length=MAX_QUERY_CHARS)]
ModelName = Annotated[str, Meta(min_length=1, max_length=256)]
K = Annotated[int, Meta(ge=1, le=MAX_SEARCH_K)]
RawOps = tuple[Raw, ...]


class _Message(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    v: Version


# --- client -> server ---------------------------------------------------------------


class HelloMessage(_Message, tag="hello", frozen=True, kw_only=True):
    agent_id: AgentId
    public_key: PublicKeyB64
    cursor: Position
    versions: Annotated[tuple[Version, ...], Meta(min_length=1, max_length=MAX_VERSIONS)]


class PushMessage(_Message, tag="push", frozen=True, kw_only=True):
    batch: RequestId
    ops: RawOps


class PullMessage(_Message, tag="pull", frozen=True, kw_only=True):
    after: Position
    limit: Limit


class SearchFilters(Struct, frozen=True, forbid_unknown_fields=True):
    """Scalar filters of a remote search; ``None``/empty means "any"."""

    memory_type: MemoryKind | None = None
    tags: Annotated[tuple[Tag, ...], Meta(max_length=64)] = ()
    source: AgentId | None = None


class SearchMessage(_Message, tag="search", frozen=True, kw_only=True):
    request: RequestId
    text: QueryText
    vector: Annotated[tuple[float, ...], Meta(max_length=MAX_VECTOR_DIMENSIONS)] | None = None
    model: ModelName | None = None
    k: K
    filters: SearchFilters = SearchFilters()


# --- server -> client ---------------------------------------------------------------


class WelcomeMessage(_Message, tag="welcome", frozen=True, kw_only=True):
    hub_id: AgentId
    version: Version
    agent_id: AgentId
    cursor: Position
    max_batch: Limit
    max_message_bytes: Limit
    keys: dict[AgentId, PublicKeyB64]


class Rejection(Struct, frozen=True, forbid_unknown_fields=True):
    cid: Cid
    reason: Reason


class AckMessage(_Message, tag="ack", frozen=True, kw_only=True):
    batch: RequestId
    accepted: tuple[Cid, ...]
    rejected: tuple[Rejection, ...]


class OpsMessage(_Message, tag="ops", frozen=True, kw_only=True):
    ops: RawOps
    cursor: Position
    more: bool


class UpdateMessage(_Message, tag="update", frozen=True, kw_only=True):
    ops: RawOps
    after: Position
    cursor: Position


class SearchHit(Struct, frozen=True, forbid_unknown_fields=True):
    id: DocId
    score: float


class SearchResultMessage(_Message, tag="search_result", frozen=True, kw_only=True):
    request: RequestId
    hits: Annotated[tuple[SearchHit, ...], Meta(max_length=MAX_SEARCH_K)]


# --- either way -----------------------------------------------------------------------


class ErrorMessage(_Message, tag="error", frozen=True, kw_only=True):
    code: ErrorCode
    message: ErrorText
    fatal: bool
    batch: RequestId | None = None
    request: RequestId | None = None


Message = Union[  # noqa: UP007 - a runtime type expression, valid on Python 3.10
    HelloMessage,
    PushMessage,
    PullMessage,
    SearchMessage,
    WelcomeMessage,
    AckMessage,
    OpsMessage,
    UpdateMessage,
    SearchResultMessage,
    ErrorMessage,
]

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(Message)


class _Envelope(Struct):
    v: int


# --- encoding and decoding ---------------------------------------------------------------


def encode_message(message: Message) -> bytes:
    """UTF-8 JSON of one message: the payload of one websocket text frame."""
    return _ENCODER.encode(message)


def raw_ops(ops: Sequence[Op]) -> RawOps:
    """Ops embedded verbatim in their canonical encoding."""
    return tuple(Raw(op.encoded) for op in ops)


def decode_message(data: bytes | bytearray | memoryview | str, *, max_bytes: int) -> Message:
    """Parse and schema-check one frame. Raises only :class:`SyncProtocolError`."""
    message: Message = decode_frame(
        data, _DECODER, max_bytes=max_bytes, versions=SUPPORTED_VERSIONS, what="message"
    )
    return message


T = TypeVar("T")


def decode_frame(
    data: bytes | bytearray | memoryview | str,
    decoder: msgspec.json.Decoder[T],
    *,
    max_bytes: int,
    versions: Sequence[int],
    what: str,
) -> T:
    """Parse one frame with ``decoder`` (the hub protocol's and gossip's alike).

    Raises only :class:`SyncProtocolError`: ``too_large`` over ``max_bytes``,
    ``unsupported_version`` when a frame that fails the schema carries a ``v``
    outside ``versions``, else ``bad_message``.
    """
    if isinstance(data, str):
        try:
            raw: bytes | bytearray | memoryview = data.encode()
        except UnicodeEncodeError:
            raise SyncProtocolError("frame is not valid Unicode") from None
    elif isinstance(data, bytes | bytearray | memoryview):
        raw = data
    else:
        raise SyncProtocolError(f"a frame is bytes or text, got {type(data).__name__}")
    size = raw.nbytes if isinstance(raw, memoryview) else len(raw)
    if size > max_bytes:
        raise SyncProtocolError(
            f"frame is {size} bytes, over the {max_bytes} byte limit", code="too_large"
        )
    try:
        return decoder.decode(raw)
    except msgspec.ValidationError as exc:
        version = _peek_version(raw)
        if version is not None and version not in versions:
            raise SyncProtocolError(
                f"protocol version {version} is not supported (this side speaks {list(versions)})",
                code="unsupported_version",
            ) from None
        raise SyncProtocolError(f"invalid {what}: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise SyncProtocolError(f"frame is not a JSON object: {exc}") from None
    except RecursionError:
        raise SyncProtocolError("frame is nested too deeply") from None


def _peek_version(raw: bytes | bytearray | memoryview) -> int | None:
    """The ``v`` of a frame that failed the schema, if it has one."""
    try:
        return msgspec.json.decode(raw, type=_Envelope).v
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def decode_ops(raws: RawOps, *, limit: int, what: str) -> tuple[Op, ...]:
    """Validate the ops of a batch: at most ``limit``, each well formed, no repeats."""
    if len(raws) > limit:
        raise SyncProtocolError(
            f"{what} carries {len(raws)} ops, over the limit of {limit}", code="too_large"
        )
    ops: list[Op] = []
    seen: set[str] = set()
    for index, raw in enumerate(raws):
        try:
            op = decode_op(bytes(raw), index=index)
        except MalformedOpError as exc:
            raise SyncProtocolError(f"{what}: {exc}", index=index) from None
        if op.cid in seen:
            raise SyncProtocolError(f"{what}: op #{index} repeats an earlier op", index=index)
        seen.add(op.cid)
        ops.append(op)
    return tuple(ops)
