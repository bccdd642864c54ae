"""One peer's gossip logic, sans I/O: messages and time in, messages out.

The same :class:`GossipNode` runs between real agents (driven by the websocket
transport in :mod:`chrysalis_memory.gossip.peer`) and in the simulator
(:mod:`chrysalis_memory.gossip.simulator`), which is why it never reads a clock,
a socket or a store: the driver passes ``now_ms`` in, carries out the
:class:`Send` / :class:`SendOps` outputs, verifies and stores what a
:class:`Deliver` hands it, and reports back with :meth:`GossipNode.accepted`.

Three mechanisms, each classic:

* **Rumour mongering** (Demers et al., 1987): every ``interval_ms`` a node pushes
  the ops it learned recently to ``fanout`` random live peers. A peer answers
  with the ops it already had; an op that ``max_duplicates`` peers already had
  (or that has been pushed for ``max_rounds`` rounds) stops being pushed. An op
  a node already holds is never pushed again by it.
* **Anti-entropy**: every ``anti_entropy_interval_ms`` a node reconciles with one
  random peer through the bucketed interval summaries of
  :mod:`~chrysalis_memory.gossip.summary` (digests, then the differing entries,
  then the missing ops, both ways), so whatever rumours missed still arrives,
  at a cost that follows the difference.
* **Membership** (SWIM, Das et al., 2002): each round one peer not heard from
  lately is pinged; no answer in ``probe_timeout_ms``, and ``indirect_probes``
  other peers are asked to ping it; still nothing, and it is suspected, then
  after ``suspect_timeout_ms`` declared dead and skipped. Membership news rides
  on every message. Hearing from a peer directly brings it back.

Who may be a peer is the driver's business (it authenticates members, see
:mod:`~chrysalis_memory.gossip.auth`): with :meth:`GossipNode.admit` it names the
members, and then nobody else enters the table of peers, whatever membership news
says, and messages from anyone else are ignored. The table never holds more than
``max_peers`` peers.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import deque
from collections.abc import Iterable, Mapping, Sequence

from chrysalis_memory.gossip.messages import (
    Ack,
    Digest,
    Entries,
    Member,
    MemberState,
    Message,
    OpLike,
    Ops,
    Ping,
    PingReq,
    Push,
    PushReply,
    Want,
)
from chrysalis_memory.gossip.summary import Interval, SeqSet, Summary
from chrysalis_memory.sync.messages import MAX_ID

_STRENGTH: dict[MemberState, int] = {"alive": 0, "suspect": 1, "dead": 2}
_PIGGYBACK = 6  # membership updates carried per message


@dataclasses.dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to the peer at ``addr`` (``to``: its id, when known)."""

    to: str
    addr: str
    message: Message


@dataclasses.dataclass(frozen=True, slots=True)
class SendOps:
    """Read these ops from the store and send them as ``Ops(session, ops)``."""

    to: str
    addr: str
    session: int
    ranges: Mapping[str, tuple[Interval, ...]]


@dataclasses.dataclass(frozen=True, slots=True)
class Deliver:
    """Ops new to this node: verify and store them, then call ``accepted``."""

    sender: str
    ops: tuple[OpLike, ...]


Output = Send | SendOps | Deliver


@dataclasses.dataclass(frozen=True)
class GossipSettings:
    fanout: int = 3
    interval_ms: float = 500.0
    anti_entropy_interval_ms: float | None = 5000.0
    """None: no anti-entropy."""
    max_rounds: int = 10
    """Rounds a node pushes an op it learned (10: enough for 10,000 agents at fanout 3)."""
    max_duplicates: int | None = None
    """Stop pushing an op once this many peers answered that they had it (rumour
    mongering with feedback: fewer bytes, a longer tail). None: no answers asked."""
    max_push_ops: int = 500
    probe_timeout_ms: float | None = None
    """Default: half the interval."""
    suspect_timeout_ms: float | None = None
    """Default: five intervals."""
    indirect_probes: int = 2
    max_peers: int = 1 << 16
    """Peers the node keeps at most (news of more is ignored; a dead one makes room)."""


@dataclasses.dataclass(slots=True)
class _Peer:
    addr: str
    state: MemberState
    incarnation: int
    heard_ms: float
    changed_ms: float


@dataclasses.dataclass(slots=True)
class _Rumour:
    op: OpLike
    duplicates: int = 0
    rounds: int = 0


@dataclasses.dataclass(slots=True)
class _News:
    update: Member
    left: int
    """Messages it will still ride on."""


@dataclasses.dataclass(slots=True)
class _Probe:
    target: str
    sent_ms: float
    indirect: bool = False


class GossipNode:
    def __init__(
        self,
        me: str,
        addr: str,
        settings: GossipSettings | None = None,
        *,
        rng: random.Random | None = None,
        now_ms: float = 0.0,
    ) -> None:
        self.me, self.addr = me, addr
        self.settings = s = settings or GossipSettings()
        self.rng = rng or random.Random()
        self.summary = Summary()
        # A restarted node has forgotten its incarnation: starting from the clock puts
        # its "alive" above whatever suspicion others hold of its previous life.
        self.incarnation = int(now_ms)
        self._probe_timeout = s.probe_timeout_ms or s.interval_ms / 2
        self._suspect_timeout = s.suspect_timeout_ms or 5 * s.interval_ms
        self._peers: dict[str, _Peer] = {}
        self._seeds: set[str] = set()  # addresses of peers whose ids are not known yet
        self._rumours: dict[str, _Rumour] = {}
        self._delivering: set[str] = set()
        self._news: deque[_News] = deque()
        self._probes: dict[int, _Probe] = {}
        self._relays: dict[int, tuple[str, int]] = {}  # our probe → (requester, its probe)
        self._next_probe = 1
        self._sessions: dict[int, str] = {}  # anti-entropy sessions we started → peer
        self._next_session = 1
        self._probe_order: list[str] = []
        self._admitted: frozenset[str] | None = None  # None: anyone (the simulator)
        self._next_round = now_ms + self.rng.uniform(0, s.interval_ms)
        ae = s.anti_entropy_interval_ms
        self._next_ae = math.inf if ae is None else now_ms + self.rng.uniform(0, ae)

    # --- what the driver tells us --------------------------------------------------------

    def admit(self, members: Iterable[str] | None) -> None:
        """Only these peers may enter the table of peers, and only their messages
        are heard (None: anyone). Peers no longer admitted are forgotten."""
        self._admitted = None if members is None else frozenset(members)
        for peer in [p for p in self._peers if not self._admits(p)]:
            self._forget(peer)

    def _admits(self, peer: str) -> bool:
        return peer != self.me and (self._admitted is None or peer in self._admitted)

    def _forget(self, peer: str) -> None:
        del self._peers[peer]
        for probe in [p for p, x in self._probes.items() if x.target == peer]:
            del self._probes[probe]
        for probe in [p for p, (who, _) in self._relays.items() if who == peer]:
            del self._relays[probe]
        for session in [s for s, who in self._sessions.items() if who == peer]:
            del self._sessions[session]
        for news in [n for n in self._news if n.update.id == peer]:
            self._news.remove(news)

    def _room(self) -> bool:
        """Whether one more peer fits in the table (forgetting a dead one if need be)."""
        if len(self._peers) < self.settings.max_peers:
            return True
        dead = next((p for p, x in self._peers.items() if x.state == "dead"), None)
        if dead is None:
            return False
        self._forget(dead)
        return True

    def add_peers(self, peers: Mapping[str, str], now_ms: float) -> None:
        """Peers known from elsewhere (the hub's list): ``{id: addr}``."""
        for peer, addr in peers.items():
            if self._admits(peer) and peer not in self._peers and self._room():
                self._peers[peer] = _Peer(addr, "alive", 0, now_ms, now_ms)

    def add_seeds(self, addrs: Iterable[str]) -> None:
        """Addresses to introduce ourselves to (their ids arrive with their answer)."""
        self._seeds.update(a for a in addrs if a != self.addr)

    def accepted(self, ops: Iterable[OpLike], now_ms: float) -> list[OpLike]:
        """Ops now stored here (written here, or delivered and verified): they are
        pushed to peers from the next round. Returns the ones that were new."""
        fresh = []
        for op in ops:
            self._delivering.discard(op.cid)
            if self.summary.add(op.writer, op.seq):
                self._rumours[op.cid] = _Rumour(op)
                fresh.append(op)
        return fresh

    def rejected(self, ops: Iterable[OpLike]) -> None:
        """Delivered ops that failed verification: forget them (never forwarded)."""
        for op in ops:
            self._delivering.discard(op.cid)

    def restart(self, now_ms: float) -> None:
        """After a crash: the store (summary) survives, everything else is lost."""
        summary, admitted = self.summary, self._admitted
        seeds = {p.addr for p in self._peers.values()} | self._seeds
        self.__init__(self.me, self.addr, self.settings, rng=self.rng, now_ms=now_ms)  # type: ignore[misc]
        self.summary, self._admitted = summary, admitted
        self._seeds = seeds

    # --- views -------------------------------------------------------------------------

    def members(self, state: MemberState | None = "alive") -> dict[str, str]:
        return {p: x.addr for p, x in self._peers.items() if state is None or x.state == state}

    def state_of(self, peer: str) -> MemberState | None:
        found = self._peers.get(peer)
        return None if found is None else found.state

    @property
    def active_rumours(self) -> int:
        return len(self._rumours)

    def next_deadline(self) -> float:
        deadlines = [self._next_round, self._next_ae]
        deadlines += [p.sent_ms + self._probe_timeout for p in self._probes.values()]
        return min(deadlines)

    # --- time ----------------------------------------------------------------------------

    def tick(self, now_ms: float) -> list[Output]:
        out: list[Output] = []
        self._expire_probes(now_ms, out)
        self._expire_suspects(now_ms)
        if now_ms >= self._next_round:
            self._next_round = now_ms + self.settings.interval_ms
            self._gossip_round(out)
            self._probe_one(now_ms, out)
        if now_ms >= self._next_ae:
            assert self.settings.anti_entropy_interval_ms is not None
            self._next_ae = now_ms + self.settings.anti_entropy_interval_ms
            self._start_anti_entropy(out)
        return out

    def _live(self) -> list[str]:
        return [p for p, x in self._peers.items() if x.state == "alive"]

    def _gossip_round(self, out: list[Output]) -> None:
        live = self._live()
        if self._seeds and len(live) < self.settings.fanout:
            for addr in sorted(self._seeds):
                out.append(Send("", addr, Ping(0, self._piggyback())))
        if not self._rumours or not live:
            return
        rumours = list(self._rumours.values())[: self.settings.max_push_ops]
        ops = tuple(r.op for r in rumours)
        for peer in self.rng.sample(live, min(self.settings.fanout, len(live))):
            out.append(Send(peer, self._peers[peer].addr, Push(ops, self._piggyback())))
        for rumour in rumours:
            rumour.rounds += 1
            if rumour.rounds >= self.settings.max_rounds:
                del self._rumours[rumour.op.cid]

    # --- membership ----------------------------------------------------------------------

    def _probe_one(self, now_ms: float, out: list[Output]) -> None:
        stale = now_ms - 2 * self.settings.interval_ms
        if not self._probe_order:
            self._probe_order = [p for p, x in self._peers.items() if x.state != "dead"]
            self.rng.shuffle(self._probe_order)
        while self._probe_order:
            peer = self._probe_order.pop()
            known = self._peers.get(peer)
            if known is None or known.state == "dead" or known.heard_ms > stale:
                continue
            if any(p.target == peer for p in self._probes.values()):
                continue
            probe = self._new_probe(peer, now_ms)
            out.append(Send(peer, known.addr, Ping(probe, self._piggyback())))
            return

    def _new_probe(self, target: str, now_ms: float) -> int:
        probe, self._next_probe = self._next_probe, self._next_probe + 1
        self._probes[probe] = _Probe(target, now_ms)
        return probe

    def _expire_probes(self, now_ms: float, out: list[Output]) -> None:
        for probe, pending in list(self._probes.items()):
            if now_ms < pending.sent_ms + self._probe_timeout:
                continue
            target = self._peers.get(pending.target)
            if target is None or target.state == "dead":
                del self._probes[probe]
            elif not pending.indirect:
                helpers = [p for p in self._live() if p != pending.target]
                for helper in self.rng.sample(
                    helpers, min(self.settings.indirect_probes, len(helpers))
                ):
                    message = PingReq(probe, pending.target, self._piggyback())
                    out.append(Send(helper, self._peers[helper].addr, message))
                pending.indirect, pending.sent_ms = True, now_ms
            else:
                del self._probes[probe]
                if target.state == "alive":
                    self._set_state(pending.target, target, "suspect", target.incarnation, now_ms)

    def _expire_suspects(self, now_ms: float) -> None:
        for peer, known in self._peers.items():
            if known.state == "suspect" and now_ms >= known.changed_ms + self._suspect_timeout:
                self._set_state(peer, known, "dead", known.incarnation, now_ms)

    def _set_state(
        self, peer: str, known: _Peer, state: MemberState, incarnation: int, now_ms: float
    ) -> None:
        known.state, known.incarnation, known.changed_ms = state, incarnation, now_ms
        self._spread(Member(peer, known.addr, state, incarnation))

    def _spread(self, update: Member) -> None:
        transmissions = 3 * math.ceil(math.log2(len(self._peers) + 2))
        self._news.appendleft(_News(update, transmissions))
        while len(self._news) > 64:
            self._news.pop()

    def _piggyback(self) -> tuple[Member, ...]:
        carried = [Member(self.me, self.addr, "alive", self.incarnation)]
        for news in list(self._news)[:_PIGGYBACK]:
            carried.append(news.update)
            news.left -= 1
            if news.left <= 0:
                self._news.remove(news)
        return tuple(carried)

    def _direct(self, sender: str, addr: str, now_ms: float) -> None:
        """Direct evidence: the sender is alive, whatever was said of it."""
        known = self._peers.get(sender)
        if known is None:
            if not self._room():
                return
            self._peers[sender] = _Peer(addr, "alive", 0, now_ms, now_ms)
            self._seeds.discard(addr)
            self._spread(Member(sender, addr, "alive", 0))
            return
        known.heard_ms, known.addr = now_ms, addr
        if known.state != "alive":
            self._set_state(sender, known, "alive", known.incarnation, now_ms)

    def _heard_from(self, sender: str, members: Sequence[Member], now_ms: float) -> None:
        for update in members:
            if update.id == self.me:
                if update.state != "alive" and update.incarnation >= self.incarnation:
                    # Refute the suspicion; at the top of the range the frames must stay valid.
                    self.incarnation = min(update.incarnation + 1, MAX_ID)
                    self._spread(Member(self.me, self.addr, "alive", self.incarnation))
                continue
            if not self._admits(update.id):
                continue  # not a member: news of it is not believed, nor passed on
            known = self._peers.get(update.id)
            if update.id == sender:
                if known is not None and update.incarnation > known.incarnation:
                    self._set_state(sender, known, "alive", update.incarnation, now_ms)
                continue
            if known is None:
                if update.state != "dead" and self._room():
                    self._peers[update.id] = _Peer(
                        update.addr, update.state, update.incarnation, -math.inf, now_ms
                    )
                    self._spread(update)
                continue
            newer = update.incarnation > known.incarnation or (
                update.incarnation == known.incarnation
                and _STRENGTH[update.state] > _STRENGTH[known.state]
            )
            if newer:
                if update.incarnation > known.incarnation:
                    known.addr = update.addr  # a later life may listen elsewhere (a restart)
                self._set_state(update.id, known, update.state, update.incarnation, now_ms)

    # --- messages ----------------------------------------------------------------------

    def receive(
        self, sender: str, sender_addr: str, message: Message, now_ms: float
    ) -> list[Output]:
        """A message from peer ``sender``, who listens at ``sender_addr``."""
        out: list[Output] = []
        if not self._admits(sender):
            return out  # ourselves, or not a member: nothing is answered
        self._direct(sender, sender_addr, now_ms)
        members = getattr(message, "members", ())
        if members:
            self._heard_from(sender, members, now_ms)
        addr = sender_addr
        if isinstance(message, Push):
            new = self._on_ops(sender, message.ops, out)
            if self.settings.max_duplicates is not None:
                had = tuple(op.cid for op in message.ops if op.cid not in new)
                out.append(Send(sender, addr, PushReply(had, self._piggyback())))
        elif isinstance(message, PushReply) and self.settings.max_duplicates is not None:
            for cid in message.had:
                rumour = self._rumours.get(cid)
                if rumour is not None:
                    rumour.duplicates += 1
                    if rumour.duplicates >= self.settings.max_duplicates:
                        del self._rumours[cid]
        elif isinstance(message, Ping):
            out.append(Send(sender, addr, Ack(message.probe, self._piggyback())))
        elif isinstance(message, Ack):
            self._on_ack(message.probe, out, now_ms)
        elif isinstance(message, PingReq):
            target = self._peers.get(message.target)
            if target is not None:
                probe = self._new_probe(message.target, now_ms)
                self._probes[probe].indirect = True  # relayed: no second-level relay
                self._relays[probe] = (sender, message.probe)
                out.append(Send(message.target, target.addr, Ping(probe, self._piggyback())))
        elif isinstance(message, Digest):
            differing = self.summary.differing_buckets(message.digests)
            if differing:
                entries = {w: tuple(iv) for w, iv in self.summary.entries(differing).items()}
                out.append(Send(sender, addr, Entries(message.session, tuple(differing), entries)))
        elif isinstance(message, Entries):
            self._on_entries(sender, addr, message, out)
        elif isinstance(message, Want):
            out.append(SendOps(sender, addr, message.session, message.want))
        elif isinstance(message, Ops):
            self._on_ops(sender, message.ops, out)
        return out

    def _on_ops(self, sender: str, ops: Sequence[OpLike], out: list[Output]) -> set[str]:
        """Hand the ops new here to the driver; returns their CIDs."""
        new = []
        for op in ops:
            if (op.writer, op.seq) in self.summary or op.cid in self._delivering:
                continue
            self._delivering.add(op.cid)
            new.append(op)
        if new:
            out.append(Deliver(sender, tuple(new)))
        return {op.cid for op in new}

    def _on_ack(self, probe: int, out: list[Output], now_ms: float) -> None:
        pending = self._probes.pop(probe, None)
        relay = self._relays.pop(probe, None)
        if relay is not None:
            requester, their_probe = relay
            known = self._peers.get(requester)
            if known is not None:
                out.append(Send(requester, known.addr, Ack(their_probe, self._piggyback())))
        if pending is not None:
            target = self._peers.get(pending.target)
            if target is not None and target.state == "suspect":
                self._set_state(pending.target, target, "alive", target.incarnation, now_ms)

    # --- anti-entropy --------------------------------------------------------------------

    def _start_anti_entropy(self, out: list[Output]) -> None:
        live = self._live()
        if not live:
            return
        peer = self.rng.choice(live)
        session, self._next_session = self._next_session, self._next_session + 1
        self._sessions[session] = peer
        if len(self._sessions) > 16:
            self._sessions.pop(next(iter(self._sessions)))
        digests = tuple(self.summary.digests())
        out.append(Send(peer, self._peers[peer].addr, Digest(session, digests)))

    def _on_entries(self, sender: str, addr: str, message: Entries, out: list[Output]) -> None:
        if self._sessions.pop(message.session, None) != sender:
            return  # not a reconciliation we started with this peer
        mine = self.summary.writers()
        ours = self.summary.missing_from(message.entries, message.buckets)
        if ours:
            ranges = {w: tuple(iv) for w, iv in ours.items()}
            out.append(SendOps(sender, addr, message.session, ranges))
        want: dict[str, tuple[Interval, ...]] = {}
        for writer, intervals in message.entries.items():
            lacking = SeqSet(intervals).difference(mine.get(writer, SeqSet()))
            if lacking:
                want[writer] = tuple(lacking)
        if want:
            out.append(Send(sender, addr, Want(message.session, want)))
