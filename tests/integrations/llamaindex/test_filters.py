"""Every MetadataFilters operator and condition, through queries and get_nodes."""

from __future__ import annotations

from typing import Any

import pytest
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)
from llama_index.vector_stores.chrysalis import ChrysalisVectorStore
from llama_index.vector_stores.chrysalis.filters import Pushdown, pushdown

from chrysalis_memory import AgentMemory

from .conftest import MakeStore
from .support import WordEmbedding

BOOKS: dict[str, tuple[str, dict[str, Any]]] = {
    "shawshank": (
        "The Shawshank Redemption",
        {
            "author": "Stephen King",
            "theme": "Friendship",
            "year": 1994,
            "rating": 9.3,
            "genres": ["drama", "crime"],
        },
    ),
    "godfather": (
        "The Godfather",
        {
            "director": "Francis Ford Coppola",
            "theme": "Mafia",
            "year": 1972,
            "rating": 9.2,
            "genres": ["crime"],
        },
    ),
    "inception": (
        "Inception",
        {
            "director": "Christopher Nolan",
            "theme": "Fiction",
            "year": 2010,
            "rating": 8.8,
            "genres": ["scifi", "action"],
            "notes": "",
        },
    ),
    "mockingbird": (
        "To Kill a Mockingbird",
        {"author": "Harper Lee", "theme": "Mafia", "year": 1960, "genres": []},
    ),
    "1984": (
        "1984",
        {"author": "George Orwell", "theme": "Totalitarianism", "year": 1949, "rating": 8.5},
    ),
}
ALL = {*BOOKS, "vhs"}
"""The books, and one memory learned without LlamaIndex (no metadata, procedural, 0.9)."""


def f(key: str, value: Any, operator: FilterOperator = FilterOperator.EQ) -> MetadataFilter:
    return MetadataFilter(key=key, value=value, operator=operator)


def group(
    condition: FilterCondition, *filters: MetadataFilter | MetadataFilters
) -> MetadataFilters:
    return MetadataFilters(filters=list(filters), condition=condition)


AND, OR, NOT = FilterCondition.AND, FilterCondition.OR, FilterCondition.NOT
MAFIA = {"godfather", "mockingbird"}
FILMS = {"shawshank", "godfather", "inception"}
Op = FilterOperator

CASES: list[tuple[str, MetadataFilters, set[str]]] = [
    ("eq str", group(AND, f("theme", "Mafia")), MAFIA),
    ("eq int", group(AND, f("year", 1994)), {"shawshank"}),
    ("eq float", group(AND, f("rating", 9.3)), {"shawshank"}),
    ("ne", group(AND, f("theme", "Mafia", Op.NE)), ALL - MAFIA),
    ("ne missing", group(AND, f("director", "Christopher Nolan", Op.NE)), ALL - {"inception"}),
    ("gt", group(AND, f("year", 1990, Op.GT)), {"shawshank", "inception"}),
    ("gte", group(AND, f("year", 1994, Op.GTE)), {"shawshank", "inception"}),
    ("lt", group(AND, f("year", 1960, Op.LT)), {"1984"}),
    ("lte", group(AND, f("year", 1960, Op.LTE)), {"mockingbird", "1984"}),
    ("lt float", group(AND, f("rating", 9.0, Op.LT)), {"inception", "1984"}),
    ("gt str", group(AND, f("author", "H", Op.GT)), {"shawshank", "mockingbird"}),
    ("in", group(AND, f("theme", ["Mafia", "Fiction"], Op.IN)), MAFIA | {"inception"}),
    ("in ints", group(AND, f("year", [1949, 2010], Op.IN)), {"1984", "inception"}),
    ("in list field", group(AND, f("genres", ["scifi"], Op.IN)), {"inception"}),
    ("nin", group(AND, f("theme", ["Mafia", "Fiction"], Op.NIN)), ALL - MAFIA - {"inception"}),
    ("any", group(AND, f("genres", ["crime", "scifi"], Op.ANY)), FILMS),
    ("all", group(AND, f("genres", ["drama", "crime"], Op.ALL)), {"shawshank"}),
    ("contains", group(AND, f("genres", "crime", Op.CONTAINS)), {"shawshank", "godfather"}),
    ("contains str", group(AND, f("director", "Ford", Op.CONTAINS)), {"godfather"}),
    ("text match", group(AND, f("author", "King", Op.TEXT_MATCH)), {"shawshank"}),
    ("text match case", group(AND, f("author", "king", Op.TEXT_MATCH)), set()),
    ("text match i", group(AND, f("director", "nolan", Op.TEXT_MATCH_INSENSITIVE)), {"inception"}),
    ("is empty missing", group(AND, f("rating", None, Op.IS_EMPTY)), {"mockingbird", "vhs"}),
    ("is empty list", group(AND, f("genres", None, Op.IS_EMPTY)), {"mockingbird", "1984", "vhs"}),
    ("is empty string", group(AND, f("notes", None, Op.IS_EMPTY)), ALL),
    ("and", group(AND, f("theme", "Mafia"), f("year", 1965, Op.GT)), {"godfather"}),
    ("or", group(OR, f("theme", "Friendship"), f("year", 1955, Op.LT)), {"shawshank", "1984"}),
    ("not", group(NOT, f("theme", "Mafia"), f("year", 2000, Op.GT)), {"shawshank", "1984", "vhs"}),
    (
        "nested",
        group(AND, f("genres", "crime", Op.CONTAINS), group(NOT, f("author", "Stephen King"))),
        {"godfather"},
    ),
    (
        "nested or of and",
        group(OR, group(AND, f("theme", "Mafia"), f("year", 1965, Op.LT)), f("rating", 9.3)),
        {"mockingbird", "shawshank"},
    ),
    # The memory's own fields, under the chrysalis. prefix.
    ("memory type", group(AND, f("chrysalis.memory_type", "procedural")), {"vhs"}),
    ("memory type ne", group(AND, f("chrysalis.memory_type", "procedural", Op.NE)), set(BOOKS)),
    ("tags contain", group(AND, f("chrysalis.tags", "llamaindex", Op.CONTAINS)), set(BOOKS)),
    ("tags all", group(AND, f("chrysalis.tags", ["howto", "video"], Op.ALL)), {"vhs"}),
    ("tags any", group(AND, f("chrysalis.tags", ["howto", "nothing"], Op.ANY)), {"vhs"}),
    ("source", group(AND, f("chrysalis.source_instance", "agent-a")), ALL),
    ("source other", group(AND, f("chrysalis.source_instance", "agent-z")), set()),
    ("importance", group(AND, f("chrysalis.importance", 0.85, Op.GTE)), {"vhs"}),
    ("confidence", group(AND, f("chrysalis.confidence", 0.8)), set(BOOKS)),
    ("updated since", group(AND, f("chrysalis.updated_at", 1_000_000_000.0, Op.GT)), ALL),
    ("updated until", group(AND, f("chrysalis.updated_at", 1_000_000_000, Op.LT)), set()),
    ("created", group(AND, f("chrysalis.created_at", 1_000_000_000, Op.GTE)), ALL),
    ("id", group(AND, f("chrysalis.id", ["1984", "vhs"], Op.IN)), {"1984", "vhs"}),
    ("sync status", group(AND, f("chrysalis.sync_status", "pending")), ALL),
    ("access count", group(AND, f("chrysalis.access_count", 0)), ALL),
    ("version", group(AND, f("chrysalis.version", 1, Op.GTE)), ALL),
    ("ref doc id", group(AND, f("ref_doc_id", "films")), FILMS),
]  # fmt: skip


@pytest.fixture
async def books(
    make_store: MakeStore, memory: AgentMemory, embed_model: WordEmbedding
) -> ChrysalisVectorStore:
    store = make_store(memory=memory, record_access=False)
    nodes = []
    for key, (title, metadata) in BOOKS.items():
        node = TextNode(id_=key, text=title, metadata=metadata)
        source = "films" if key in FILMS else "novels"
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=source)
        node.embedding = embed_model.vector(title)
        nodes.append(node)
    await store.async_add(nodes)
    await memory.learn(
        "Rewind a VHS tape before returning it.",
        importance=0.9,
        confidence=0.95,
        memory_type="procedural",
        tags=["howto", "video"],
        memory_id="vhs",
    )
    return store


@pytest.mark.parametrize(("filters", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
async def test_filter(
    books: ChrysalisVectorStore,
    embed_model: WordEmbedding,
    filters: MetadataFilters,
    expected: set[str],
) -> None:
    assert {n.node_id for n in await books.aget_nodes(filters=filters)} == expected
    result = await books.aquery(
        VectorStoreQuery(
            query_embedding=embed_model.vector("the godfather"),
            similarity_top_k=10,
            filters=filters,
        )
    )
    assert set(result.ids or []) == expected
    text_result = await books.aquery(
        VectorStoreQuery(
            query_str="the godfather",
            similarity_top_k=10,
            filters=filters,
            mode=VectorStoreQueryMode.TEXT_SEARCH,
        )
    )
    assert set(text_result.ids or []) == expected & {"godfather"}  # word matches only

    await books.adelete_nodes(filters=filters)
    assert {n.node_id for n in await books.aget_nodes()} == ALL - expected


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (f("chrysalis.colour", "red"), "unknown memory field"),
        (f("theme", "Mafia", Op.IN), "list of values"),
        (f("year", [1, 2], Op.GT), "one value"),
        (f("year", 1994, Op.TEXT_MATCH), "string"),
        (f("year", None, Op.EQ), "needs a value"),
    ],
)
async def test_filters_that_cannot_apply_are_refused(
    books: ChrysalisVectorStore, embed_model: WordEmbedding, bad: MetadataFilter, message: str
) -> None:
    filters = MetadataFilters(filters=[bad])
    with pytest.raises(ValueError, match=message):
        await books.aget_nodes(filters=filters)
    with pytest.raises(ValueError, match=message):
        await books.aquery(
            VectorStoreQuery(
                query_embedding=embed_model.vector("x"), similarity_top_k=1, filters=filters
            )
        )


async def test_a_selective_filter_still_finds_k_nodes(
    store: ChrysalisVectorStore, embed_model: WordEmbedding
) -> None:
    """Only the least similar node passes: the store asks recall for more until it has k."""
    fillers = []
    for i in range(90):
        node = TextNode(id_=f"filler-{i}", text=f"database backup restore number {i}")
        node.embedding = embed_model.vector(node.text)
        fillers.append(node)
    target = TextNode(id_="target", text="A recipe for lemon cake.", metadata={"wanted": True})
    # (a filter's value cannot be a bool: 1 matches True, as in LlamaIndex's own stores)
    target.embedding = embed_model.vector(target.text)
    await store.async_add([*fillers, target])
    result = await store.aquery(
        VectorStoreQuery(
            query_embedding=embed_model.vector("database backup restore"),
            similarity_top_k=1,
            filters=MetadataFilters(filters=[MetadataFilter(key="wanted", value=1)]),
        )
    )
    assert result.ids == ["target"]


def test_what_recall_filters_itself() -> None:
    filters = group(
        AND,
        f("chrysalis.memory_type", "procedural"),
        f("chrysalis.tags", "a", Op.CONTAINS),
        group(AND, f("chrysalis.tags", ["b", "c"], Op.ALL)),
        f("chrysalis.source_instance", "agent-b"),
        f("chrysalis.updated_at", 10, Op.GT),
        f("chrysalis.updated_at", 20.5, Op.LTE),
        f("theme", "x"),
        group(OR, f("chrysalis.memory_type", "semantic"), f("theme", "y")),
    )
    assert pushdown(filters, ["scope"]) == Pushdown(
        memory_type="procedural",
        tags=["scope", "a", "b", "c"],
        source="agent-b",
        since=10.0,
        until=20.5,
    )
    assert pushdown(group(OR, f("chrysalis.memory_type", "procedural"))) == Pushdown()
    assert pushdown(group(AND, f("chrysalis.memory_type", "not-a-type"))) == Pushdown()
