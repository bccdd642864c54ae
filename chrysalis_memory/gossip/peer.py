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

Peers come from ``GossipConfig.seeds`` and, with a hub configured, from the
hub's ``/peers`` endpoint, which this agent also announces its address to.
Gossip itself never needs the hub. See ``docs/gossip.md``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, WebSocketException

from chrysalis_memory.config import MAX_CLOCK_SKEW_S, GossipConfig
from chrysalis_memory.errors import ChrysalisError, ConfigError, InvalidOpError
from chrysalis_memory.gossip import wire
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
from chrysalis_memory.model.ops import AGENT_ID_PATTERN, Op
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
_OVERHEAD: Final = 16 << 10  # bytes of a frame besides its ops (envelope, members)
_LINK_QUEUE: Final = 256  # frames waiting for one peer; more are dropped
_LINK_IDLE_S: Final = 60.0
_MAX_LINKS: Final = 256
_SCAN_EVERY_MS: Final = 1000.0  # the op log is also read this often without a wake-up
_AGENT_ID: Final = re.compile(AGENT_ID_PATTERN)


def settings_from(config: GossipConfig) -> GossipSettings:
    """The node's settings for a :class:`~chrysalis_memory.config.GossipConfig`."""
    return GossipSettings(
        fanout=config.fanout,
        interval_ms=float(config.interval_ms),
        anti_entropy_interval_ms=(
            float(config.anti_entropy_interval_ms) if config.anti_entropy_enabled else None
        ),
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


class GossipPeer:
    """Gossip for one agent, until :meth:`close`."""

    def __init__(
        self,
        store: OpStore,
        merge: Merge,
        *,
        agent_id: str,
        config: GossipConfig,
        hub_url: str | None = None,
        hub_token: str | None = None,
        max_frame_bytes: int = wire.MAX_FRAME_BYTES,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.merge = merge
        self.agent_id = agent_id
        self.config = config
        self.settings = settings_from(config)
        self.hub_url = hub_url
        self._hub_token = hub_token
        self.max_frame_bytes = max_frame_bytes
        self._rng = rng or random.Random()
        self._node: GossipNode | None = None
        self._url = ""
        self._server: Server | None = None
        self._links: OrderedDict[str, _Link] = OrderedDict()
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

    async def start(self) -> None:
        cfg = self.config
        try:
            self._server = await serve(
                self._serve,
                cfg.listen_host,
                cfg.listen_port,
                max_size=self.max_frame_bytes,
                compression=None,  # CPU is scarcer than bandwidth; ops are small JSON
                server_header="chrysalis-gossip",
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
        if self.hub_url is not None and self._hub_token:
            self._tasks.append(
                asyncio.create_task(self._membership(), name=f"gossip-hub-{self.agent_id}")
            )
        self._ready.set()
        log.info("%s: gossip listening at %s", self.agent_id, self._url)

    async def _load(self) -> None:
        """The node's summary from the store: every shareable op held now."""
        node = self._node = GossipNode(
            self.agent_id, self._url, self.settings, rng=self._rng, now_ms=self._now()
        )
        self._cursor = await self.store.last_seqno()
        shared, self._local_docs = await self.store.gossip_index(upto=self._cursor)
        for writer, seq in shared:  # known, not news: anti-entropy shares them, not rumours
            node.summary.add(writer, seq)
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
        if ops:
            self.node.accepted(ops, self._now())

    # --- carrying out the node's outputs ----------------------------------------------

    async def _carry_out(self, outputs: Sequence[Output]) -> None:
        for output in outputs:
            if isinstance(output, Send):
                self._send(output.addr, output.message)
            elif isinstance(output, SendOps):
                await self._send_ops(output)
            elif isinstance(output, Deliver):
                await self._deliver([op for op in output.ops if isinstance(op, Op)])
        if outputs:
            self._wake.set()  # a probe may have moved the next deadline

    def _send(self, addr: str, message: Message) -> None:
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
            self._link(addr).put(frame)

    def _split(self, ops: Sequence[Any]) -> list[tuple[Op, ...]]:
        """Ops in batches that fit in a frame (and within the op count limit)."""
        budget = self.max_frame_bytes - _OVERHEAD
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
        """A peer's anti-entropy wants these ops: shareable ones only, in frames that fit."""
        ops = await self.store.ops_in_ranges(output.ranges)
        if ops:
            self._send(output.addr, Ops(output.session, tuple(ops)))

    async def _deliver(self, ops: Sequence[Op]) -> None:
        """Verify and store ops received from a peer; tell the node how it went."""
        horizon = time.time() * 1000 + MAX_CLOCK_SKEW_MS
        future = [op for op in ops if op.hlc.wall_ms > horizon]
        if future:
            log.info(
                "%s: %d gossiped ops are stamped too far in the future: refused",
                self.agent_id,
                len(future),
            )
            self._reject(future)
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
                self._reject(ops)
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

    def _reject(self, ops: Sequence[Op]) -> None:
        self.ops_rejected += len(ops)
        self.node.rejected(ops)

    # --- receiving -----------------------------------------------------------------------

    async def _serve(self, connection: ServerConnection) -> None:
        await self._ready.wait()
        try:
            while not self._closing:
                frame = await connection.recv(decode=False)  # bytes: no decode, no re-encode
                self.messages_received += 1
                self.bytes_received += len(frame)
                try:
                    sender, addr, message = wire.decode(frame, max_bytes=self.max_frame_bytes)
                except SyncProtocolError as error:
                    self.frames_rejected += 1
                    log.info("%s: bad gossip frame (closing): %s", self.agent_id, error)
                    await connection.close(1008, "bad gossip frame")
                    return
                outputs = self.node.receive(sender, addr, message, self._now())
                try:
                    await self._carry_out(outputs)
                except ChrysalisError as error:  # the store failed: the peer asks again
                    log.warning("%s: gossip with %s failed: %s", self.agent_id, sender, error)
        except ConnectionClosed:
            pass

    # --- membership from the hub ---------------------------------------------------------

    async def _membership(self) -> None:
        """Announce this agent to the hub and learn peers from it, now and then."""
        assert self.hub_url is not None
        url = peers_url(self.hub_url)
        headers = {"Authorization": f"Bearer {self._hub_token}"}
        async with httpx.AsyncClient(timeout=5.0, trust_env=False) as client:
            while not self._closing:
                await self._ask_hub(client, url, headers)
                few = len(self.node.members("alive")) < self.settings.fanout
                delay = (
                    HUB_PEERS_EVERY_ROUNDS * self.settings.interval_ms / 1000
                    if few
                    else HUB_PEERS_EVERY_S
                )
                await asyncio.sleep(delay)

    async def _ask_hub(
        self, client: httpx.AsyncClient, url: str, headers: Mapping[str, str]
    ) -> None:
        try:
            response = await client.get(url, params={"announce": self._url}, headers=headers)
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


class _Link:
    """The connection to one peer's address: opened on demand, frames sent in order.

    A failure to connect or to send drops the frame (the node copes with lost
    messages); frames queued while the peer is unreachable are dropped with it.
    Closed after a minute without frames.
    """

    def __init__(self, peer: GossipPeer, addr: str) -> None:
        self.peer = peer
        self.addr = addr
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(_LINK_QUEUE)
        self.connection: ClientConnection | None = None
        self.task = asyncio.create_task(self._run(), name=f"gossip-link-{addr}")

    def put(self, frame: bytes) -> None:
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.peer.messages_lost += 1

    def stop(self) -> None:
        self.task.cancel()

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def _drop_queued(self) -> None:
        while not self.queue.empty():
            self.queue.get_nowait()
            self.peer.messages_lost += 1

    async def _run(self) -> None:
        peer = self.peer
        open_timeout = max(1.0, 4 * peer.settings.interval_ms / 1000)
        try:
            while True:
                try:
                    frame = await asyncio.wait_for(self.queue.get(), _LINK_IDLE_S)
                except asyncio.TimeoutError:
                    return
                if self.connection is None:
                    try:
                        self.connection = await connect(
                            self.addr,
                            open_timeout=open_timeout,
                            max_size=peer.max_frame_bytes,
                            compression=None,
                            proxy=None,
                            close_timeout=1.0,
                        )
                    except (OSError, asyncio.TimeoutError, WebSocketException) as error:
                        log.debug("%s: cannot reach %s: %s", peer.agent_id, self.addr, error)
                        peer.messages_lost += 1
                        self._drop_queued()
                        continue
                try:
                    await self.connection.send(frame, text=True)
                except (ConnectionClosed, OSError):
                    peer.messages_lost += 1
                    self.connection = None
                    continue
                peer.messages_sent += 1
                peer.bytes_sent += len(frame)
        finally:
            if peer._links.get(self.addr) is self:
                del peer._links[self.addr]
            connection, self.connection = self.connection, None
            if connection is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(connection.close())
