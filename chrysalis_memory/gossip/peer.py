"""The gossip transport of one agent: the sans-I/O :class:`GossipNode` on
websockets and the agent's store.

:class:`GossipPeer` listens for peers (``listen_host:listen_port``; port 0 picks
a free one, see :attr:`GossipPeer.url`), and carries out what the node asks:

* :class:`~.node.Send` — encode the message (:mod:`.wire`) and send it to the
  peer's address over a connection opened on demand and kept for reuse. A
  failure drops the connection and the message: the node has timeouts, and
  anti-entropy repairs whatever is lost.
* :class:`~.node.SendOps` — read those ops from the store and send them as
  ``Ops``. Short-term (``local``) ops are never read: they never leave the agent.
* :class:`~.node.Deliver` — verify and store the ops through the agent's merge
  path (CID, signature, the writer's pinned key, no equivocation), then tell the
  node which were stored (:meth:`~.node.GossipNode.accepted`, so they are
  forwarded) and which were not (:meth:`~.node.GossipNode.rejected`: never
  stored, never forwarded).

A timer calls :meth:`~.node.GossipNode.tick` at the node's next deadline. Ops
the agent stores by any other path (its own writes, the hub's relays, a
``merge_ops``, promotions of short-term memories) are found by following the op
log (see :meth:`GossipPeer._scan`) and handed to the node, which gossips them.

Only members gossip (:mod:`.auth`): the members and their keys come from
``GossipConfig.members``, ``members_file`` and, with a hub configured, the hub's
``/members`` endpoint. Every connection opens with a mutual challenge-response
(each side signs the other's nonce with its agent key), before any gossip frame
is read or sent; a connection that fails it is closed having been told nothing
but a random nonce. Every op received must be signed with its writer's member
key. Memory is bounded in bytes: what waits to be sent to one peer
(``send_queue_bytes``; a peer that lets more pile up is dropped) and to all
(``send_queue_total_bytes``), what one reconciliation request is answered with
(``want_answer_bytes``), inbound connections (``max_inbound_connections``, at
most :data:`MAX_CONNECTIONS_PER_MEMBER` per member, frames of
:data:`~.auth.HANDSHAKE_MAX_BYTES` until the handshake is over).

Peers come from ``GossipConfig.seeds`` and, with a hub configured, from the
hub's ``/peers`` endpoint, which this agent also announces its address to.
Gossip itself never needs the hub (its member list is kept in the store). See
``docs/gossip.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import random
import re
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.http11 import Request, Response

from chrysalis_memory.config import MAX_CLOCK_SKEW_S, GossipConfig, is_public_key
from chrysalis_memory.errors import (
    ChrysalisError,
    ConfigError,
    GossipAuthError,
    InvalidOpError,
)
from chrysalis_memory.gossip import wire
from chrysalis_memory.gossip.auth import (
    HANDSHAKE_MAX_BYTES,
    ClientHandshake,
    Membership,
    ServerHandshake,
)
from chrysalis_memory.gossip.messages import MemberState, Message, Ops, Push
from chrysalis_memory.gossip.node import (
    Deliver,
    GossipNode,
    GossipSettings,
    Output,
    Send,
    SendOps,
)
from chrysalis_memory.model.document import SyncStatus
from chrysalis_memory.model.ops import AGENT_ID_PATTERN, Op, Signer
from chrysalis_memory.store import OpStore
from chrysalis_memory.sync.messages import SyncProtocolError

log = logging.getLogger(__name__)

Merge = Callable[[Sequence[Op], SyncStatus], Awaitable[int]]
"""Verifies and stores ops from elsewhere with a sync status; returns how many
were new. Raises :class:`~chrysalis_memory.errors.InvalidOpError` (and stores
nothing) if any op is bad."""

MAX_CLOCK_SKEW_MS: Final = int(1000 * MAX_CLOCK_SKEW_S)
"""Ops stamped further ahead of this agent's clock are refused (the hub's default
``max_clock_skew_s``): one op from the future would win every last-writer-wins
field for as long as its lead lasts. A refused op is offered again by
anti-entropy, and accepted once the clocks agree."""
HUB_PEERS_EVERY_ROUNDS: Final = 10
"""While it knows fewer live peers than ``fanout``, an agent asks the hub every
this many gossip rounds."""
HUB_PEERS_EVERY_S: Final = 60.0
"""Otherwise it re-announces itself (and reads the hub's sample) this often."""
MAX_HUB_PEERS: Final = 1000
MAX_CONNECTIONS_PER_MEMBER: Final = 4
"""Inbound connections one member may hold (one per address it knows this agent
by); a newer one closes the oldest."""
MAX_PENDING_HANDSHAKES: Final = 32
"""Inbound connections still proving their membership, from anywhere..."""
MAX_PENDING_PER_HOST: Final = 4
"""... and from one IP address; more are refused (HTTP 503) before the websocket opens."""
SEND_STALL_S: Final = 30.0
"""A peer that has not taken a frame for this long is dropped (it does not read)."""
MEMBERS_FILE_MAX_BYTES: Final = 16 << 20
HUB_MEMBERS_MAX_BYTES: Final = 16 << 20
HUB_MEMBERS_META: Final = "gossip.hub_members"
"""Store metadata: the hub's member list as last read, so that a restart while
the hub is down still knows who the members are."""
_MEMBERS_FILE_EVERY_S: Final = 1.0  # the members file is looked at this often
_HUB_REFRESH_MIN_S: Final = 2.0  # an unknown peer asks the hub again, at most this often
_OVERHEAD: Final = 16 << 10  # bytes of a frame besides its ops (envelope, members)
_LINK_IDLE_S: Final = 60.0
_MAX_LINKS: Final = 256
_SCAN_EVERY_MS: Final = 1000.0  # the op log is also read this often without a wake-up
_AGENT_ID: Final = re.compile(AGENT_ID_PATTERN)
_NOT_ADMITTED: Final = "not admitted"  # the close reason a refused peer reads: nothing more


def members_url(hub_url: str) -> str:
    """The hub's ``/members`` endpoint (beside ``/peers``)."""
    return peers_url(hub_url).removesuffix("/peers") + "/members"


def no_members_error() -> ConfigError:
    return ConfigError(
        "gossip admits only members, and this agent has no member list: set "
        "gossip.members ({agent id: public key}; CHRYSALIS_GOSSIP_MEMBERS=id=key,id=key), "
        "or gossip.members_file (a JSON file of them; CHRYSALIS_GOSSIP_MEMBERS_FILE), or "
        "hub_url and hub_token (the hub's registered agents are then the members). "
        "`chrysalis key AGENT_ID --data-dir DIR` prints an agent's public key"
    )


def read_members_file(path: Path) -> dict[str, str]:
    """``{agent id: public key}`` from a members file; :class:`ConfigError` if it
    cannot be read or is not one."""
    try:
        with path.open("rb") as file:
            data = file.read(MEMBERS_FILE_MAX_BYTES + 1)
    except OSError as error:
        raise ConfigError(
            f"gossip members_file {path} cannot be read: {error.strerror or error}"
        ) from None
    if len(data) > MEMBERS_FILE_MAX_BYTES:
        raise ConfigError(f"gossip members_file {path} is over {MEMBERS_FILE_MAX_BYTES} bytes")
    try:
        decoded = json.loads(data)
    except (ValueError, RecursionError) as error:
        raise ConfigError(f"gossip members_file {path} is not JSON: {error}") from None
    try:
        return parse_members(decoded, what=f"gossip members_file {path}")
    except ValueError as error:
        raise ConfigError(str(error)) from None


def parse_members(data: object, *, what: str) -> dict[str, str]:
    """``{agent id: public key}`` from decoded JSON, checked; else :class:`ValueError`."""
    if not isinstance(data, dict):
        raise ValueError(f"{what} is not a JSON object {{agent id: public key}}")
    members: dict[str, str] = {}
    for agent, key in data.items():
        if not isinstance(agent, str) or not _AGENT_ID.match(agent):
            raise ValueError(f"{what}: {str(agent)[:80]!r} is not an agent id")
        if not is_public_key(key):
            raise ValueError(f"{what}: the key of {agent!r} is not an ed25519 public key")
        members[agent] = key
    return members


def settings_from(config: GossipConfig) -> GossipSettings:
    """The node's settings for a :class:`~chrysalis_memory.config.GossipConfig`."""
    return GossipSettings(
        fanout=config.fanout,
        interval_ms=float(config.interval_ms),
        anti_entropy_interval_ms=(
            float(config.anti_entropy_interval_ms) if config.anti_entropy_enabled else None
        ),
        max_peers=config.max_members,
    )


def peers_url(hub_url: str) -> str:
    """The hub's ``/peers`` endpoint, on the port agents sync through:
    ``ws://hub:4444`` → ``http://hub:4444/peers`` (``wss`` → ``https``)."""
    parts = urlsplit(hub_url)
    scheme = "https" if parts.scheme == "wss" else "http"
    return urlunsplit((scheme, parts.netloc, parts.path.rstrip("/") + "/peers", "", ""))


@dataclasses.dataclass(frozen=True)
class GossipState:
    """Where gossip stands (``AgentMemory.gossip_state()``)."""

    url: str
    """The address peers reach this agent at."""
    alive: int
    suspect: int
    dead: int
    """Peers known in each state (dead ones are skipped)."""
    rumours: int
    """Ops this agent is still pushing to peers."""
    messages_sent: int
    bytes_sent: int
    messages_received: int
    bytes_received: int
    messages_lost: int
    """Messages that could not be sent (peer unreachable, queue full, too large)."""
    frames_rejected: int
    """Malformed frames received (their connection was closed)."""
    ops_received: int
    """Ops received by gossip that were new here."""
    ops_rejected: int
    """Ops received that failed verification: not stored, not forwarded."""
    members: int = 0
    """Agents admitted to gossip (this one aside), from every member source."""
    connections: int = 0
    """Inbound connections of authenticated members, open now."""
    peers_refused: int = 0
    """Inbound connections refused: over a limit, not a member, no proof, too slow."""
    handshakes_failed: int = 0
    """Connections this agent opened whose peer did not prove it is a member."""
    peers_dropped: int = 0
    """Connections dropped because the peer let too much pile up (it does not read)."""
    queued_bytes: int = 0
    """Bytes waiting to be sent to peers now, frames being sent included..."""
    queued_bytes_high: int = 0
    """... and the most there ever were."""
    rejections: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """Ops refused, by reason: ``not_member`` (the writer is no member),
    ``wrong_key`` (not signed with the writer's member key), ``clock_skew``,
    ``invalid`` (the store refused it: bad signature, pinned key, equivocation)."""


class GossipPeer:
    """Gossip for one agent, until :meth:`close`."""

    def __init__(
        self,
        store: OpStore,
        merge: Merge,
        *,
        agent_id: str,
        signer: Signer,
        config: GossipConfig,
        hub_url: str | None = None,
        hub_token: str | None = None,
        max_frame_bytes: int = wire.MAX_FRAME_BYTES,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.merge = merge
        self.agent_id = agent_id
        self.signer = signer
        self.config = config
        self.settings = settings_from(config)
        self.membership = Membership(agent_id, signer.public_key, max_members=config.max_members)
        self.hub_url = hub_url
        self._hub_token = hub_token
        self.max_frame_bytes = max_frame_bytes
        self._rng = rng or random.Random()
        self._node: GossipNode | None = None
        self._url = ""
        self._server: Server | None = None
        self._links: OrderedDict[str, _Link] = OrderedDict()
        self._queued = 0  # bytes in every link's queue, frames being sent included
        self._inbound: set[ServerConnection] = set()
        self._pending: Counter[str] = Counter()  # handshakes under way, by remote host
        self._by_member: dict[str, list[ServerConnection]] = {}
        self._closers: set[asyncio.Task[None]] = set()
        self._members_file_seen: tuple[int, int, int] | None = None
        self._hub_saved: str | None = None
        self._conflicts_logged: set[str] = set()
        self._refresh = asyncio.Event()  # an unknown peer appeared: read the members again
        self._outsiders: dict[str, str] = {}  # writers held here but not members → their key
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()
        self._ready = asyncio.Event()
        self._closing = False
        # Wall-clock milliseconds, advancing monotonically from the start (the node's
        # incarnation starts from it: a restarted agent outranks its previous life).
        self._epoch_ms = time.time() * 1000 - time.monotonic() * 1000
        self._cursor = 0  # the op log has been read up to this local number
        self._dirty = False
        self._next_scan = 0.0
        self._next_promotion_check = 0.0
        self._local_docs: set[str] = set()  # documents holding short-term ops
        self.messages_sent = self.bytes_sent = self.messages_lost = 0
        self.messages_received = self.bytes_received = self.frames_rejected = 0
        self.ops_received = self.ops_rejected = 0
        self.peers_refused = self.handshakes_failed = self.peers_dropped = 0
        self.queued_bytes_high = 0
        self.rejections: Counter[str] = Counter()

    # --- lifecycle -------------------------------------------------------------------

    @property
    def node(self) -> GossipNode:
        if self._node is None:
            raise ChrysalisError("gossip is not running")
        return self._node

    @property
    def url(self) -> str:
        """``ws://host:port`` peers reach this agent at (the actual port when 0 was asked)."""
        return self._url

    def _now(self) -> float:
        return time.monotonic() * 1000 + self._epoch_ms

    @property
    def _uses_hub(self) -> bool:
        return self.hub_url is not None and bool(self._hub_token)

    async def start(self) -> None:
        cfg = self.config
        if not (cfg.members or cfg.members_file is not None or self._uses_hub):
            raise no_members_error()
        self._set_members("config", cfg.members)
        if cfg.members_file is not None:
            self._read_members_file(strict=True)
        if self.agent_id in self.membership.conflicts():
            raise ConfigError(
                f"gossip members (or members_file) list this agent, {self.agent_id!r}, with "
                "another key than its own signing key (`chrysalis key` prints it)"
            )
        if self._uses_hub:
            await self._load_hub_members()
        try:
            self._server = await serve(
                self._serve,
                cfg.listen_host,
                cfg.listen_port,
                process_request=self._admit_request,
                # Until a peer has proved its membership, no frame larger than a
                # handshake is read; then up to max_frame_bytes (see _serve).
                max_size=HANDSHAKE_MAX_BYTES,
                max_queue=2,  # frames buffered per connection while we process one
                compression=None,  # CPU is scarcer than bandwidth; ops are small JSON
                server_header="chrysalis-gossip",
                close_timeout=1.0,
            )
        except OSError as error:
            raise ConfigError(
                f"gossip cannot listen on {cfg.listen_host}:{cfg.listen_port}: {error}; "
                "pick another gossip listen_port (0 picks a free one)"
            ) from None
        port = int(self._server.sockets[0].getsockname()[1])
        host = cfg.listen_host
        self._url = f"ws://[{host}]:{port}" if ":" in host else f"ws://{host}:{port}"
        if host in ("0.0.0.0", "::", ""):
            log.warning(
                "%s: gossip listens on all interfaces but announces %s, which peers "
                "cannot reach: set gossip listen_host to this machine's address",
                self.agent_id,
                self._url,
            )
        try:
            await self._load()
        except BaseException:
            await self.close()
            raise
        self._tasks.append(asyncio.create_task(self._run(), name=f"gossip-{self.agent_id}"))
        self._tasks.append(
            asyncio.create_task(self._membership(), name=f"gossip-members-{self.agent_id}")
        )
        self._ready.set()
        log.info("%s: gossip listening at %s", self.agent_id, self._url)

    async def _load(self) -> None:
        """The node's summary from the store: every shareable op held now."""
        node = self._node = GossipNode(
            self.agent_id, self._url, self.settings, rng=self._rng, now_ms=self._now()
        )
        node.admit(self.membership.ids())
        self._cursor = await self.store.last_seqno()
        shared, self._local_docs = await self.store.gossip_index(upto=self._cursor)
        keys = await self.store.all_writer_keys()
        for writer, seq in shared:  # known, not news: anti-entropy shares them, not rumours
            if self.membership.writer_key(writer) == keys.get(writer):
                node.summary.add(writer, seq)
            else:  # not a member's: no member would take it (until its writer is one)
                self._outsiders[writer] = keys.get(writer, "")
        seeds = []
        for seed in self.config.seeds:
            try:
                seeds.append(wire.check_addr(seed))
            except SyncProtocolError as error:
                log.warning("%s: gossip seed ignored: %s", self.agent_id, error)
        node.add_seeds(seeds)

    async def close(self) -> None:
        """Stop listening, sending and ticking (ops already stored stay stored)."""
        self._closing = True
        self._ready.set()  # release handlers waiting for the start
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        links = list(self._links.values())
        self._links.clear()
        await asyncio.gather(*(link.close() for link in links))
        for closer in list(self._closers):
            closer.cancel()
        await asyncio.gather(*self._closers, return_exceptions=True)

    def notify(self) -> None:
        """Ops were stored here (a write, a merge): gossip them from the next wake-up."""
        self._dirty = True
        self._wake.set()

    def state(self) -> GossipState:
        counts: dict[MemberState, int] = {"alive": 0, "suspect": 0, "dead": 0}
        node = self._node
        if node is not None:
            for peer in node.members(None):
                state = node.state_of(peer)
                if state is not None:
                    counts[state] += 1
        return GossipState(
            url=self._url,
            alive=counts["alive"],
            suspect=counts["suspect"],
            dead=counts["dead"],
            rumours=0 if node is None else node.active_rumours,
            messages_sent=self.messages_sent,
            bytes_sent=self.bytes_sent,
            messages_received=self.messages_received,
            bytes_received=self.bytes_received,
            messages_lost=self.messages_lost,
            frames_rejected=self.frames_rejected,
            ops_received=self.ops_received,
            ops_rejected=self.ops_rejected,
            members=len(self.membership),
            connections=sum(len(c) for c in self._by_member.values()),
            peers_refused=self.peers_refused,
            handshakes_failed=self.handshakes_failed,
            peers_dropped=self.peers_dropped,
            queued_bytes=self._queued,
            queued_bytes_high=self.queued_bytes_high,
            rejections=dict(self.rejections),
        )

    # --- time --------------------------------------------------------------------------

    async def _run(self) -> None:
        node = self.node
        check_every = self.settings.anti_entropy_interval_ms or 5000.0
        while not self._closing:
            self._wake.clear()
            now = self._now()
            try:
                if self._dirty or now >= self._next_scan:
                    await self._scan()
                if self._local_docs and now >= self._next_promotion_check:
                    self._next_promotion_check = now + check_every
                    await self._promoted(self._local_docs)
                await self._carry_out(node.tick(self._now()))
            except ChrysalisError as error:  # the store failed: try again next time
                log.warning("%s: gossip round failed: %s", self.agent_id, error)
            wait_ms = min(node.next_deadline(), self._next_scan) - self._now()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(wait_ms, 1.0) / 1000)

    async def _scan(self) -> None:
        """Hand the node the shareable ops stored since the last look.

        The op log is append-only and numbered in arrival order, so a cursor on it
        finds every op stored by any path: written here, relayed by the hub,
        merged, or delivered by gossip itself (those the node knows already; it
        ignores them). Short-term (``local``) ops are skipped, but their documents
        are remembered: promoting a memory turns its earlier ``local`` ops
        ``pending`` without appending them again, so when a shareable op of such a
        document appears (the promoting write), the document's ops are read again;
        and every anti-entropy interval all of them are (the recall indexer
        promotes the embeddings of promoted memories without writing a new op).
        """
        self._dirty = False
        self._next_scan = self._now() + _SCAN_EVERY_MS
        fresh: list[Op] = []
        promoted: set[str] = set()
        async for seqno, op, status in self.store.iter_ops(after=self._cursor):
            self._cursor = seqno
            if status is SyncStatus.LOCAL:
                self._local_docs.add(op.doc)
            else:
                if self._shareable(op):
                    fresh.append(op)
                if op.doc in self._local_docs:
                    promoted.add(op.doc)
        if fresh:
            self.node.accepted(fresh, self._now())
        if promoted:
            await self._promoted(promoted)

    async def _promoted(self, docs: Iterable[str]) -> None:
        """Re-read documents that held short-term ops: gossip those now shareable."""
        docs = set(docs)
        ops, still_local = await self.store.shareable_ops_of(docs)
        self._local_docs.difference_update(docs - still_local)
        ops = [op for op in ops if self._shareable(op)]
        if ops:
            self.node.accepted(ops, self._now())

    def _shareable(self, op: Op) -> bool:
        """Whether members would take this op (its writer is a member, and signed it
        with its member key); others' ops are not gossiped, but remembered in case
        their writer becomes a member."""
        if self.membership.writer_key(op.writer) == op.key:
            return True
        self._outsiders[op.writer] = op.key
        return False

    # --- carrying out the node's outputs ----------------------------------------------

    async def _carry_out(self, outputs: Sequence[Output]) -> None:
        for output in outputs:
            if isinstance(output, Send):
                self._send(output.to, output.addr, output.message)
            elif isinstance(output, SendOps):
                await self._send_ops(output)
            elif isinstance(output, Deliver):
                await self._deliver(output.sender, [op for op in output.ops if isinstance(op, Op)])
        if outputs:
            self._wake.set()  # a probe may have moved the next deadline

    def _send(self, to: str, addr: str, message: Message) -> None:
        """Queue ``message`` for the peer at ``addr`` (``to``: the member expected
        there; empty for a seed, whose id is learned by the handshake)."""
        if addr == self._url or self._closing:
            return
        if isinstance(message, Push):
            parts: list[Message] = [
                Push(ops, message.members) for ops in self._split(message.ops)
            ] or [message]
        elif isinstance(message, Ops):
            parts = [Ops(message.session, ops) for ops in self._split(message.ops)]
        else:
            parts = [message]
        for part in parts:
            frame = wire.encode(self.agent_id, self._url, part)
            if len(frame) > self.max_frame_bytes:
                log.warning(
                    "%s: a %s message of %d bytes is over the frame limit: not sent",
                    self.agent_id,
                    type(part).__name__,
                    len(frame),
                )
                self.messages_lost += 1
                continue
            self._enqueue(addr, to, frame)

    def _enqueue(self, addr: str, to: str, frame: bytes) -> None:
        """Queue a frame for ``addr`` within the byte budgets: a peer over its own
        budget is dropped (it does not read); over the total budget, the peer with
        the most waiting is."""
        cfg = self.config
        link = self._link(addr)
        size = len(frame)
        if link.bytes and link.bytes + size > cfg.send_queue_bytes:
            self._drop(
                link,
                f"{link.bytes + size} bytes would wait for it, over the "
                f"send_queue_bytes budget of {cfg.send_queue_bytes}",
            )
            self.messages_lost += 1
            return
        while self._queued + size > cfg.send_queue_total_bytes:
            biggest = max(self._links.values(), key=lambda x: x.bytes)
            if biggest.bytes == 0:
                break
            self._drop(
                biggest,
                f"{self._queued + size} bytes would wait for all peers, over the "
                f"send_queue_total_bytes budget of {cfg.send_queue_total_bytes}, "
                "and it has the most",
            )
            if biggest is link:
                self.messages_lost += 1
                return
        link.put(to, frame)
        self.queued_bytes_high = max(self.queued_bytes_high, self._queued)

    def _drop(self, link: _Link, why: str) -> None:
        """Drop a consumer: close its connection at once and free its queue."""
        self.peers_dropped += 1
        log.warning("%s: gossip peer %s dropped: %s", self.agent_id, link.peer_id or link.addr, why)
        if self._links.get(link.addr) is link:
            del self._links[link.addr]
        self.messages_lost += link.release()
        link.abort()

    def _split(self, ops: Sequence[Any]) -> list[tuple[Op, ...]]:
        """Ops in batches that fit in a frame (and within the op count limit), and
        in half a peer's send budget, so that two fit in it."""
        frame = min(self.max_frame_bytes, self.config.send_queue_bytes // 2)
        budget = max(frame - _OVERHEAD, 1)
        batches: list[tuple[Op, ...]] = []
        batch: list[Op] = []
        size = 0
        for op in ops:
            cost = len(op.encoded) + 1
            if batch and (size + cost > budget or len(batch) >= wire.MAX_OPS):
                batches.append(tuple(batch))
                batch, size = [], 0
            batch.append(op)
            size += cost
        if batch:
            batches.append(tuple(batch))
        return batches

    def _link(self, addr: str) -> _Link:
        link = self._links.get(addr)
        if link is None:
            link = self._links[addr] = _Link(self, addr)
            while len(self._links) > _MAX_LINKS:
                _, oldest = self._links.popitem(last=False)
                oldest.stop()
        else:
            self._links.move_to_end(addr)
        return link

    async def _send_ops(self, output: SendOps) -> None:
        """A peer's anti-entropy wants these ops: shareable ones only, at most
        ``want_answer_bytes`` of them, in frames that fit."""
        ops = await self.store.ops_in_ranges(output.ranges, max_bytes=self.config.want_answer_bytes)
        if ops:
            self._send(output.to, output.addr, Ops(output.session, tuple(ops)))

    async def _deliver(self, sender: str, ops: Sequence[Op]) -> None:
        """Verify and store ops received from a peer; tell the node how it went.

        An op is taken only if its writer is a member and it is signed with that
        member's key: a key from the member list, never one the sender supplied
        (the op's own ``key`` must equal it; the store then checks the signature).
        """
        refused: dict[str, list[Op]] = {}
        for op in ops:
            key = self.membership.writer_key(op.writer)
            if key is None:
                refused.setdefault("not_member", []).append(op)
            elif key != op.key:
                refused.setdefault("wrong_key", []).append(op)
        for reason, bad in refused.items():
            log.info(
                "%s: %d ops gossiped by %s refused (%s): writer %r %s",
                self.agent_id,
                len(bad),
                sender,
                reason,
                bad[0].writer,
                "is not a gossip member"
                if reason == "not_member"
                else "did not sign them with its member key",
            )
            self._reject(bad, reason)
        taken = {op.cid for bad in refused.values() for op in bad}
        ops = [op for op in ops if op.cid not in taken]
        horizon = time.time() * 1000 + MAX_CLOCK_SKEW_MS
        future = [op for op in ops if op.hlc.wall_ms > horizon]
        if future:
            log.info(
                "%s: %d gossiped ops are stamped too far in the future: refused",
                self.agent_id,
                len(future),
            )
            self._reject(future, "clock_skew")
        ops = [op for op in ops if op.hlc.wall_ms <= horizon]
        # Others' ops are stored as synced: this agent never pushes them to the hub
        # (the hub only takes an agent's own ops; their writer pushes them), exactly
        # as ops relayed by the hub are stored. Our own ops coming back (this replica
        # lost them: a restored data directory) are pending, so the hub gets them too.
        mine = [op for op in ops if op.writer == self.agent_id]
        others = [op for op in ops if op.writer != self.agent_id]
        if others:
            await self._store(others, SyncStatus.SYNCED)
        if mine:
            await self._store(mine, SyncStatus.PENDING)

    async def _store(self, ops: Sequence[Op], status: SyncStatus) -> None:
        try:
            new = await self.merge(ops, status)
        except InvalidOpError as error:
            if len(ops) == 1:
                log.info("%s: gossiped op refused: %s", self.agent_id, error)
                self._reject(ops, "invalid")
                return
            # Merging is all or nothing: one bad op must not sink the others.
            for op in ops:
                await self._store([op], status)
            return
        except ChrysalisError as error:  # the store failed or closed: offered again later
            log.warning("%s: could not store gossiped ops: %s", self.agent_id, error)
            self.node.rejected(ops)
            return
        self.ops_received += new
        self.node.accepted(ops, self._now())

    def _reject(self, ops: Sequence[Op], reason: str) -> None:
        self.ops_rejected += len(ops)
        self.rejections[reason] += len(ops)
        self.node.rejected(ops)

    # --- receiving -----------------------------------------------------------------------

    def _admit_request(self, connection: ServerConnection, request: Request) -> Response | None:
        """Before the websocket exists: refuse what is over the limits (HTTP 503)."""
        host = _host_of(connection)
        if self._closing:
            refusal = None
        elif len(self._inbound) >= self.config.max_inbound_connections:
            refusal = f"at its limit of {self.config.max_inbound_connections} connections"
        elif sum(self._pending.values()) >= MAX_PENDING_HANDSHAKES:
            refusal = f"{MAX_PENDING_HANDSHAKES} handshakes under way"
        elif self._pending[host] >= MAX_PENDING_PER_HOST:
            refusal = f"{MAX_PENDING_PER_HOST} handshakes under way from {host}"
        else:
            return None
        self.peers_refused += 1
        log.info("%s: gossip connection from %s refused: %s", self.agent_id, host, refusal)
        return connection.respond(HTTPStatus.SERVICE_UNAVAILABLE, "busy\n")

    async def _serve(self, connection: ServerConnection) -> None:
        await self._ready.wait()
        if self._closing:
            return
        host = _host_of(connection)
        if len(self._inbound) >= self.config.max_inbound_connections:
            # Admitted by _admit_request along with others that got here first.
            self.peers_refused += 1
            await connection.close(1013, "busy")
            return
        self._inbound.add(connection)
        self._pending[host] += 1
        try:
            try:
                member, addr = await asyncio.wait_for(
                    self._handshake(connection), self.config.handshake_timeout_s
                )
            except (GossipAuthError, asyncio.TimeoutError, ConnectionClosed) as error:
                self.peers_refused += 1
                why = "it left" if isinstance(error, ConnectionClosed) else str(error)
                log.info(
                    "%s: gossip peer at %s refused: %s", self.agent_id, host, why or "too slow"
                )
                await connection.close(1008, _NOT_ADMITTED)
                return
            finally:
                self._pending[host] -= 1
                if self._pending[host] <= 0:
                    del self._pending[host]
            self._hold(member, connection)
            try:
                connection.protocol.max_message_size = self.max_frame_bytes
                await self._receive(connection, member, addr)
            except ConnectionClosed:
                pass
            finally:
                held = self._by_member.get(member, [])
                if connection in held:
                    held.remove(connection)
                if not held:
                    self._by_member.pop(member, None)
        finally:
            self._inbound.discard(connection)

    async def _handshake(self, connection: ServerConnection) -> tuple[str, str]:
        """Challenge the peer; its id and address once it proved it is that member.

        A peer that fails is told nothing but the nonce: no id, no gossip."""
        handshake = ServerHandshake(self.agent_id, self.signer, self.membership)
        await connection.send(handshake.challenge(), text=True)
        hello = await connection.recv(decode=False)
        try:
            member, addr, welcome = handshake.hello(hello)
        except GossipAuthError:
            self._unknown_peer()
            raise
        try:
            wire.check_addr(addr)
        except SyncProtocolError as error:
            raise GossipAuthError(f"{member!r} gave a bad address: {error}") from None
        await connection.send(welcome, text=True)
        return member, addr

    def _hold(self, member: str, connection: ServerConnection) -> None:
        held = self._by_member.setdefault(member, [])
        held.append(connection)
        while len(held) > MAX_CONNECTIONS_PER_MEMBER:
            self._close_later(held.pop(0), "replaced by a newer connection")

    def _close_later(self, connection: ServerConnection, reason: str) -> None:
        task = asyncio.create_task(connection.close(1008, reason))
        self._closers.add(task)
        task.add_done_callback(self._closers.discard)

    async def _receive(self, connection: ServerConnection, member: str, addr: str) -> None:
        """Frames from an authenticated member, each in turn."""
        while not self._closing:
            frame = await connection.recv(decode=False)  # bytes: no decode, no re-encode
            self.messages_received += 1
            self.bytes_received += len(frame)
            try:
                sender, sender_addr, message = wire.decode(frame, max_bytes=self.max_frame_bytes)
                if (sender, sender_addr) != (member, addr):
                    raise SyncProtocolError(
                        f"a frame from {member!r} says it is from {sender!r} at {sender_addr!r}"
                    )
            except SyncProtocolError as error:
                self.frames_rejected += 1
                log.info("%s: bad gossip frame (closing): %s", self.agent_id, error)
                await connection.close(1008, "bad gossip frame")
                return
            if member not in self.membership:
                await connection.close(1008, _NOT_ADMITTED)  # removed meanwhile
                return
            outputs = self.node.receive(sender, sender_addr, message, self._now())
            try:
                await self._carry_out(outputs)
            except ChrysalisError as error:  # the store failed: the peer asks again
                log.warning("%s: gossip with %s failed: %s", self.agent_id, sender, error)

    # --- who the members are -------------------------------------------------------------

    def _set_members(
        self, source: str, members: Mapping[str, str], revoked: Mapping[str, str] | None = None
    ) -> bool:
        changed = self.membership.set_source(source, members, revoked)
        if self.membership.dropped:
            log.warning(
                "%s: %d gossip members left out, over max_members (%d)",
                self.agent_id,
                self.membership.dropped,
                self.config.max_members,
            )
        conflicts = self.membership.conflicts()
        for agent in sorted(conflicts - self._conflicts_logged):
            log.warning(
                "%s: the gossip member sources give %r different keys: it is no member "
                "until they agree",
                self.agent_id,
                agent,
            )
        self._conflicts_logged = conflicts
        return changed

    def _unknown_peer(self) -> None:
        """Someone not (yet) a member knocked: read the member sources again soon."""
        self._refresh.set()

    def _read_members_file(self, *, strict: bool) -> bool:
        """Read the members file if it changed; returns whether the members did."""
        path = self.config.members_file
        assert path is not None
        try:
            stat = path.stat()
            seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        except OSError:
            seen = None
        if seen is not None and seen == self._members_file_seen:
            return False
        try:
            members = read_members_file(path)
        except ConfigError as error:
            if strict:
                raise
            if seen != self._members_file_seen:
                log.warning(
                    "%s: members file not read again (kept as it was): %s", self.agent_id, error
                )
            self._members_file_seen = seen
            return False
        self._members_file_seen = seen
        return self._set_members("file", members)

    async def _load_hub_members(self) -> None:
        """The hub's member list as last read (the hub may be down now)."""
        try:
            saved = await self.store.meta(HUB_MEMBERS_META)
            if saved is None:
                return
            members, revoked = _hub_members(json.loads(saved), self.config.max_members)
            self._hub_saved = saved
        except (ValueError, RecursionError, ChrysalisError) as error:
            log.warning("%s: the saved hub member list is unusable: %s", self.agent_id, error)
            return
        self._set_members("hub", members, revoked)

    async def _members_changed(self) -> None:
        """Apply a new member list: forget, disconnect and stop gossiping with whoever
        is no member any more; share the ops of writers who became members."""
        members = self.membership
        self.node.admit(members.ids())
        for member, held in list(self._by_member.items()):
            if member not in members:
                for connection in held:
                    self._close_later(connection, _NOT_ADMITTED)
        for link in list(self._links.values()):
            if link.peer_id is not None and link.peer_id not in members:
                link.stop()
        welcome = {w for w, k in self._outsiders.items() if members.writer_key(w) == k}
        if not welcome:
            return
        for writer in welcome:
            del self._outsiders[writer]
        shared, _ = await self.store.gossip_index(upto=self._cursor)
        for writer, seq in shared:
            if writer in welcome:
                self.node.summary.add(writer, seq)  # anti-entropy shares them

    async def _membership(self) -> None:
        """Keep the member list current (the members file, the hub); with a hub, also
        announce this agent to it and learn peers from it, now and then."""
        loop = asyncio.get_running_loop()
        uses_file = self.config.members_file is not None
        client = httpx.AsyncClient(timeout=5.0, trust_env=False) if self._uses_hub else None
        next_hub, last_hub = loop.time(), -math.inf
        try:
            while not self._closing:
                self._refresh.clear()
                changed = uses_file and self._read_members_file(strict=False)
                if client is not None and loop.time() >= next_hub:
                    last_hub = loop.time()
                    changed |= await self._ask_hub_members(client)
                    if changed:  # before the peers: only members are taken from the list
                        await self._members_changed()
                        changed = False
                    await self._ask_hub(client)
                    few = len(self.node.members("alive")) < self.settings.fanout
                    next_hub = last_hub + (
                        HUB_PEERS_EVERY_ROUNDS * self.settings.interval_ms / 1000
                        if few
                        else HUB_PEERS_EVERY_S
                    )
                if changed:
                    await self._members_changed()
                wait = _MEMBERS_FILE_EVERY_S if uses_file else 60.0
                if client is not None:
                    wait = min(wait, next_hub - loop.time())
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._refresh.wait(), max(wait, 0.01))
                if self._refresh.is_set():  # someone unknown knocked: maybe a new member
                    next_hub = min(next_hub, last_hub + _HUB_REFRESH_MIN_S)
        finally:
            if client is not None:
                await client.aclose()

    def _hub_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._hub_token}"}

    async def _ask_hub_members(self, client: httpx.AsyncClient) -> bool:
        """Read the hub's registered agents and their keys; returns whether the
        members changed. The list is saved in the store for restarts without the hub."""
        assert self.hub_url is not None
        url = members_url(self.hub_url)
        body = bytearray()
        try:
            async with client.stream("GET", url, headers=self._hub_headers()) as response:
                if response.status_code != 200:
                    level = logging.DEBUG if response.status_code >= 500 else logging.WARNING
                    log.log(
                        level,
                        "%s: the hub did not list gossip members (HTTP %d)%s",
                        self.agent_id,
                        response.status_code,
                        ": is it older than this agent?" if response.status_code == 404 else "",
                    )
                    return False
                async for chunk in response.aiter_bytes():
                    body += chunk
                    if len(body) > HUB_MEMBERS_MAX_BYTES:
                        log.warning(
                            "%s: the hub's member list is over %d bytes: not read",
                            self.agent_id,
                            HUB_MEMBERS_MAX_BYTES,
                        )
                        return False
        except httpx.HTTPError as error:
            log.debug("%s: the hub's member list is out of reach: %s", self.agent_id, error)
            return False
        try:
            members, revoked = _hub_members(json.loads(body), self.config.max_members)
        except (ValueError, RecursionError) as error:
            log.warning("%s: the hub's member list is unusable: %s", self.agent_id, error)
            return False
        changed = self._set_members("hub", members, revoked)
        saved = json.dumps({"members": members, "revoked": revoked}, sort_keys=True)
        if saved != self._hub_saved:
            try:
                await self.store.set_meta({HUB_MEMBERS_META: saved})
                self._hub_saved = saved
            except ChrysalisError as error:  # kept in memory; saved next time
                log.warning("%s: could not save the hub's member list: %s", self.agent_id, error)
        return changed

    async def _ask_hub(self, client: httpx.AsyncClient) -> None:
        """Announce this agent's address to the hub and take the peers it lists
        (members only: the node takes no one else)."""
        assert self.hub_url is not None
        url = peers_url(self.hub_url)
        try:
            response = await client.get(
                url, params={"announce": self._url}, headers=self._hub_headers()
            )
        except httpx.HTTPError as error:
            log.debug("%s: the hub's peer list is out of reach: %s", self.agent_id, error)
            return
        if response.status_code != 200:
            level = logging.WARNING if response.status_code in (400, 401) else logging.DEBUG
            log.log(
                level,
                "%s: the hub refused its peer list (HTTP %d): %s",
                self.agent_id,
                response.status_code,
                response.text[:200],
            )
            return
        try:
            listed = response.json()
        except ValueError:
            return
        if not isinstance(listed, dict):
            return
        peers: dict[str, str] = {}
        for peer, addr in list(listed.items())[:MAX_HUB_PEERS]:
            if peer == self.agent_id or not isinstance(peer, str) or not _AGENT_ID.match(peer):
                continue
            try:
                peers[peer] = wire.check_addr(addr)
            except SyncProtocolError:
                continue
        if peers:
            self.node.add_peers(peers, self._now())
            self._wake.set()


def _hub_members(data: object, limit: int) -> tuple[dict[str, str], dict[str, str]]:
    """The hub's ``{"members": {id: key}, "revoked": {id: key}}``, checked."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    members = parse_members(data.get("members", {}), what="members")
    revoked = parse_members(data.get("revoked", {}), what="revoked")
    if len(members) + len(revoked) > 2 * limit:
        raise ValueError(f"over {2 * limit} agents")
    return members, revoked


def _host_of(connection: ServerConnection) -> str:
    address = connection.remote_address
    return str(address[0]) if address else "?"


class _Link:
    """The connection to one peer's address: opened on demand, authenticated,
    frames sent in order.

    A failure to connect, to authenticate or to send drops the frame (the node
    copes with lost messages); frames queued while the peer is unreachable are
    dropped with it. Closed after a minute without frames. ``bytes`` counts the
    frames waiting and the one being sent: the peer keeps it within its budgets
    (:meth:`GossipPeer._enqueue`).
    """

    def __init__(self, peer: GossipPeer, addr: str) -> None:
        self.peer = peer
        self.addr = addr
        self.queue: deque[tuple[str, bytes]] = deque()
        self.bytes = 0
        self.peer_id: str | None = None
        """The member this address turned out to be (after the handshake)."""
        self._ready = asyncio.Event()
        self.connection: ClientConnection | None = None
        self.task = asyncio.create_task(self._run(), name=f"gossip-link-{addr}")

    def put(self, to: str, frame: bytes) -> None:
        self.queue.append((to, frame))
        self._account(len(frame))
        self._ready.set()

    def _account(self, size: int) -> None:
        self.bytes += size
        self.peer._queued += size

    def release(self) -> int:
        """Forget every frame waiting (and the one being sent); returns how many."""
        lost = len(self.queue)
        self.queue.clear()
        self.peer._queued -= self.bytes
        self.bytes = 0
        return lost

    def stop(self) -> None:
        self.peer.messages_lost += self.release()
        self.task.cancel()

    def abort(self) -> None:
        """Stop at once: the connection is cut without a closing handshake (a peer
        that does not read would not answer one), so its buffers are freed now."""
        connection, self.connection = self.connection, None
        if connection is not None:
            connection.transport.abort()
        self.task.cancel()

    async def close(self) -> None:
        self.release()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _next(self) -> tuple[str, bytes] | None:
        while not self.queue:
            self._ready.clear()
            try:
                await asyncio.wait_for(self._ready.wait(), _LINK_IDLE_S)
            except asyncio.TimeoutError:
                return None
        return self.queue[0]

    def _sent(self) -> None:
        if self.queue:  # (empty if the queue was released meanwhile)
            _, frame = self.queue.popleft()
            self.bytes -= len(frame)
            self.peer._queued -= len(frame)

    async def _connect(self) -> ClientConnection | None:
        peer = self.peer
        open_timeout = max(1.0, 4 * peer.settings.interval_ms / 1000)
        try:
            connection = await connect(
                self.addr,
                open_timeout=open_timeout,
                max_size=HANDSHAKE_MAX_BYTES,  # nothing but the handshake comes back
                compression=None,
                proxy=None,
                close_timeout=1.0,
            )
        except (OSError, asyncio.TimeoutError, WebSocketException) as error:
            log.debug("%s: cannot reach %s: %s", peer.agent_id, self.addr, error)
            return None
        try:
            self.peer_id = await asyncio.wait_for(
                self._handshake(connection), peer.config.handshake_timeout_s
            )
        except (GossipAuthError, asyncio.TimeoutError, ConnectionClosed, OSError) as error:
            peer.handshakes_failed += 1
            log.info(
                "%s: the gossip peer at %s is not admitted: %s",
                peer.agent_id,
                self.addr,
                error
                if isinstance(error, GossipAuthError)
                else "it did not complete the handshake",
            )
            connection.transport.abort()
            return None
        except BaseException:  # cancelled (dropped, closing): do not leave it open
            connection.transport.abort()
            raise
        return connection

    async def _handshake(self, connection: ClientConnection) -> str:
        peer = self.peer
        handshake = ClientHandshake(peer.agent_id, peer.url, peer.signer, peer.membership)
        hello = handshake.challenge(await connection.recv(decode=False))
        await connection.send(hello, text=True)
        return handshake.welcome(await connection.recv(decode=False))

    async def _run(self) -> None:
        peer = self.peer
        try:
            while True:
                item = await self._next()
                if item is None:
                    return  # idle
                to, frame = item
                if self.connection is None:
                    self.connection = await self._connect()
                    if self.connection is None:
                        peer.messages_lost += self.release()
                        continue
                if to and to != self.peer_id:
                    log.debug(
                        "%s: %s is %s, not %s: frame dropped",
                        peer.agent_id,
                        self.addr,
                        self.peer_id,
                        to,
                    )
                    peer.messages_lost += 1
                    self._sent()
                    continue
                try:
                    await asyncio.wait_for(self.connection.send(frame, text=True), SEND_STALL_S)
                except asyncio.TimeoutError:
                    peer._drop(self, f"it took no frame for {SEND_STALL_S:g} s")
                    return
                except (ConnectionClosed, OSError):
                    peer.messages_lost += 1
                    self._sent()
                    self.connection = None
                    continue
                self._sent()
                peer.messages_sent += 1
                peer.bytes_sent += len(frame)
        finally:
            self.release()
            if peer._links.get(self.addr) is self:
                del peer._links[self.addr]
            connection, self.connection = self.connection, None
            if connection is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close())
