"""The agent's sync worker: keeps a replica in step with the hub, in the background.

With ``hub_url`` set, :class:`~chrysalis_memory.AgentMemory` runs one
:class:`SyncClient`. It connects (token in the handshake), says hello with its
cursor, then at once:

* pushes the agent's pending ops in batches (a few batches in flight) and
  marks them synced when acknowledged (spec §2.4: LOCAL → PENDING → SYNCED;
  an op the hub refuses goes to RETRY and waits for the next session);
* pulls the hub's log from its cursor until caught up, merging each page;
* merges live updates as they arrive, pulling to fill any gap;
* answers :meth:`SyncClient.sync_now` and remote searches.

An op received that this replica refuses (a bad signature, a writer pinned to
another key, bytes that do not decode) costs no other op: the page is stored op
by op and the refused op goes to the store's quarantine with its reason, in the
transaction that moves the cursor past it. The cursor only ever moves past ops
stored or quarantined. Quarantined ops are tried again at every session, once
the hub's keys are pinned, and leave the quarantine once stored.

The cursor is saved with the hub's id, so a restart resumes where it stopped,
and a different (or restored) hub is read again from the start. When the hub
cannot be reached, it retries with exponential backoff and full jitter; local
writes go on and queue. The backoff starts again from its base only after a
session that did something (stored ops, had ops acknowledged, moved the
cursor) or stayed up for ``Backoff.reset_after_s``: a hub that fails right
after its welcome is not reconnected to in a hot loop. Everything is
idempotent by CID: a replayed push or a duplicate update changes nothing. The
protocol logic is the sans-I/O :class:`~chrysalis_memory.sync.ClientProtocol`;
this module moves its bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Final, Literal

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from chrysalis_memory.config import HubConfig
from chrysalis_memory.errors import (
    ChrysalisError,
    HubRejectedError,
    HubUnreachableError,
    InvalidOpError,
    StoreError,
    SyncError,
)
from chrysalis_memory.model.document import SyncStatus
from chrysalis_memory.model.ops import MemoryKind, Op
from chrysalis_memory.store import OpStore
from chrysalis_memory.store.sqlite import Refusal
from chrysalis_memory.sync.messages import SearchHit, SyncProtocolError
from chrysalis_memory.sync.protocol import (
    Acked,
    Applicable,
    ClientEvent,
    ClientProtocol,
    OpsReceived,
    SearchResult,
    ServerError,
    UpdateReceived,
    Welcome,
)

log = logging.getLogger(__name__)

CURSOR_KEY: Final = "sync_cursor"
HUB_ID_KEY: Final = "sync_hub_id"
_WINDOW: Final = 4  # pushed batches awaiting their ack at once
_FRAME_OVERHEAD: Final = 256
_SAVE_CURSOR_EVERY_S: Final = 0.5
_RETRY_LATER: Final = frozenset({"rate_limited", "internal"})
DEFAULT_HUB_PORT: Final = HubConfig.model_fields["websocket_port"].default
# Handshake answers that say the URL is not a hub's websocket endpoint (401 aside,
# a refused token, which fails sync_now at once); 408 and 429 only say "later".
_NOT_A_HUB: Final = frozenset(range(400, 500)) - {401, 408, 429}

Merge = Callable[
    [Sequence[Op], Sequence[Refusal], Mapping[str, str]], Awaitable[tuple[int, Sequence[Refusal]]]
]
"""Stores ops received from the hub (verified, marked synced), op by op if one is
refused, quarantines the refused ones (those given, already refused, too) and sets
the metadata given (the cursor), all in one transaction; returns how many ops were
new and every op refused."""
Retry = Callable[[], Awaitable[tuple[int, Sequence[Refusal]]]]
"""Tries the quarantined ops again; returns how many were stored and those refused again."""


@dataclasses.dataclass(frozen=True)
class Backoff:
    """Delays between reconnection attempts: exponential, capped, with full jitter
    (each delay uniform in [0, cap]), so that agents cut off together do not all
    come back at the same instant."""

    base_s: float = 0.2
    cap_s: float = 30.0
    reset_after_s: float = 30.0
    """A session that stays up this long counts as working even if it did nothing,
    and the delays start again from ``base_s``."""

    def delay(self, failures: int, rand: Callable[[], float] = random.random) -> float:
        return rand() * min(self.cap_s, self.base_s * 2.0 ** min(failures, 30))


@dataclasses.dataclass(frozen=True)
class SyncReport:
    """What :meth:`SyncClient.sync_now` did."""

    pushed: int
    """Ops the hub acknowledged during the call."""
    pulled: int
    """Ops received that were new here."""
    cursor: int
    """Position in the hub's log this replica now holds everything up to (every op
    before it is stored, or quarantined)."""
    refused: int = 0
    """Ops received during the call that this replica refused (now quarantined)."""
    quarantined: int = 0
    """Ops in the quarantine now: refused, kept with their reason, tried again at
    every session (``chrysalis status`` shows them too)."""
    quarantine_reasons: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """The quarantine by reason code (``bad_signature``, ``forged_writer``, ...)."""


@dataclasses.dataclass(frozen=True)
class SyncState:
    """Where sync stands (``AgentMemory.sync_state()``)."""

    hub_url: str
    connection: Literal["connected", "connecting", "offline", "closed"]
    hub_id: str | None
    cursor: int
    pushed: int
    pulled: int
    last_error: str | None
    quarantined: int = 0
    """Ops received that this replica refused and keeps aside with the reason."""
    quarantine_reasons: Mapping[str, int] = dataclasses.field(default_factory=dict)
    """The quarantine by reason code."""


class SyncClient:
    """Syncs one replica with the hub at ``url`` until :meth:`close`."""

    def __init__(
        self,
        store: OpStore,
        merge: Merge,
        *,
        agent_id: str,
        public_key: str,
        url: str,
        token: str | None,
        batch_size: int = 100,
        max_message_bytes: int = 4 << 20,
        interval_s: float = 60.0,
        connect_timeout_s: float = 5.0,
        backoff: Backoff | None = None,
        retry: Retry | None = None,
        quarantine: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.store = store
        self.merge = merge
        self.retry = retry
        self.agent_id = agent_id
        self.public_key = public_key
        self.url = url
        self._token = token
        self.batch_size = batch_size
        self.max_message_bytes = max_message_bytes
        self.interval_s = interval_s
        self.connect_timeout_s = connect_timeout_s
        """How long :meth:`sync_now` goes on retrying when connection attempts fail."""
        self.backoff = backoff or Backoff()
        self.clock = clock
        """Measures how long sessions stay up (for the backoff)."""
        self.rand = rand
        """Draws the backoff's jitter."""
        self.failures = 0
        """Connection attempts in a row that did not lead to a working session."""
        self.pushed = 0
        self.pulled = 0
        self.refused = 0
        self.quarantine: dict[str, int] = dict(quarantine or {})
        """The store's quarantine by reason, as of the last merge that changed it."""
        self.hub_id: str | None = None
        self.cursor = 0
        self.last_error: SyncError | None = None
        self._connection: Literal["connected", "connecting", "offline", "closed"] = "offline"
        self._session: _Session | None = None
        self._ready = asyncio.Event()
        self._wake = asyncio.Event()  # something new to push
        self._kick = asyncio.Event()  # stop waiting, connect now
        self._attempted = asyncio.Event()  # a connection attempt just ended without a session
        self._nobody_there = False  # ... and found no hub serving the URL (see _connected_session)
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    # --- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"chrysalis-sync-{self.agent_id}")

    async def close(self) -> None:
        self._closing = True
        self._kick.set()
        if self._session is not None:
            await self._session.connection.close()
        if self._task is not None:
            await self._task
            self._task = None
        self._connection = "closed"

    def notify(self) -> None:
        """A local write happened: push it now (cheap; called on every write)."""
        self._wake.set()

    def state(self) -> SyncState:
        return SyncState(
            hub_url=self.url,
            connection=self._connection,
            hub_id=self.hub_id,
            cursor=self.cursor,
            pushed=self.pushed,
            pulled=self.pulled,
            last_error=None if self.last_error is None else str(self.last_error),
            quarantined=sum(self.quarantine.values()),
            quarantine_reasons=dict(self.quarantine),
        )

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def connected(self) -> bool:
        return self._session is not None

    async def _run(self) -> None:
        while not self._closing:
            self._connection = "connecting"
            opened = nobody_there = False
            session: _Session | None = None
            discard: asyncio.Task[None] | None = None
            try:
                async with connect(
                    self.url,
                    additional_headers=(
                        {"Authorization": f"Bearer {self._token}"} if self._token else None
                    ),
                    compression=None,
                    # The protocol holds frames to the hub's announced limit; this only
                    # bounds what a misbehaving endpoint can make us buffer.
                    max_size=16 * self.max_message_bytes,
                    open_timeout=10,
                    proxy=None,
                ) as connection:
                    opened = True
                    session = _Session(self, connection)
                    try:
                        await session.run()
                    finally:
                        # Leaving the block closes the connection. Whatever the hub still
                        # sends is read and dropped meanwhile: unread, it would fill
                        # websockets' queue (16 frames), which then stops reading the
                        # socket, never sees the hub's close, and waits out its close
                        # timeout (10 s) before this agent can reconnect.
                        discard = asyncio.create_task(_discard(connection))
            except InvalidStatus as error:
                self.last_error = _refusal(error, self.url)
                # 4xx: not a hub's websocket endpoint; 5xx (a connection limit): a busy hub.
                nobody_there = error.response.status_code in _NOT_A_HUB
            except (OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed) as error:
                self.last_error = _unreachable(error, self.url)
                # Refused, unknown host, not a websocket server; a timeout may be a slow hub.
                nobody_there = not opened and not isinstance(
                    error, (TimeoutError, asyncio.TimeoutError, ConnectionClosed)
                )
            except HubRejectedError as error:
                self.last_error = error
            except (SyncError, SyncProtocolError, InvalidOpError, StoreError) as error:
                self.last_error = SyncError(f"sync with {self.url} failed: {error}")
            except Exception as error:  # a bug: the worker must not die of it, silently
                log.exception("%s: sync with %s failed", self.agent_id, self.url)
                self.last_error = SyncError(f"sync with {self.url} failed: {error!r}")
            finally:
                if discard is not None:
                    discard.cancel()
            if self.closing:
                break
            welcomed = session is not None and session.welcomed_at is not None
            if session is not None and session.worked():
                self.failures = 0
            else:
                # Welcomed and then failing at once (a hub whose store fails, say) is a
                # failure too: reconnecting at once would only fail again, in a hot loop.
                self.failures += 1
                if self.last_error is not None:
                    log.log(
                        logging.WARNING if self.failures in (1, 5, 20) else logging.DEBUG,
                        "%s: %s (attempt %d)",
                        self.agent_id,
                        self.last_error,
                        self.failures,
                    )
            self._connection = "offline"
            self._nobody_there = nobody_there and not welcomed
            self._attempted.set()
            delay = self.backoff.delay(self.failures, self.rand)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._kick.wait(), delay)
            self._kick.clear()

    # --- called by the session -------------------------------------------------------

    def _attach(self, session: _Session) -> None:
        self._session = session
        self._connection = "connected"
        self.last_error = None
        self._ready.set()

    def _detach(self) -> None:
        self._session = None
        self._ready.clear()

    # --- on demand ---------------------------------------------------------------------

    async def _connected_session(
        self, timeout: float, *, give_up_s: float | None = None
    ) -> _Session:
        """The current session, connecting now if there is none, within ``timeout``.

        With ``give_up_s``, attempts that find no hub at the URL (the connection
        refused, an unknown host, not a websocket endpoint: HTTP 404) are retried
        for that long only. An attempt under way is let finish, and one that met
        a hub that is there but busy (HTTP 503, a timeout) is retried until
        ``timeout``.
        """
        if self._closing:
            raise SyncError("sync is closed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        give_up = deadline if give_up_s is None else min(deadline, loop.time() + give_up_s)
        nobody_there = False  # the last attempt made during this call found no hub
        self._kick.set()  # connect now rather than at the end of a backoff
        while self._session is None:
            now = loop.time()
            if now >= deadline:
                raise self.last_error or HubUnreachableError(
                    f"the hub at {self.url} did not answer within {timeout:g} s"
                )
            if nobody_there and now >= give_up and self._connection != "connecting":
                raise self._gave_up(give_up_s or timeout)
            self._attempted.clear()
            waits = [asyncio.ensure_future(e.wait()) for e in (self._ready, self._attempted)]
            wake = give_up if nobody_there and now < give_up else deadline
            await asyncio.wait(waits, timeout=wake - now, return_when=asyncio.FIRST_COMPLETED)
            for waiting in waits:
                waiting.cancel()
            if self._session is None and self._attempted.is_set():
                nobody_there = self._nobody_there
                if isinstance(self.last_error, HubRejectedError):
                    raise self.last_error  # retrying will not change the hub's mind
        return self._session

    def _gave_up(self, waited_s: float) -> SyncError:
        error = self.last_error
        if error is None:
            return HubUnreachableError(
                f"the hub at {self.url} did not answer within {waited_s:g} s"
            )
        return type(error)(
            f"{error} (sync_now gave up after retrying for {waited_s:g} s, "
            "sync_connect_timeout_s; background sync goes on retrying)"
        )

    async def sync_now(self, timeout: float = 30.0) -> SyncReport:
        """Push everything pending and pull everything new, now; waits for both.

        Raises :class:`~chrysalis_memory.errors.SyncError` (a subclass saying
        why) if the hub cannot be reached or refuses this agent within ``timeout``.
        A connection lost on the way is retried within the same ``timeout``.
        Connection attempts that find no hub (nothing listens at the URL, or it
        is not the hub's websocket port) are retried for ``connect_timeout_s``
        only: there is no point waiting the whole ``timeout`` for a hub that is
        not there. The background worker goes on retrying in any case.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        pushed, pulled, refused = self.pushed, self.pulled, self.refused
        while True:
            left = deadline - loop.time()
            session = await self._connected_session(
                max(left, 0.0), give_up_s=self.connect_timeout_s
            )
            try:
                await asyncio.wait_for(session.drain_and_catch_up(), deadline - loop.time())
            except asyncio.TimeoutError:
                raise HubUnreachableError(
                    f"sync with {self.url} did not finish within {timeout:g} s"
                ) from None
            except ConnectionClosed:
                if loop.time() >= deadline:
                    raise HubUnreachableError(
                        f"lost the hub at {self.url} and could not sync within {timeout:g} s"
                    ) from None
                continue
            return SyncReport(
                self.pushed - pushed,
                self.pulled - pulled,
                self.cursor,
                refused=self.refused - refused,
                quarantined=sum(self.quarantine.values()),
                quarantine_reasons=dict(self.quarantine),
            )

    async def search(
        self,
        text: str,
        *,
        k: int,
        vector: Sequence[float] | None = None,
        model: str | None = None,
        memory_type: MemoryKind | None = None,
        tags: Sequence[str] = (),
        source: str | None = None,
        timeout: float = 5.0,
    ) -> tuple[SearchHit, ...]:
        """Search the hub's collective index. ``vector`` (the query embedded by
        ``model``) spares the hub embedding ``text`` when it uses the same model."""
        session = await self._connected_session(timeout)
        try:
            return await asyncio.wait_for(
                session.search(text, k, vector, model, memory_type, tags, source), timeout
            )
        except asyncio.TimeoutError:
            raise HubUnreachableError(
                f"the hub at {self.url} did not answer a search within {timeout:g} s"
            ) from None


def _reasons(counts: Mapping[str, int]) -> str:
    return ", ".join(sorted(counts)) or "no reason"


async def _discard(connection: ClientConnection) -> None:
    """Read and drop frames until the connection is closed."""
    with contextlib.suppress(ConnectionClosed):
        async for _ in connection:
            pass


def _unreachable(error: BaseException, url: str) -> HubUnreachableError:
    if isinstance(error, ConnectionRefusedError):
        why = "the connection was refused: nothing listens at that address"
    elif isinstance(error, asyncio.TimeoutError):
        why = "the connection attempt timed out"
    else:
        why = str(error) or type(error).__name__
    return HubUnreachableError(
        f"cannot reach the hub at {url}: {why}; is `chrysalis hub` running there, and is "
        f"hub_url its websocket port ({DEFAULT_HUB_PORT} by default)? Writes are kept and "
        "pushed later"
    )


def _refusal(error: InvalidStatus, url: str) -> SyncError:
    status = error.response.status_code
    detail = error.response.body.decode(errors="replace").strip()
    if status == 401:
        return HubRejectedError(
            f"the hub at {url} refused this agent's token ({detail}): create one with "
            "`chrysalis token create AGENT_ID` on the hub and set hub_token "
            "(CHRYSALIS_HUB_TOKEN)"
        )
    if status == 404:
        # A web server, or the hub's HTTP port (/health, /metrics), not its websocket port.
        return HubUnreachableError(
            f"{url} is not the hub's websocket port: it answered the websocket handshake with "
            f"HTTP 404 ({detail}). Agents connect to the hub's websocket port "
            f"({DEFAULT_HUB_PORT} by default, `chrysalis hub --port`), not its HTTP port "
            "(/health, /metrics): fix hub_url (CHRYSALIS_HUB_URL)"
        )
    return HubUnreachableError(f"the hub at {url} answered HTTP {status}: {detail}")


class _Session:
    """One connection: hello, then pushing, pulling and live updates at once."""

    def __init__(self, client: SyncClient, connection: ClientConnection) -> None:
        self.client = client
        self.connection = connection
        self.protocol = ClientProtocol(
            client.agent_id,
            client.public_key,
            max_message_bytes=client.max_message_bytes,
            max_batch=client.batch_size,
        )
        self._in_flight: dict[int, list[str]] = {}
        self._sent: set[str] = set()  # CIDs pushed this session and not yet acked
        self._refused: set[str] = set()  # CIDs the hub refused this session
        self._acked = asyncio.Event()
        self._pulling = False
        self._caught_up = asyncio.Event()
        self._searches: dict[int, asyncio.Future[tuple[SearchHit, ...]]] = {}
        self._cursor_saved_at = 0.0
        self._saved_cursor = -1
        self._pause_until = 0.0
        self._lost = False
        self.welcomed_at: float | None = None
        self.progressed = False
        """Whether this session did something: stored ops, had ops acknowledged,
        moved the cursor (or started the replica over with a new hub)."""

    def worked(self) -> bool:
        """Whether the session counts as working, for the backoff: it did something,
        or it stayed up for ``Backoff.reset_after_s``."""
        if self.progressed:
            return True
        if self.welcomed_at is None:
            return False
        return self.client.clock() - self.welcomed_at >= self.client.backoff.reset_after_s

    async def run(self) -> None:
        client = self.client
        cursor = int(await client.store.meta(CURSOR_KEY) or 0)
        saved_hub = await client.store.meta(HUB_ID_KEY)
        await self._send(self.protocol.hello(cursor))
        welcome = await self._welcome()
        self.welcomed_at = client.clock()
        if (saved_hub is not None and welcome.hub_id != saved_hub) or welcome.cursor < cursor:
            # Another hub, or this one restored from an older backup: our cursor
            # means nothing there, and it may lack ops it once acknowledged. Read it
            # again from the start and push our own ops again (both idempotent).
            log.warning(
                "%s: hub %s is not where this replica left off: syncing everything again",
                client.agent_id,
                welcome.hub_id,
            )
            await self._requeue_own_ops()
            await client.store.set_meta({CURSOR_KEY: "0", HUB_ID_KEY: welcome.hub_id})
            self._saved_cursor = 0
            self.progressed = True
            client._kick.set()
            return
        if saved_hub is None:
            await client.store.set_meta({HUB_ID_KEY: welcome.hub_id})
        client.hub_id, client.cursor = welcome.hub_id, cursor
        self._saved_cursor = cursor
        await self._pin(welcome.keys)
        await self._retry_quarantined()
        # The first pull is on its way before sync_now() can see the session, so that
        # it waits for that pull rather than starting a second one from the same cursor.
        self._pulling = True
        self._caught_up.clear()
        client._attach(self)
        pusher = asyncio.create_task(self._push_pending())
        safety_net = asyncio.create_task(self._every_interval())
        try:
            client._wake.set()
            await self._send(self.protocol.pull())
            async for frame in self.connection:
                for event in self.protocol.receive(frame):
                    await self._handle(event)
                if self.protocol.closed:
                    break
        except ConnectionClosed:
            pass
        except SyncProtocolError as error:
            with contextlib.suppress(ConnectionClosed):
                await self._send(self.protocol.error_for(error))
            raise
        finally:
            client._detach()
            self._lost = True
            self._acked.set()  # wake drain() and catch_up(): they see the loss
            self._caught_up.set()
            for task in (pusher, safety_net):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            for future in self._searches.values():
                if not future.done():
                    future.set_exception(HubUnreachableError("the hub connection was lost"))
            with contextlib.suppress(ChrysalisError):
                await self._save_cursor(force=True)

    async def _send(self, frame: bytes) -> None:
        await self.connection.send(frame, text=True)

    async def _every_interval(self) -> None:
        """A round every ``sync_interval_s`` in case a wake-up or an update was missed."""
        while True:
            await asyncio.sleep(self.client.interval_s)
            self.client._wake.set()
            if not self._pulling:
                await self._pull()

    async def _requeue_own_ops(self) -> None:
        store, me = self.client.store, self.client.agent_id
        cids = [
            op.cid
            async for _, op, _ in store.iter_ops(statuses=(SyncStatus.SYNCED,))
            if op.writer == me
        ]
        if cids:
            await store.set_status(cids, SyncStatus.PENDING)

    async def _welcome(self) -> Welcome:
        frame = await asyncio.wait_for(self.connection.recv(), 10)
        for event in self.protocol.receive(frame):
            if isinstance(event, Welcome):
                return event
            if isinstance(event, ServerError):
                if event.code == "unauthorized":
                    raise HubRejectedError(f"the hub refused this agent: {event.message}")
                raise SyncError(f"the hub refused the hello: {event.code}: {event.message}")
        raise SyncError("the hub did not answer the hello")

    async def _pin(self, keys: Mapping[str, str]) -> None:
        """Pin the writers' keys the hub registered, before any of their ops arrive.

        The hub binds each agent's key to its token, so its word replaces a pin
        that vouches for no op held here (see ``OpStore.confirm_writer_key``).
        This agent's own key is its own to know."""
        client = self.client
        for writer, key in keys.items():
            if writer == client.agent_id:
                continue
            try:
                if await client.store.confirm_writer_key(writer, key):
                    log.debug("%s: %r pinned to the key the hub confirms", client.agent_id, writer)
            except InvalidOpError as error:
                log.warning("%s: hub key for %r ignored: %s", client.agent_id, writer, error)

    async def _retry_quarantined(self) -> None:
        """Try the quarantined ops again, now that the hub's keys are pinned."""
        client = self.client
        if client.retry is None or not client.store.quarantine_size:
            return
        stored, refused = await client.retry()
        if stored:
            client.pulled += stored
            self.progressed = True
            log.info("%s: %d quarantined op(s) stored on retry", client.agent_id, stored)
        client.quarantine = await client.store.quarantine_summary()
        if refused:
            log.info(
                "%s: %d op(s) still quarantined (%s)",
                client.agent_id,
                sum(client.quarantine.values()),
                _reasons(client.quarantine),
            )

    # --- receiving -----------------------------------------------------------------------

    async def _handle(self, event: ClientEvent) -> None:
        client = self.client
        if isinstance(event, UpdateReceived):
            await self._apply(event)
            if event.gap and not self._pulling:
                await self._pull()
        elif isinstance(event, OpsReceived):
            # Still pulling while the page is stored: a pull sent meanwhile (by
            # catch_up()) would start a second chain from the cursor not moved yet.
            await self._apply(event)
            if event.more:
                await self._pull()
            else:
                self._pulling = False
                self._caught_up.set()
        elif isinstance(event, Acked):
            self._done(event.batch)
            if event.accepted:
                await client.store.set_status(event.accepted, SyncStatus.SYNCED)
                client.pushed += len(event.accepted)
                self.progressed = True
            if event.rejected:
                await client.store.set_status(list(event.rejected), SyncStatus.RETRY)
                self._refused.update(event.rejected)
                for cid, reason in event.rejected.items():
                    log.warning("%s: the hub refused op %s: %s", client.agent_id, cid, reason)
            self._acked.set()
        elif isinstance(event, SearchResult):
            future = self._searches.pop(event.request, None)
            if future is not None and not future.done():
                future.set_result(event.hits)
        elif isinstance(event, ServerError):
            self._on_error(event)

    def _on_error(self, event: ServerError) -> None:
        log.log(
            logging.WARNING if event.fatal else logging.INFO,
            "%s: hub error %s: %s",
            self.client.agent_id,
            event.code,
            event.message,
        )
        if event.fatal:
            self.client.last_error = SyncError(
                f"the hub at {self.client.url} ended the session: {event.code}: {event.message}"
            )
        if event.batch is not None:
            cids = self._done(event.batch)
            if event.code in _RETRY_LATER:
                self._pause_until = time.monotonic() + 0.5
                self.client._wake.set()
            else:
                self._refused.update(cids)
            self._acked.set()
        if event.request is not None:
            future = self._searches.pop(event.request, None)
            if future is not None and not future.done():
                future.set_exception(SyncError(f"remote search failed: {event.message}"))

    async def _apply(self, event: Applicable) -> None:
        """Store the ops of a page or update (quarantining those refused), then tell
        the protocol: the cursor moves past them only once that has committed, and
        it is saved in the same transaction."""
        client, protocol = self.client, self.protocol
        before = protocol.cursor
        if event.ops or event.malformed:
            malformed = [Refusal.undecodable(m.raw, m.reason, m.writer) for m in event.malformed]
            cursor = protocol.cursor_after(event)
            meta = {CURSOR_KEY: str(cursor)} if cursor != self._saved_cursor else {}
            new, refused = await client.merge(event.ops, malformed, meta)
            if meta:
                self._saved_cursor, self._cursor_saved_at = cursor, time.monotonic()
            client.pulled += new
            self.progressed = self.progressed or new > 0
            if refused:
                await self._note_refusals(refused)
        if protocol.applied(event) > before:
            self.progressed = True
        await self._save_cursor()

    async def _note_refusals(self, refused: Sequence[Refusal]) -> None:
        client = self.client
        client.refused += len(refused)
        client.quarantine = await client.store.quarantine_summary()
        first = refused[0]
        log.warning(
            "%s: refused %d op(s) from the hub, kept in the quarantine (%s); e.g. op %s by %s: %s",
            client.agent_id,
            len(refused),
            _reasons({r.reason: 1 for r in refused}),
            first.cid[:16],
            first.writer or "an unknown writer",
            first.detail,
        )

    async def _save_cursor(self, *, force: bool = False) -> None:
        """Save the cursor now and then (a lost save only means pulling again): the
        cursor of ranges whose ops are stored already, or that had none to store."""
        client = self.client
        client.cursor = self.protocol.cursor
        now = time.monotonic()
        if client.cursor == self._saved_cursor:
            return
        if force or now - self._cursor_saved_at >= _SAVE_CURSOR_EVERY_S:
            await client.store.set_meta({CURSOR_KEY: str(client.cursor)})
            self._saved_cursor, self._cursor_saved_at = client.cursor, now

    async def _pull(self) -> None:
        self._pulling = True
        self._caught_up.clear()
        await self._send(self.protocol.pull())

    # --- pushing -------------------------------------------------------------------------

    def _done(self, batch: int) -> list[str]:
        cids = self._in_flight.pop(batch, [])
        self._sent.difference_update(cids)
        return cids

    async def _push_pending(self) -> None:
        client = self.client
        while True:
            await client._wake.wait()
            client._wake.clear()
            while True:
                pause = self._pause_until - time.monotonic()
                if pause > 0:
                    await asyncio.sleep(pause)  # the hub asked us to slow down
                while len(self._in_flight) >= _WINDOW:
                    self._acked.clear()
                    await self._acked.wait()
                ops = await self._pending()
                if not ops:
                    break
                batch, frame = self.protocol.push(ops)
                cids = [op.cid for op in ops]
                self._in_flight[batch] = cids
                self._sent.update(cids)
                await self._send(frame)

    async def _pending(self) -> list[Op]:
        """The next batch of this agent's ops to push: pending or to retry, not in
        flight, not refused this session, within the batch and frame limits."""
        limit = self.protocol.push_limit
        budget = min(self.client.max_message_bytes, self.protocol.max_message_bytes)
        budget -= _FRAME_OVERHEAD
        ops: list[Op] = []
        async for _, op, _ in self.client.store.iter_ops(
            statuses=(SyncStatus.PENDING, SyncStatus.RETRY), batch=limit * 2
        ):
            if op.writer != self.client.agent_id or op.cid in self._sent:
                continue
            if op.cid in self._refused:
                continue
            size = len(op.encoded) + 1
            if size > budget:
                break
            ops.append(op)
            budget -= size
            if len(ops) >= limit:
                break
        return ops

    async def drain(self) -> None:
        """Until every op pending now has been acknowledged (or refused)."""
        self.client._wake.set()
        while True:
            self._acked.clear()
            self._check_alive()
            if not self._in_flight and not await self._pending():
                return
            await self._acked.wait()

    async def drain_and_catch_up(self) -> None:
        await self.drain()
        await self.catch_up()

    async def catch_up(self) -> None:
        """Until a pull sent now has been answered to the end of the hub's log."""
        self._check_alive()
        if self._pulling:  # let the running chain of pulls end rather than start a second
            await self._caught_up.wait()
            self._check_alive()
        await self._pull()
        await self._caught_up.wait()
        self._check_alive()

    def _check_alive(self) -> None:
        if self._lost:
            raise ConnectionClosed(None, None)

    # --- searching -----------------------------------------------------------------------

    async def search(
        self,
        text: str,
        k: int,
        vector: Sequence[float] | None,
        model: str | None,
        memory_type: MemoryKind | None,
        tags: Sequence[str],
        source: str | None,
    ) -> tuple[SearchHit, ...]:
        request, frame = self.protocol.search(
            text,
            k=k,
            vector=vector,
            model=model,
            memory_type=memory_type,
            tags=tags,
            source=source,
        )
        future: asyncio.Future[tuple[SearchHit, ...]] = asyncio.get_running_loop().create_future()
        self._searches[request] = future
        await self._send(frame)
        return await future
