"""Embedders: the offline hashing embedder, the Ollama embedder and their selection.

Three kinds of Ollama test, none of which needs a real Ollama or a network:

* cassette tests replay vcrpy cassettes (``cassettes/*.yaml``) with
  ``record_mode="none"``: requests go nowhere, a request missing from a cassette
  fails the test;
* live tests run against :class:`OllamaStandIn`, a local stand-in HTTP server
  that speaks Ollama's API (``ollama_standin.py``);
* unreachable tests point at a closed loopback port.

Re-recording the cassettes (after a change to the requests OllamaEmbedder
sends)::

    CHRYSALIS_RECORD_CASSETTES=1 python -m pytest tests/recall -q

In that mode the cassette tests talk to a fresh stand-in server and rewrite
their cassettes (vcrpy ``record_mode="all"``). Recorded URLs are rewritten to
Ollama's default ``http://127.0.0.1:11434`` and requests are matched on method,
path and body only, so the stand-in's random port never matters.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import vcr  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from chrysalis_memory.errors import (
    ChrysalisError,
    ConfigError,
    EmbedderError,
    EmbedderUnavailableError,
    EmbeddingModelMissingError,
    InvalidArgumentError,
)
from chrysalis_memory.recall.embedders import (
    DEFAULT_OLLAMA_HOST,
    Embedder,
    HashingEmbedder,
    OllamaEmbedder,
    parse_embedder_kind,
    resolve_ollama_host,
    select_embedder,
)

from .ollama_standin import OllamaStandIn, standin_vector

REPO_ROOT = Path(__file__).resolve().parents[2]
CASSETTE_DIR = Path(__file__).parent / "cassettes"
RECORD = os.environ.get("CHRYSALIS_RECORD_CASSETTES") == "1"
CASSETTE_HOST = DEFAULT_OLLAMA_HOST  # what recorded cassettes say
# In replay mode the embedder points here: nothing listens, so a request that
# escaped the cassette fails loudly instead of reaching some server.
REPLAY_HOST = "http://127.0.0.1:9"


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.hypot(*a) * math.hypot(*b))


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture
def standin() -> Iterator[OllamaStandIn]:
    with OllamaStandIn() as server:
        yield server


@pytest.fixture
def closed_url() -> str:
    """A loopback URL where nothing listens (connection refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def cassette_host() -> Iterator[str]:
    """The stand-in while recording cassettes; a dead port while replaying them."""
    if RECORD:
        with OllamaStandIn() as server:
            yield server.url
    else:
        yield REPLAY_HOST


@pytest.fixture
async def hashing() -> AsyncIterator[HashingEmbedder]:
    async with HashingEmbedder() as embedder:
        yield embedder


def _rewrite_host(request: Any) -> Any:
    parts = urlsplit(request.uri)
    request.uri = CASSETTE_HOST + parts.path + (f"?{parts.query}" if parts.query else "")
    if "host" in request.headers:
        request.headers["host"] = urlsplit(CASSETTE_HOST).netloc
    return request


def _drop_volatile_headers(response: dict[str, Any]) -> dict[str, Any]:
    response["headers"] = {
        k: v for k, v in response["headers"].items() if k.lower() not in {"date", "server"}
    }
    return response


cassettes = vcr.VCR(
    cassette_library_dir=str(CASSETTE_DIR),
    record_mode="all" if RECORD else "none",
    drop_unused_requests=RECORD,
    match_on=["method", "path", "body"],
    filter_headers=["user-agent", "authorization"],
    before_record_request=_rewrite_host,
    before_record_response=_drop_volatile_headers,
    decode_compressed_response=True,
)


# --- the hashing embedder --------------------------------------------------------

# (stored fact, paraphrased query sharing key words, unrelated distractor)
PARAPHRASES = [
    (
        "The user prefers concise explanations with code examples.",
        "How should I explain things to this user? Concise, with examples.",
        "The deployment pipeline runs nightly on the staging cluster.",
    ),
    (
        "Python asyncio requires await for coroutine execution.",
        "Do coroutines in asyncio need to be awaited?",
        "The user prefers dark mode in the editor.",
    ),
    (
        "Paris is the capital of France.",
        "What is the capital city of France?",
        "Berlin has many museums and parks.",
    ),
    (
        "The staging database password rotates every 30 days.",
        "how often is the staging DB password rotated",
        "Customers asked for an update to the refund policy.",
    ),
    (
        "Alice manages the billing service and owns its on-call rotation.",
        "Who owns the billing on-call?",
        "Bob reviewed the design of the search page.",
    ),
]


async def test_hashing_shape_and_model_name() -> None:
    for dims in (8, 64, 768, 1000):
        embedder = HashingEmbedder(dims)
        assert embedder.dimensions == dims
        assert embedder.model == f"chrysalis-hashing-v1-{dims}"
        [vector] = await embedder.embed(["hello world"])
        assert len(vector) == dims
        assert all(type(x) is float for x in vector)
    assert isinstance(HashingEmbedder(), Embedder)


@pytest.mark.parametrize("dims", [0, 7, -1, 3.5, True, "768"])
def test_hashing_rejects_bad_dimensions(dims: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        HashingEmbedder(dims)


@pytest.mark.parametrize(
    "text",
    [
        "The user prefers concise explanations.",
        "",
        "   \n\t ",
        "?!... ---",
        "the and of it is",  # stopwords only
        "🙂🚀",
        "x",
        "a" * 10_000,
        "naïve café 東京 Ελληνικά",
    ],
)
async def test_hashing_vectors_are_unit_length(hashing: HashingEmbedder, text: str) -> None:
    [vector] = await hashing.embed([text])
    assert math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-9)


async def test_hashing_empty_batch(hashing: HashingEmbedder) -> None:
    assert await hashing.embed([]) == []
    assert hashing.embed_sync(()) == []


async def test_hashing_rejects_a_bare_string_and_non_strings(hashing: HashingEmbedder) -> None:
    with pytest.raises(InvalidArgumentError, match="wrap it in a list"):
        await hashing.embed("a single text")
    with pytest.raises(InvalidArgumentError, match="item 1"):
        await hashing.embed(["ok", 3])  # type: ignore[list-item]


async def test_hashing_normalises_case_punctuation_and_unicode(hashing: HashingEmbedder) -> None:
    same = [
        "The user prefers concise answers.",
        "THE USER PREFERS CONCISE ANSWERS!!!",
        "the user's preferred: concise answer",  # possessive, -ed, plural stripped
        "".join(
            chr(ord(c) + 0xFEE0) if c != " " else c for c in "the user prefers concise answers"
        ),  # fullwidth letters: NFKC folds them
    ]
    vectors = await hashing.embed(same)
    for vector in vectors[1:]:
        assert cosine(vectors[0], vector) == pytest.approx(1.0)


async def test_hashing_paraphrase_beats_distractor(hashing: HashingEmbedder) -> None:
    for fact, query, distractor in PARAPHRASES:
        v_fact, v_query, v_distractor = await hashing.embed([fact, query, distractor])
        related, unrelated = cosine(v_fact, v_query), cosine(v_fact, v_distractor)
        assert related > 0.3, (fact, query, related)
        assert related > unrelated + 0.25, (fact, related, unrelated)


async def test_hashing_query_finds_its_fact_among_all(hashing: HashingEmbedder) -> None:
    facts = [fact for fact, _, _ in PARAPHRASES] + [d for _, _, d in PARAPHRASES]
    fact_vectors = await hashing.embed(facts)
    for index, (_, query, _) in enumerate(PARAPHRASES):
        [query_vector] = await hashing.embed([query])
        scores = [cosine(query_vector, v) for v in fact_vectors]
        assert max(range(len(facts)), key=scores.__getitem__) == index, query


async def test_hashing_large_batches_match_small_ones(hashing: HashingEmbedder) -> None:
    texts = [f"memory number {i} about topic {i % 7}" for i in range(300)]  # worker thread
    batched = await hashing.embed(texts)
    assert batched == [(await hashing.embed([t]))[0] for t in texts]
    assert batched == hashing.embed_sync(texts)


def test_hashing_vector_is_pinned() -> None:
    """The vectors of ``chrysalis-hashing-v1`` must never change: they are cached
    and replicated under that name. Changing the algorithm means a new model name."""
    [vector] = HashingEmbedder(32).embed_sync(["Paris is the capital of France."])
    assert vector == pytest.approx(PINNED_PARIS_32, abs=1e-4)


# fmt: off
PINNED_PARIS_32 = [
    -0.325, 0.2109, 0.1141, -0.0931, 0.0931, -0.1141, 0.0, 0.2142, 0.0931, 0.0, -0.325, 0.0,
    0.1141, -0.2072, 0.1141, 0.0, -0.2072, 0.0931, 0.1141, -0.0931, 0.1141, -0.5355, -0.1141,
    -0.0209, 0.0, -0.0931, -0.3422, 0.0931, 0.0931, 0.1141, 0.0, -0.1863,
]
# fmt: on


@pytest.mark.slow
def test_hashing_is_deterministic_across_processes() -> None:
    texts = [fact for fact, _, _ in PARAPHRASES] + ["", "🙂", "naïve café"]
    code = (
        "import json, sys\n"
        "from chrysalis_memory.recall.embedders import HashingEmbedder\n"
        "print(json.dumps(HashingEmbedder(256).embed_sync(json.load(sys.stdin))))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "4242"}  # str hashing differs from ours
    result = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(texts),
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=60,
        check=True,
    )
    assert json.loads(result.stdout) == HashingEmbedder(256).embed_sync(texts)


@settings(max_examples=200)
@given(st.lists(st.text(max_size=200), max_size=5))
def test_hashing_any_text_gives_a_finite_unit_vector(texts: list[str]) -> None:
    vectors = HashingEmbedder(64).embed_sync(texts)
    assert len(vectors) == len(texts)
    for vector in vectors:
        assert len(vector) == 64
        assert all(math.isfinite(x) for x in vector)
        assert math.isclose(math.hypot(*vector), 1.0, rel_tol=1e-9)


# --- Ollama: replaying cassettes -------------------------------------------------


async def test_cassette_probe_and_batched_embed(cassette_host: str) -> None:
    texts = ["Paris is the capital of France.", "The sky is blue.", "Ollama serves models."]
    with cassettes.use_cassette("ollama_probe_and_embed.yaml") as cassette:
        async with OllamaEmbedder(host=cassette_host, batch_size=2) as embedder:
            assert await embedder.probe(timeout=5) == 768
            vectors = await embedder.embed(texts)
    if not RECORD:
        assert cassette.all_played
        assert cassette.play_count == 3  # /api/show, then 2 + 1 texts
    assert embedder.dimensions == 768
    assert isinstance(embedder, Embedder)
    assert len(vectors) == 3
    for text, vector in zip(texts, vectors, strict=True):
        assert vector == pytest.approx(standin_vector("nomic-embed-text", text, 768), abs=1e-6)


async def test_cassette_model_not_pulled(cassette_host: str) -> None:
    with cassettes.use_cassette("ollama_model_missing.yaml") as cassette:
        async with OllamaEmbedder("not-pulled-model", host=cassette_host) as embedder:
            with pytest.raises(EmbeddingModelMissingError) as probed:
                await embedder.probe(timeout=5)
            with pytest.raises(EmbeddingModelMissingError) as embedded:
                await embedder.embed(["hello"])
    if not RECORD:
        assert cassette.all_played
    for error in (probed.value, embedded.value):
        assert "ollama pull not-pulled-model" in str(error)
        assert error.model == "not-pulled-model"


async def test_cassette_select_embedder_auto_picks_ollama(cassette_host: str) -> None:
    with cassettes.use_cassette("ollama_select_auto.yaml"):
        embedder, reason = await select_embedder("auto", host=cassette_host)
        await embedder.aclose()
    assert isinstance(embedder, OllamaEmbedder)
    assert embedder.dimensions == 768
    assert "answered with model nomic-embed-text" in reason


# --- Ollama: live against the stand-in -------------------------------------------


async def test_batching_splits_requests_in_order(standin: OllamaStandIn) -> None:
    texts = [f"fact number {i}" for i in range(5)]
    async with OllamaEmbedder(host=standin.url, batch_size=2) as embedder:
        vectors = await embedder.embed(texts)
        assert await embedder.embed([]) == []
    batches = [request.body["input"] for request in standin.seen("/api/embed")]
    assert batches == [texts[0:2], texts[2:4], texts[4:5]]
    assert vectors == [standin_vector("nomic-embed-text", t, 768) for t in texts]
    assert embedder.dimensions == 768  # learnt from the first response


async def test_default_batch_size_is_one_request_for_64(standin: OllamaStandIn) -> None:
    async with OllamaEmbedder("all-minilm", host=standin.url) as embedder:
        vectors = await embedder.embed([f"t{i}" for i in range(65)])
    assert [len(r.body["input"]) for r in standin.seen("/api/embed")] == [64, 1]
    assert {len(v) for v in vectors} == {384}


async def test_model_missing_says_ollama_pull(standin: OllamaStandIn) -> None:
    async with OllamaEmbedder("mxbai-embed-large", host=standin.url) as embedder:
        with pytest.raises(EmbeddingModelMissingError, match=r"ollama pull mxbai-embed-large"):
            await embedder.embed(["hello"])
        with pytest.raises(EmbeddingModelMissingError, match=r"ollama pull mxbai-embed-large"):
            await embedder.probe(timeout=5)


async def test_unreachable_says_ollama_serve(closed_url: str) -> None:
    async with OllamaEmbedder(host=closed_url) as embedder:
        with pytest.raises(EmbedderUnavailableError) as raised:
            await embedder.embed(["hello"])
        with pytest.raises(EmbedderUnavailableError):
            await embedder.probe(timeout=10)
    message = str(raised.value)
    assert closed_url in message
    assert "ollama serve" in message
    assert "CHRYSALIS_EMBEDDER=hashing" in message
    assert isinstance(raised.value, ChrysalisError)


async def test_timeout_is_unavailable() -> None:
    with OllamaStandIn(delay=1.0) as slow:
        async with OllamaEmbedder(host=slow.url, timeout=0.1) as embedder:
            with pytest.raises(EmbedderUnavailableError, match=r"did not answer within 0\.1 s"):
                await embedder.embed(["hello"])


async def test_other_server_errors_are_embedder_errors() -> None:
    with OllamaStandIn(embed_error=(500, "llama runner process has terminated")) as broken:
        async with OllamaEmbedder(host=broken.url) as embedder:
            with pytest.raises(EmbedderError, match="llama runner process") as raised:
                await embedder.embed(["hello"])
    assert type(raised.value) is EmbedderError
    assert "HTTP 500" in str(raised.value)


async def test_not_an_ollama_server(standin: OllamaStandIn) -> None:
    async with OllamaEmbedder(host=standin.url + "/not-ollama") as embedder:
        with pytest.raises(EmbedderError, match="does not offer Ollama's /api/embed") as raised:
            await embedder.embed(["hello"])
    assert type(raised.value) is EmbedderError


async def test_dimensions_unknown_until_probe_or_embed() -> None:
    with OllamaStandIn(show_embedding_length=False) as server:
        async with OllamaEmbedder(host=server.url) as embedder:
            with pytest.raises(EmbedderError, match="probe"):
                _ = embedder.dimensions
            isinstance(embedder, Embedder)  # must not raise (hasattr on Python < 3.12)
            assert await embedder.probe(timeout=5) == 768  # falls back to embedding a word
        assert len(server.seen("/api/embed")) == 1


async def test_dimension_mismatch_is_refused(standin: OllamaStandIn) -> None:
    async with OllamaEmbedder(host=standin.url, dimensions=1024) as embedder:
        assert embedder.dimensions == 1024
        with pytest.raises(EmbedderError, match="768-dimensional vectors, expected 1024"):
            await embedder.embed(["hello"])


async def test_latest_tag_is_the_same_model(standin: OllamaStandIn) -> None:
    async with OllamaEmbedder("nomic-embed-text:latest", host=standin.url) as embedder:
        assert embedder.model == "nomic-embed-text"
        [vector] = await embedder.embed(["hello"])
    assert standin.seen("/api/embed")[0].body["model"] == "nomic-embed-text:latest"
    assert vector == standin_vector("nomic-embed-text", "hello", 768)


async def test_ollama_rejects_bad_arguments() -> None:
    with pytest.raises(InvalidArgumentError):
        OllamaEmbedder("")
    with pytest.raises(InvalidArgumentError):
        OllamaEmbedder(batch_size=0)
    with pytest.raises(InvalidArgumentError):
        OllamaEmbedder(dimensions=0)
    async with OllamaEmbedder(host=REPLAY_HOST) as embedder:
        with pytest.raises(InvalidArgumentError):
            await embedder.embed("not a list")


async def test_ollama_host_from_environment(
    standin: OllamaStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", standin.url)
    async with OllamaEmbedder() as embedder:
        assert embedder.host == standin.url
        assert len(await embedder.embed(["x"])) == 1


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("", DEFAULT_OLLAMA_HOST),
        ("localhost", "http://localhost:11434"),
        (":11435", "http://127.0.0.1:11435"),
        ("10.0.0.5:8080", "http://10.0.0.5:8080"),
        ("http://ollama.internal", "http://ollama.internal:80"),
        ("https://ollama.example/", "https://ollama.example:443"),
        ("https://ollama.example:8443/proxy/", "https://ollama.example:8443/proxy"),
        ("[::1]:11434", "http://[::1]:11434"),
        ("0.0.0.0", "http://0.0.0.0:11434"),
    ],
)
def test_resolve_ollama_host(given: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert resolve_ollama_host(given) == expected


def test_resolve_ollama_host_env_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OLLAMA_HOST", raising=False)
    assert resolve_ollama_host() == DEFAULT_OLLAMA_HOST
    monkeypatch.setenv("OLLAMA_HOST", "gpu-box:11500")
    assert resolve_ollama_host() == "http://gpu-box:11500"
    assert resolve_ollama_host("other") == "http://other:11434"  # the argument wins
    for bad in ("ftp://x", "localhost:notaport"):
        with pytest.raises(ConfigError):
            resolve_ollama_host(bad)


# --- select_embedder ---------------------------------------------------------------


async def test_auto_picks_ollama_when_it_answers(standin: OllamaStandIn) -> None:
    embedder, reason = await select_embedder("auto", host=standin.url, probe_timeout=5)
    try:
        assert isinstance(embedder, OllamaEmbedder)
        assert embedder.dimensions == 768
        assert reason == (
            f"ollama at {standin.url} answered with model nomic-embed-text (768 dimensions)"
        )
        assert standin.seen("/api/embed") == []  # the probe does not load the model
    finally:
        await embedder.aclose()


async def test_auto_falls_back_to_hashing_when_unreachable(closed_url: str) -> None:
    embedder, reason = await select_embedder("auto", host=closed_url, probe_timeout=10)
    assert isinstance(embedder, HashingEmbedder)
    assert reason.startswith(f"Ollama not reachable at {closed_url}: using the offline hashing")
    assert "ollama serve" in reason


async def test_auto_falls_back_when_the_model_is_missing(standin: OllamaStandIn) -> None:
    embedder, reason = await select_embedder("auto", model="bge-m3", host=standin.url)
    assert isinstance(embedder, HashingEmbedder)
    assert "ollama pull bge-m3" in reason


async def test_auto_falls_back_when_ollama_is_slow() -> None:
    with OllamaStandIn(delay=1.0) as slow:
        embedder, reason = await select_embedder("auto", host=slow.url, probe_timeout=0.1)
    assert isinstance(embedder, HashingEmbedder)
    assert "did not answer within 0.1 s" in reason


async def test_auto_uses_ollama_host(
    standin: OllamaStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_HOST", standin.url)
    embedder, _ = await select_embedder("auto")
    await embedder.aclose()
    assert isinstance(embedder, OllamaEmbedder)


async def test_explicit_ollama_fails_loudly(closed_url: str, standin: OllamaStandIn) -> None:
    with pytest.raises(EmbedderUnavailableError, match="ollama serve"):
        await select_embedder("ollama", host=closed_url, probe_timeout=10)
    with pytest.raises(EmbeddingModelMissingError, match="ollama pull bge-m3"):
        await select_embedder("ollama", model="bge-m3", host=standin.url)
    embedder, reason = await select_embedder("ollama", host=standin.url)
    await embedder.aclose()
    assert isinstance(embedder, OllamaEmbedder)
    assert "answered with model nomic-embed-text" in reason


async def test_hashing_kind_never_touches_the_network(standin: OllamaStandIn) -> None:
    embedder, reason = await select_embedder("hashing", host=standin.url, hashing_dimensions=384)
    assert isinstance(embedder, HashingEmbedder)
    assert embedder.dimensions == 384
    assert "chrysalis-hashing-v1-384" in reason
    assert standin.requests == []


async def test_unknown_kind_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="CHRYSALIS_EMBEDDER"):
        await select_embedder("openai")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (None, "auto"),
        ("", "auto"),
        (" Hashing ", "hashing"),
        ("OLLAMA", "ollama"),
        ("auto", "auto"),
    ],
)
def test_parse_embedder_kind(value: str | None, kind: str) -> None:
    assert parse_embedder_kind(value) == kind


def test_parse_embedder_kind_rejects_unknown() -> None:
    with pytest.raises(ConfigError):
        parse_embedder_kind("sentence-transformers")
