"""Sans-I/O state machines of the hub sync protocol (docs/protocol.md).

:class:`ClientProtocol` (the agent) and :class:`ServerProtocol` (the hub) turn
frames received into events and calls into frames to send. They never touch a
socket, a clock or a store: the transport hands ``receive()`` the payload of
each websocket text frame and sends whatever bytes the methods return (as a
text frame: they are UTF-8 JSON). Policy (which ops to accept, what to search)
belongs to the caller; the machines only guarantee that every inbound message
is well formed and allowed in the current state, and raise
:class:`SyncProtocolError` (a :class:`ProtocolError`) otherwise. A violation
closes the machine; :meth:`error_for` then builds the fatal ``error`` frame to
send before closing the connection.

Calling a method in the wrong state or with bad arguments is the caller's bug
and raises :class:`UsageError` / :class:`InvalidArgumentError` instead.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections import Counter, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import msgspec

from chrysalis_memory.errors import (
    InvalidArgumentError,
    MalformedOpError,
    ProtocolError,
    UsageError,
)
from chrysalis_memory.model.ops import AGENT_ID_PATTERN, MemoryKind, Op, decode_op
from chrysalis_memory.sync.messages import (
    ERROR_CODES,
    MAX_ERROR_CHARS,
    MAX_ID,
    MAX_QUERY_CHARS,
    MAX_REASON_CHARS,
    MAX_SEARCH_K,
    MAX_VECTOR_DIMENSIONS,
    SUPPORTED_VERSIONS,
    AckMessage,
    ErrorCode,
    ErrorMessage,
    HelloMessage,
    Message,
    OpsMessage,
    PullMessage,
    PushMessage,
    RawOps,
    Rejection,
    SearchFilters,
    SearchHit,
    SearchMessage,
    SearchResultMessage,
    SyncProtocolError,
    UpdateMessage,
    WelcomeMessage,
    decode_message,
    decode_ops,
    encode_message,
    raw_ops,
)

DEFAULT_MAX_MESSAGE_BYTES = 4 << 20
DEFAULT_MAX_BATCH = 100
_KEY_PATTERN = re.compile(r"^[A-Za-z0-9_-]{43}$")
_AGENT_PATTERN = re.compile(AGENT_ID_PATTERN)
_MIN_FRAME_BYTES = 1024
_APPLIED_RANGES_KEPT = 1024  # applied ranges that do not join the cursor yet (after a gap)


class ClientState(enum.Enum):
    CONNECTED = "connected"
    HELLO_SENT = "hello_sent"
    READY = "ready"
    CLOSED = "closed"


class ServerState(enum.Enum):
    AWAITING_HELLO = "awaiting_hello"
    HELLO_RECEIVED = "hello_received"
    READY = "ready"
    CLOSED = "closed"


# --- events ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Welcome:
    """The hub accepted the hello; the session is ready."""

    hub_id: str
    version: int
    cursor: int
    """The hub's latest op number (how far behind this agent is: ``cursor - client.cursor``)."""
    keys: Mapping[str, str]
    max_batch: int
    max_message_bytes: int


@dataclass(frozen=True, slots=True)
class Acked:
    """The hub decided every op of a pushed batch: ``rejected`` maps CID to reason."""

    batch: int
    accepted: tuple[str, ...]
    rejected: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class MalformedOp:
    """An op of a page or an update that does not decode (:func:`decode_op` refused
    it): this agent cannot store it, and the hub relayed it, so it is no violation
    of the hub's. Quarantine it (``raw`` is the bytes as received, ``cid`` their
    SHA-256, ``writer`` the writer it claims if that could be read), so that it
    costs no other op of the page."""

    index: int
    cid: str
    raw: bytes
    writer: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class OpsReceived:
    """One page of a pull: the ops of the hub's log in (``after``, ``cursor``].

    Store (or quarantine) them, then report it with
    :meth:`ClientProtocol.applied`: only then does the cursor move past them.
    Pull again from the cursor while ``more``.
    """

    ops: tuple[Op, ...]
    cursor: int
    more: bool
    after: int
    malformed: tuple[MalformedOp, ...] = ()


@dataclass(frozen=True, slots=True)
class UpdateReceived:
    """A live broadcast of the ops in (``after``, ``cursor``] this agent does not hold.

    Store (or quarantine) them, then report it with :meth:`ClientProtocol.applied`.
    ``gap``: ops before it were missed; pull from the client cursor.
    """

    ops: tuple[Op, ...]
    after: int
    cursor: int
    gap: bool
    malformed: tuple[MalformedOp, ...] = ()


@dataclass(frozen=True, slots=True)
class SearchResult:
    request: int
    hits: tuple[SearchHit, ...]


@dataclass(frozen=True, slots=True)
class ServerError:
    """An ``error`` from the hub; ``batch``/``request`` name what it answers, if anything."""

    code: str
    message: str
    fatal: bool
    batch: int | None = None
    request: int | None = None


ClientEvent = Welcome | Acked | OpsReceived | UpdateReceived | SearchResult | ServerError
Applicable = OpsReceived | UpdateReceived
"""The events that carry ops, which the transport applies and reports applied."""


@dataclass(frozen=True, slots=True)
class HelloReceived:
    """Check ``public_key`` against the key bound to the agent, then call ``welcome()``."""

    agent_id: str
    public_key: str
    cursor: int
    version: int


@dataclass(frozen=True, slots=True)
class PushReceived:
    """A batch to decide; ``foreign`` are its ops written by someone else than the agent."""

    batch: int
    ops: tuple[Op, ...]
    foreign: tuple[Op, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class PullRequested:
    after: int
    limit: int


@dataclass(frozen=True, slots=True)
class SearchRequested:
    request: int
    text: str
    vector: tuple[float, ...] | None
    model: str | None
    k: int
    filters: SearchFilters


@dataclass(frozen=True, slots=True)
class ClientError:
    code: str
    message: str
    fatal: bool


ServerEvent = HelloReceived | PushReceived | PullRequested | SearchRequested | ClientError


# --- shared -------------------------------------------------------------------------------


def _check_id(value: int, what: str, *, low: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_ID:
        raise InvalidArgumentError(f"{what} must be an integer in {low}..{MAX_ID}, got {value!r}")


def _check_limits(max_message_bytes: int, max_batch: int) -> None:
    _check_id(max_message_bytes, "max_message_bytes", low=_MIN_FRAME_BYTES)
    _check_id(max_batch, "max_batch", low=1)


def _check_versions(versions: Iterable[int]) -> tuple[int, ...]:
    result = tuple(sorted(set(versions)))
    if not result or any(v not in SUPPORTED_VERSIONS for v in result):
        raise InvalidArgumentError(
            f"versions must be a non-empty subset of {list(SUPPORTED_VERSIONS)}, got {result}"
        )
    return result


def _check_ops(ops: Sequence[Op], limit: int, what: str) -> None:
    if len(ops) > limit:
        raise InvalidArgumentError(f"{what} takes at most {limit} ops, got {len(ops)}")
    if not all(isinstance(op, Op) for op in ops):
        raise InvalidArgumentError(f"{what} takes Op objects")
    if len({op.cid for op in ops}) != len(ops):
        raise InvalidArgumentError(f"{what} must not repeat an op")


def _joined(cursor: int, ranges: Iterable[tuple[int, int]]) -> tuple[int, list[tuple[int, int]]]:
    """The cursor once every range (after, last] that joins up with it is taken, and
    the ranges that still do not (they lie beyond a gap)."""
    pending = sorted(ranges)
    moved = True
    while moved:
        moved = False
        rest: list[tuple[int, int]] = []
        for after, last in pending:
            if after <= cursor:
                if last > cursor:
                    cursor, moved = last, True
            else:
                rest.append((after, last))
        pending = rest
    return cursor, pending


class _Claimed(msgspec.Struct):
    writer: object = None


def _claimed_writer(raw: bytes) -> str | None:
    """The writer an op that does not decode claims, if that much can be read."""
    try:
        writer = msgspec.json.decode(raw, type=_Claimed).writer
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    return writer if isinstance(writer, str) and _AGENT_PATTERN.match(writer) else None


def _check_page(n_ops: int, after: int, cursor: int, more: bool) -> str | None:
    """What is wrong with a page covering the log positions (after, cursor]."""
    if cursor - after < n_ops:
        return f"cursor {cursor} leaves no room for {n_ops} ops after {after}"
    if more and cursor <= after:
        return "more=true but the cursor did not advance"
    return None


class _Protocol:
    """What both ends share: limits, version checks, errors and closing."""

    def __init__(self, *, max_message_bytes: int, max_batch: int, versions: Iterable[int]):
        _check_limits(max_message_bytes, max_batch)
        self.max_message_bytes = max_message_bytes
        self.max_batch = max_batch
        self.versions = _check_versions(versions)
        self.version: int | None = None
        """The negotiated protocol version, once the hello has been answered."""
        self._closed = False

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        self._closed = True

    def _wire_version(self) -> int:
        return self.version if self.version is not None else self.versions[0]

    def _encode(self, message: Message, limit: int | None = None) -> bytes:
        data = encode_message(message)
        limit = self.max_message_bytes if limit is None else limit
        if len(data) > limit:
            raise InvalidArgumentError(
                f"this {type(message).__name__} would be {len(data)} bytes, over the "
                f"{limit} byte frame limit: send fewer ops per message"
            )
        return data

    def _decode(self, data: bytes | bytearray | memoryview | str) -> Message:
        if self._closed:
            raise SyncProtocolError("the connection is closed")
        try:
            message = decode_message(data, max_bytes=self._receive_limit())
            expected = (self.version,) if self.version is not None else self.versions
            if not isinstance(message, ErrorMessage | HelloMessage) and message.v not in expected:
                raise SyncProtocolError(
                    f"message has protocol version {message.v}, expected one of {list(expected)}",
                    code="unsupported_version",
                )
        except ProtocolError:
            self._closed = True
            raise
        return message

    def _receive_limit(self) -> int:
        return self.max_message_bytes

    def _violation(self, message: str, code: ErrorCode = "bad_message") -> SyncProtocolError:
        self._closed = True
        return SyncProtocolError(message, code=code)

    def error(
        self,
        code: ErrorCode,
        message: str,
        *,
        fatal: bool,
        batch: int | None = None,
        request: int | None = None,
    ) -> bytes:
        """An ``error`` frame; a fatal one closes this end (send it, then close)."""
        if code not in ERROR_CODES:
            raise InvalidArgumentError(f"unknown error code {code!r}")
        if self._closed and not fatal:
            raise UsageError("the connection is closed")
        for name, value in (("batch", batch), ("request", request)):
            if value is not None:
                _check_id(value, name)
        data = self._encode(
            ErrorMessage(
                v=self._wire_version(),
                code=code,
                message=message[:MAX_ERROR_CHARS],
                fatal=fatal,
                batch=batch,
                request=request,
            )
        )
        if fatal:
            self._closed = True
        return data

    def error_for(self, exc: ProtocolError) -> bytes:
        """The fatal ``error`` frame answering a violation ``receive()`` raised."""
        code: ErrorCode = exc.code if isinstance(exc, SyncProtocolError) else "bad_message"
        return self.error(code, str(exc), fatal=True)


# --- the agent's side ------------------------------------------------------------------


class ClientProtocol(_Protocol):
    """The agent's end of a session: CONNECTED → HELLO_SENT → READY → CLOSED.

    Tracks the agent's cursor in the hub's log, the pushed batches not
    acknowledged yet, the pulls and the searches not answered yet. The cursor
    moves when the transport reports a page or an update *applied*
    (:meth:`applied`: every op of it stored or quarantined), over ranges that join
    up with it, never past a gap; receiving one moves only :attr:`received`.
    """

    def __init__(
        self,
        agent_id: str,
        public_key: str,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch: int = DEFAULT_MAX_BATCH,
        versions: Iterable[int] = SUPPORTED_VERSIONS,
    ) -> None:
        super().__init__(
            max_message_bytes=max_message_bytes, max_batch=max_batch, versions=versions
        )
        if not isinstance(agent_id, str) or not _AGENT_PATTERN.match(agent_id):
            raise InvalidArgumentError(f"invalid agent id {agent_id!r}")
        if not isinstance(public_key, str) or not _KEY_PATTERN.match(public_key):
            raise InvalidArgumentError("public_key must be 43 characters of base64url")
        self.agent_id = agent_id
        self.public_key = public_key
        self._state = ClientState.CONNECTED
        self._cursor = 0
        self._received = 0
        self._unapplied: Counter[tuple[int, int]] = Counter()
        self._applied: list[tuple[int, int]] = []  # applied, beyond a gap from the cursor
        self.hub_id: str | None = None
        self.keys: Mapping[str, str] = {}
        self._server_max_batch = max_batch
        self._server_max_bytes = max_message_bytes
        self._unacked: dict[int, tuple[str, ...]] = {}
        self._pulls: deque[tuple[int, int]] = deque()
        self._searches: dict[int, int] = {}
        self._next_batch = 1
        self._next_request = 1

    @property
    def state(self) -> ClientState:
        return ClientState.CLOSED if self._closed else self._state

    @property
    def cursor(self) -> int:
        """The last op number of the hub's log this agent holds every op up to: moved
        by :meth:`applied`, never by receiving alone."""
        return self._cursor

    @property
    def received(self) -> int:
        """How far the pages and updates received join up (applied or not): what
        gaps are detected against."""
        return max(self._received, self._cursor)

    def cursor_after(self, event: Applicable) -> int:
        """What :attr:`cursor` will be once ``event`` is applied, without applying
        it: the transport saves that cursor in the transaction that stores the ops."""
        self._check_applicable(event)
        cursor, _ = _joined(self._cursor, [*self._applied, (event.after, event.cursor)])
        return cursor

    def applied(self, event: Applicable) -> int:
        """Report that every op of a page or update received is stored or quarantined
        (committed): the cursor moves past its range if that joins up with it, and
        past any range applied earlier that now does. Returns the cursor."""
        key = self._check_applicable(event)
        self._unapplied[key] -= 1
        if not self._unapplied[key]:
            del self._unapplied[key]
        self._cursor, rest = _joined(self._cursor, [*self._applied, key])
        self._applied = rest[-_APPLIED_RANGES_KEPT:]  # forgetting one only means pulling it
        return self._cursor

    def _check_applicable(self, event: Applicable) -> tuple[int, int]:
        if not isinstance(event, OpsReceived | UpdateReceived):
            raise InvalidArgumentError("applied() takes an OpsReceived or an UpdateReceived")
        key = (event.after, event.cursor)
        if not self._unapplied[key]:
            raise UsageError(
                f"no page or update covering ({event.after}, {event.cursor}] is waiting to "
                "be applied"
            )
        return key

    @property
    def push_limit(self) -> int:
        """Most ops one ``push`` may carry: the smaller of this side's and the hub's limit."""
        return min(self.max_batch, self._server_max_batch)

    @property
    def unacked_batches(self) -> frozenset[int]:
        return frozenset(self._unacked)

    @property
    def pending_pulls(self) -> int:
        return len(self._pulls)

    @property
    def pending_searches(self) -> frozenset[int]:
        return frozenset(self._searches)

    def _require(self, state: ClientState, action: str) -> None:
        if self.state is not state:
            raise UsageError(f"cannot {action} in state {self.state.value}")

    # sending

    def hello(self, cursor: int) -> bytes:
        """The first frame: who this agent is and where it stopped reading."""
        self._require(ClientState.CONNECTED, "say hello")
        _check_id(cursor, "cursor")
        data = self._encode(
            HelloMessage(
                v=self.versions[0],
                agent_id=self.agent_id,
                public_key=self.public_key,
                cursor=cursor,
                versions=self.versions,
            )
        )
        self._cursor = self._received = cursor
        self._state = ClientState.HELLO_SENT
        return data

    def push(self, ops: Sequence[Op]) -> tuple[int, bytes]:
        """A batch of 1..``push_limit`` ops; returns its batch id and the frame."""
        self._require(ClientState.READY, "push")
        if not ops:
            raise InvalidArgumentError("push needs at least one op")
        _check_ops(ops, self.push_limit, "push")
        batch = self._next_batch
        limit = min(self.max_message_bytes, self._server_max_bytes)
        data = self._encode(
            PushMessage(v=self._wire_version(), batch=batch, ops=raw_ops(ops)), limit
        )
        self._next_batch += 1
        self._unacked[batch] = tuple(op.cid for op in ops)
        return batch, data

    def pull(self, after: int | None = None, limit: int | None = None) -> bytes:
        """Ask for up to ``limit`` ops numbered after ``after`` (default: the cursor)."""
        self._require(ClientState.READY, "pull")
        after = self._cursor if after is None else after
        limit = self.push_limit if limit is None else limit
        _check_id(after, "after")
        _check_id(limit, "limit", low=1)
        if limit > self.push_limit:  # the hub refuses pulls over its own max_batch
            raise InvalidArgumentError(f"limit must be at most {self.push_limit}, got {limit}")
        data = self._encode(PullMessage(v=self._wire_version(), after=after, limit=limit))
        self._pulls.append((after, limit))
        return data

    def search(
        self,
        text: str,
        *,
        k: int = 5,
        vector: Sequence[float] | None = None,
        model: str | None = None,
        memory_type: MemoryKind | None = None,
        tags: Sequence[str] = (),
        source: str | None = None,
    ) -> tuple[int, bytes]:
        """A remote search of the collective index; returns its request id and the frame."""
        self._require(ClientState.READY, "search")
        if not isinstance(text, str) or len(text) > MAX_QUERY_CHARS:
            raise InvalidArgumentError(f"text must be a string of at most {MAX_QUERY_CHARS} chars")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_SEARCH_K:
            raise InvalidArgumentError(f"k must be in 1..{MAX_SEARCH_K}, got {k!r}")
        vec = None
        if vector is not None:
            vec = tuple(float(x) for x in vector)
            if len(vec) > MAX_VECTOR_DIMENSIONS or not all(math.isfinite(x) for x in vec):
                raise InvalidArgumentError("vector must hold at most 65536 finite numbers")
        request = self._next_request
        message = SearchMessage(
            v=self._wire_version(),
            request=request,
            text=text,
            vector=vec,
            model=model,
            k=k,
            filters=SearchFilters(memory_type=memory_type, tags=tuple(tags), source=source),
        )
        data = self._encode(message)
        try:  # the server will hold it to the schema: so does the client
            decode_message(data, max_bytes=self.max_message_bytes)
        except SyncProtocolError as exc:
            raise InvalidArgumentError(f"invalid search: {exc}") from None
        self._next_request += 1
        self._searches[request] = k
        return request, data

    # receiving

    def receive(self, data: bytes | bytearray | memoryview | str) -> list[ClientEvent]:
        """Validate and apply one frame from the hub; raises :class:`SyncProtocolError`."""
        message = self._decode(data)
        if isinstance(message, ErrorMessage):
            return [self._on_error(message)]
        if self._state is ClientState.HELLO_SENT:
            if isinstance(message, WelcomeMessage):
                return [self._on_welcome(message)]
            raise self._violation(f"expected welcome, got {message.__class__.__name__}")
        if self._state is not ClientState.READY:
            raise self._violation(f"unexpected {type(message).__name__} before hello")
        if isinstance(message, AckMessage):
            return [self._on_ack(message)]
        if isinstance(message, OpsMessage):
            return [self._on_ops(message)]
        if isinstance(message, UpdateMessage):
            return [self._on_update(message)]
        if isinstance(message, SearchResultMessage):
            return [self._on_search_result(message)]
        raise self._violation(f"a hub does not send {type(message).__name__}")

    def _on_error(self, message: ErrorMessage) -> ServerError:
        if message.batch is not None:
            self._unacked.pop(message.batch, None)
        if message.request is not None:
            self._searches.pop(message.request, None)
        if message.fatal:
            self._closed = True
        return ServerError(
            message.code, message.message, message.fatal, message.batch, message.request
        )

    def _receive_limit(self) -> int:
        # The hub sends pages up to its own frame limit, which may exceed ours.
        return max(self.max_message_bytes, self._server_max_bytes)

    def _on_welcome(self, message: WelcomeMessage) -> Welcome:
        if message.version not in self.versions or message.v != message.version:
            raise self._violation(
                f"hub chose protocol version {message.version}, this agent speaks "
                f"{list(self.versions)}",
                "unsupported_version",
            )
        if message.agent_id != self.agent_id:
            raise self._violation(
                f"welcome is for agent {message.agent_id!r}, this is {self.agent_id!r}"
            )
        self.version = message.version
        self.hub_id = message.hub_id
        self.keys = dict(message.keys)
        self._server_max_batch = message.max_batch
        self._server_max_bytes = message.max_message_bytes
        self._state = ClientState.READY
        return Welcome(
            message.hub_id,
            message.version,
            message.cursor,
            self.keys,
            message.max_batch,
            message.max_message_bytes,
        )

    def _on_ack(self, message: AckMessage) -> Acked:
        cids = self._unacked.get(message.batch)
        if cids is None:
            raise self._violation(f"ack of batch {message.batch}, which is not awaiting an ack")
        rejected = {r.cid: r.reason for r in message.rejected}
        decided = [*message.accepted, *rejected]
        if (
            len(decided) != len(cids)
            or set(decided) != set(cids)
            or len(rejected) != len(message.rejected)
        ):
            raise self._violation(
                f"ack of batch {message.batch} must decide each of its {len(cids)} ops once"
            )
        del self._unacked[message.batch]
        return Acked(message.batch, message.accepted, rejected)

    def _on_ops(self, message: OpsMessage) -> OpsReceived:
        if not self._pulls:
            raise self._violation("ops page without a pull")
        after, limit = self._pulls.popleft()
        ops, malformed = self._ops(message.ops, limit, "ops page")
        problem = _check_page(len(message.ops), after, message.cursor, message.more)
        if problem:
            raise self._violation(f"ops page: {problem}")
        self._receive_range(after, message.cursor)
        return OpsReceived(ops, message.cursor, message.more, after, malformed)

    def _on_update(self, message: UpdateMessage) -> UpdateReceived:
        ops, malformed = self._ops(message.ops, self._server_max_batch, "update")
        problem = _check_page(len(message.ops), message.after, message.cursor, False)
        if problem:
            raise self._violation(f"update: {problem}")
        gap = message.after > self.received
        self._receive_range(message.after, message.cursor)
        return UpdateReceived(ops, message.after, message.cursor, gap, malformed)

    def _receive_range(self, after: int, cursor: int) -> None:
        if after <= self.received:
            self._received = max(self.received, cursor)
        self._unapplied[(after, cursor)] += 1

    def _on_search_result(self, message: SearchResultMessage) -> SearchResult:
        k = self._searches.get(message.request)
        if k is None:
            raise self._violation(f"search_result for request {message.request}, not pending")
        if len(message.hits) > k:
            raise self._violation(f"search_result has {len(message.hits)} hits, k was {k}")
        del self._searches[message.request]
        return SearchResult(message.request, message.hits)

    def _ops(
        self, raws: RawOps, limit: int, what: str
    ) -> tuple[tuple[Op, ...], tuple[MalformedOp, ...]]:
        """The ops of a page or update, and those that do not decode. Too many ops,
        or one op twice, is the hub's violation; an op the hub stored that this
        agent cannot decode is not (a newer writer, damage on the hub's disk)."""
        if len(raws) > limit:
            raise self._violation(
                f"{what} carries {len(raws)} ops, over the limit of {limit}", "too_large"
            )
        ops: list[Op] = []
        malformed: list[MalformedOp] = []
        seen: set[str] = set()
        for index, item in enumerate(raws):
            raw = bytes(item)
            try:
                op = decode_op(raw, index=index)
            except MalformedOpError as exc:
                cid = hashlib.sha256(raw).hexdigest()
                malformed.append(MalformedOp(index, cid, raw, _claimed_writer(raw), str(exc)))
                continue
            if op.cid in seen:
                raise self._violation(f"{what}: op #{index} repeats an earlier op")
            seen.add(op.cid)
            ops.append(op)
        return tuple(ops), tuple(malformed)


# --- the hub's side ---------------------------------------------------------------------


class ServerProtocol(_Protocol):
    """The hub's end of a session: AWAITING_HELLO → HELLO_RECEIVED → READY → CLOSED.

    ``authenticated_agent`` is the agent the transport authenticated (its
    token); a hello naming another agent is refused as ``unauthorized``.
    """

    def __init__(
        self,
        hub_id: str,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        max_batch: int = DEFAULT_MAX_BATCH,
        versions: Iterable[int] = SUPPORTED_VERSIONS,
        authenticated_agent: str | None = None,
    ) -> None:
        super().__init__(
            max_message_bytes=max_message_bytes, max_batch=max_batch, versions=versions
        )
        if not isinstance(hub_id, str) or not _AGENT_PATTERN.match(hub_id):
            raise InvalidArgumentError(f"invalid hub id {hub_id!r}")
        if authenticated_agent is not None and not _AGENT_PATTERN.match(authenticated_agent):
            raise InvalidArgumentError(f"invalid agent id {authenticated_agent!r}")
        self.hub_id = hub_id
        self.authenticated_agent = authenticated_agent
        self.agent_id: str | None = None
        self._state = ServerState.AWAITING_HELLO
        self._batches: dict[int, tuple[str, ...]] = {}
        self._pulls: deque[tuple[int, int]] = deque()

    @property
    def state(self) -> ServerState:
        return ServerState.CLOSED if self._closed else self._state

    @property
    def pending_batches(self) -> frozenset[int]:
        return frozenset(self._batches)

    @property
    def pending_pulls(self) -> int:
        return len(self._pulls)

    def _require(self, state: ServerState, action: str) -> None:
        if self.state is not state:
            raise UsageError(f"cannot {action} in state {self.state.value}")

    # receiving

    def receive(self, data: bytes | bytearray | memoryview | str) -> list[ServerEvent]:
        """Validate and apply one frame from the agent; raises :class:`SyncProtocolError`."""
        message = self._decode(data)
        if isinstance(message, ErrorMessage):
            if message.fatal:
                self._closed = True
            return [ClientError(message.code, message.message, message.fatal)]
        if self._state is ServerState.AWAITING_HELLO:
            if isinstance(message, HelloMessage):
                return [self._on_hello(message)]
            raise self._violation(f"expected hello, got {type(message).__name__}")
        if self._state is not ServerState.READY:
            raise self._violation(f"unexpected {type(message).__name__} before welcome")
        if isinstance(message, PushMessage):
            return [self._on_push(message)]
        if isinstance(message, PullMessage):
            if message.limit > self.max_batch:
                raise self._violation(
                    f"pull limit {message.limit} is over the limit of {self.max_batch}",
                    "too_large",
                )
            self._pulls.append((message.after, message.limit))
            return [PullRequested(message.after, message.limit)]
        if isinstance(message, SearchMessage):
            return [
                SearchRequested(
                    message.request,
                    message.text,
                    message.vector,
                    message.model,
                    message.k,
                    message.filters,
                )
            ]
        raise self._violation(f"an agent does not send {type(message).__name__}")

    def _on_hello(self, message: HelloMessage) -> HelloReceived:
        if message.v not in message.versions:
            raise self._violation(f"hello has v={message.v}, not one of its own versions")
        common = set(message.versions) & set(self.versions)
        if not common:
            raise self._violation(
                f"agent speaks protocol versions {list(message.versions)}, this hub "
                f"{list(self.versions)}",
                "unsupported_version",
            )
        if self.authenticated_agent is not None and message.agent_id != self.authenticated_agent:
            raise self._violation(
                f"hello from {message.agent_id!r} on a connection authenticated as "
                f"{self.authenticated_agent!r}",
                "unauthorized",
            )
        self.version = max(common)
        self.agent_id = message.agent_id
        self._state = ServerState.HELLO_RECEIVED
        return HelloReceived(message.agent_id, message.public_key, message.cursor, self.version)

    def _on_push(self, message: PushMessage) -> PushReceived:
        if message.batch in self._batches:
            raise self._violation(f"batch {message.batch} is already awaiting its ack")
        if not message.ops:
            raise self._violation("push carries no ops")
        try:
            ops = decode_ops(message.ops, limit=self.max_batch, what=f"push {message.batch}")
        except SyncProtocolError:
            self._closed = True
            raise
        self._batches[message.batch] = tuple(op.cid for op in ops)
        foreign = tuple(op for op in ops if op.writer != self.agent_id)
        return PushReceived(message.batch, ops, foreign)

    # sending

    def welcome(self, cursor: int, keys: Mapping[str, str] | None = None) -> bytes:
        """Accept the hello: ``cursor`` is the hub's latest op number, ``keys`` the
        registered public keys by writer."""
        self._require(ServerState.HELLO_RECEIVED, "welcome")
        _check_id(cursor, "cursor")
        assert self.version is not None
        assert self.agent_id is not None
        keys = dict(keys or {})
        for writer, key in keys.items():
            if not _AGENT_PATTERN.match(writer) or not _KEY_PATTERN.match(key):
                raise InvalidArgumentError(f"invalid key entry {writer!r}: {key!r}")
        data = self._encode(
            WelcomeMessage(
                v=self.version,
                hub_id=self.hub_id,
                version=self.version,
                agent_id=self.agent_id,
                cursor=cursor,
                max_batch=self.max_batch,
                max_message_bytes=self.max_message_bytes,
                keys=keys,
            )
        )
        self._state = ServerState.READY
        return data

    def ack(
        self, batch: int, accepted: Sequence[str], rejected: Mapping[str, str] | None = None
    ) -> bytes:
        """Decide every op of a pushed batch: each CID accepted, or rejected with a reason.

        Accepting an op the hub already holds is an accept (idempotent by CID).
        """
        self._require(ServerState.READY, "ack")
        cids = self._batches.get(batch)
        if cids is None:
            raise InvalidArgumentError(f"batch {batch} is not awaiting an ack")
        rejected = dict(rejected or {})
        decided = [*accepted, *rejected]
        if len(decided) != len(cids) or set(decided) != set(cids):
            raise InvalidArgumentError(f"an ack must decide each of the {len(cids)} ops once")
        data = self._encode(
            AckMessage(
                v=self._wire_version(),
                batch=batch,
                accepted=tuple(accepted),
                rejected=tuple(
                    Rejection(cid=c, reason=r[:MAX_REASON_CHARS]) for c, r in rejected.items()
                ),
            )
        )
        del self._batches[batch]
        return data

    def ops(self, ops: Sequence[Op], cursor: int, *, more: bool) -> bytes:
        """Answer the oldest pending pull with the ops numbered in (after, cursor]."""
        self._require(ServerState.READY, "send ops")
        if not self._pulls:
            raise UsageError("no pull is waiting for an answer")
        after, limit = self._pulls[0]
        _check_id(cursor, "cursor")
        _check_ops(ops, limit, "an ops page")
        problem = _check_page(len(ops), after, cursor, more)
        if problem:
            raise InvalidArgumentError(problem)
        data = self._encode(
            OpsMessage(v=self._wire_version(), ops=raw_ops(ops), cursor=cursor, more=more)
        )
        self._pulls.popleft()
        return data

    def update(self, ops: Sequence[Op], after: int, cursor: int) -> bytes:
        """Broadcast ops accepted from others: the ones in (after, cursor] this agent lacks.

        ``after`` is the last op number already covered on this connection (by
        the hello cursor, a page or an update); ops left out of the range are the
        agent's own.
        """
        self._require(ServerState.READY, "send an update")
        _check_id(after, "after")
        _check_id(cursor, "cursor")
        _check_ops(ops, self.max_batch, "an update")
        problem = _check_page(len(ops), after, cursor, False)
        if problem:
            raise InvalidArgumentError(problem)
        return self._encode(
            UpdateMessage(v=self._wire_version(), ops=raw_ops(ops), after=after, cursor=cursor)
        )

    def error(
        self,
        code: ErrorCode,
        message: str,
        *,
        fatal: bool,
        batch: int | None = None,
        request: int | None = None,
    ) -> bytes:
        """An ``error`` frame; one naming a ``batch`` answers that push instead of an
        ack (e.g. ``rate_limited``: the agent pushes its ops again later)."""
        data = super().error(code, message, fatal=fatal, batch=batch, request=request)
        if batch is not None:
            self._batches.pop(batch, None)
        return data

    def search_result(self, request: int, hits: Iterable[SearchHit | tuple[str, float]]) -> bytes:
        self._require(ServerState.READY, "send a search result")
        _check_id(request, "request")
        built = tuple(
            h if isinstance(h, SearchHit) else SearchHit(id=h[0], score=h[1]) for h in hits
        )
        if len(built) > MAX_SEARCH_K:
            raise InvalidArgumentError(f"at most {MAX_SEARCH_K} hits, got {len(built)}")
        if not all(isinstance(h.score, float | int) and math.isfinite(h.score) for h in built):
            raise InvalidArgumentError("search scores must be finite numbers")
        return self._encode(
            SearchResultMessage(v=self._wire_version(), request=request, hits=built)
        )
