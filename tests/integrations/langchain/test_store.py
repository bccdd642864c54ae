"""ChrysalisStore behaves as LangGraph's InMemoryStore does, and adds TTL and sharing."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from langchain_chrysalis import ChrysalisEmbeddings, ChrysalisStore
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage
from langgraph.config import get_store
from langgraph.store.base import (
    BaseStore,
    GetOp,
    InvalidNamespaceError,
    PutOp,
    SearchItem,
)
from langgraph.store.memory import InMemoryStore

from chrysalis_memory.errors import InvalidArgumentError

# create_react_agent moved to langchain.agents.create_agent (the `langchain` package,
# not installed here); the prebuilt one still takes the same store.
LANGGRAPH_DEPRECATIONS = "ignore::langgraph.warnings.LangGraphDeprecatedSinceV10"


@pytest.fixture
def index(embedding: ChrysalisEmbeddings) -> dict[str, Any]:
    return {"dims": 512, "embed": embedding, "fields": ["text"]}


@pytest.fixture
def store(data_dir: Path, index: dict[str, Any]) -> Iterator[ChrysalisStore]:
    with ChrysalisStore(agent_id="graph", data_dir=data_dir, index=index) as store:  # type: ignore[arg-type]
        yield store


ITEMS: list[tuple[tuple[str, ...], str, dict[str, Any]]] = [
    (("users", "alice", "prefs"), "colour", {"text": "Alice likes teal", "kind": "colour", "n": 1}),
    (("users", "alice", "prefs"), "food", {"text": "Alice eats pasta", "kind": "food", "n": 5}),
    (("users", "bob", "prefs"), "colour", {"text": "Bob likes red", "kind": "colour", "n": 3}),
    (("docs",), "python", {"text": "Python tutorial for beginners", "kind": "doc", "n": 7}),
    (("docs",), "ts", {"text": "TypeScript guide", "kind": "doc", "n": 2}),
    (("docs", "guides"), "rust", {"text": "Rust ownership guide", "kind": "doc", "n": 9}),
]


def _keys(items: Sequence[SearchItem]) -> list[tuple[tuple[str, ...], str]]:
    return [(item.namespace, item.key) for item in items]


def _observe(store: BaseStore) -> dict[str, Any]:
    """Run one scenario against a store; what it returns must not depend on the store."""
    seen: dict[str, Any] = {}
    for namespace, key, value in ITEMS:
        store.put(namespace, key, value)
    item = store.get(("users", "alice", "prefs"), "colour")
    assert item is not None
    seen["get"] = (item.namespace, item.key, item.value)
    # (A missing key in a known namespace: InMemoryStore lists any namespace it was asked
    # for, even with no items in it; ChrysalisStore lists namespaces that hold items.)
    seen["missing"] = store.get(("users", "alice", "prefs"), "shoes")
    store.put(
        ("users", "bob", "prefs"), "colour", {"text": "Bob likes blue", "kind": "colour", "n": 4}
    )
    seen["overwritten"] = store.get(("users", "bob", "prefs"), "colour").value  # type: ignore[union-attr]
    store.delete(("docs",), "ts")
    seen["deleted"] = store.get(("docs",), "ts")
    seen["users"] = sorted(_keys(store.search(("users",))))
    seen["alice"] = sorted(_keys(store.search(("users", "alice"))))
    seen["everything"] = sorted(_keys(store.search(())))
    seen["limit"] = len(store.search((), limit=2))
    seen["offset"] = len(store.search((), limit=10, offset=3))
    seen["colours"] = sorted(_keys(store.search(("users",), filter={"kind": "colour"})))
    seen["n>3"] = sorted(_keys(store.search((), filter={"n": {"$gt": 3}})))
    seen["n<=3 colour"] = sorted(
        _keys(store.search((), filter={"n": {"$lte": 3}, "kind": {"$eq": "colour"}}))
    )
    seen["not doc"] = sorted(_keys(store.search((), filter={"kind": {"$ne": "doc"}})))
    seen["query"] = _keys(store.search(("docs",), query="Python tutorial for beginners"))
    seen["query top"] = _keys(store.search((), query="Rust ownership guide", limit=1))
    seen["query filtered"] = _keys(
        store.search((), query="Alice likes teal", filter={"kind": "food"})
    )
    seen["query offset"] = len(store.search((), query="guide", limit=2, offset=1))
    scored = store.search((), query="Alice eats pasta", limit=3)
    seen["scores"] = [item.score is not None for item in scored]
    seen["scores sorted"] = [item.score for item in scored] == sorted(
        (item.score or 0.0 for item in scored), reverse=True
    )
    seen["namespaces"] = store.list_namespaces()
    seen["prefix"] = store.list_namespaces(prefix=("users",))
    seen["suffix"] = store.list_namespaces(suffix=("prefs",))
    seen["wildcard"] = store.list_namespaces(prefix=("users", "*", "prefs"))
    seen["depth"] = store.list_namespaces(max_depth=1)
    seen["depth 2"] = store.list_namespaces(prefix=("users",), max_depth=2)
    seen["paged"] = store.list_namespaces(limit=2, offset=1)
    # In one batch, reads see the store as it was before the batch's puts.
    seen["batch"] = [
        None if r is None else getattr(r, "value", r)
        for r in store.batch(
            [
                PutOp(("batch",), "k", {"text": "v1"}),
                GetOp(("batch",), "k"),
                PutOp(("batch",), "k", {"text": "v2"}),
            ]
        )
    ]
    seen["after batch"] = store.get(("batch",), "k").value  # type: ignore[union-attr]
    return seen


def test_behaves_like_the_in_memory_store(store: ChrysalisStore, index: dict[str, Any]) -> None:
    reference = _observe(InMemoryStore(index=index))  # type: ignore[arg-type]
    ours = _observe(store)
    assert ours == reference
    # A few of the values, to be sure the scenario says something.
    assert ours["overwritten"]["text"] == "Bob likes blue"
    assert ours["query"][0] == (("docs",), "python")
    assert ours["query filtered"] == [(("users", "alice", "prefs"), "food")]
    assert ours["depth"] == [("docs",), ("users",)]


async def test_async_methods_and_items(store: ChrysalisStore) -> None:
    before = time.time()
    await store.aput(("notes",), "n1", {"text": "Water the plants on Monday"})
    item = await store.aget(("notes",), "n1")
    assert item is not None and item.value == {"text": "Water the plants on Monday"}
    assert before - 1 <= item.created_at.timestamp() <= item.updated_at.timestamp() <= time.time()
    [hit] = await store.asearch(("notes",), query="plants")
    assert hit.key == "n1" and hit.score is not None and hit.score > 0
    assert await store.alist_namespaces() == [("notes",)]
    await store.adelete(("notes",), "n1")
    assert await store.aget(("notes",), "n1") is None
    await store.aput(("notes",), "n1", {"text": "Back"})  # put again after a delete
    assert (await store.aget(("notes",), "n1")).value == {"text": "Back"}  # type: ignore[union-attr]


def test_items_are_memories_learned_to_be_shared(store: ChrysalisStore) -> None:
    store.put(("users", "u1"), "profile", {"text": "Prefers dark mode", "age": 40})
    [memory] = store._handle.run(lambda mem: mem.list(tags=["langgraph-store"]))
    assert memory.content == "Prefers dark mode"  # the indexed field: what recall searches
    assert memory.importance == 0.8 and memory.memory_type.value == "semantic"
    assert 'lgns:["users","u1"]' in memory.tags
    # Without an index, a query still searches (the agent's own embedder and keywords).
    with ChrysalisStore(memory=store.memory) as plain:
        assert [i.key for i in plain.search(("users",), query="dark mode")] == ["profile"]
        assert plain.get(("users", "u1"), "profile").value["age"] == 40  # type: ignore[union-attr]


def test_bad_namespaces_and_values_are_refused(store: ChrysalisStore) -> None:
    with pytest.raises(InvalidNamespaceError):
        store.put(("a.b",), "k", {"x": 1})
    with pytest.raises(InvalidNamespaceError):
        store.batch([PutOp(("a.b",), "k", {"x": 1})])
    with pytest.raises(InvalidArgumentError, match="JSON"):
        store.put(("a",), "k", {"x": object()})


def test_ttl_expires_items_and_reads_refresh_it(data_dir: Path) -> None:
    now = [1_800_000_000.0]  # the store's clock: it moves only when the test moves it
    with ChrysalisStore(
        agent_id="ttl",
        data_dir=data_dir,
        ttl={"default_ttl": 2.0},  # minutes
        clock=lambda: now[0],
    ) as store:
        store.put(("s",), "short", {"v": 1}, ttl=0.5)
        store.put(("s",), "default", {"v": 2})
        store.put(("s",), "forever", {"v": 3}, ttl=None)
        now[0] += 29
        assert store.get(("s",), "short", refresh_ttl=False) is not None
        now[0] += 2  # 31 s: past the half minute
        assert store.get(("s",), "short", refresh_ttl=False) is None
        # Expired items are never returned, and sweeping forgets them.
        assert {i.key for i in store.search(("s",))} == {"default", "forever"}
        # Reading refreshes: "default" stays alive while it is read every 90 s,
        # long past its first two minutes.
        for _ in range(3):
            now[0] += 90
            assert store.get(("s",), "default") is not None
        assert store.sweep_ttl() == 1  # "short"; "default" was refreshed
        now[0] += 121  # no read for over two minutes
        assert store.get(("s",), "default", refresh_ttl=False) is None
        assert store.sweep_ttl() == 1
        assert store.get(("s",), "forever") is not None


class _ToolCallingModel(GenericFakeChatModel):
    """A fake chat model that can be given tools (its answers are scripted)."""

    def bind_tools(self, tools: Any, **kwargs: Any) -> _ToolCallingModel:  # type: ignore[override]
        return self


def remember(fact: str) -> str:
    """Remember a fact about the user for later conversations."""
    get_store().put(("facts",), "user", {"text": fact})
    return "remembered"


@pytest.mark.filterwarnings(LANGGRAPH_DEPRECATIONS)
def test_a_react_agent_uses_the_store(store: ChrysalisStore) -> None:
    from langgraph.prebuilt import create_react_agent

    model = _ToolCallingModel(
        messages=iter(
            [
                AIMessage(
                    content="",
                    tool_calls=[
                        {"name": "remember", "args": {"fact": "likes tea"}, "id": "call-1"}
                    ],
                ),
                AIMessage(content="I will remember that you like tea."),
            ]
        )
    )
    agent = create_react_agent(model, [remember], store=store)
    result = agent.invoke({"messages": [("human", "I like tea, remember it")]})
    assert result["messages"][-1].content == "I will remember that you like tea."
    assert store.get(("facts",), "user").value == {"text": "likes tea"}  # type: ignore[union-attr]
