"""The attacks of the fault-and-attack suite, each made for real against a running
hub (straight to its port: the attacker is on the network, not behind the
nemesis) by "mallory", a token holder with a key of its own, speaking the
protocol by hand as a hand-made client would.

Each attack returns an :class:`Attack`: what was tried, what the hub answered,
whether that is a refusal, and the CIDs of the ops it tried to get in (which the
suite then looks for, and must not find, on every replica). An attack whose
connection is lost to a fault (the hub killed by the suite, say) is tried again
until the hub answers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from types import TracebackType

import msgspec
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from chrysalis_memory.crdt import HLC
from chrysalis_memory.model import MemoryPatch, Op, Signer
from chrysalis_memory.model.ops import Creation
from chrysalis_memory.sync import (
    Acked,
    ClientEvent,
    ClientProtocol,
    OpsReceived,
    ServerError,
    UpdateReceived,
    Welcome,
)

INT64_MAX = (1 << 63) - 1
OWN_WRITE = "honest write by mallory"


@dataclasses.dataclass
class Attack:
    kind: str
    what: str
    outcome: str = ""
    refused: bool = False
    cids: list[str] = dataclasses.field(default_factory=list)
    """The ops it tried to get in: none may be on any replica afterwards."""
    attempts: int = 0
    cids_held: int = 0
    """How many of ``cids`` the replicas held afterwards, all together (0)."""


class Lost(Exception):
    """The connection was lost before the hub answered: try the attack again."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Mallory:
    """A token holder that attacks the hub at ``url``. ``seq`` is its own writer's
    sequence: ops of its that the hub stores take their numbers, refused ones do not."""

    def __init__(self, url: str, token: str, signer: Signer | None = None) -> None:
        self.url = url
        self.token = token
        self.signer = signer or Signer.generate()
        self.seq = 0
        self.accepted: list[Op] = []

    def op(
        self,
        doc: str,
        patch: MemoryPatch,
        *,
        writer: str = "mallory",
        seq: int | None = None,
        hlc: tuple[int, int] | None = None,
        parents: Sequence[str] = (),
        signer: Signer | None = None,
    ) -> Op:
        """A validly signed op carrying whatever it is given (no range checks)."""
        signer = signer or self.signer
        unsigned = Op(
            doc=doc,
            writer=writer,
            seq=self.seq + 1 if seq is None else seq,
            hlc=HLC(*(hlc or (now_ms(), 0))),
            parents=tuple(sorted(parents)),
            key=signer.public_key,
            patch=patch,
        )
        return msgspec.structs.replace(unsigned, sig=signer.sign(unsigned.encoded))

    def session(self, token: str | None = None) -> Session:
        return Session(self.url, "mallory", self.token if token is None else token, self.signer)

    async def push(self, ops: Sequence[Op]) -> Acked | ServerError:
        """Push ``ops`` on a new session; its ack (or error). Raises Lost."""
        async with self.session() as session:
            answer = await session.push(ops)
        if isinstance(answer, Acked):
            for op in ops:
                if op.cid in answer.accepted and op.writer == "mallory" and op not in self.accepted:
                    self.seq = max(self.seq, op.seq)
                    self.accepted.append(op)
        return answer


class Session:
    def __init__(self, url: str, agent_id: str, token: str, signer: Signer) -> None:
        self.url = url
        self.protocol = ClientProtocol(agent_id, signer.public_key)
        self.token = token
        self.connection: ClientConnection | None = None
        self.welcome: Welcome | None = None

    async def __aenter__(self) -> Session:
        try:
            self.connection = await connect(
                self.url,
                additional_headers={"Authorization": f"Bearer {self.token}"},
                proxy=None,
                max_size=None,
                open_timeout=5,
                compression=None,
            )
        except InvalidStatus as error:
            if error.response.status_code >= 500:
                raise Lost(f"HTTP {error.response.status_code}") from None
            raise
        except (OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed) as error:
            raise Lost(f"cannot connect: {error}") from None  # the hub is down, or dying
        await self.send(self.protocol.hello(0))
        event = await self.next_event()
        assert isinstance(event, Welcome), event
        self.welcome = event
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        transport = None if self.connection is None else self.connection.transport
        if transport is not None and not transport.is_closing():
            transport.abort()

    async def send(self, frame: bytes | str) -> None:
        assert self.connection is not None
        try:
            await self.connection.send(frame if isinstance(frame, str) else frame.decode())
        except (ConnectionClosed, OSError) as error:
            raise Lost(f"lost while sending: {error}") from None

    async def next_event(self, timeout: float = 15.0) -> ClientEvent:
        """The next event that is not a live update."""
        assert self.connection is not None
        while True:
            try:
                frame = await asyncio.wait_for(self.connection.recv(), timeout)
            except (ConnectionClosed, OSError, asyncio.TimeoutError) as error:
                raise Lost(f"lost while waiting for an answer: {error!r}") from None
            events = [e for e in self.protocol.receive(frame) if not isinstance(e, UpdateReceived)]
            if events:
                return events[0]

    async def push(self, ops: Sequence[Op]) -> Acked | ServerError:
        _, frame = self.protocol.push(ops)
        await self.send(frame)
        answer = await self.next_event()
        assert isinstance(answer, Acked | ServerError), answer
        return answer

    async def closed_with(self, timeout: float = 15.0) -> int | None:
        """The close code once the hub has closed the connection."""
        assert self.connection is not None
        try:
            await asyncio.wait_for(self.connection.wait_closed(), timeout)
        except asyncio.TimeoutError:
            return None
        return self.connection.close_code

    async def page(self, after: int = 0) -> OpsReceived:
        await self.send(self.protocol.pull(after))
        event = await self.next_event()
        assert isinstance(event, OpsReceived), event
        return event


async def persist(
    attack: Attack, attempt: Callable[[], Awaitable[None]], *, deadline_s: float = 60.0
) -> Attack:
    """Run ``attempt`` until it is not Lost (the hub may be down for a while)."""
    give_up = time.monotonic() + deadline_s
    while True:
        attack.attempts += 1
        try:
            await attempt()
            return attack
        except Lost as lost:
            if time.monotonic() > give_up:
                attack.outcome = f"never answered: {lost}"
                return attack
            await asyncio.sleep(0.2)  # the hub is restarting: try again shortly


def _verdicts(answer: Acked | ServerError, ops: Sequence[Op]) -> list[str]:
    if isinstance(answer, ServerError):
        return [f"error {answer.code}"] * len(ops)
    return [
        "accepted" if op.cid in answer.accepted else answer.rejected.get(op.cid, "?").split(":")[0]
        for op in ops
    ]


# --- the attacks --------------------------------------------------------------------------


async def bad_tokens(mallory: Mallory) -> Attack:
    attack = Attack("bad token", "websocket handshakes with no token and with a made-up one")

    async def attempt() -> None:
        statuses = []
        for headers in (None, {"Authorization": f"Bearer chry_{secrets.token_urlsafe(32)}"}):
            try:
                async with connect(
                    mallory.url, additional_headers=headers, proxy=None, open_timeout=5
                ):
                    statuses.append(101)
            except InvalidStatus as error:
                if error.response.status_code >= 500:
                    raise Lost(f"HTTP {error.response.status_code}") from None
                statuses.append(error.response.status_code)
            except (OSError, asyncio.TimeoutError, InvalidHandshake, ConnectionClosed) as error:
                raise Lost(str(error)) from None
        attack.outcome = "HTTP " + ", ".join(map(str, statuses))
        attack.refused = statuses == [401, 401]

    return await persist(attack, attempt)


async def own_write(mallory: Mallory) -> Attack:
    """Not an attack: mallory's one honest write (a token holder may write as itself),
    so that the replay of it below has something to replay."""
    attack = Attack(OWN_WRITE, "a memory of its own, as itself")
    op = mallory.op("mallory-note", MemoryPatch(create=Creation(), content="mallory was here"))

    async def attempt() -> None:
        answer = await mallory.push([op])
        attack.outcome = ", ".join(_verdicts(answer, [op]))
        attack.refused = attack.outcome != "accepted"

    return await persist(attack, attempt)


async def forged_writer(mallory: Mallory, victim: str, victim_signer: Signer) -> Attack:
    """Ops written as another agent: signed with mallory's key, and with the victim's
    own (stolen) key; and mallory's own writer id signed with the victim's key."""
    attack = Attack("forged writer", f"ops claiming {victim}, pushed with mallory's token")
    doc = f"{victim}-forged"
    ops = [
        mallory.op(doc, MemoryPatch(create=Creation(), content="forged"), writer=victim, seq=9000),
        mallory.op(
            doc,
            MemoryPatch(create=Creation(), content="forged with a stolen key"),
            writer=victim,
            seq=9001,
            signer=victim_signer,
        ),
        mallory.op("mallory-x", MemoryPatch(create=Creation(), content="x"), signer=victim_signer),
    ]
    attack.cids = [op.cid for op in ops]

    async def attempt() -> None:
        verdicts = _verdicts(await mallory.push(ops), ops)
        attack.outcome = ", ".join(verdicts)
        attack.refused = all(v == "forbidden_writer" for v in verdicts)

    return await persist(attack, attempt)


async def replays(mallory: Mallory, victim: str) -> Attack:
    """An honest agent's op, pulled from the hub, pushed again by mallory; and
    mallory's own accepted push sent again on a new connection."""
    attack = Attack("replayed op", f"{victim}'s genuine op re-pushed; mallory's own push repeated")

    async def attempt() -> None:
        async with mallory.session() as session:
            genuine = None
            after = 0
            while genuine is None:
                page = await session.page(after)
                genuine = next((op for op in page.ops if op.writer == victim), None)
                if not page.more:
                    break
                after = page.cursor
                session.protocol.applied(page)
            if genuine is None:
                raise Lost(f"the hub holds no op of {victim} yet")
            theirs = _verdicts(await session.push([genuine]), [genuine])
        own = mallory.accepted[:1]
        again = _verdicts(await mallory.push(own), own) if own else ["no op of mallory's yet"]
        attack.cids = []  # the genuine op is meant to be everywhere
        attack.outcome = f"{victim}'s op: {theirs[0]}; mallory's own again: {again[0]}"
        # Refused as a forgery; accepted again as a no-op (idempotent by CID).
        attack.refused = theirs == ["forbidden_writer"] and again == ["accepted"]

    return await persist(attack, attempt)


def out_of_range_ops(mallory: Mallory) -> list[tuple[str, Op]]:
    create = MemoryPatch(create=Creation(), content="poison")
    return [
        ("seq 2^63", mallory.op("poison-seq", create, seq=1 << 63)),
        (
            "HLC counter 2^63-1",
            mallory.op("poison-hlc", create, hlc=(now_ms() + 590_000, INT64_MAX)),
        ),
        ("HLC wall time 2^62", mallory.op("poison-wall", create, hlc=(1 << 62, 0))),
        ("access 2^63-1", mallory.op("mallory-note", MemoryPatch(access=INT64_MAX))),
    ]


async def out_of_range(mallory: Mallory) -> Attack:
    """Validly signed ops by mallory whose numbers are out of range, each on its own
    connection (a bad op in a push is a protocol violation: fatal)."""
    cases = out_of_range_ops(mallory)
    attack = Attack("out-of-range number", "; ".join(name for name, _ in cases))
    attack.cids = [op.cid for _, op in cases]
    outcomes: dict[str, str] = {}

    async def attempt() -> None:
        for name, op in cases:
            if name in outcomes:
                continue
            async with mallory.session() as session:
                answer = await session.push([op])
                code = await session.closed_with() if isinstance(answer, ServerError) else None
            if isinstance(answer, ServerError):
                outcomes[name] = f"{answer.code} (fatal, closed {code})"
            else:
                outcomes[name] = ", ".join(_verdicts(answer, [op]))
        attack.outcome = "; ".join(f"{n}: {o}" for n, o in outcomes.items())
        attack.refused = all(o.startswith("bad_message (fatal") for o in outcomes.values())

    return await persist(attack, attempt)


async def backdated(mallory: Mallory, memory_id: str, heads: Sequence[str]) -> Attack:
    """Mallory uses another agent's memory (an access, as recall records one), then
    claims to have created it in 1970: naming no parents, and naming them."""
    attack = Attack("backdated create", f"a 1970 creation of {memory_id}, after using it")
    takeover = MemoryPatch(create=Creation(), content="mallory's now")
    # The access comes first, so that it takes its number before the forgeries.
    used = mallory.op(memory_id, MemoryPatch(access=1), parents=heads)

    async def attempt() -> None:
        nonlocal used
        if used not in mallory.accepted:
            verdict = _verdicts(await mallory.push([used]), [used])
            if verdict != ["accepted"]:
                raise AssertionError(f"mallory's access was refused: {verdict}")
        seq = mallory.seq
        unnamed = mallory.op(memory_id, takeover, seq=seq + 1, hlc=(1000, 0))
        named = mallory.op(memory_id, takeover, seq=seq + 2, hlc=(1001, 0), parents=heads)
        attack.cids = [unnamed.cid, named.cid]
        verdicts = _verdicts(await mallory.push([unnamed, named]), [unnamed, named])
        attack.outcome = ", ".join(verdicts)
        attack.refused = verdicts == ["backdated", "backdated"]

    return await persist(attack, attempt)


async def bad_frames(mallory: Mallory, max_message_bytes: int) -> Attack:
    """A frame that is not JSON, one of an unknown type, one over the hub's frame
    limit, and one over twice that limit (which the websocket layer refuses)."""
    cases = [
        ("not JSON", "{not json"),
        ("unknown type", '{"type":"drop_table","v":1}'),
        ("oversize", "x" * (max_message_bytes + 1024)),
        ("over twice the limit", "x" * (2 * max_message_bytes + 1024)),
    ]
    attack = Attack("malformed or oversize frame", "; ".join(name for name, _ in cases))
    outcomes: dict[str, str] = {}

    async def attempt() -> None:
        for name, frame in cases:
            if name in outcomes:
                continue
            async with mallory.session() as session:
                answer: ClientEvent | None = None
                try:  # the hub may close before it has read the whole frame
                    await session.send(frame)
                    answer = await session.next_event()
                except Lost:
                    pass
                code = await session.closed_with()
            if code in (None, 1006):  # no answer, or the connection broke (a hub kill)
                raise Lost(f"the hub neither answered nor closed ({code})")
            said = answer.code if isinstance(answer, ServerError) else "nothing"
            outcomes[name] = f"{said}, closed {code}"
        attack.outcome = "; ".join(f"{n}: {o}" for n, o in outcomes.items())
        attack.refused = (
            outcomes["not JSON"] == "bad_message, closed 1008"
            and outcomes["unknown type"] == "bad_message, closed 1008"
            and outcomes["oversize"] == "too_large, closed 1008"
            and outcomes["over twice the limit"].endswith("closed 1009")
        )

    return await persist(attack, attempt)
