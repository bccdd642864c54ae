"""A deterministic simulator of gossip: the real :class:`GossipNode` code on a
virtual network, in virtual time.

The network loses, duplicates, delays (and so reorders) messages, can split
into two partitions that later heal, and can crash nodes and restart them
(their stores survive, everything else is lost). Everything random comes from
one seed: the same seed replays the same run, event for event, and
:attr:`SimResult.trace` (a hash of every delivery) proves it.

Agents learn their first peers as they would from the hub: a random sample of
the others (:data:`HUB_PEERS`); membership gossip does the rest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from chrysalis_memory.gossip.messages import (
    Ack,
    Digest,
    Entries,
    Message,
    OpLike,
    Ops,
    Ping,
    PingReq,
    Push,
    PushReply,
)
from chrysalis_memory.gossip.node import Deliver, GossipNode, GossipSettings, Send, SendOps

HUB_PEERS = 32
"""Peers an agent is introduced to when it joins (the hub's sample)."""
OP_BYTES = 450
"""Size of a typical op on the wire (see ``chrysalis bench``: bytes per op)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SimOp:
    writer: str
    seq: int
    cid: str
    size: int = OP_BYTES


@dataclasses.dataclass(frozen=True)
class Partition:
    """From ``start_ms`` to ``end_ms``, nodes in ``side`` and the rest cannot talk."""

    start_ms: float
    end_ms: float
    side: frozenset[str]


@dataclasses.dataclass(frozen=True)
class Crash:
    node: str
    at_ms: float
    restart_ms: float


@dataclasses.dataclass(frozen=True)
class NetworkSettings:
    loss: float = 0.0
    duplicate: float = 0.0
    min_delay_ms: float = 1.0
    max_delay_ms: float = 50.0


@dataclasses.dataclass
class SimResult:
    agents: int
    ops: int
    settings: GossipSettings
    network: NetworkSettings
    seed: int
    converged: bool
    time_to_fraction_ms: dict[str, float | None]
    """Simulated time until 50%, 99% and 100% of the agents held every op."""
    curve: list[tuple[float, float]]
    """(simulated ms, fraction of agents holding every op so far)."""
    messages: int
    bytes: int
    lost: int
    duplicated: int
    ops_missing: int
    trace: str
    wall_events: int

    @property
    def interval_ms(self) -> float:
        return self.settings.interval_ms

    def rounds(self, fraction: str) -> float | None:
        t = self.time_to_fraction_ms.get(fraction)
        return None if t is None else t / self.settings.interval_ms

    def theory_rounds(self) -> float:
        return expected_rounds(self.agents, self.settings.fanout)


def expected_rounds(n: int, fanout: int) -> float:
    """Push gossip reaches all of ``n`` in about log_{1+f} n + ln(n)/f rounds
    (Pittel 1987; Karp et al. 2000): exponential growth, then the last stragglers."""
    if n <= 1:
        return 0.0
    return math.log(n) / math.log(1 + fanout) + math.log(n) / fanout


def message_bytes(message: Message) -> int:
    """Bytes of a message on the wire, from the sizes of its fields as the codec
    writes them (JSON; ops verbatim; 8-byte digests in base64)."""
    members = 70 * len(getattr(message, "members", ()))
    if isinstance(message, Push | Ops):
        return 40 + members + sum(getattr(op, "size", OP_BYTES) + 1 for op in message.ops)
    if isinstance(message, PushReply):
        return 40 + members + 67 * len(message.had)
    if isinstance(message, Ping | Ack | PingReq):
        return 40 + members
    if isinstance(message, Digest):
        return 40 + 15 * len(message.digests)
    ranges = message.entries if isinstance(message, Entries) else message.want
    return 40 + sum(len(w) + 6 + 24 * len(iv) for w, iv in ranges.items())


class Simulation:
    def __init__(
        self,
        agents: int,
        settings: GossipSettings | None = None,
        network: NetworkSettings | None = None,
        *,
        seed: int = 1,
        partitions: Sequence[Partition] = (),
        crashes: Sequence[Crash] = (),
    ) -> None:
        if agents < 1:
            raise ValueError("agents must be at least 1")
        self.settings = settings or GossipSettings()
        self.network = network or NetworkSettings()
        self.seed = seed
        self.rng = random.Random(seed)
        self.ids = [f"a{i:05d}" for i in range(agents)]
        self.nodes: dict[str, GossipNode] = {}
        self.stores: dict[str, dict[tuple[str, int], OpLike]] = {}
        for agent in self.ids:
            rng = random.Random(self.rng.getrandbits(64))
            self.nodes[agent] = GossipNode(agent, agent, self.settings, rng=rng, now_ms=0.0)
            self.stores[agent] = {}
        for agent in self.ids:
            others = self.rng.sample(self.ids, min(HUB_PEERS + 1, agents))
            self.nodes[agent].add_peers({p: p for p in others if p != agent}, 0.0)
        self.partitions = list(partitions)
        self.down: set[str] = set()
        self._events: list[tuple[float, int, str, Any]] = []
        self._order = itertools.count()
        self._scheduled: dict[str, float] = {}
        self._trace = hashlib.blake2b(digest_size=16)
        self.messages = self.bytes = self.lost = self.duplicated = self.events = 0
        self.injected: list[OpLike] = []
        self._held: dict[str, int] = {}  # injected ops each agent holds
        self._complete = 0  # agents holding every injected op
        self.now = 0.0
        for agent in self.ids:
            self._schedule_tick(agent)
        for crash in crashes:
            self._push(crash.at_ms, "crash", crash.node)
            self._push(crash.restart_ms, "restart", crash.node)

    # --- the event queue -----------------------------------------------------------------

    def _push(self, at: float, kind: str, payload: Any) -> None:
        heapq.heappush(self._events, (at, next(self._order), kind, payload))

    def _schedule_tick(self, agent: str) -> None:
        if agent in self.down:
            return
        when = max(self.nodes[agent].next_deadline(), self.now)
        if when < self._scheduled.get(agent, math.inf):
            self._scheduled[agent] = when
            self._push(when, "tick", agent)

    # --- writing ---------------------------------------------------------------------------

    def inject(self, writer: str, count: int = 1) -> list[SimOp]:
        """``writer`` writes ``count`` ops now."""
        store = self.stores[writer]
        first = 1 + sum(1 for w, _ in store if w == writer)
        ops = [
            SimOp(writer, seq, hashlib.sha256(f"{writer}:{seq}".encode()).hexdigest())
            for seq in range(first, first + count)
        ]
        self.injected.extend(ops)
        self._store(writer, ops)
        total = len(self.injected)
        self._complete = sum(1 for held in self._held.values() if held == total)
        self._schedule_tick(writer)
        return ops

    def _store(self, agent: str, ops: Sequence[OpLike]) -> None:
        store = self.stores[agent]
        fresh = self.nodes[agent].accepted(ops, self.now)
        for op in fresh:
            store[(op.writer, op.seq)] = op
        if fresh:
            held = self._held[agent] = self._held.get(agent, 0) + len(fresh)
            if held == len(self.injected):
                self._complete += 1

    @property
    def complete_fraction(self) -> float:
        return self._complete / len(self.ids)

    # --- running --------------------------------------------------------------------------

    def run(
        self,
        until_ms: float,
        *,
        stop_when_complete: bool = True,
        progress: Callable[[float, float], None] | None = None,
    ) -> SimResult:
        """Advance virtual time to ``until_ms`` (or until every agent holds every op)."""
        marks = {"50%": 0.5, "99%": 0.99, "100%": 1.0}
        reached: dict[str, float | None] = dict.fromkeys(marks)
        curve: list[tuple[float, float]] = [(self.now, self.complete_fraction)]
        while self._events and self._events[0][0] <= until_ms:
            at, _, kind, payload = heapq.heappop(self._events)
            self.now = at
            self.events += 1
            before = self._complete
            if kind == "tick":
                if self._scheduled.get(payload) != at:
                    continue
                del self._scheduled[payload]
                if payload not in self.down:  # a crashed node is woken by its restart
                    self._carry_out(payload, self.nodes[payload].tick(at))
            elif kind == "deliver":
                self._deliver(*payload)
            elif kind == "crash":
                self.down.add(payload)
            elif kind == "restart":
                self.down.discard(payload)
                self.nodes[payload].restart(at)
                self._scheduled.pop(payload, None)
                self._schedule_tick(payload)
            if self._complete != before:
                fraction = self.complete_fraction
                curve.append((at, fraction))
                for name, level in marks.items():
                    if reached[name] is None and fraction >= level:
                        reached[name] = at
                if progress is not None:
                    progress(at, fraction)
            if stop_when_complete and self.injected and self._complete == len(self.ids):
                break
        missing = sum(
            1
            for agent in self.ids
            for op in self.injected
            if (op.writer, op.seq) not in self.stores[agent]
        )
        return SimResult(
            agents=len(self.ids),
            ops=len(self.injected),
            settings=self.settings,
            network=self.network,
            seed=self.seed,
            converged=missing == 0,
            time_to_fraction_ms=reached,
            curve=curve,
            messages=self.messages,
            bytes=self.bytes,
            lost=self.lost,
            duplicated=self.duplicated,
            ops_missing=missing,
            trace=self._trace.hexdigest(),
            wall_events=self.events,
        )

    def _carry_out(self, agent: str, outputs: Sequence[Send | SendOps | Deliver]) -> None:
        for output in outputs:
            if isinstance(output, Deliver):
                self._store(agent, output.ops)  # the simulator's ops need no verifying
            elif isinstance(output, SendOps):
                store = self.stores[agent]
                ops = tuple(
                    store[(writer, seq)]
                    for writer, intervals in output.ranges.items()
                    for first, last in intervals
                    for seq in range(first, last + 1)
                    if (writer, seq) in store
                )
                if ops:
                    self._send(agent, output.addr, Ops(output.session, ops))
            else:
                self._send(agent, output.addr, output.message)
        self._schedule_tick(agent)

    def _send(self, sender: str, to: str, message: Message) -> None:
        self.messages += 1
        self.bytes += message_bytes(message)
        net = self.network
        if to not in self.nodes or self._cut(sender, to) or self.rng.random() < net.loss:
            self.lost += 1
            return
        copies = 2 if self.rng.random() < net.duplicate else 1
        self.duplicated += copies - 1
        for _ in range(copies):
            delay = self.rng.uniform(net.min_delay_ms, net.max_delay_ms)
            self._push(self.now + delay, "deliver", (sender, to, message))

    def _cut(self, a: str, b: str) -> bool:
        return any(
            p.start_ms <= self.now < p.end_ms and ((a in p.side) != (b in p.side))
            for p in self.partitions
        )

    def _deliver(self, sender: str, to: str, message: Message) -> None:
        if to in self.down or self._cut(sender, to):
            self.lost += 1
            return
        self._trace.update(f"{self.now:.6f}|{sender}|{to}|{type(message).__name__}".encode())
        self._carry_out(to, self.nodes[to].receive(sender, sender, message, self.now))


def run_dissemination(
    agents: int,
    *,
    fanout: int = 3,
    interval_ms: float = 500.0,
    loss: float = 0.0,
    seed: int = 1,
    anti_entropy_interval_ms: float | None = 5000.0,
    until_ms: float | None = None,
    progress: Callable[[float, float], None] | None = None,
) -> SimResult:
    """One op written by a random agent: how long until everyone holds it
    (what ``chrysalis simulate`` runs)."""
    settings = GossipSettings(
        fanout=fanout, interval_ms=interval_ms, anti_entropy_interval_ms=anti_entropy_interval_ms
    )
    sim = Simulation(agents, settings, NetworkSettings(loss=loss), seed=seed)
    # Let membership settle for a round, as after agents joined through the hub.
    sim.run(interval_ms, stop_when_complete=False)
    start = sim.now = interval_ms
    sim.inject(sim.rng.choice(sim.ids))
    limit = until_ms if until_ms is not None else start + 60 * interval_ms
    result = sim.run(limit, progress=progress)
    result.time_to_fraction_ms = {
        k: None if v is None else v - start for k, v in result.time_to_fraction_ms.items()
    }
    result.curve = [(t - start, f) for t, f in result.curve]
    return result


@dataclasses.dataclass(frozen=True)
class Reconciliation:
    ops: int
    differing: int
    writers: int
    messages: int
    bytes: int
    op_bytes: int
    """Of ``bytes``, the ops themselves (the rest is digests, entries and requests)."""
    converged: bool


def measure_reconciliation(
    ops: int = 100_000, differing: int = 100, writers: int = 100, *, seed: int = 1
) -> Reconciliation:
    """Two replicas of ``ops`` ops by ``writers`` writers that differ by ``differing``
    ops (half missing on each side): one anti-entropy exchange, counted in bytes."""
    rng = random.Random(seed)
    settings = GossipSettings(anti_entropy_interval_ms=1000.0)
    a = GossipNode("a", "a", settings, rng=random.Random(seed))
    b = GossipNode("b", "b", settings, rng=random.Random(seed + 1))
    a.add_peers({"b": "b"}, 0.0)
    b.add_peers({"a": "a"}, 0.0)
    all_ops = [
        SimOp(f"writer-{w:04d}", seq, f"{w}:{seq}")
        for w in range(writers)
        for seq in range(1, ops // writers + 1)
    ]
    left_out = rng.sample(range(len(all_ops)), differing)
    lacking = {"b": set(left_out[: differing // 2]), "a": set(left_out[differing // 2 :])}
    stores: dict[str, dict[tuple[str, int], OpLike]] = {"a": {}, "b": {}}
    for i, op in enumerate(all_ops):
        for side, node in (("a", a), ("b", b)):
            if i not in lacking[side]:
                stores[side][(op.writer, op.seq)] = op
                node.summary.add(op.writer, op.seq)
    nodes = {"a": a, "b": b}
    queue: list[tuple[str, str, Message]] = []
    counted = {"messages": 0, "bytes": 0, "op_bytes": 0}

    def carry_out(agent: str, outputs: Sequence[Send | SendOps | Deliver]) -> None:
        for output in outputs:
            if isinstance(output, Deliver):
                stores[agent].update(((op.writer, op.seq), op) for op in output.ops)
                nodes[agent].accepted(output.ops, 0.0)
                continue
            if isinstance(output, SendOps):
                found = tuple(
                    stores[agent][(w, s)]
                    for w, intervals in output.ranges.items()
                    for first, last in intervals
                    for s in range(first, last + 1)
                    if (w, s) in stores[agent]
                )
                message: Message = Ops(output.session, found)
            else:
                message = output.message
                if isinstance(message, Push | Ping | PingReq | Ack | PushReply):
                    continue  # rumours and probes are not part of reconciliation
            size = message_bytes(message)
            counted["messages"] += 1
            counted["bytes"] += size
            if isinstance(message, Ops):
                counted["op_bytes"] += size
            queue.append((agent, output.to, message))

    a._next_ae = 0.0  # reconcile now
    carry_out("a", a.tick(0.0))
    while queue:
        sender, to, message = queue.pop(0)
        carry_out(to, nodes[to].receive(sender, sender, message, 0.0))
    return Reconciliation(
        ops=len(all_ops),
        differing=differing,
        writers=writers,
        messages=counted["messages"],
        bytes=counted["bytes"],
        op_bytes=counted["op_bytes"],
        converged=stores["a"].keys() == stores["b"].keys() == {(o.writer, o.seq) for o in all_ops},
    )
