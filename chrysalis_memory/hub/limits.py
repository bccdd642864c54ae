"""What the hub lets its agents take: search work and memory, counted and bounded.

Pure bookkeeping on asyncio primitives; the hub (:mod:`.server`) decides what to
do at a limit (refuse with a reason, drop a connection).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from chrysalis_memory.errors import HubBusyError


class SearchPool:
    """Remote searches: ``workers`` run at once in all, at most ``queued`` more wait
    for one, and one agent has at most ``per_agent`` running or waiting.

    :meth:`admit` decides at once (a search over a limit is refused with
    :class:`HubBusyError` saying which, before any work is done or any memory
    held for it); the admitted search then waits for a worker with
    ``async with ticket:``. Sync never goes through the pool, so pushes and
    pulls never wait behind searches.
    """

    def __init__(self, *, workers: int, queued: int, per_agent: int) -> None:
        self.workers, self.queued, self.per_agent = workers, queued, per_agent
        self._slots = asyncio.Semaphore(workers)
        self._by_agent: dict[str, int] = {}
        self.running = 0
        self.waiting = 0

    def admit(self, agent: str) -> SearchTicket:
        mine = self._by_agent.get(agent, 0)
        if mine >= self.per_agent:
            raise HubBusyError(
                f"agent {agent!r} already has {mine} searches in progress, the most the hub "
                "allows (max_searches_per_agent): wait for their answers",
                reason="agent_limit",
            )
        if self.running >= self.workers and self.waiting >= self.queued:
            raise HubBusyError(
                f"the hub is busy: {self.waiting} searches are waiting for its "
                f"{self.workers} search workers (max_queued_searches): retry later",
                reason="busy",
            )
        self._by_agent[agent] = mine + 1
        self.waiting += 1
        return SearchTicket(self, agent)

    def _done(self, agent: str) -> None:
        left = self._by_agent[agent] - 1
        if left:
            self._by_agent[agent] = left
        else:
            del self._by_agent[agent]


class SearchTicket:
    """An admitted search: ``async with`` waits for a worker and holds it.

    Whether it ran or was cancelled while waiting, leaving the block gives back
    everything it held. A ticket never entered must be :meth:`cancel`-led.
    """

    def __init__(self, pool: SearchPool, agent: str) -> None:
        self._pool, self._agent = pool, agent
        self._state = "waiting"

    async def __aenter__(self) -> None:
        pool = self._pool
        try:
            await pool._slots.acquire()
        except BaseException:
            self.cancel()
            raise
        pool.waiting -= 1
        pool.running += 1
        self._state = "running"

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state == "running":
            pool = self._pool
            pool.running -= 1
            pool._slots.release()
            pool._done(self._agent)
            self._state = "done"

    def cancel(self) -> None:
        """Give back a ticket that never got a worker."""
        if self._state == "waiting":
            self._pool.waiting -= 1
            self._pool._done(self._agent)
            self._state = "done"
