"""Messages between gossip peers (pure data; the codec for the wire is in
:mod:`chrysalis_memory.gossip.wire`).

``ops`` are whatever the driver stores: real :class:`~chrysalis_memory.model.Op`
objects between agents, light stand-ins in the simulator. The node only reads
their ``writer``, ``seq`` and ``cid``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Literal, Protocol

from chrysalis_memory.gossip.summary import Interval

MemberState = Literal["alive", "suspect", "dead"]


class OpLike(Protocol):
    @property
    def writer(self) -> str: ...

    @property
    def seq(self) -> int: ...

    @property
    def cid(self) -> str: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """What one peer says about another (SWIM's membership updates)."""

    id: str
    addr: str
    state: MemberState
    incarnation: int


@dataclasses.dataclass(frozen=True, slots=True)
class Push:
    """Ops the sender learned recently; the receiver replies with those it had."""

    ops: tuple[OpLike, ...]
    members: tuple[Member, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class PushReply:
    had: tuple[str, ...]
    members: tuple[Member, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    probe: int
    members: tuple[Member, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    probe: int
    members: tuple[Member, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class PingReq:
    """Ask a peer to ping ``target`` for us (SWIM's indirect probe)."""

    probe: int
    target: str
    members: tuple[Member, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True)
class Digest:
    """Anti-entropy, step 1: the digest of each bucket of writers."""

    session: int
    digests: tuple[bytes, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class Entries:
    """Step 2: the answering side's entries for the buckets that differ."""

    session: int
    buckets: tuple[int, ...]
    entries: Mapping[str, tuple[Interval, ...]]


@dataclasses.dataclass(frozen=True, slots=True)
class Want:
    """Step 3: the sequence numbers the initiator lacks (answered with ``Ops``)."""

    session: int
    want: Mapping[str, tuple[Interval, ...]]


@dataclasses.dataclass(frozen=True, slots=True)
class Ops:
    """Ops sent by anti-entropy (steps 3 and 4)."""

    session: int
    ops: tuple[OpLike, ...]


Message = Push | PushReply | Ping | Ack | PingReq | Digest | Entries | Want | Ops
