"""What the hub lets its agents take: search work and memory, counted and bounded.

Pure bookkeeping on asyncio primitives; the hub (:mod:`.server`) decides what to
do at a limit (refuse with a reason, drop a connection).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

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


class SendQueues:
    """The frames queued for the hub's connections, counted in bytes.

    Each connection's queue holds at most ``per_queue`` bytes and ``frames``
    frames (an empty queue always takes one frame); all of them together at most
    ``total`` bytes, a frame queued for several connections (a relayed update,
    encoded once) counting once. A frame counts from the moment it is queued
    until its write returns; while it is being written it counts once more for
    that connection, for the copy its transport keeps of what the network has
    not taken yet (all of it, for a peer that does not read).

    At a limit, :meth:`SendQueue.put` says no and calls the ``on_overflow`` of
    the connection to drop: the one that would pass its own limit, or, when
    the total would be passed, the one holding the most (the slowest reader),
    again until the frame fits.
    """

    def __init__(self, *, per_queue: int, frames: int, total: int) -> None:
        self.per_queue, self.frames, self.total = per_queue, frames, total
        self.bytes = 0
        """Bytes of distinct frames queued (or being written), in all."""
        self._refs: dict[int, list[int]] = {}  # id(frame) -> [size, queues holding it]
        self._queues: set[SendQueue] = set()

    def open(self, on_overflow: Callable[[str], None]) -> SendQueue:
        queue = SendQueue(self, on_overflow)
        self._queues.add(queue)
        return queue

    def _hold(self, frame: bytes) -> None:
        ref = self._refs.get(id(frame))
        if ref is None:
            self._refs[id(frame)] = [len(frame), 1]
            self.bytes += len(frame)
        else:
            ref[1] += 1

    def _release(self, frame: bytes) -> None:
        ref = self._refs[id(frame)]
        ref[1] -= 1
        if not ref[1]:
            del self._refs[id(frame)]
            self.bytes -= ref[0]

    def _put(self, queue: SendQueue, frame: bytes) -> bool:
        size = len(frame)
        if queue.frames and (queue.frames >= self.frames or queue.bytes + size > self.per_queue):
            queue.overflow(
                f"its send queue would pass {self.per_queue} bytes or {self.frames} frames "
                "(send_queue_bytes, send_queue_frames)"
            )
            return False
        while id(frame) not in self._refs and self.bytes + size > self.total:
            largest = max(self._queues, key=lambda q: q.bytes)
            reason = (
                f"it holds the most of the hub's send queues ({largest.bytes} bytes) when "
                f"they reach send_queue_total_bytes ({self.total})"
            )
            largest.overflow(reason)  # it leaves the set: the loop ends
            if largest is queue:
                return False
        self._hold(frame)
        queue.bytes += size
        queue.frames += 1
        queue._items.put_nowait(frame)
        return True

    def _copied(self, queue: SendQueue, size: int) -> None:
        """The writer of ``queue`` hands a frame to its transport, which keeps its own
        copy of what the network does not take at once: counted until it is written."""
        self.bytes += size
        queue.bytes += size
        while self.bytes > self.total and self._queues:
            largest = max(self._queues, key=lambda q: q.bytes)
            largest.overflow(
                f"it holds the most of the hub's send queues ({largest.bytes} bytes) when "
                f"they reach send_queue_total_bytes ({self.total})"
            )


class SendQueue:
    """One connection's queue of frames to write (see :class:`SendQueues`)."""

    def __init__(self, owner: SendQueues, on_overflow: Callable[[str], None]) -> None:
        self._owner = owner
        self._on_overflow = on_overflow
        self._items: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._writing: list[bytes] = []
        self.bytes = 0
        """Bytes queued, the frame being written counted twice (see :class:`SendQueues`)."""
        self.frames = 0
        self.closed = False

    def put(self, frame: bytes) -> bool:
        """Queue ``frame``; False if it does not fit (this connection or another one
        was dropped, see :class:`SendQueues`) or the queue is closed."""
        if self.closed:
            return False
        return self._owner._put(self, frame)

    def put_end(self) -> None:
        """Queue the end: the writer stops when it gets there."""
        self._items.put_nowait(None)

    async def get(self) -> bytes | None:
        """The next frame to write; call :meth:`sent` once done with it."""
        frame = await self._items.get()
        if frame is not None and not self.closed:
            self._writing.append(frame)
            self._owner._copied(self, len(frame))
        return frame

    def sent(self, frame: bytes | None) -> None:
        """The writer is done with ``frame`` (written, or the write failed)."""
        for i, writing in enumerate(self._writing):
            if writing is frame:
                del self._writing[i]
                self._release(writing, copied=True)
                break
        self._items.task_done()

    async def join(self) -> None:
        """Until everything queued has been written."""
        await self._items.join()

    def overflow(self, reason: str) -> None:
        if not self.closed:
            self._on_overflow(reason)
            self.close()

    def close(self) -> None:
        """Forget everything queued (the connection is gone, or being dropped): its
        bytes no longer count, not even the frame the writer may still hold."""
        if self.closed:
            return
        self.closed = True
        while not self._items.empty():
            frame = self._items.get_nowait()
            if frame is not None:
                self._release(frame)
            self._items.task_done()
        for frame in self._writing:
            self._release(frame, copied=True)
        self._writing.clear()
        self._owner._queues.discard(self)

    def _release(self, frame: bytes, *, copied: bool = False) -> None:
        self._owner._release(frame)
        size = len(frame)
        if copied:
            self._owner.bytes -= size
            self.bytes -= size
        self.bytes -= size
        self.frames -= 1


class Reader(Protocol):
    """A connection whose reading can be paused (an asyncio transport's, in the hub)."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class ReceiveBudget:
    """Bytes the hub holds of what its connections sent, bounded in all.

    Each connection reports, whenever it changes, how many bytes it holds: read
    from its socket but not parsed into a whole frame yet, frames not handed to
    its session yet, and the message its session is handling (weighed for what
    decoding it costs). Reading is paused:

    * on a connection holding more than ``per_connection``, until its session
      has taken what it holds (a frame is at most ``per_connection``, so a
      connection paused for this always has a whole frame to hand on);
    * on every connection but ``slots`` of them while the total is over
      ``total``, until it is back under three quarters of it. The connections
      allowed on hold part of a frame: they finish it and hand it on, so the
      hub is never stuck with every connection paused halfway through a frame.

    The bytes a paused connection's peer goes on sending wait in the kernel, not
    in the hub. The total stays under ``total + slots * (per_connection + held
    message) + one read``, however many connections send at once.
    """

    def __init__(self, *, total: int, per_connection: int, slots: int = 1) -> None:
        self.total, self.per_connection, self.slots = total, per_connection, slots
        self.low = total * 3 // 4
        self.bytes = 0
        self._sizes: dict[Reader, int] = {}
        self._paused: dict[Reader, None] = {}  # in the order they were paused
        self._active: set[Reader] = set()
        self._over = False

    @property
    def paused(self) -> int:
        return len(self._paused)

    def update(self, reader: Reader, size: int) -> None:
        """``reader`` holds ``size`` bytes now."""
        self.bytes += size - self._sizes.get(reader, 0)
        self._sizes[reader] = size
        if not size:
            self._active.discard(reader)
        self._settle(reader)

    def remove(self, reader: Reader) -> None:
        """``reader`` is gone (its connection was lost)."""
        self.bytes -= self._sizes.pop(reader, 0)
        self._paused.pop(reader, None)
        self._active.discard(reader)
        self._settle(None)

    def _settle(self, reader: Reader | None) -> None:
        was_over = self._over
        if not was_over and self.bytes > self.total:
            self._over = True
        elif was_over and self.bytes <= self.low:
            self._over = False
        if self._over:
            # Who may read on: the one that just crossed, if it holds part of a
            # frame, then those paused longest that do.
            for candidate in (reader, *self._paused):
                if len(self._active) >= self.slots:
                    break
                if candidate is not None and 0 < self._sizes[candidate] <= self.per_connection:
                    self._active.add(candidate)
                    self._apply(candidate)
        if self._over != was_over:
            for each in list(self._sizes):
                self._apply(each)
        elif reader is not None:
            self._apply(reader)

    def _apply(self, reader: Reader) -> None:
        reads = self._sizes[reader] <= self.per_connection and (
            not self._over or reader in self._active
        )
        if reads and reader in self._paused:
            del self._paused[reader]
            reader.resume_reading()
        elif not reads and reader not in self._paused:
            self._paused[reader] = None
            reader.pause_reading()
