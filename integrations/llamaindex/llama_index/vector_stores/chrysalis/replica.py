"""The :class:`~chrysalis_memory.AgentMemory` behind the LlamaIndex adapters, and
the event loop it runs on.

An ``AgentMemory`` belongs to one event loop (its locks, its sync connection and
its recall indexer live there). LlamaIndex calls adapters from plain code, from
async code, and from threads of its own (``asyncio_run`` runs a coroutine on a
new loop in a worker thread when a loop is already running). So every call to
the memory is sent to the loop that owns it:

* a memory an adapter opens itself (from config keywords, or none) runs on a
  private loop in a daemon thread: sync and async methods work from anywhere,
  Jupyter included;
* a ``BlockingAgentMemory`` passed as ``memory=`` runs on its own background
  loop: the same, sync and async methods work from anywhere;
* an ``AgentMemory`` passed as ``memory=`` belongs to the loop that was running
  when the adapter was made (or, if none was, to a private loop, where the
  adapter opens it if needed). From that loop, use the async methods: a blocking
  method called inside the loop that owns the memory would wait for itself, and
  raises :class:`~chrysalis_memory.errors.UsageError` instead; a loop blocked by
  a blocking LlamaIndex method that waits for the adapter is detected after
  :data:`START_TIMEOUT` seconds, with a ``UsageError`` rather than a hang.

Adapters made from the same config (same agent store) in one process share one
replica, and so do adapters given the same ``AgentMemory``: one process owns an
agent's data directory.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from typing_extensions import Self

from chrysalis_memory import AgentMemory, AgentMemoryConfig, BlockingAgentMemory
from chrysalis_memory.blocking import LoopThread
from chrysalis_memory.errors import UsageError
from chrysalis_memory.recall.embedders import Embedder

__all__ = ["CONFIG_KEYWORDS", "Replica", "ReplicaUser", "build_config", "replica_for"]

R = TypeVar("R")

CONFIG_KEYWORDS = ("agent_id", "data_dir", "hub_url", "hub_token")
"""The config keywords every adapter takes (ARCHITECTURE §4)."""


def build_config(config: AgentMemoryConfig | None = None, **keywords: Any) -> AgentMemoryConfig:
    """A config from ``config`` (or ``CHRYSALIS_*`` variables) and keywords; None
    keywords are left out, so they fall back to the environment."""
    given = {name: value for name, value in keywords.items() if value is not None}
    if config is None:
        return AgentMemoryConfig.from_env(**given)
    if not given:
        return config
    return AgentMemoryConfig.build(**{**config.model_dump(), **given})


class Replica:
    """One ``AgentMemory``, the loop that owns it, and the adapters using it.

    Get one with :meth:`for_memory` or :meth:`for_config`; call :meth:`acquire`
    for each adapter and :meth:`release` when it closes. Run work on the memory
    with :meth:`call` (from async code) or :meth:`run` (blocking).
    """

    _by_memory: ClassVar[weakref.WeakKeyDictionary[AgentMemory, Replica]] = (
        weakref.WeakKeyDictionary()
    )
    _by_path: ClassVar[dict[Path, Replica]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        *,
        memory: AgentMemory | None = None,
        config: AgentMemoryConfig | None = None,
        embedder: Embedder | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        loop_is_a_thread: bool = False,
    ) -> None:
        self._memory = memory
        self._config = config if memory is None else memory.config
        self._embedder = embedder
        self._loop = loop  # None: a private loop thread, started on first use
        self._loop_is_a_thread = loop_is_a_thread  # a loop of a thread of its own
        self._thread: LoopThread | None = None
        self._opening: asyncio.Future[None] | None = None
        self._opened_here = False
        self._users = 0
        self._lock = threading.Lock()

    # --- finding one ----------------------------------------------------------------

    @classmethod
    def for_memory(cls, memory: AgentMemory | BlockingAgentMemory) -> Replica:
        """The replica of an ``AgentMemory`` (or ``BlockingAgentMemory``) the caller made."""
        if isinstance(memory, BlockingAgentMemory):
            inner = memory.memory
            with cls._registry_lock:
                replica = cls._by_memory.get(inner)
                if replica is None:
                    # Its background loop (a thread of its own, started on demand).
                    loop = memory.loop
                    replica = cls(memory=inner, loop=loop, loop_is_a_thread=True)
                    cls._by_memory[inner] = replica
                return replica
        if not isinstance(memory, AgentMemory):
            raise UsageError(
                "memory= takes a chrysalis_memory.AgentMemory or BlockingAgentMemory, got "
                f"{type(memory).__name__}"
            )
        with cls._registry_lock:
            replica = cls._by_memory.get(memory)
            if replica is None:
                replica = cls(memory=memory, loop=_running_loop())
                cls._by_memory[memory] = replica
            return replica

    @classmethod
    def for_config(cls, config: AgentMemoryConfig, *, embedder: Embedder | None = None) -> Replica:
        """The replica of the agent store ``config`` names, shared in this process.

        ``embedder`` is what recall must embed with (None: whatever the config
        picks). A replica already made with another embedder cannot take it.
        """
        path = config.resolved_db_path
        with cls._registry_lock:
            replica = None if path is None else cls._by_path.get(path.resolve())
            if replica is None:
                replica = cls(config=config, embedder=embedder)
                if path is not None:
                    cls._by_path[path.resolve()] = replica
                return replica
            replica._want_embedder(embedder)
            return replica

    def _want_embedder(self, embedder: Embedder | None) -> None:
        if embedder is None or self._embedder is embedder:
            return
        if self._embedder is None and self._memory is None:
            self._embedder = embedder  # the memory is not made yet: it takes this one
            return
        if self._embedder is not None and _same_model(self._embedder, embedder):
            return
        raise UsageError(
            f"the store of agent {self.config.agent_id!r} is already in use in this process "
            "with another embedder. Create the ChrysalisVectorStore first and pass "
            "memory=store.client to the other adapters, or use another agent_id or data_dir."
        )

    # --- the memory -----------------------------------------------------------------

    @property
    def config(self) -> AgentMemoryConfig:
        if self._memory is not None:
            return self._memory.config
        assert self._config is not None
        return self._config

    @property
    def embedder(self) -> Embedder | None:
        """The embedder this replica's memory was made with, when an adapter chose it."""
        return self._embedder

    @property
    def memory(self) -> AgentMemory:
        """The ``AgentMemory`` (made on first use; opened on the first call)."""
        with self._lock:
            if self._memory is None:
                self._memory = AgentMemory(self.config, embedder=self._embedder)
                with Replica._registry_lock:
                    Replica._by_memory[self._memory] = self
            return self._memory

    def acquire(self) -> Replica:
        with self._lock:
            self._users += 1
        return self

    # --- running work ---------------------------------------------------------------

    def _owner(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                if self._thread is None:
                    self._thread = LoopThread(f"chrysalis-llamaindex-{self.config.agent_id}")
                private: asyncio.AbstractEventLoop = self._thread.loop
                return private
            loop = self._loop
        if loop.is_closed():
            raise UsageError(
                "the event loop that owned this AgentMemory is closed: make the adapter "
                "inside the loop that uses it, or let it open its own memory (config keywords)"
            )
        return loop

    async def _ensure_open(self) -> AgentMemory:
        """Open the memory if it is not (on the owner loop, once)."""
        memory = self.memory
        if memory.is_open:
            return memory
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_future()
            try:
                await memory.open()
                self._opened_here = True
                _open_replicas.add(self)
            except BaseException as error:
                self._opening.set_exception(error)
                self._opening.exception()  # retrieved: no "never retrieved" warning
                self._opening = None
                raise
            self._opening.set_result(None)
        else:
            await asyncio.shield(self._opening)
        return memory

    async def _job(
        self,
        work: Callable[[AgentMemory], Awaitable[R]],
        started: concurrent.futures.Future[None] | None = None,
    ) -> R:
        if started is not None and not started.set_running_or_notify_cancel():
            raise asyncio.CancelledError  # the caller gave up waiting for this loop
        if started is not None:
            started.set_result(None)
        return await work(await self._ensure_open())

    async def call(self, work: Callable[[AgentMemory], Awaitable[R]]) -> R:
        """Run ``work(memory)`` on the owner loop, from any loop."""
        loop = self._owner()
        if _running_loop() is loop:
            return await self._job(work)
        if not loop.is_running():
            raise UsageError(_NOT_RUNNING)
        started = self._start_signal()
        future = asyncio.run_coroutine_threadsafe(self._job(work, started), loop)
        if started is not None:
            try:
                await asyncio.wait_for(asyncio.wrap_future(started), START_TIMEOUT)
            except asyncio.TimeoutError:
                future.cancel()
                raise UsageError(_BLOCKED) from None
        return await asyncio.wrap_future(future)

    def run(self, work: Callable[[AgentMemory], Awaitable[R]]) -> R:
        """Run ``work(memory)`` on the owner loop and wait for it (blocking)."""
        loop = self._owner()
        if _running_loop() is loop:
            raise UsageError(
                "a blocking method of a Chrysalis adapter was called inside the event loop "
                "that owns its AgentMemory, which would wait for itself: use the async method "
                "(aquery, async_add, aget_nodes, adelete, ...; Memory.aget/aput), or make the "
                "adapter from config keywords so that it runs its own loop"
            )
        if not loop.is_running():
            raise UsageError(_NOT_RUNNING)
        started = self._start_signal()
        future = asyncio.run_coroutine_threadsafe(self._job(work, started), loop)
        if started is not None:
            try:
                started.result(START_TIMEOUT)
            except concurrent.futures.TimeoutError:
                started.cancel()
                future.cancel()
                raise UsageError(_BLOCKED) from None
        return future.result()

    def _start_signal(self) -> concurrent.futures.Future[None] | None:
        """For a loop of the caller's (not ours): a future set when the work starts there.
        That loop may be blocked by the very code calling us (LlamaIndex's blocking
        methods run coroutines on a worker thread while its loop waits): waiting for the
        work to start, with a deadline, turns that deadlock into an error."""
        if self._thread is not None or self._loop_is_a_thread:
            return None
        return concurrent.futures.Future()

    # --- closing --------------------------------------------------------------------

    def release(self) -> None:
        """An adapter is done with this replica; the last one closes what was opened here
        (blocking: from async code, use :meth:`arelease`)."""
        if not self._drop_user():
            return
        loop, close = self._detach()
        if close is not None:
            if loop is None or loop.is_closed() or not loop.is_running():
                close.close()  # its loop is gone: nothing left to close it on
            elif _running_loop() is loop:
                # Inside the owner loop: closing cannot be waited for here.
                task = loop.create_task(close)
                _closing.add(task)
                task.add_done_callback(_closing.discard)
            else:
                asyncio.run_coroutine_threadsafe(close, loop).result()
        self._stop_thread()

    async def arelease(self) -> None:
        """:meth:`release`, waiting for the close without blocking the running loop
        (which may be serving what the memory talks to, a hub in tests)."""
        if not self._drop_user():
            return
        loop, close = self._detach()
        if close is not None:
            if loop is None or loop.is_closed() or not loop.is_running():
                close.close()
            elif _running_loop() is loop:
                await close
            else:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(close, loop))
        self._stop_thread()

    def _drop_user(self) -> bool:
        """One user fewer; True when it was the last one."""
        with self._lock:
            if self._users == 0:
                return False
            self._users -= 1
            return self._users == 0

    def _detach(self) -> tuple[asyncio.AbstractEventLoop | None, Coroutine[Any, Any, None] | None]:
        """Forget this replica in the registries; the memory's close, if it was opened here."""
        memory = self._memory
        with Replica._registry_lock:
            path = self.config.resolved_db_path
            if path is not None and Replica._by_path.get(path.resolve()) is self:
                del Replica._by_path[path.resolve()]
            if memory is not None and Replica._by_memory.get(memory) is self:
                del Replica._by_memory[memory]
        _open_replicas.discard(self)
        if memory is None or not self._opened_here:
            return None, None
        self._opened_here = False
        self._opening = None
        loop = self._thread.loop if self._thread is not None else self._loop
        return loop, memory.close()

    def _stop_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.stop()

    def _shutdown(self) -> None:
        """Close now, whoever still uses it (at exit)."""
        with self._lock:
            self._users = 1
        self.release()


def replica_for(
    memory: AgentMemory | BlockingAgentMemory | None,
    config: AgentMemoryConfig | None,
    *,
    embedder: Embedder | None = None,
    **keywords: Any,
) -> Replica:
    """The replica an adapter's arguments name: ``memory=``, or ``config`` and the
    config keywords (not both); ``embedder`` goes to :meth:`Replica.for_config`."""
    if memory is not None:
        if config is not None or any(v is not None for v in keywords.values()):
            raise ValueError("pass memory= or the config keywords, not both")
        return Replica.for_memory(memory)
    return Replica.for_config(build_config(config, **keywords), embedder=embedder)


class ReplicaUser:
    """What an adapter holding a :class:`Replica` (acquired, in ``_replica``) needs:
    closing it (once; also as a context manager) and running work on its memory,
    refused once closed. ``_kind`` names the adapter in that error."""

    _kind: ClassVar[str]
    if TYPE_CHECKING:  # pydantic private attributes, declared by each adapter
        _replica: Replica
        _closed: bool

    def close(self) -> None:
        """Release the memory (closed once no adapter of this process uses it)."""
        if not self._closed:
            self._closed = True
            self._replica.release()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._replica.arelease()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, work: Callable[[AgentMemory], Awaitable[R]]) -> R:
        self._check_open()
        return self._replica.run(work)

    async def _call(self, work: Callable[[AgentMemory], Awaitable[R]]) -> R:
        self._check_open()
        return await self._replica.call(work)

    def _check_open(self) -> None:
        if self._closed:
            raise UsageError(f"this {self._kind} is closed")


START_TIMEOUT = 10.0
"""Seconds the event loop owning a caller's ``AgentMemory`` has to start a call (it is
blocked if it does not: see :meth:`Replica._start_signal`)."""

_BLOCKED = (
    "the event loop that owns this AgentMemory did not take the call: it is blocked, most "
    "likely by a blocking LlamaIndex method (insert, query, from_documents(use_async=True), "
    "Memory.get/put, ...) running inside it. Use the async methods (ainsert, aquery, "
    "aretrieve, Memory.aget/aput, ...), or make the adapter from config keywords so that "
    "it runs its own loop"
)

_NOT_RUNNING = (
    "the event loop that owns this AgentMemory is not running: call the adapter's async "
    "methods from inside that loop, or make the adapter from config keywords so that it "
    "runs its own loop"
)

_open_replicas: weakref.WeakSet[Replica] = weakref.WeakSet()
_closing: set[asyncio.Task[None]] = set()
"""Closes running in the background (a task must be referenced until it is done)."""


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _same_model(a: Embedder, b: Embedder) -> bool:
    """Whether two embedders make the same vectors (compared by name; a LlamaIndex
    embedder by its identity, known before its dimensions)."""
    try:
        name_a = getattr(a, "identity", None) or a.model
        name_b = getattr(b, "identity", None) or b.model
    except Exception:  # a lazily resolved model that cannot be resolved: not the same
        return False
    return bool(name_a == name_b)


@atexit.register
def _close_at_exit() -> None:
    """Close the memories the adapters opened (everything acknowledged is durable
    anyway; this releases the data directories and stops the sync workers)."""
    for replica in list(_open_replicas):
        with contextlib.suppress(Exception):  # at exit, nothing can be done about it
            replica._shutdown()
