"""The nemesis: a seeded, websocket-aware TCP proxy on loopback that sits between
agents and the hub and breaks what passes through it (in the spirit of Jepsen's
nemesis).

Each agent gets its own listening port (:meth:`Nemesis.link`), so the nemesis
knows whose connection it is holding. Bytes are forwarded verbatim: the HTTP
upgrade (tokens, 401s and 503s included) and then websocket frames, which the
nemesis parses (header, length, mask) without re-encoding them, so pings, pongs
and close frames travel end to end as they would through a real network path.
Every message frame can then be, per :class:`Faults`:

* **delayed**: held for a random time, first in first out per direction, so
  frames of different connections (and agents) arrive reordered relative to each
  other;
* **duplicated**: delivered twice;
* **lost with its connection** (``cut``): the frame, and every frame still queued
  either way, is dropped and both sockets are reset (RST), as a broken path
  loses what is in flight;
* for the hub's live ``update`` frames only, **lost silently** (``drop_update``)
  or **reordered** after the next frame (``swap_update``): the protocol must
  notice the gap and pull it.

Besides, on command: :meth:`cut` resets every connection of a link now, and
:meth:`partition` cuts links off for a window: frames on their open connections
are held (black-holed), and new connections are either refused (reset at once)
or black-holed (accepted, never answered); :meth:`heal` then either delivers
what was held, in order (the path came back), or resets the connection (the
path's state was lost), a seeded coin for each.

Every decision comes from one seed (a generator per connection, seeded from the
nemesis's seed, the link and the connection's number), and :attr:`Nemesis.counts`
says what was done, by kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import re
import socket
import struct
from collections import Counter, deque
from collections.abc import Iterable

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
_TYPE = re.compile(rb'"type"\s*:\s*"([a-z_]+)"')
_HEAD_LIMIT = 64 << 10  # an HTTP head longer than this is not a websocket upgrade


@dataclasses.dataclass(frozen=True)
class Faults:
    """What the nemesis does to message frames (probabilities per frame)."""

    max_delay_ms: float = 0.0
    duplicate: float = 0.0
    cut: float = 0.0
    drop_update: float = 0.0
    swap_update: float = 0.0


CALM = Faults()


def _unmask(data: bytes, mask: bytes) -> bytes:
    return bytes(b ^ mask[i % 4] for i, b in enumerate(data))


def _parse(buf: bytearray) -> tuple[int, int, bool, bytes] | None:
    """The first complete frame of ``buf``: (its length in bytes, opcode, FIN, the
    first bytes of its payload, unmasked), or None if it is not all there yet."""
    if len(buf) < 2:
        return None
    b0, b1 = buf[0], buf[1]
    length, at = b1 & 0x7F, 2
    if length == 126:
        if len(buf) < 4:
            return None
        length, at = int.from_bytes(buf[2:4], "big"), 4
    elif length == 127:
        if len(buf) < 10:
            return None
        length, at = int.from_bytes(buf[2:10], "big"), 10
    mask = b""
    if b1 & 0x80:
        if len(buf) < at + 4:
            return None
        mask, at = bytes(buf[at : at + 4]), at + 4
    total = at + length
    if len(buf) < total:
        return None
    head = bytes(buf[at : at + min(length, 96)])
    return total, b0 & 0x0F, bool(b0 & 0x80), _unmask(head, mask) if mask else head


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, not a FIN: the peer sees the path break."""
    if writer.transport.is_closing():
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Direction:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, to_agent: bool):
        self.reader = reader
        self.writer = writer
        self.to_agent = to_agent
        self.queue: deque[tuple[float, bytes]] = deque()
        self.wake = asyncio.Event()
        self.eof = False
        self.last_due = 0.0
        self.swapped: bytes | None = None


class _Pipe:
    """One agent connection through the nemesis: agent <-> nemesis <-> hub."""

    def __init__(
        self,
        link: _Link,
        number: int,
        agent: tuple[asyncio.StreamReader, asyncio.StreamWriter],
        hub: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    ) -> None:
        self.link = link
        self.number = number
        self.nemesis = link.nemesis
        self.rng = random.Random(f"{self.nemesis.seed}/{link.name}/{number}")
        self.up = _Direction(agent[0], hub[1], to_agent=False)
        self.down = _Direction(hub[0], agent[1], to_agent=True)
        self.raw = False  # not a websocket (a refused upgrade): bytes pass as they are
        self.closed = False
        self.held = False  # counted once as held by the current partition
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._read(self.up)),
            loop.create_task(self._read(self.down)),
            loop.create_task(self._write(self.up)),
            loop.create_task(self._write(self.down)),
        ]

    # --- reading and deciding --------------------------------------------------------

    async def _read(self, d: _Direction) -> None:
        buf = bytearray()
        handshake = True
        try:
            while True:
                chunk = await d.reader.read(1 << 16)
                if not chunk:
                    break
                if self.raw:
                    self._put(d, bytes(chunk))
                    continue
                buf += chunk
                if handshake:
                    end = buf.find(b"\r\n\r\n")
                    if end < 0:
                        if len(buf) > _HEAD_LIMIT:
                            self.raw = True
                            self._put(d, bytes(buf))
                            buf.clear()
                        continue
                    head = bytes(buf[: end + 4])
                    del buf[: end + 4]
                    handshake = False
                    self._put(d, head)
                    if d.to_agent and not head.startswith(b"HTTP/1.1 101"):
                        self.raw = True
                        if buf:
                            self._put(d, bytes(buf))
                            buf.clear()
                        continue
                while (frame := _parse(buf)) is not None:
                    total, opcode, fin, payload = frame
                    data = bytes(buf[:total])
                    del buf[:total]
                    self._frame(d, data, opcode, fin, payload)
                    if self.closed:
                        return
        except (ConnectionError, OSError):
            self.reset(lost=False)
            return
        except Exception:  # a bug of the nemesis: counted, and the tests fail on it
            self._broken()
            return
        d.eof = True
        d.wake.set()

    def _frame(self, d: _Direction, data: bytes, opcode: int, fin: bool, payload: bytes) -> None:
        faults, counts, rng = self.nemesis.faults, self.nemesis.counts, self.rng
        copies = 1
        if self.link.partitioned:  # held, not on the path: the heal decides its fate
            counts["frames held (partition)"] += opcode in (1, 2)
            self._put(d, data)
            return
        if opcode in (1, 2) and fin:  # a whole text or binary message
            counts["frames"] += 1
            found = _TYPE.search(payload)
            kind = found[1].decode() if found else "?"
            if faults.cut and rng.random() < faults.cut:
                counts["frames lost in random cuts"] += 1
                counts["random cuts"] += 1
                self.reset()
                return
            if d.to_agent and kind == "update":
                if faults.drop_update and rng.random() < faults.drop_update:
                    counts["updates lost"] += 1
                    return
                if d.swapped is None and faults.swap_update and rng.random() < faults.swap_update:
                    counts["updates reordered"] += 1
                    d.swapped = data
                    asyncio.get_running_loop().call_later(0.2, self._release, d, data)
                    return
            if faults.duplicate and rng.random() < faults.duplicate:
                counts["frames duplicated"] += 1
                copies = 2
        for _ in range(copies):
            self._put(d, data)
        if d.swapped is not None and opcode in (1, 2):
            self._release(d, d.swapped)

    def _release(self, d: _Direction, data: bytes) -> None:
        if d.swapped is data and not self.closed:
            d.swapped = None
            self._put(d, data)

    def _put(self, d: _Direction, data: bytes) -> None:
        loop = asyncio.get_running_loop()
        delay = self.rng.uniform(0, self.nemesis.faults.max_delay_ms) / 1000
        d.last_due = max(d.last_due, loop.time() + delay)
        d.queue.append((d.last_due, data))
        d.wake.set()

    # --- writing --------------------------------------------------------------------

    async def _write(self, d: _Direction) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while not d.queue:
                    if d.eof:
                        if not d.writer.transport.is_closing():
                            with contextlib.suppress(OSError):
                                d.writer.write_eof()
                        return
                    d.wake.clear()
                    await d.wake.wait()
                if self.link.partitioned:
                    await self.link.healed.wait()
                    continue
                due, data = d.queue[0]
                if due > loop.time():
                    # The delay is the fault being injected, not a wait for a condition.
                    await asyncio.sleep(due - loop.time())
                    continue
                d.queue.popleft()
                d.writer.write(data)
                await d.writer.drain()
        except (ConnectionError, OSError):
            self.reset(lost=False)
        except Exception:
            self._broken()

    # --- ending ------------------------------------------------------------------------

    def _broken(self) -> None:
        self.nemesis.counts["nemesis errors"] += 1
        log.exception("nemesis: %s connection %s failed", self.link.name, self.number)
        self.reset(lost=False)

    def reset(self, *, lost: bool = True) -> None:
        """Drop whatever is queued either way and reset both sockets."""
        if self.closed:
            return
        self.closed = True
        if lost:
            frames = len(self.up.queue) + len(self.down.queue)
            self.nemesis.counts["frames lost with their connection"] += frames
        for d in (self.up, self.down):
            d.queue.clear()
            _reset(d.writer)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        self.link.pipes.discard(self)

    async def finished(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*self.tasks, return_exceptions=True)
        self.closed = True
        self.link.pipes.discard(self)
        for d in (self.up, self.down):
            d.writer.close()


class _Link:
    """The nemesis's listening port for one agent."""

    def __init__(self, nemesis: Nemesis, name: str) -> None:
        self.nemesis = nemesis
        self.name = name
        self.pipes: set[_Pipe] = set()
        self.connections = 0
        self.partitioned = False
        self.healed = asyncio.Event()
        self.healed.set()
        self.blackholed: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nemesis = self.nemesis
        self.connections += 1
        number = self.connections
        nemesis.counts["connections"] += 1
        if self.partitioned:
            rng = random.Random(f"{nemesis.seed}/{self.name}/{number}/partition")
            if rng.random() < 0.5:
                nemesis.counts["connections refused (partition)"] += 1
                _reset(writer)
            else:
                nemesis.counts["connections black-holed (partition)"] += 1
                self.blackholed.append(writer)
            return
        try:
            hub = await asyncio.open_connection(HOST, nemesis.upstream_port)
        except OSError:
            nemesis.counts["connections refused (hub down)"] += 1
            _reset(writer)
            return
        pipe = _Pipe(self, number, (reader, writer), hub)
        self.pipes.add(pipe)
        await pipe.finished()


class Nemesis:
    """Proxies agents' connections to the websocket server at ``upstream_port``."""

    def __init__(self, upstream_port: int, *, seed: int, faults: Faults = CALM) -> None:
        self.upstream_port = upstream_port
        self.seed = seed
        self.faults = faults
        self.counts: Counter[str] = Counter()
        self.links: dict[str, _Link] = {}

    async def link(self, name: str) -> str:
        """A port for ``name``'s connections; returns the ``ws://`` URL to give it."""
        link = self.links[name] = _Link(self, name)
        link.server = await asyncio.start_server(link._accept, HOST, 0)
        link.port = int(link.server.sockets[0].getsockname()[1])
        return f"ws://{HOST}:{link.port}"

    def cut(self, name: str) -> int:
        """Reset every connection of ``name`` now; returns how many there were."""
        pipes = list(self.links[name].pipes)
        for pipe in pipes:
            pipe.reset()
        self.counts["scheduled cuts"] += 1
        return len(pipes)

    def partition(self, names: Iterable[str]) -> None:
        """Cut ``names`` off the hub until :meth:`heal`."""
        self.counts["partitions"] += 1
        for name in names:
            link = self.links[name]
            link.partitioned = True
            link.healed.clear()
            for pipe in link.pipes:
                if not pipe.held:
                    pipe.held = True
                    self.counts["connections held (partition)"] += 1

    def heal(self) -> None:
        """End every partition: each held connection either resumes (what it held is
        delivered, in order) or is reset, by a seeded coin."""
        for name, link in self.links.items():
            if not link.partitioned:
                continue
            link.partitioned = False
            rng = random.Random(f"{self.seed}/{name}/heal/{self.counts['partitions']}")
            for pipe in list(link.pipes):
                if pipe.held:
                    pipe.held = False
                    if rng.random() < 0.5:
                        self.counts["held connections resumed"] += 1
                    else:
                        self.counts["held connections reset"] += 1
                        pipe.reset()
            for writer in link.blackholed:
                _reset(writer)
            link.blackholed.clear()
            link.healed.set()

    async def close(self) -> None:
        self.heal()
        for link in self.links.values():
            assert link.server is not None
            link.server.close()
            for pipe in list(link.pipes):
                pipe.reset(lost=False)
        for link in self.links.values():
            assert link.server is not None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(link.server.wait_closed(), 5)
