"""The sync hub: a replica with no agent of its own, behind a websocket gateway.

Agents connect with a token (``Authorization: Bearer …``, checked in the
handshake: a bad one gets HTTP 401 before any message is read), push their ops,
pull the hub's log from a cursor, receive what others write as live updates,
and search the collective index. The protocol logic is the sans-I/O
:class:`~chrysalis_memory.sync.ServerProtocol`; this module moves its bytes,
decides what to store, and owns the limits:

* frames over ``max_message_bytes`` get a ``too_large`` error and a close
  (twice that, and websockets closes with 1009 before reading it all);
* each agent pushes at most ``rate_limit_ops_per_s`` (a token bucket of
  ``rate_limit_burst_ops``); a push over it is answered ``rate_limited``;
* ``max_connections`` in all, ``max_connections_per_agent`` each (HTTP 503);
* every connection has its own queue, bounded in bytes (``send_queue_bytes``)
  and all of them together (``send_queue_total_bytes``); an agent that reads
  too slowly is disconnected (it pulls what it missed when it reconnects)
  rather than stalling everyone else or filling the hub's memory;
* what agents send is held up to ``receive_total_bytes``; past it the hub
  stops reading until it has handled what it holds (docs/hub.md, Memory);
* remote searches run on their own small pool, behind pushes and pulls;
* keepalive pings every ``ping_interval_s``, closed if unanswered.

The hub stores ops in its log in arrival order; an op's position is its
number, and cursors count in those numbers. Storing is idempotent by CID: a
replayed push is acknowledged again and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Sequence
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import parse_qs, urlsplit

from filelock import FileLock, Timeout
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from chrysalis_memory.config import HubConfig
from chrysalis_memory.errors import (
    AuthenticationError,
    ChrysalisError,
    ConfigError,
    DataDirLockedError,
    HubBusyError,
    InvalidOpError,
    StoreError,
)
from chrysalis_memory.gossip.wire import check_addr
from chrysalis_memory.hub.limits import (
    ReceiveBudget,
    SearchPool,
    SearchTicket,
    SendQueue,
    SendQueues,
)
from chrysalis_memory.hub.metrics import HubMetrics
from chrysalis_memory.hub.registry import Registry
from chrysalis_memory.hub.tokens import TokenStore
from chrysalis_memory.model.document import SyncStatus
from chrysalis_memory.model.ops import Op
from chrysalis_memory.recall.service import RecallService
from chrysalis_memory.store import ListQuery, OpStore
from chrysalis_memory.sync import (
    ClientError,
    HelloReceived,
    PullRequested,
    PushReceived,
    SearchRequested,
    ServerEvent,
    ServerProtocol,
    SyncProtocolError,
)
from chrysalis_memory.sync.messages import ErrorCode
from chrysalis_memory.verifier import SignatureVerifier

if TYPE_CHECKING:
    from chrysalis_memory.recall.embedders import Embedder

log = logging.getLogger(__name__)

HUB_ID_KEY: Final = "hub_id"
REGISTRY_KEY: Final = "hub_registry"
WATERMARK_FILE: Final = "hub.state"
_FRAME_OVERHEAD: Final = 256  # bytes of an ops page around its ops
DECODED_WEIGHT: Final = 3
"""A message being handled counts this many times its size against the receive budget:
its text, and the ops decoded from it (their encoding and their fields)."""
_SAVE_EVERY_S: Final = 1.0
PEERS_SAMPLE: Final = 32
"""Gossip peers ``GET /peers`` returns at most."""
PEER_TTL_S: Final = 180.0
"""An agent not connected for sync stays listed this long after it last announced
its gossip address (agents re-announce every minute)."""


class TokenBucket:
    """``rate`` units per second on average, at most ``burst`` at once."""

    def __init__(
        self, rate: float, burst: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate, self.burst = rate, burst
        self._clock = clock
        self._tokens = float(burst)
        self._at = clock()

    def take(self, units: int) -> float:
        """Take ``units`` and return 0, or take nothing and return the seconds to wait.

        More than ``burst`` at once is allowed when the bucket is full (and empties
        it), so that no request is refused forever.
        """
        units = min(units, self.burst)
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if units <= self._tokens:
            self._tokens -= units
            return 0.0
        return (units - self._tokens) / self.rate


class Hub:
    """The hub. ``async with Hub(HubConfig(...)) as hub:`` serves until closed.

    Ports 0 pick free ports (see :attr:`port` and :attr:`http_port`).
    ``embedder`` replaces the configured one for the collective index;
    ``rate_clock`` (monotonic seconds) drives the per-agent rate limits.
    """

    def __init__(
        self,
        config: HubConfig | None = None,
        *,
        embedder: Embedder | None = None,
        rate_clock: Callable[[], float] = time.monotonic,
    ):
        self.config = config or HubConfig.from_env()
        self._rate_clock = rate_clock
        self.tokens = TokenStore(self.config.tokens_path)
        self.registry = Registry()
        self.metrics = HubMetrics(self.registry, lambda: self.head, self.usage)
        self.hub_id = ""
        self.head = 0
        """The number of the last op in the hub's log."""
        self._embedder = embedder
        self._store: OpStore | None = None
        self._recall: RecallService | None = None
        self._verifier = SignatureVerifier()
        self._lock_file: FileLock | None = None
        self._servers: list[Server] = []
        self._sessions: set[_Session] = set()
        # Handshakes accepted, by connection: the agent, and when its token was made.
        self._authenticated: dict[uuid.UUID, tuple[str, int]] = {}
        self._connections = 0
        self._per_agent: dict[str, int] = {}
        self._buckets: dict[str, TokenBucket] = {}
        self._log_bytes: dict[str, int] = {}
        """Bytes of ops each writer has in the log, for ``max_log_bytes_per_agent``."""
        self._commit = asyncio.Lock()  # log numbering and broadcast order
        cfg = self.config
        self.searches = SearchPool(
            workers=cfg.search_workers,
            queued=cfg.max_queued_searches,
            per_agent=cfg.max_searches_per_agent,
        )
        """Remote searches running and waiting (see :class:`SearchPool`)."""
        self.sending = SendQueues(
            per_queue=cfg.send_queue_bytes,
            frames=cfg.send_queue_frames,
            total=cfg.send_queue_total_bytes,
        )
        """Every connection's queue of frames to send, counted in bytes."""
        self.receiving = ReceiveBudget(
            total=cfg.receive_total_bytes,
            # A whole frame, at most twice max_message_bytes (see max_size below).
            per_connection=2 * cfg.max_message_bytes + (64 << 10),
        )
        """What the connections sent that the hub holds, counted in bytes."""
        self._pages = asyncio.Semaphore(cfg.page_workers)  # pages being read at once
        self._saver: asyncio.Task[None] | None = None
        self._faults: dict[str, str] = {}
        """What has failed and not worked again since, by part (for /health)."""
        self._started = 0.0
        self._gossip: dict[str, tuple[str, float]] = {}  # agent → (gossip URL, announced at)

    # --- lifecycle -----------------------------------------------------------------

    @property
    def store(self) -> OpStore:
        if self._store is None:
            raise ChrysalisError("the hub is not running")
        return self._store

    @property
    def port(self) -> int:
        """The websocket port agents connect to."""
        return int(self._servers[0].sockets[0].getsockname()[1])

    @property
    def http_port(self) -> int:
        return int(self._servers[1].sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        return f"ws://{self.config.host}:{self.port}"

    async def start(self) -> Hub:
        cfg = self.config
        lock = FileLock(cfg.data_dir / "hub.lock", timeout=0)
        try:
            cfg.data_dir.mkdir(parents=True, exist_ok=True)
            lock.acquire()
        except Timeout:
            raise DataDirLockedError(
                f"{cfg.data_dir} is in use by another hub: one hub owns a data directory"
            ) from None
        except OSError as error:
            raise _data_dir_error(cfg.data_dir, error) from error
        self._lock_file = lock
        try:
            await self._open(cfg)
        except BaseException:
            await self.close()
            raise
        self._started = time.monotonic()
        log.info(
            "hub %s serving %s (http %d), %d ops", self.hub_id, self.url, self.http_port, self.head
        )
        return self

    async def _open(self, cfg: HubConfig) -> None:
        store = self._store = OpStore(cfg.db_path)
        await store.open()
        self.head = await store.last_seqno()
        self._log_bytes = await store.bytes_by_writer()
        self.hub_id = self._identity(await store.meta(HUB_ID_KEY)) or f"hub-{uuid.uuid4().hex[:12]}"
        await store.set_meta({HUB_ID_KEY: self.hub_id})
        self._save_watermark()
        self.registry = Registry.load(await store.meta(REGISTRY_KEY))
        self.metrics = HubMetrics(self.registry, lambda: self.head, self.usage)
        self._recall = RecallService(
            store,
            embedder=self._embedder,
            embedder_kind=cfg.embedder,
            embedding_model=cfg.embedding_model,
            ollama_host=cfg.ollama_host,
            vector_dir=cfg.data_dir / "vectors",
        )
        common: dict[str, Any] = {
            "compression": None,  # CPU is scarcer than loopback bandwidth
            "ping_interval": cfg.ping_interval_s,
            "ping_timeout": cfg.ping_timeout_s,
        }
        try:
            self._servers.append(
                await serve(
                    self._serve_agent,
                    cfg.host,
                    cfg.websocket_port,
                    process_request=self._authenticate,
                    create_connection=type("AgentConnection", (_AgentConnection,), {"hub": self}),
                    max_size=2 * cfg.max_message_bytes,
                    max_queue=None,  # the hub's own flow control: receiving, in bytes
                    server_header="chrysalis-hub",
                    **common,
                )
            )
        except OSError as error:
            raise _listen_error(error, cfg.host, cfg.websocket_port, "agents") from error
        try:
            self._servers.append(
                await serve(
                    self._never_upgrade,
                    cfg.host,
                    cfg.http_port,
                    process_request=self._http,
                    server_header="chrysalis-hub",
                    **common,
                )
            )
        except OSError as error:
            raise _listen_error(error, cfg.host, cfg.http_port, "/health and /metrics") from error
        self._saver = asyncio.create_task(self._save_registry_often())

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        if self._saver is not None:
            self._saver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._saver
            self._saver = None
        if self._recall is not None:
            await self._recall.close()
            self._recall = None
        if self._store is not None:
            # Bookkeeping: what cannot be saved now is logged, and stopping goes on.
            if self.hub_id:
                try:
                    self._save_watermark()
                except OSError as error:
                    log.warning("could not save %s while stopping: %s", WATERMARK_FILE, error)
            try:
                await self._store.set_meta({REGISTRY_KEY: self.registry.dump()})
            except ChrysalisError as error:
                log.warning("could not save the agent registry while stopping: %s", error)
            await self._store.close()
            self._store = None
        self._verifier.close()
        if self._lock_file is not None:
            self._lock_file.release()
            self._lock_file = None

    async def serve_forever(self) -> None:
        await asyncio.gather(*(server.serve_forever() for server in self._servers))

    async def __aenter__(self) -> Hub:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def _identity(self, stored: str | None) -> str | None:
        """The hub's id, unless its log went back since it last ran.

        ``hub.state`` beside the database records how far the log had reached. A
        log that is shorter now was restored from an older copy (or lost its last
        writes in a power cut): agents holding more than it would never resend
        it. A new id makes every agent pull from the start and push its own ops
        again, so the hub gets back whatever it lost.
        """
        try:
            saved = json.loads((self.config.data_dir / WATERMARK_FILE).read_text())
        except (OSError, ValueError):
            return stored
        if stored is not None and saved.get("hub_id") == stored and self.head < saved["head"]:
            log.warning(
                "the hub's log ends at op %d but had reached op %d: it was restored from an "
                "older copy; taking a new identity so that every agent syncs again in full",
                self.head,
                saved["head"],
            )
            return None
        return stored

    def _end_revoked_sessions(self) -> None:
        """Tokens are checked in the handshake; a token revoked or replaced since
        also ends the sessions it opened (within a second)."""
        for session in list(self._sessions):
            record = self.tokens.record(session.agent)
            if record is None or record.revoked or record.created_ms != session.token_created_ms:
                self.metrics.refused.labels("revoked").inc()
                session.end(
                    "unauthorized",
                    f"the token of agent {session.agent!r} was revoked or replaced",
                )

    def _save_watermark(self) -> None:
        path = self.config.data_dir / WATERMARK_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"hub_id": self.hub_id, "head": self.head}))
        temporary.replace(path)

    async def _save_registry_often(self) -> None:
        while True:
            await asyncio.sleep(_SAVE_EVERY_S)
            try:
                await self._housekeeping()
            except Exception:  # a bug: logged, and the next round runs all the same
                log.exception("hub housekeeping failed")

    async def _housekeeping(self) -> None:
        """Once a second: end the sessions of revoked tokens, save ``hub.state`` and
        the registry. A step that fails (a full disk, a damaged token file) is logged
        when it starts and stops failing, shown by ``/health``, and tried again the
        next second; it never stops the other steps, nor the next round."""
        try:
            self._end_revoked_sessions()
        except ChrysalisError as error:
            self._fault("tokens", f"cannot check for revoked tokens: {error}")
        else:
            self._recovered("tokens")
        try:
            self._save_watermark()
        except OSError as error:
            path = self.config.data_dir / WATERMARK_FILE
            self._fault("state", f"cannot save {path}: {error.strerror or error}")
        else:
            self._recovered("state")
        if self.registry.dirty:
            try:
                await self.store.set_meta({REGISTRY_KEY: self.registry.dump()})
            except ChrysalisError as error:  # bookkeeping only: retried next time
                self.registry.dirty = True
                self._fault("registry", f"cannot save the agent registry: {error}")
            else:
                self._recovered("registry")

    def _fault(self, part: str, problem: str) -> None:
        """``part`` of the hub failed: logged once (until it changes), shown by /health."""
        if self._faults.get(part) != problem:
            log.error("%s", problem)
        self._faults[part] = problem

    def _recovered(self, part: str) -> None:
        if self._faults.pop(part, None) is not None:
            log.warning("hub %s: working again", part)

    # --- the handshake and HTTP ------------------------------------------------------

    def _agent_of(self, connection: ServerConnection, request: Request) -> str | Response:
        """The agent the request's token names, or the 401 answer saying what is wrong."""
        try:
            return self.tokens.authenticate(request.headers.get("Authorization"))
        except AuthenticationError as error:
            self.metrics.refused.labels("unauthorized").inc()
            response = connection.respond(HTTPStatus.UNAUTHORIZED, f"{error}\n")
            response.headers["WWW-Authenticate"] = 'Bearer realm="chrysalis-hub"'
            return response

    def _authenticate(self, connection: ServerConnection, request: Request) -> Response | None:
        """Runs before the websocket exists: no message is read from a stranger."""
        if _is_peers(request.path):
            return self._peers(connection, request)
        if _is_members(request.path):
            return self._members(connection, request)
        agent = self._agent_of(connection, request)
        if isinstance(agent, Response):
            return agent
        if self._connections >= self.config.max_connections:
            self.metrics.refused.labels("hub_full").inc()
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"the hub is at its limit of {self.config.max_connections} connections\n",
            )
        if self._per_agent.get(agent, 0) >= self.config.max_connections_per_agent:
            self.metrics.refused.labels("agent_limit").inc()
            return connection.respond(
                HTTPStatus.SERVICE_UNAVAILABLE,
                f"agent {agent!r} already holds {self.config.max_connections_per_agent} "
                "connections: close one first\n",
            )
        record = self.tokens.record(agent)
        self._authenticated[connection.id] = (agent, record.created_ms if record else 0)
        return None

    def _http(self, connection: ServerConnection, request: Request) -> Response:
        path = request.path.split("?", 1)[0]
        if path == "/health":
            health = self.health()
            body = json.dumps(health).encode()
            # 503 while a part of the hub is failing; damaged op rows set aside alone
            # leave it serving every intact op, so it stays in a load balancer's pool.
            failing = bool(self._faults)
            status = HTTPStatus.SERVICE_UNAVAILABLE if failing else HTTPStatus.OK
            return Response(
                status.value, status.phrase, Headers({"Content-Type": "application/json"}), body
            )
        if path == "/metrics":
            return Response(
                200,
                "OK",
                Headers({"Content-Type": "text/plain; version=0.0.4; charset=utf-8"}),
                self.metrics.render(),
            )
        if _is_peers(request.path):
            return self._peers(connection, request)
        if _is_members(request.path):
            return self._members(connection, request)
        if request.headers.get("Upgrade", "").lower() == "websocket":
            return connection.respond(
                HTTPStatus.NOT_FOUND,
                f"this is the hub's HTTP port (/health, /metrics, /peers); agents connect to "
                f"its websocket port, {self.port}: hub_url ws://HOST:{self.port}\n",
            )
        return connection.respond(
            HTTPStatus.NOT_FOUND, "try /health, /metrics, /peers or /members\n"
        )

    def _peers(self, connection: ServerConnection, request: Request) -> Response:
        """``GET /peers[?announce=<ws URL>]`` (on either port), with an agent's token:
        records the caller's gossip address when it announces one, and returns
        ``{agent_id: gossip URL}`` for a random sample of at most
        :data:`PEERS_SAMPLE` other agents that announced one and are connected
        (or announced within :data:`PEER_TTL_S`).

        The announcement travels in the query string because websockets' HTTP
        parser takes no request body (a PUT with one is refused before it gets here).
        """
        agent = self._agent_of(connection, request)
        if isinstance(agent, Response):
            return agent
        try:
            query = parse_qs(urlsplit(request.path).query, strict_parsing=False, max_num_fields=4)
            announced = query.get("announce", [])
            if len(announced) > 1:
                raise ValueError("announce one address")
            if announced:
                self._gossip[agent] = (check_addr(announced[0]), time.monotonic())
        except (ValueError, ChrysalisError) as error:
            return connection.respond(HTTPStatus.BAD_REQUEST, f"bad /peers request: {error}\n")
        now = time.monotonic()
        for other, (_, at) in list(self._gossip.items()):
            if now - at > PEER_TTL_S and not self._per_agent.get(other):
                del self._gossip[other]
        others = sorted(a for a in self._gossip if a != agent)
        sample = random.sample(others, min(PEERS_SAMPLE, len(others)))
        body = json.dumps({a: self._gossip[a][0] for a in sample}).encode()
        return Response(200, "OK", Headers({"Content-Type": "application/json"}), body)

    def _members(self, connection: ServerConnection, request: Request) -> Response:
        """``GET /members`` (on either port), with an agent's token: the agents gossip
        admits, ``{"members": {id: key}, "revoked": {id: key}}``: every agent with a
        token and a bound signing key, and apart those whose token was revoked (their
        earlier ops stay verifiable; they may no longer gossip)."""
        agent = self._agent_of(connection, request)
        if isinstance(agent, Response):
            return agent
        members: dict[str, str] = {}
        revoked: dict[str, str] = {}
        for record in self.tokens.agents():
            if record.public_key is not None:
                (revoked if record.revoked else members)[record.agent_id] = record.public_key
        body = json.dumps({"members": members, "revoked": revoked}).encode()
        return Response(200, "OK", Headers({"Content-Type": "application/json"}), body)

    async def _never_upgrade(self, connection: ServerConnection) -> None:
        await connection.close()

    def health(self) -> dict[str, Any]:
        """``status`` is ``degraded`` while a part of the hub is failing (its store, its
        state file, its token file) or its store holds damaged op rows (which it never
        serves: it serves the rest), and ``problems`` says what; else ``ok``. ``damage``
        counts the damaged op rows and lists the first ones."""
        problems = [self._faults[part] for part in sorted(self._faults)]
        damage = None if self._store is None else self._store.damage
        if damage:
            problems.append(
                f"{len(damage)} op rows of {damage.path} are damaged and not served: "
                f"`{damage.summary()['verify']}` lists them"
            )
        return {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "damage": None if damage is None else damage.summary(),
            "hub_id": self.hub_id,
            "ops": self.head,
            "connections": len(self._sessions),
            "agents": len(self.registry),
            "uptime_s": round(time.monotonic() - self._started, 3),
        }

    # --- sessions ----------------------------------------------------------------------

    async def _serve_agent(self, connection: ServerConnection) -> None:
        handshake = self._authenticated.pop(connection.id, None)
        if handshake is None:  # the connection was lost as it opened
            return
        agent, token_created_ms = handshake
        session = _Session(self, connection, agent, token_created_ms)
        self._connections += 1
        self._per_agent[agent] = self._per_agent.get(agent, 0) + 1
        self.metrics.connections.inc()
        try:
            await session.run()
        finally:
            self._connections -= 1
            self._per_agent[agent] -= 1
            if session.greeted:
                self.registry.disconnected(agent)
            self.metrics.connections.dec()

    def usage(self) -> dict[str, int]:
        """What the hub's agents hold of it now, for tests and operators: the remote
        searches running and waiting for a worker, the bytes queued to send (distinct
        frames, and the copies being written) and the bytes received and held (see
        docs/hub.md, "Memory")."""
        return {
            "searches_running": self.searches.running,
            "searches_waiting": self.searches.waiting,
            "send_queued_bytes": self.sending.bytes,
            "receive_buffered_bytes": self.receiving.bytes,
            "receive_paused_connections": self.receiving.paused,
        }

    def keys(self) -> dict[str, str]:
        """Every registered signing key, for agents to verify relayed ops."""
        return self.tokens.public_keys()

    def bucket(self, agent: str) -> TokenBucket:
        bucket = self._buckets.get(agent)
        if bucket is None:
            cfg = self.config
            bucket = self._buckets[agent] = TokenBucket(
                cfg.rate_limit_ops_per_s, cfg.rate_limit_burst_ops, clock=self._rate_clock
            )
        return bucket

    # --- storing and relaying --------------------------------------------------------

    async def accept(
        self, agent: str, key: str, ops: Sequence[Op], origin: _Session | None
    ) -> tuple[list[str], dict[str, str]]:
        """Store what ``agent`` (signing with ``key``) may write; returns the accepted
        CIDs (new or already held) and the rejected ones with a reason."""
        started = time.perf_counter()
        rejected: dict[str, str] = {}
        candidates: list[Op] = []
        horizon_ms = time.time_ns() // 1_000_000 + int(1000 * self.config.max_clock_skew_s)
        for op in ops:
            if op.hlc.wall_ms > horizon_ms:
                rejected[op.cid] = (
                    f"clock_skew: stamped {(op.hlc.wall_ms - horizon_ms) / 1000:.0f} s beyond "
                    f"the {self.config.max_clock_skew_s:g} s the hub allows: fix the agent's clock"
                )
            elif op.writer != agent:
                rejected[op.cid] = f"forbidden_writer: {agent!r} may not write as {op.writer!r}"
            elif op.key != key:
                rejected[op.cid] = "forbidden_writer: not signed with the key bound to the agent"
            else:
                candidates.append(op)
        if candidates:
            for error in await self._verifier.invalid(candidates):
                rejected[candidates[error.index or 0].cid] = f"bad_signature: {error}"
            candidates = [op for op in candidates if op.cid not in rejected]
        if candidates:
            rejected.update(await self._store_and_relay(candidates, origin))
        self.metrics.ops_in.inc(len(ops))
        for reason in rejected.values():
            self.metrics.ops_rejected.labels(reason.split(":", 1)[0]).inc()
        self.metrics.ingest_seconds.observe(time.perf_counter() - started)
        accepted = [op.cid for op in ops if op.cid not in rejected]
        return accepted, rejected

    async def _within_quota(self, ops: list[Op], rejected: dict[str, str]) -> list[Op]:
        """The ops that fit in their writer's ``max_log_bytes_per_agent``; the others
        go to ``rejected`` with a reason. Ops the hub holds already cost nothing."""
        quota = self.config.max_log_bytes_per_agent
        used = dict(self._log_bytes)
        if not quota or all(
            used.get(w, 0) + sum(len(o.encoded) for o in ops if o.writer == w) <= quota
            for w in {op.writer for op in ops}
        ):
            return ops
        held = await self.store.known_cids([op.cid for op in ops])
        kept: list[Op] = []
        for op in ops:
            size = len(op.encoded)
            if op.cid not in held:
                if used.get(op.writer, 0) + size > quota:
                    rejected[op.cid] = (
                        f"quota_exceeded: agent {op.writer!r} has {used.get(op.writer, 0)} "
                        f"bytes of ops in the hub's log, and this op of {size} bytes would "
                        f"pass its quota of {quota} (max_log_bytes_per_agent)"
                    )
                    continue
                used[op.writer] = used.get(op.writer, 0) + size
            kept.append(op)
        return kept

    async def _store_and_relay(self, ops: list[Op], origin: _Session | None) -> dict[str, str]:
        store = self.store
        rejected: dict[str, str] = {}
        async with self._commit:
            ops = await self._within_quota(ops, rejected)
            if not ops:
                return rejected
            try:
                try:
                    new = await store.ingest(ops, SyncStatus.SYNCED)
                except InvalidOpError:
                    # One bad op (an equivocation, say) must not sink the others: one by one.
                    new = []
                    for op in ops:
                        try:
                            new += await store.ingest([op], SyncStatus.SYNCED)
                        except InvalidOpError as error:
                            rejected[op.cid] = f"{_reason(error)}: {error}"
            except StoreError as error:  # the disk is full, the database damaged, ...
                self._fault("storing", f"cannot store ops: {error}")
                raise
            self._recovered("storing")
            if not new:
                return rejected
            after, self.head = self.head, self.head + len(new)
            self.registry.stored(new)
            for op in new:
                self._log_bytes[op.writer] = self._log_bytes.get(op.writer, 0) + len(op.encoded)
            self.metrics.ops_stored.inc(len(new))
            writers = {op.writer for op in new}
            shared: dict[int | None, bytes] = {}  # one encoding for all who wrote none of it
            for session in list(self._sessions):
                session.relay(new, after, self.head, writers, shared)
        if self._recall is not None:
            self._recall.notify()
        return rejected

    async def page(self, after: int, limit: int) -> tuple[list[Op], int, bool]:
        """The ops numbered after ``after``: at most ``limit``, and no more than fit
        in one frame. Returns them, the page's last number and whether more follow."""
        async with self._pages:  # at most page_workers pages in memory at once
            return await self._page(after, limit)

    async def _page(self, after: int, limit: int) -> tuple[list[Op], int, bool]:
        budget = self.config.max_message_bytes - _FRAME_OVERHEAD
        head = self.head
        ops: list[Op] = []
        cursor = after
        if after < head:
            try:
                async for seqno, op, _ in self.store.iter_log(after=after, batch=limit):
                    if op is None:  # damaged: never served (the store counts it: store.damage)
                        if seqno > head:
                            break
                        cursor = seqno
                        continue
                    size = len(op.encoded) + 1
                    if ops and size > budget:
                        break
                    if seqno > head:  # stored, but its relay is still on its way
                        break
                    ops.append(op)
                    budget -= size
                    cursor = seqno
                    if len(ops) >= limit:
                        break
            except (InvalidOpError, ValueError) as error:  # a row that no longer decodes
                problem = f"the hub's log is damaged after op {cursor}: {error}"
                self._fault("log", f"{problem} (run `chrysalis verify` on its database)")
                raise StoreError(problem) from error
        return ops, cursor, cursor < head

    async def search(self, request: SearchRequested) -> list[tuple[str, float]]:
        """The best hits for a remote search, at most ``max_search_k`` of them.

        The caller admits it to :attr:`searches` first: this is the work itself."""
        if self._recall is None:
            return []
        filters = request.filters
        # The agent's embedding of the query is used when it comes from our model;
        # otherwise the text is embedded here.
        vector = request.vector
        if vector is not None and request.model != await self._recall.embedding_model():
            vector = None
        if vector is None and not request.text.strip():
            return []  # nothing to search with
        found = await self._recall.search(
            request.text,
            min(request.k, self.config.max_search_k),
            "hybrid" if request.text.strip() else "vector",
            ListQuery(
                memory_type=filters.memory_type if filters else None,
                tags=tuple(filters.tags) if filters else (),
                source=filters.source if filters else None,
            ),
            vector,
        )
        self.metrics.searches.inc()
        return [(c.state.id, float(c.score)) for c in found]


def _is_peers(path: str) -> bool:
    return urlsplit(path).path.rstrip("/").endswith("/peers")


def _is_members(path: str) -> bool:
    return urlsplit(path).path.rstrip("/").endswith("/members")


def _size(frame: str | bytes) -> int:
    return len(frame) if isinstance(frame, bytes) or frame.isascii() else len(frame.encode())


def _reason(error: InvalidOpError) -> str:
    name = type(error).__name__.removesuffix("Error")
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


class _AgentConnection(ServerConnection):
    """A connection to the agents' port (``hub`` is set per hub). Whatever becomes of
    its handshake (upgraded, refused, a plain HTTP request with a valid token that
    websockets answers 426), the hub forgets it when the connection is lost."""

    hub: Hub
    _held = 0

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        self.hub.receiving.update(self.transport, self.buffered())

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.hub._authenticated.pop(self.id, None)
        self.hub.receiving.remove(self.transport)

    def hold(self, size: int) -> None:
        """The session is handling a message of ``size`` bytes (0: done with it)."""
        self._held = DECODED_WEIGHT * size
        self.hub.receiving.update(self.transport, self.buffered())

    def buffered(self) -> int:
        """Bytes of what the peer sent that this connection holds: read but not parsed
        into a whole frame, whole frames not taken by the session, and the message the
        session is handling. (The first two are websockets' own buffers.)"""
        frames = self.recv_messages.frames.queue
        return len(self.protocol.reader.buffer) + sum(len(f.data) for f in frames) + self._held


def _retrieve(task: asyncio.Task[None]) -> None:
    """Done callback of the session's own tasks: a failure is logged, never left as
    "Task exception was never retrieved"."""
    if not task.cancelled() and (error := task.exception()) is not None:
        log.error("hub task %s failed", task.get_name(), exc_info=error)


class _Session:
    """One agent's connection: reads frames in order, writes from its own queue."""

    def __init__(
        self, hub: Hub, connection: ServerConnection, agent: str, token_created_ms: int = 0
    ) -> None:
        cfg = hub.config
        self.hub = hub
        self.connection = connection
        self.agent = agent
        self.token_created_ms = token_created_ms
        """Which of the agent's tokens opened this session (a newer one replaces it)."""
        self.protocol = ServerProtocol(
            hub.hub_id,
            max_message_bytes=cfg.max_message_bytes,
            max_batch=cfg.sync_batch_size,
            authenticated_agent=agent,
        )
        self.outbox: SendQueue = hub.sending.open(self._drop)
        self.key = ""
        self.covered = 0
        """The agent holds every op of the log up to here (as far as the hub knows)."""
        self.greeted = False
        self._last: bytes | None = None  # a fatal error to send before closing
        self._close_code = 1008  # protocol error; 1011 after a failure of the hub
        self._ending: asyncio.Task[None] | None = None
        self._searches: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            async for frame in self.connection:
                size = _size(frame)
                if isinstance(self.connection, _AgentConnection):
                    self.connection.hold(size)
                self.hub.metrics.bytes_in.inc(size)
                try:
                    events = self.protocol.receive(frame)
                except SyncProtocolError as error:
                    self.hub.metrics.messages_rejected.labels(error.code).inc()
                    log.info("%s: %s (closing)", self.agent, error)
                    self._last = self.protocol.error_for(error)
                    break
                for event in events:
                    try:
                        await self._handle(event)
                    except Exception as error:
                        self._failed(event, error)
                if isinstance(self.connection, _AgentConnection):
                    self.connection.hold(0)
                if self._last is not None or self.protocol.closed:
                    break
        except ConnectionClosed:
            pass
        finally:
            self.hub._sessions.discard(self)
            for task in self._searches:
                task.cancel()
            await self._close(writer)
            self.outbox.close()

    async def _close(self, writer: asyncio.Task[None]) -> None:
        """Send what is queued (and the error that ends the session), then close."""
        if self._last is not None and not writer.done():
            if self.outbox.put(self._last):
                self.outbox.put_end()
            with contextlib.suppress(asyncio.TimeoutError, ConnectionClosed):
                await asyncio.wait_for(asyncio.shield(writer), timeout=5.0)
            reason = "protocol error" if self._close_code == 1008 else "internal error"
            await self.connection.close(self._close_code, reason)
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed):
            await writer

    async def _write(self) -> None:
        while True:
            frame = await self.outbox.get()
            try:
                if frame is None:
                    return
                await self.connection.send(frame, text=True)
            finally:
                self.outbox.sent(frame)
            self.hub.metrics.bytes_out.inc(len(frame))

    def _queue(self, frame: bytes) -> bool:
        """Queue a frame to send. One that does not fit the send queues drops this
        connection (or a slower one, see :class:`SendQueues`): False if it was not
        queued. Nothing waits for room, so nothing the hub does stalls on a reader."""
        return self.outbox.put(frame)

    async def _handle(self, event: ServerEvent) -> None:
        if isinstance(event, PushReceived):
            await self._push(event)
        elif isinstance(event, PullRequested):
            ops, cursor, more = await self.hub.page(event.after, event.limit)
            self._queue(self.protocol.ops(ops, cursor, more=more))
            self.hub.metrics.ops_out.labels("page").inc(len(ops))
            if event.after <= self.covered:
                self._saw(cursor)
        elif isinstance(event, SearchRequested):
            try:
                ticket = self.hub.searches.admit(self.agent)
            except HubBusyError as busy:  # refused before any work is done for it
                self.hub.metrics.searches_refused.labels(busy.reason).inc()
                self._queue(
                    self.protocol.error(
                        "rate_limited", str(busy), fatal=False, request=event.request
                    )
                )
                return
            task = asyncio.create_task(self._search(event, ticket), name=f"search for {self.agent}")
            self._searches.add(task)
            task.add_done_callback(self._searches.discard)
            task.add_done_callback(lambda _: ticket.cancel())  # if it never got to run
            task.add_done_callback(_retrieve)
        elif isinstance(event, HelloReceived):
            await self._hello(event)
        elif isinstance(event, ClientError):
            log.info("%s reports %s: %s", self.agent, event.code, event.message)

    def _failed(self, event: ServerEvent, error: Exception) -> None:
        """Handling ``event`` failed inside the hub (its store, a damaged row, a bug):
        answer the protocol's ``internal`` error instead of dropping the connection.

        A push gets a non-fatal error naming its batch, which the agent pushes again
        later; a pull or a hello cannot be answered otherwise, so their error is
        fatal and the session closes (1011): the agent reconnects with backoff.
        """
        what = type(event).__name__.removesuffix("Received").removesuffix("Requested").lower()
        if isinstance(error, ChrysalisError):
            log.warning("%s: the hub failed to handle a %s: %s", self.agent, what, error)
            message = f"the hub failed to handle this {what}: {error}"
        else:
            log.exception("%s: the hub failed to handle a %s", self.agent, what)
            message = f"the hub failed to handle this {what} ({type(error).__name__}, logged)"
        self.hub.metrics.messages_rejected.labels("internal").inc()
        if self.protocol.closed:
            return
        if isinstance(event, PushReceived):
            frame = self.protocol.error(
                "internal", f"{message}; push it again later", fatal=False, batch=event.batch
            )
            self._queue(frame)
        else:
            self._last = self.protocol.error("internal", message, fatal=True)
            self._close_code = 1011

    async def _hello(self, event: HelloReceived) -> None:
        hub = self.hub
        try:
            hub.tokens.bind_key(self.agent, event.public_key)
            await hub.store.pin_writer_key(self.agent, event.public_key)
        except (AuthenticationError, InvalidOpError) as error:
            hub.metrics.messages_rejected.labels("unauthorized").inc()
            self._last = self.protocol.error("unauthorized", str(error), fatal=True)
            return
        self.key = event.public_key
        self.covered = event.cursor
        # Registered before the welcome is queued: no relay can slip between the
        # welcome's cursor and the first update.
        hub._sessions.add(self)
        hub.registry.connected(self.agent, event.cursor)
        self.greeted = True
        self._queue(self.protocol.welcome(hub.head, hub.keys()))

    async def _push(self, event: PushReceived) -> None:
        wait = self.hub.bucket(self.agent).take(len(event.ops))
        if wait:
            self.hub.metrics.messages_rejected.labels("rate_limited").inc()
            message = f"over {self.hub.config.rate_limit_ops_per_s:g} ops/s: retry in {wait:.2f} s"
            self._queue(
                self.protocol.error("rate_limited", message, fatal=False, batch=event.batch)
            )
            return
        accepted, rejected = await self.hub.accept(self.agent, self.key, event.ops, self)
        self._queue(self.protocol.ack(event.batch, accepted, rejected))

    async def _search(self, event: SearchRequested, ticket: SearchTicket) -> None:
        try:
            async with ticket:  # waits for one of the hub's search workers
                hits = await self.hub.search(event)
        except ChrysalisError as error:
            log.warning("search for %s failed: %s", self.agent, error)
            if self.protocol.closed:
                return
            frame = self.protocol.error("internal", str(error), fatal=False, request=event.request)
        else:
            if self.protocol.closed:  # the session ended meanwhile: nobody to answer
                return
            frame = self.protocol.search_result(event.request, hits)
            limit = self.hub.config.max_search_answer_bytes
            while len(frame) > limit:  # the lowest-ranked hits are left out
                keep = min(len(hits) - 1, len(hits) * limit // len(frame))
                hits = hits[: max(keep, 0)]
                frame = self.protocol.search_result(event.request, hits)
        self._queue(frame)

    def relay(
        self,
        new: list[Op],
        after: int,
        cursor: int,
        writers: set[str],
        shared: dict[int | None, bytes],
    ) -> None:
        """Queue an update with the ops just stored that this agent did not write.

        ``shared`` caches the frame by protocol version for the agents that wrote
        none of them: with N agents connected, one push is encoded once, not N times.
        """
        if not self.greeted or self.protocol.closed:
            return
        if self.agent in writers:
            ops = [op for op in new if op.writer != self.agent]
            frame = self.protocol.update(ops, after, cursor)
        else:
            ops = new
            frame = shared.get(self.protocol.version) or shared.setdefault(
                self.protocol.version, self.protocol.update(ops, after, cursor)
            )
        if not self.outbox.put(frame):
            return
        self.hub.metrics.ops_out.labels("update").inc(len(ops))
        if after <= self.covered:
            self._saw(cursor)

    def end(self, code: ErrorCode, message: str) -> None:
        """End the session from the hub's side: a fatal error, then the close."""
        if self.protocol.closed:
            return
        self.hub._sessions.discard(self)
        frame = self.protocol.error(code, message, fatal=True)
        self.outbox.put(frame)
        self._ending = asyncio.create_task(self._close_when_sent(), name=f"end {self.agent}")
        self._ending.add_done_callback(_retrieve)

    async def _close_when_sent(self) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.outbox.join(), 5.0)
        await self.connection.close(1008, "unauthorized")

    def _saw(self, cursor: int) -> None:
        self.covered = max(self.covered, cursor)
        self.hub.registry.saw(self.agent, self.covered)

    def _drop(self, why: str) -> None:
        """Too slow to keep up: disconnect rather than hold everyone back."""
        log.warning("%s reads too slowly: disconnecting it (it will catch up): %s", self.agent, why)
        self.hub.metrics.dropped.inc()
        self.hub._sessions.discard(self)
        self.protocol.close()
        # Abort, not close: a close handshake would wait on a peer that is not reading.
        self.connection.transport.abort()


# --- what stops a hub from starting, said so that a user can act on it -------------


def _listen_error(error: OSError, host: str, port: int, purpose: str) -> ConfigError:
    """A port the hub cannot bind (in use, privileged, a host that is not this machine)."""
    if isinstance(error, socket.gaierror) or not error.errno:
        reason = error.strerror or str(error)
    else:
        reason = os.strerror(error.errno)
    if error.errno == errno.EADDRINUSE:
        advice = "Is another hub running? Stop it, or choose other ports"
    else:
        advice = "Check the host (an address of this machine) and choose other ports"
    return ConfigError(
        f"the hub cannot listen on {host}:{port} (for {purpose}): {reason}. {advice} with "
        "--port / --http-port, or websocket_port / http_port "
        "(CHRYSALIS_HUB_WEBSOCKET_PORT / CHRYSALIS_HUB_HTTP_PORT); port 0 picks a free one."
    )


def _data_dir_error(data_dir: Path, error: OSError) -> StoreError:
    """A data directory the hub cannot create or open (a file in the way, no permission)."""
    in_the_way = next(
        (p for p in (data_dir, *data_dir.parents) if p.exists() and not p.is_dir()), None
    )
    if in_the_way is not None:
        reason = f"{in_the_way} is a file, not a directory"
    else:
        reason = os.strerror(error.errno) if error.errno else str(error)
    return StoreError(
        f"the hub cannot use {data_dir} as its data directory: {reason}. Give it a directory "
        "this user can write, or a path where one can be created, with --data-dir "
        "(data_dir, CHRYSALIS_HUB_DATA_DIR)."
    )
