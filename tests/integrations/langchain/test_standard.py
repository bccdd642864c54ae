"""LangChain's shared standard suites (``langchain-tests``), run unmodified."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_chrysalis import ChrysalisRetriever, ChrysalisVectorStore
from langchain_core.retrievers import BaseRetriever
from langchain_core.vectorstores import VectorStore
from langchain_tests.integration_tests.retrievers import RetrieversIntegrationTests
from langchain_tests.integration_tests.vectorstores import VectorStoreIntegrationTests

from chrysalis_memory import BlockingAgentMemory
from chrysalis_memory.recall.embedders import HashingEmbedder


class TestChrysalisVectorStoreStandard(VectorStoreIntegrationTests):
    """Each test gets an empty agent store of its own, embedding with the suite's
    ``DeterministicFakeEmbedding``."""

    @pytest.fixture
    def vectorstore(self, tmp_path: Path) -> Iterator[VectorStore]:  # type: ignore[override]
        store = ChrysalisVectorStore(
            self.get_embeddings(), agent_id="standard", data_dir=tmp_path / "agents"
        )
        try:
            yield store
        finally:
            store.close()


FACTS = [
    "The staging database is restored from backup every Sunday at 02:00.",
    "The production database runs on PostgreSQL 16 with two read replicas.",
    "Database migrations are reviewed by the platform team before release.",
    "The staging cluster is rebuilt from scratch on the first day of each month.",
    "Backups of every database are kept for thirty days in cold storage.",
]


class TestChrysalisRetrieverStandard(RetrieversIntegrationTests):
    """The retrievers share one agent (a ``BlockingAgentMemory``) that already
    knows a few facts."""

    memory: BlockingAgentMemory

    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def _agent(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
        memory = BlockingAgentMemory(
            agent_id="retriever",
            data_dir=tmp_path_factory.mktemp("retriever"),
            embedder=HashingEmbedder(512),
        )
        memory.open()
        for fact in FACTS:
            memory.learn(fact, importance=0.8, memory_type="semantic", tags=["ops"])
        cls.memory = memory
        try:
            yield
        finally:
            memory.close()

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return ChrysalisRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"memory": self.memory}

    @property
    def retriever_query_example(self) -> str:
        return "when is the staging database restored?"
