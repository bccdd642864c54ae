"""Where an adapter's ``AgentMemory`` lives, and how sync and async calls reach it.

An ``AgentMemory`` belongs to the event loop it was opened on (its SQLite
connection, recall index and hub connection run there). The adapters reach it
in one of three ways:

* **their own**: given no memory (or one that is not open yet), they open it on
  a private event loop in a daemon thread, as ``BlockingAgentMemory`` does. Sync
  methods block on that loop, async methods await it from any loop: both work
  in plain scripts, in async code and inside Jupyter's running loop. Adapters
  built from the same configuration in one process share one replica (one
  process owns a data directory); it is closed when the last of them is closed,
  or when the interpreter exits.
* **a ``BlockingAgentMemory``**: its own background loop is used.
* **an open ``AgentMemory``**: the caller's loop (the one running when the
  adapter is made). Async methods await it there; sync methods work from other
  threads (LangChain runs sync callbacks in executors) and raise a
  :class:`~chrysalis_memory.errors.UsageError` on the loop's own thread, where
  blocking would deadlock.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from typing_extensions import Self

from chrysalis_memory import AgentMemory, AgentMemoryConfig, BlockingAgentMemory
from chrysalis_memory.blocking import LoopThread
from chrysalis_memory.errors import ClosedError, ConfigError, InvalidArgumentError, UsageError
from chrysalis_memory.recall.embedders import Embedder
from langchain_chrysalis.embeddings import LangChainEmbedder

R = TypeVar("R")
MemoryCall = Callable[[AgentMemory], Awaitable[R]]
MemoryArg = AgentMemory | BlockingAgentMemory

__all__ = ["HandleLifecycle", "MemoryArg", "MemoryHandle", "build_config"]


def build_config(
    config: AgentMemoryConfig | None = None,
    *,
    agent_id: str | None = None,
    data_dir: str | Path | None = None,
    hub_url: str | None = None,
    hub_token: str | None = None,
) -> AgentMemoryConfig:
    """The configuration named by ``config`` and the keywords of ARCHITECTURE §4;
    with none of them, ``AgentMemoryConfig.from_env()`` (a local store)."""
    fields: dict[str, Any] = {
        name: value
        for name, value in (
            ("agent_id", agent_id),
            ("data_dir", data_dir),
            ("hub_url", hub_url),
            ("hub_token", hub_token),
        )
        if value is not None
    }
    if config is None:
        return AgentMemoryConfig.from_env(**fields)
    if not isinstance(config, AgentMemoryConfig):
        raise InvalidArgumentError(
            f"config must be an AgentMemoryConfig, got {type(config).__name__}"
        )
    if not fields:
        return config
    return AgentMemoryConfig.build(**{**config.model_dump(), **fields})


class _Home:
    """One ``AgentMemory`` and the event loop it runs on."""

    def __init__(
        self,
        memory: AgentMemory,
        *,
        loop: asyncio.AbstractEventLoop | None = None,
        blocking: BlockingAgentMemory | None = None,
        key: Path | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.memory = memory
        self.key = key
        self.embedder = embedder
        self.handles = 0
        self._blocking = blocking
        self._external_loop = loop
        # Ours to open and close, on a thread of our own:
        self.owned = blocking is None and loop is None
        self._thread = LoopThread(f"chrysalis-{memory.agent_id}") if self.owned else None
        self._opening: asyncio.Lock | None = None
        self.closed = False

    @property
    def external(self) -> bool:
        """Whether the memory lives on the caller's loop (not on a background thread)."""
        return self._external_loop is not None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._thread is not None:
            return self._thread.loop
        if self._blocking is not None:
            # BlockingAgentMemory's background loop (started on demand).
            return self._blocking.loop
        assert self._external_loop is not None
        return self._external_loop

    async def call(self, call: MemoryCall[R]) -> R:
        """Run ``call`` with the memory open (on :attr:`loop`)."""
        memory = self.memory
        if not memory.is_open:
            if self._opening is None:
                self._opening = asyncio.Lock()
            async with self._opening:
                if not memory.is_open:
                    if isinstance(self.embedder, LangChainEmbedder):
                        await self.embedder.probe()  # recall reads its dimensions
                    await memory.open()
        return await call(memory)

    def close(self) -> None:
        """Close the memory (if it is ours) and stop its thread."""
        if self.closed:
            return
        self.closed = True
        if self._thread is not None:
            try:
                self._thread.run(self.memory.close())
            finally:
                self._thread.stop()


_lock = threading.Lock()
_by_key: dict[Path, _Home] = {}
_by_memory: dict[int, _Home] = {}


def _home_for(
    memory: MemoryArg | None,
    config: AgentMemoryConfig | None,
    embedder: Embedder | None,
) -> _Home:
    """Find or make the home of the memory an adapter asked for (under ``_lock``)."""
    if isinstance(memory, BlockingAgentMemory):
        return _Home(memory.memory, blocking=memory)
    if memory is not None:
        if not isinstance(memory, AgentMemory):
            raise InvalidArgumentError(
                f"memory must be an AgentMemory or a BlockingAgentMemory, got "
                f"{type(memory).__name__}"
            )
        home = _by_memory.get(id(memory))
        if home is not None and home.memory is memory:
            return home
        if not memory.is_open:
            home = _Home(memory)
            _by_memory[id(memory)] = home
            return home
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise UsageError(
                "this AgentMemory is open on an event loop that is not running here: make the "
                "adapter inside that loop (e.g. within `async with AgentMemory(...) as mem:`), "
                "or pass an AgentMemory that is not open yet (the adapter opens it on a "
                "thread of its own), or a BlockingAgentMemory"
            ) from None
        return _Home(memory, loop=loop)
    assert config is not None
    path = config.resolved_db_path
    key = None if path is None else path.expanduser().resolve()
    if key is not None and (home := _by_key.get(key)) is not None:
        _check_same_embedder(home, embedder, key)
        return home
    home = _Home(AgentMemory(config, embedder=embedder), key=key, embedder=embedder)
    _by_memory[id(home.memory)] = home
    if key is not None:
        _by_key[key] = home
    return home


def _check_same_embedder(home: _Home, wanted: Embedder | None, key: Path) -> None:
    if wanted is None or _same_embedder(home.embedder, wanted):
        return
    held = "the configured embedder" if home.embedder is None else repr(home.embedder)
    raise ConfigError(
        f"the memory at {key} is already open in this process with {held}, not {wanted!r}: "
        "one replica embeds with one model. Pass the same embedding to every adapter that "
        "uses this agent, or give this one another agent_id or data_dir"
    )


def _same_embedder(held: Embedder | None, wanted: Embedder) -> bool:
    if held is None:
        return False
    if held is wanted:
        return True
    if isinstance(held, LangChainEmbedder) and isinstance(wanted, LangChainEmbedder):
        return held.embeddings is wanted.embeddings or (
            type(held.embeddings) is type(wanted.embeddings)
            and held._model == wanted._model
            and held.embeddings == wanted.embeddings
        )
    if isinstance(held, LangChainEmbedder) or isinstance(wanted, LangChainEmbedder):
        return False
    return held.model == wanted.model and held.dimensions == wanted.dimensions


def _release(home: _Home) -> None:
    with _lock:
        home.handles -= 1
        if home.handles > 0 or not home.owned:
            return
        if _by_memory.get(id(home.memory)) is home:
            del _by_memory[id(home.memory)]
        if home.key is not None and _by_key.get(home.key) is home:
            del _by_key[home.key]
    home.close()


def _close_all() -> None:
    """Close every replica the adapters opened and still hold (pending ops are kept
    either way: they are pushed at the next open)."""
    with _lock:
        homes = list({id(h): h for h in (*_by_key.values(), *_by_memory.values())}.values())
        _by_key.clear()
        _by_memory.clear()
    for home in homes:
        with contextlib.suppress(Exception):  # at exit: close what can be closed
            home.close()


# Closing uses worker threads (SQLite, Chroma), so it must run before the interpreter
# stops its thread pools: threading's exit hooks run then, atexit's only afterwards.
_at_exit = getattr(threading, "_register_atexit", None)
(_at_exit if callable(_at_exit) else atexit.register)(_close_all)


class MemoryHandle:
    """An adapter's access to its ``AgentMemory`` (see the module docstring).

    ``memory`` is an ``AgentMemory`` or a ``BlockingAgentMemory`` to share;
    otherwise the configuration comes from ``config`` and the keywords, and
    ``embedder`` (if any) embeds the memories of a replica opened here.
    """

    def __init__(
        self,
        memory: MemoryArg | None = None,
        *,
        config: AgentMemoryConfig | None = None,
        agent_id: str | None = None,
        data_dir: str | Path | None = None,
        hub_url: str | None = None,
        hub_token: str | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        given = [
            name
            for name, value in (
                ("config", config),
                ("agent_id", agent_id),
                ("data_dir", data_dir),
                ("hub_url", hub_url),
                ("hub_token", hub_token),
            )
            if value is not None
        ]
        if memory is not None and given:
            raise InvalidArgumentError(
                f"pass either memory= or the configuration ({', '.join(given)}), not both"
            )
        resolved = (
            None
            if memory is not None
            else build_config(
                config, agent_id=agent_id, data_dir=data_dir, hub_url=hub_url, hub_token=hub_token
            )
        )
        with _lock:
            home = _home_for(memory, resolved, embedder)
            home.handles += 1
        self._home: _Home | None = home
        self.embedder = embedder

    @property
    def memory(self) -> AgentMemory:
        """The ``AgentMemory`` behind the adapter (pass it as ``memory=`` to another
        adapter to share this replica)."""
        return self._live().memory

    @property
    def closed(self) -> bool:
        return self._home is None

    def _live(self) -> _Home:
        if self._home is None:
            raise ClosedError("this Chrysalis adapter was closed")
        return self._home

    def run(self, call: MemoryCall[R]) -> R:
        """Run ``call(memory)`` and wait for its result (blocking)."""
        home = self._live()
        loop = home.loop
        coroutine = home.call(call)
        if _running_loop() is loop:
            coroutine.close()
            raise UsageError(
                "a blocking Chrysalis call was made on the event loop its AgentMemory runs on, "
                "which would deadlock: use the async method (ainvoke, asimilarity_search, "
                "aload_memory_variables, abatch, ...) there, or let the adapter open its own "
                "memory (pass no memory=, or one that is not open yet)"
            )
        return _submit(coroutine, home).result()

    async def arun(self, call: MemoryCall[R]) -> R:
        """Run ``call(memory)`` from any event loop."""
        home = self._live()
        loop = home.loop
        if _running_loop() is loop:
            return await home.call(call)
        return await asyncio.wrap_future(_submit(home.call(call), home))

    def close(self) -> None:
        """Let go of the memory; a replica the adapters opened is closed when the
        last adapter using it lets go. Closing twice does nothing."""
        home, self._home = self._home, None
        if home is not None:
            _release(home)

    async def aclose(self) -> None:
        home, self._home = self._home, None
        if home is not None:
            await asyncio.to_thread(_release, home)


class HandleLifecycle:
    """``close``, ``aclose`` and ``with`` for an adapter whose memory is the
    :class:`MemoryHandle` in ``self._handle``."""

    _handle: MemoryHandle

    def close(self) -> None:
        """Let go of the agent's memory (closed when no adapter uses it any more)."""
        self._handle.close()

    async def aclose(self) -> None:
        await self._handle.aclose()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _submit(coroutine: Coroutine[Any, Any, R], home: _Home) -> Future[R]:
    loop = home.loop
    # A background loop may not have started yet (it queues the call); the caller's
    # loop must be running, or the call would wait forever.
    if loop.is_closed() or (home.external and not loop.is_running()):
        coroutine.close()
        raise UsageError(
            "the event loop this AgentMemory was opened on is not running any more: "
            "use the adapter within that loop, or pass an AgentMemory that is not open yet"
        )
    return asyncio.run_coroutine_threadsafe(coroutine, loop)
