"""The hub's registry of agents: what each has pushed and what each has seen.

Per agent it keeps a Merkle-clock entry for what the agent wrote (the highest
sequence number accepted from it, and that op's CID, which names the op and,
through its causal parents, everything the agent had seen when writing it) and
the position in the hub's log up to which the agent holds every op. The
difference between the hub's head and that position is the agent's lag.

Pure bookkeeping: the hub persists :meth:`Registry.dump` in its store.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from chrysalis_memory.model.ops import Op

log = logging.getLogger(__name__)


@dataclasses.dataclass
class AgentClock:
    agent_id: str
    pushed_seq: int = 0
    """Highest sequence number of the agent's ops the hub accepted."""
    pushed_cid: str | None = None
    """The CID of that op."""
    pushed_ops: int = 0
    """Ops of the agent the hub stored (first arrivals only)."""
    seen: int = 0
    """Position in the hub's log up to which the agent holds every op."""
    connections: int = 0
    last_seen_ms: int = 0


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class Registry:
    def __init__(self) -> None:
        self._agents: dict[str, AgentClock] = {}
        self.dirty = False

    def __len__(self) -> int:
        return len(self._agents)

    def get(self, agent_id: str) -> AgentClock:
        clock = self._agents.get(agent_id)
        if clock is None:
            clock = self._agents[agent_id] = AgentClock(agent_id)
        return clock

    def agents(self) -> list[AgentClock]:
        return [self._agents[a] for a in sorted(self._agents)]

    def connected(self, agent_id: str, cursor: int) -> None:
        clock = self.get(agent_id)
        clock.connections += 1
        clock.seen = cursor
        clock.last_seen_ms = _now_ms()
        self.dirty = True

    def disconnected(self, agent_id: str) -> None:
        clock = self.get(agent_id)
        clock.connections = max(0, clock.connections - 1)
        clock.last_seen_ms = _now_ms()
        self.dirty = True

    def saw(self, agent_id: str, cursor: int) -> None:
        clock = self.get(agent_id)
        if cursor > clock.seen:
            clock.seen = cursor
            self.dirty = True

    def stored(self, ops: Iterable[Op]) -> None:
        """Ops the hub just stored, by whoever wrote them."""
        for op in ops:
            clock = self.get(op.writer)
            clock.pushed_ops += 1
            if op.seq > clock.pushed_seq:
                clock.pushed_seq, clock.pushed_cid = op.seq, op.cid
            self.dirty = True

    def lag(self, head: int) -> dict[str, int]:
        """Ops of the hub's log each connected agent does not hold yet."""
        return {
            clock.agent_id: max(0, head - clock.seen)
            for clock in self.agents()
            if clock.connections
        }

    def dump(self) -> str:
        self.dirty = False
        return json.dumps(
            [dataclasses.asdict(clock) | {"connections": 0} for clock in self.agents()],
            separators=(",", ":"),
        )

    @classmethod
    def load(cls, text: str | None) -> Registry:
        """The registry saved by :meth:`dump` (nobody is connected after a restart)."""
        registry = cls()
        if not text:
            return registry
        fields = {f.name for f in dataclasses.fields(AgentClock)}
        try:
            entries: Any = json.loads(text)
            clocks = [AgentClock(**{k: v for k, v in e.items() if k in fields}) for e in entries]
        except (ValueError, TypeError, AttributeError) as error:  # a damaged database row
            log.warning(
                "the hub's saved agent registry cannot be read (%s): starting with an empty "
                "one, which agents fill again as they connect",
                error,
            )
            return registry
        for clock in clocks:
            clock.connections = 0
            registry._agents[clock.agent_id] = clock
        return registry
