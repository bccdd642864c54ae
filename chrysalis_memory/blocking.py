"""``BlockingAgentMemory``: the same API as :class:`AgentMemory`, without ``await``.

For scripts, notebooks and synchronous framework callbacks. The memory runs on
a private event loop in a background thread, so blocking calls work from plain
code *and* from code that already runs inside an event loop (Jupyter, an async
web handler): they never touch the caller's loop.

    with BlockingAgentMemory(agent_id="agent-001", data_dir="./data") as mem:
        mid = mem.learn("The user prefers concise answers.", importance=0.9)
        print(mem.get(mid))
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import Future
from types import TracebackType
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

from chrysalis_memory.config import AgentMemoryConfig
from chrysalis_memory.errors import ClosedError, UsageError
from chrysalis_memory.memory import AgentMemory

if TYPE_CHECKING:
    from chrysalis_memory.sync.client import SyncState

P = ParamSpec("P")
R = TypeVar("R")


class LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self, name: str = "chrysalis-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coroutine: Coroutine[Any, Any, R]) -> R:
        """Run ``coroutine`` on the loop and wait for its result."""
        if threading.current_thread() is self._thread:
            coroutine.close()
            raise UsageError("a blocking call was made from inside its own event loop")
        future: Future[R] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


def _blocking(
    method: Callable[Concatenate[AgentMemory, P], Awaitable[R]],
) -> Callable[Concatenate[BlockingAgentMemory, P], R]:
    """Turn an ``AgentMemory`` coroutine method into a blocking one."""

    async def call(memory: AgentMemory, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return await method(memory, *args, **kwargs)

    @functools.wraps(method)  # help() and IDEs show AgentMemory's signature
    def wrapper(self: BlockingAgentMemory, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if not self.memory.is_open:  # said here: AgentMemory's advice is `async with`
            raise ClosedError(
                "this BlockingAgentMemory is not open: use `with BlockingAgentMemory(...) "
                "as mem:`, or call `mem.open()` first and `mem.close()` when done"
            )
        return self._runner().run(call(self.memory, *args, **kwargs))

    wrapper.__qualname__ = f"BlockingAgentMemory.{method.__name__}"
    wrapper.__module__ = __name__
    return wrapper


class BlockingAgentMemory:
    """:class:`AgentMemory` with blocking methods. Use ``with`` or ``open()``/``close()``."""

    def __init__(self, config: AgentMemoryConfig | None = None, /, **fields: Any) -> None:
        self.memory = AgentMemory(config, **fields)
        self._loop: LoopThread | None = None

    def _runner(self) -> LoopThread:
        if self._loop is None:
            self._loop = LoopThread(f"chrysalis-{self.memory.agent_id}")
        return self._loop

    @property
    def agent_id(self) -> str:
        return self.memory.agent_id

    def open(self) -> BlockingAgentMemory:
        self._runner().run(self.memory.open())
        return self

    def close(self) -> None:
        if self._loop is not None:
            try:
                self._loop.run(self.memory.close())
            finally:
                self._loop.stop()
                self._loop = None

    def __enter__(self) -> BlockingAgentMemory:
        return self.open()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    learn = _blocking(AgentMemory.learn)
    get = _blocking(AgentMemory.get)
    update = _blocking(AgentMemory.update)
    tag = _blocking(AgentMemory.tag)
    untag = _blocking(AgentMemory.untag)
    reinforce = _blocking(AgentMemory.reinforce)
    link = _blocking(AgentMemory.link)
    forget = _blocking(AgentMemory.forget)
    record_access = _blocking(AgentMemory.record_access)
    list = _blocking(AgentMemory.list)
    recall = _blocking(AgentMemory.recall)
    reindex = _blocking(AgentMemory.reindex)
    history = _blocking(AgentMemory.history)
    export_ops = _blocking(AgentMemory.export_ops)
    merge_ops = _blocking(AgentMemory.merge_ops)
    state_root = _blocking(AgentMemory.state_root)
    verify = _blocking(AgentMemory.verify)
    sync_now = _blocking(AgentMemory.sync_now)

    def sync_state(self) -> SyncState | None:
        """Where sync with the hub stands; None when no hub is configured."""
        return self.memory.sync_state()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop (on its own thread) the wrapped ``AgentMemory`` runs on:
        adapters that hold this object schedule their own coroutines there."""
        return self._runner().loop
