"""How the adapters reach their AgentMemory: configuration keywords, shared replicas,
memories owned by the caller, and sync calls from inside a running event loop."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from langchain_chrysalis import (
    ChrysalisChatMessageHistory,
    ChrysalisEmbeddings,
    ChrysalisMemory,
    ChrysalisRetriever,
    ChrysalisStore,
    ChrysalisVectorStore,
)
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.messages import HumanMessage

from chrysalis_memory import AgentMemory
from chrysalis_memory.errors import ClosedError, ConfigError, InvalidArgumentError, UsageError
from chrysalis_memory.recall.embedders import HashingEmbedder


def test_adapters_of_one_agent_share_one_replica(
    data_dir: Path, embedding: ChrysalisEmbeddings
) -> None:
    vectors = ChrysalisVectorStore(embedding, agent_id="one", data_dir=data_dir)
    store = ChrysalisStore(agent_id="one", data_dir=data_dir)
    history = ChrysalisChatMessageHistory("s", agent_id="one", data_dir=data_dir)
    memory = vectors.memory
    assert store.memory is memory and history.memory is memory

    vectors.add_texts(["The printer is on the second floor."], ids=["printer"])
    history.add_message(HumanMessage("Where is the printer?"))
    assert store.search((), query="printer") == []  # store items only
    assert [m.content for m in history.messages] == ["Where is the printer?"]

    # One replica embeds with one model: another embedding for the same agent is refused.
    with pytest.raises(ConfigError, match="already open"):
        ChrysalisVectorStore(DeterministicFakeEmbedding(size=8), agent_id="one", data_dir=data_dir)

    vectors.close()
    vectors.close()  # closing twice does nothing
    with pytest.raises(ClosedError):
        vectors.similarity_search("printer")
    assert memory.is_open  # still used by the others
    assert [m.content for m in history.messages] == ["Where is the printer?"]
    store.close()
    history.close()
    assert not memory.is_open  # the last adapter closed it

    # Opened again, later, from the same directory: nothing was lost.
    with ChrysalisVectorStore(embedding, agent_id="one", data_dir=data_dir) as again:
        assert [d.id for d in again.get_by_ids(["printer"])] == ["printer"]


async def test_sync_methods_work_inside_a_running_event_loop(
    data_dir: Path, embedding: ChrysalisEmbeddings
) -> None:
    """As in a Jupyter cell: plain calls while the notebook's loop is running."""
    assert asyncio.get_running_loop().is_running()
    with ChrysalisVectorStore(embedding, agent_id="nb", data_dir=data_dir) as vectors:
        vectors.add_texts(["Jupyter runs an event loop."], ids=["j"])
        assert vectors.similarity_search("event loop", k=1)[0].id == "j"
        memory = ChrysalisMemory(memory=vectors.memory)
        try:
            memory.save_context({"input": "hi"}, {"output": "hello"})
            assert "Jupyter" in memory.load_memory_variables({"input": "event loop"})["history"]
        finally:
            memory.close()
        with ChrysalisStore(memory=vectors.memory) as store:
            store.put(("nb",), "k", {"v": 1})
            assert store.get(("nb",), "k").value == {"v": 1}  # type: ignore[union-attr]


async def test_an_open_agent_memory_is_used_on_its_own_loop(data_dir: Path) -> None:
    async with AgentMemory(
        agent_id="mine", data_dir=data_dir, embedder=HashingEmbedder(512)
    ) as mem:
        await mem.learn("Deploys happen on Tuesdays.", importance=0.8, memory_id="deploys")
        retriever = ChrysalisRetriever(memory=mem, k=1)
        store = ChrysalisStore(memory=mem)
        try:
            assert [d.id for d in await retriever.ainvoke("deploys")] == ["deploys"]
            await store.aput(("a",), "k", {"v": 1})
            # Blocking on the memory's own loop would deadlock: refused, with the way out.
            with pytest.raises(UsageError, match="async method"):
                retriever.invoke("deploys")
            # From another thread (as LangChain runs sync callbacks), sync calls work.
            docs = await asyncio.to_thread(retriever.invoke, "deploys")
            assert [d.id for d in docs] == ["deploys"]
            item = await asyncio.to_thread(store.get, ("a",), "k")
            assert item is not None and item.value == {"v": 1}
        finally:
            await retriever.aclose()
            await store.aclose()
        assert mem.is_open  # the caller's memory: the caller closes it
        # Made where no loop runs, an adapter cannot know the memory's loop.
        with pytest.raises(UsageError, match="not running here"):
            await asyncio.to_thread(ChrysalisStore, memory=mem)


def test_a_memory_not_open_yet_is_opened_and_closed_by_the_adapters(data_dir: Path) -> None:
    mem = AgentMemory(agent_id="lazy", data_dir=data_dir, embedder=HashingEmbedder(512))
    history = ChrysalisChatMessageHistory("s", memory=mem)
    retriever = ChrysalisRetriever(memory=mem)
    history.add_user_message("Remember the milk.")
    assert mem.is_open
    assert retriever.invoke("milk")[0].page_content == "Remember the milk."
    history.close()
    assert mem.is_open
    retriever.close()
    assert not mem.is_open


def test_with_no_configuration_a_local_store_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in list(os.environ):
        if name.startswith(("CHRYSALIS_", "FIREPROOF_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CHRYSALIS_EMBEDDER", "hashing")  # no Ollama probe
    monkeypatch.chdir(tmp_path)
    memory = ChrysalisMemory()
    try:
        memory.save_context({"input": "Offline first."}, {"output": "Always."})
        assert memory.agent_memory.agent_id == "local-agent"
        assert (tmp_path / "data" / "local-agent" / "memory.db").exists()
        assert "Offline first." in memory.load_memory_variables({"input": "offline"})["history"]
    finally:
        memory.close()


EXIT_SCRIPT = """
import sys
from langchain_chrysalis import ChrysalisChatMessageHistory

history = ChrysalisChatMessageHistory("s", agent_id="exit", data_dir=sys.argv[1])
history.add_user_message("said before exiting")
if sys.argv[2] == "read":
    print(history.messages[0].content)
"""


@pytest.mark.slow
def test_adapters_left_open_are_closed_cleanly_at_exit(data_dir: Path) -> None:
    env = {**os.environ, "CHRYSALIS_EMBEDDER": "hashing"}
    for step in ("write", "read"):
        done = subprocess.run(
            [sys.executable, "-c", EXIT_SCRIPT, str(data_dir), step],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert done.stderr == ""  # no task left pending, nothing unclosed
    assert done.stdout == "said before exiting\n"


def test_memory_and_configuration_together_are_refused(data_dir: Path) -> None:
    mem = AgentMemory(agent_id="x", data_dir=data_dir)
    with pytest.raises(InvalidArgumentError, match="either memory= or the configuration"):
        ChrysalisStore(memory=mem, agent_id="x")
    with pytest.raises(InvalidArgumentError, match="AgentMemory or a BlockingAgentMemory"):
        ChrysalisStore(memory="not a memory")  # type: ignore[arg-type]
