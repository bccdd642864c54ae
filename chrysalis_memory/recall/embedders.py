"""Embedders: turn texts into vectors for recall.

Every embedder satisfies the small :class:`Embedder` protocol: a model name, a
number of dimensions and an async batch ``embed``. Embeddings are cached and
replicated under their model name, so the name must change whenever the
vectors an embedder produces for the same text would change.

Three choices, picked with ``CHRYSALIS_EMBEDDER`` (see :func:`select_embedder`):

* ``hashing`` — :class:`HashingEmbedder`: offline, deterministic, no model
  files. Signed feature hashing of normalised words, word pairs and character
  n-grams. Finds texts that share words (or word stems) with the query; it
  does not know synonyms.
* ``ollama`` — :class:`OllamaEmbedder`: a real embedding model served by a
  local Ollama (default ``nomic-embed-text``, host from ``OLLAMA_HOST``).
* ``auto`` (the default) — Ollama when it answers and has the model, otherwise
  the hashing embedder; the reason for the choice is returned so that it can
  be shown (``chrysalis status``).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import itertools
import logging
import math
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Literal, Protocol, TypeVar, runtime_checkable
from urllib.parse import urlsplit

import httpx
import ollama
import pydantic

from chrysalis_memory.errors import (
    ConfigError,
    EmbedderError,
    EmbedderUnavailableError,
    EmbeddingModelMissingError,
    InvalidArgumentError,
)

__all__ = [
    "DEFAULT_HASHING_DIMENSIONS",
    "DEFAULT_OLLAMA_HOST",
    "DEFAULT_OLLAMA_MODEL",
    "EMBEDDER_KINDS",
    "Embedder",
    "EmbedderKind",
    "HashingEmbedder",
    "OllamaEmbedder",
    "parse_embedder_kind",
    "resolve_ollama_host",
    "select_embedder",
]

logger = logging.getLogger(__name__)

DEFAULT_HASHING_DIMENSIONS: Final = 2048
"""2048 rather than 768: fewer hash collisions. On the labelled recall set, fusing
keyword and vector search beats both alone at 2048 dimensions, not at 768
(docs/recall.md). 8 KiB a vector; pass 768 for a smaller cache."""
DEFAULT_OLLAMA_MODEL: Final = "nomic-embed-text"
DEFAULT_OLLAMA_PORT: Final = 11434
DEFAULT_OLLAMA_HOST: Final = f"http://127.0.0.1:{DEFAULT_OLLAMA_PORT}"
DEFAULT_OLLAMA_BATCH_SIZE: Final = 64
DEFAULT_OLLAMA_TIMEOUT: Final = 120.0
DEFAULT_PROBE_TIMEOUT: Final = 2.0

EmbedderKind = Literal["auto", "hashing", "ollama"]
EMBEDDER_KINDS: Final[tuple[EmbedderKind, ...]] = ("auto", "hashing", "ollama")

_START_OLLAMA_HINT: Final = (
    "start it with `ollama serve` (install it from https://ollama.com/download), "
    "set OLLAMA_HOST if it runs elsewhere, or use the offline embedder with "
    "CHRYSALIS_EMBEDDER=hashing"
)


# --- the protocol -------------------------------------------------------------------


@runtime_checkable
class Embedder(Protocol):
    """What recall needs from an embedder.

    ``model`` names the vectors (cache key, one vector collection per model);
    ``dimensions`` is the length of every vector; ``embed`` returns one vector
    per text, in order. ``aclose`` releases connections (a no-op for offline
    embedders).
    """

    @property
    def model(self) -> str: ...

    @property
    def dimensions(self) -> int: ...

    async def embed(self, texts: Sequence[str]) -> list[list[float]]: ...

    async def aclose(self) -> None: ...


_E = TypeVar("_E", bound="_ClosesOnExit")


class _ClosesOnExit:
    """``async with embedder:`` closes it on exit."""

    async def aclose(self) -> None:
        """Release what the embedder holds (nothing by default)."""

    async def __aenter__(self: _E) -> _E:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()


class _DimensionsUnknownError(EmbedderError, AttributeError):
    """``dimensions`` read before they were learnt.

    Also an ``AttributeError`` so that ``hasattr`` (and so ``isinstance(x, Embedder)``
    on Python < 3.12) answers instead of raising.
    """


def _check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise InvalidArgumentError(
            "embed() takes a sequence of texts, not a single string: wrap it in a list"
        )
    items = list(texts)
    for index, text in enumerate(items):
        if not isinstance(text, str):
            raise InvalidArgumentError(
                f"embed() takes strings; item {index} is a {type(text).__name__}"
            )
    return items


# --- the offline hashing embedder ---------------------------------------------------

# Anything that changes the vector of a text (normalisation, stopwords, stemming,
# n-gram ranges, weights, hashing) must bump this version: it is part of the model
# name, and embeddings are cached and replicated under that name.
_HASHING_VERSION: Final = "v1"
_HASH_PERSON: Final = b"chrysalis-hash1"  # blake2b personalisation (<= 16 bytes)

_WORD_WEIGHT: Final = 1.0
_BIGRAM_WEIGHT: Final = 0.7
_CHAR_WEIGHT: Final = 0.9  # total (L2) weight of one word's character n-grams
_CHAR_NGRAM_SIZES: Final = (3, 4, 5)
_MAX_NGRAM_WORD: Final = 40
_MAX_FALLBACK_CHARS: Final = 256
_INLINE_BATCH: Final = 64  # larger batches are embedded in a worker thread

_TOKEN_RE: Final = re.compile(r"[^\W_]+")
_DROP_APOSTROPHES: Final = str.maketrans("", "", "'\u2019\u02bc`")
_VOWELS: Final = frozenset("aeiouy")
_STOPWORDS: Final = frozenset(
    """
    a an the and or but if of to in on at by for with from as into onto about over than then so
    is are was were be been being am do does did done have has had
    i me my mine you your yours he him his she her hers it its we us our ours they them their
    theirs this that these those there here what which who whom whose how when where why
    will would shall should can could may might must just also very
    """.split()  # noqa: SIM905 (a word list reads better than 90 quoted strings)
)


@functools.lru_cache(maxsize=1 << 14)
def _stem(word: str) -> str:
    """Light English suffix stripping: plurals, -ed, -ing and a final -e.

    Deliberately crude (not Porter): it only has to map the common inflections of
    a word to one key; character n-grams catch the rest.
    """
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith(("ies", "ied")) and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith("sses"):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix, min_stem in (("ing", 3), ("ed", 4)):
        if word.endswith(suffix):
            stem = word[: -len(suffix)]
            if len(stem) >= min_stem and any(c in _VOWELS for c in stem):
                word = stem
                if len(word) >= 4 and word[-1] == word[-2] and word[-1] not in "lsz":
                    word = word[:-1]  # stopped -> stop, preferred -> prefer
            break
    if len(word) > 4 and word.endswith("e"):
        word = word[:-1]  # create / created / creating -> creat
    return word


@functools.lru_cache(maxsize=1 << 16)
def _hash_feature(feature: str, dimensions: int) -> tuple[int, float]:
    """Bucket and sign of a feature: blake2b, so stable across processes and runs."""
    digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8, person=_HASH_PERSON).digest()
    value = int.from_bytes(digest, "little")
    sign = -1.0 if value >> 63 else 1.0
    return (value & 0x7FFF_FFFF_FFFF_FFFF) % dimensions, sign


@functools.lru_cache(maxsize=1 << 13)  # about 2 kB per word: bounded memory
def _word_features(word: str, dimensions: int) -> tuple[tuple[int, float], ...]:
    """The unigram and character n-gram features of one (stemmed) word."""
    acc: dict[int, float] = {}
    index, sign = _hash_feature("w\x1f" + word, dimensions)
    acc[index] = sign * _WORD_WEIGHT
    padded = f"<{word[:_MAX_NGRAM_WORD]}>"  # long tokens (hashes, base64): bounded cost
    grams = [padded[i : i + n] for n in _CHAR_NGRAM_SIZES for i in range(len(padded) - n + 1)]
    weight = _CHAR_WEIGHT / math.sqrt(len(grams)) if grams else 0.0
    for gram in grams:
        index, sign = _hash_feature("c\x1f" + gram, dimensions)
        acc[index] = acc.get(index, 0.0) + sign * weight
    return tuple(acc.items())


@functools.lru_cache(maxsize=1 << 14)
def _bigram_feature(first: str, second: str, dimensions: int) -> tuple[int, float]:
    index, sign = _hash_feature(f"b\x1f{first} {second}", dimensions)
    return index, sign * _BIGRAM_WEIGHT


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold().translate(_DROP_APOSTROPHES)


def _terms(normalised: str) -> list[str]:
    """Stemmed content words; the stopwords themselves when there is nothing else."""
    tokens = _TOKEN_RE.findall(normalised)
    terms = [_stem(t) for t in tokens if t not in _STOPWORDS]
    return terms or [_stem(t) for t in tokens]


def _sublinear(count: int) -> float:
    return 1.0 + math.log(count) if count > 1 else 1.0


class HashingEmbedder(_ClosesOnExit):
    """Offline, deterministic embedder: signed feature hashing, no model files.

    A text is normalised (Unicode NFKC, case-folded, apostrophes dropped,
    punctuation split off), common English stopwords are dropped and words are
    lightly stemmed. Each word contributes a unigram feature and its character
    3-5-grams (so ``explain`` and ``explanation`` overlap), adjacent words a
    bigram feature; repeated terms are weighted ``1 + ln(tf)``. Features are
    hashed with BLAKE2b (stable across processes, unlike ``hash()``) to a bucket
    and a sign, and the vector is L2-normalised, so cosine similarity is a dot
    product. Every text, even an empty one, gets a unit vector.
    """

    def __init__(self, dimensions: int = DEFAULT_HASHING_DIMENSIONS) -> None:
        if isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 8:
            raise InvalidArgumentError(f"dimensions must be an integer >= 8, got {dimensions!r}")
        self._dimensions = dimensions
        self._model = f"chrysalis-hashing-{_HASHING_VERSION}-{dimensions}"
        self._empty = self._vector({_hash_feature("e\x1f", dimensions)[0]: 1.0})

    @property
    def model(self) -> str:
        return self._model

    @property
    def dimensions(self) -> int:
        return self._dimensions

    def __repr__(self) -> str:
        return f"HashingEmbedder(dimensions={self._dimensions})"

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """Embed a batch; big batches run in a worker thread to keep the loop free."""
        items = _check_texts(texts)
        if len(items) <= _INLINE_BATCH:
            return [self._embed_one(text) for text in items]
        return await asyncio.to_thread(self.embed_sync, items)

    def embed_sync(self, texts: Sequence[str]) -> list[list[float]]:
        """The same as :meth:`embed`, for synchronous callers (benchmarks, tools)."""
        return [self._embed_one(text) for text in _check_texts(texts)]

    def _embed_one(self, text: str) -> list[float]:
        dims = self._dimensions
        normalised = _normalise(text)
        terms = _terms(normalised)
        if not terms:
            # No letters or digits (punctuation, symbols, emoji): hash the characters.
            compact = "".join(normalised.split())[:_MAX_FALLBACK_CHARS]
            if not compact:
                return list(self._empty)
            terms = [compact]
        acc: dict[int, float] = {}
        counts: dict[str, int] = {}
        for term in terms:
            counts[term] = counts.get(term, 0) + 1
        for term, count in counts.items():
            scale = _sublinear(count)
            for index, value in _word_features(term, dims):
                acc[index] = acc.get(index, 0.0) + value * scale
        if len(terms) > 1:
            pairs: dict[tuple[str, str], int] = {}
            for pair in itertools.pairwise(terms):
                pairs[pair] = pairs.get(pair, 0) + 1
            for (first, second), count in pairs.items():
                index, value = _bigram_feature(first, second, dims)
                acc[index] = acc.get(index, 0.0) + value * _sublinear(count)
        return self._vector(acc)

    def _vector(self, acc: Mapping[int, float]) -> list[float]:
        norm = math.hypot(*acc.values())
        if norm == 0.0:  # features cancelled out exactly (vanishingly rare)
            return list(self._empty)
        vector = [0.0] * self._dimensions
        for index, value in acc.items():
            vector[index] = value / norm
        return vector


# --- Ollama -----------------------------------------------------------------------


def resolve_ollama_host(host: str | None = None) -> str:
    """The Ollama base URL: ``host``, else ``OLLAMA_HOST``, else ``http://127.0.0.1:11434``.

    Accepts the same shorthands as Ollama itself (``localhost``, ``:11435``,
    ``10.0.0.5:11434``, ``https://ollama.example``) and returns a full URL with
    scheme and port, which is what errors and status messages show.
    """
    raw = (host if host is not None else os.environ.get("OLLAMA_HOST", "")).strip()
    if not raw:
        return DEFAULT_OLLAMA_HOST
    scheme, sep, rest = raw.partition("://")
    if sep:
        scheme = scheme.lower()
        default_port = 443 if scheme == "https" else 80
    else:
        scheme, rest, default_port = "http", raw, DEFAULT_OLLAMA_PORT
    if scheme not in ("http", "https"):
        raise ConfigError(f"OLLAMA_HOST must be an http(s) URL or host[:port], got {raw!r}")
    try:
        parts = urlsplit(f"{scheme}://{rest}")
        port = parts.port or default_port
    except ValueError as exc:
        raise ConfigError(f"invalid Ollama host {raw!r}: {exc}") from None
    hostname = parts.hostname or "127.0.0.1"
    if ":" in hostname:  # IPv6 literal
        hostname = f"[{hostname}]"
    return f"{scheme}://{hostname}:{port}{parts.path.rstrip('/')}"


def _canonical_model(model: str) -> str:
    """``nomic-embed-text:latest`` and ``nomic-embed-text`` are the same model."""
    return model.removesuffix(":latest")


def _embedding_length(model_info: Mapping[str, Any] | None) -> int | None:
    """The vector size from ``/api/show``'s ``model_info`` (``<arch>.embedding_length``)."""
    if not model_info:
        return None
    arch = model_info.get("general.architecture")
    candidates = [f"{arch}.embedding_length"] if isinstance(arch, str) else []
    candidates += [k for k in model_info if k.endswith(".embedding_length")]
    for key in candidates:
        value = model_info.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


class OllamaEmbedder(_ClosesOnExit):
    """Embeddings from a model served by Ollama (``POST /api/embed``).

    Texts are sent in batches of ``batch_size``. ``dimensions`` is learnt from
    :meth:`probe` (which :func:`select_embedder` calls) or from the first
    response; when given, every response is checked against it. Failures raise
    :class:`~chrysalis_memory.errors.EmbedderUnavailableError` (Ollama not
    reachable: start it with ``ollama serve``),
    :class:`~chrysalis_memory.errors.EmbeddingModelMissingError` (run
    ``ollama pull <model>``) or :class:`~chrysalis_memory.errors.EmbedderError`.
    """

    def __init__(
        self,
        model: str = DEFAULT_OLLAMA_MODEL,
        host: str | None = None,
        *,
        batch_size: int = DEFAULT_OLLAMA_BATCH_SIZE,
        dimensions: int | None = None,
        timeout: float = DEFAULT_OLLAMA_TIMEOUT,
        keep_alive: float | str | None = None,
    ) -> None:
        if not isinstance(model, str) or not model.strip():
            raise InvalidArgumentError("model must be a non-empty Ollama model name")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidArgumentError(f"batch_size must be a positive integer, got {batch_size!r}")
        if dimensions is not None and (
            isinstance(dimensions, bool) or not isinstance(dimensions, int) or dimensions < 1
        ):
            raise InvalidArgumentError(f"dimensions must be a positive integer, got {dimensions!r}")
        if not timeout > 0:
            raise InvalidArgumentError(f"timeout must be positive, got {timeout!r}")
        self._requested_model = model.strip()
        self._model = _canonical_model(self._requested_model)
        self._host = resolve_ollama_host(host)
        self._batch_size = batch_size
        self._dimensions = dimensions
        self._timeout = float(timeout)
        self._keep_alive = keep_alive
        self._client: ollama.AsyncClient | None = None

    @property
    def model(self) -> str:
        """The Ollama model name (without a ``:latest`` tag)."""
        return self._model

    @property
    def host(self) -> str:
        """The Ollama base URL, e.g. ``http://127.0.0.1:11434``."""
        return self._host

    @property
    def batch_size(self) -> int:
        return self._batch_size

    @property
    def dimensions(self) -> int:
        """Vector length; known once :meth:`probe` or a first :meth:`embed` has run."""
        if self._dimensions is None:
            raise _DimensionsUnknownError(
                f"the dimensions of Ollama model {self._model} are not known yet: call "
                "`await embedder.probe()` (select_embedder does) or embed a text first",
                model=self._model,
                host=self._host,
            )
        return self._dimensions

    def __repr__(self) -> str:
        return (
            f"OllamaEmbedder(model={self._model!r}, host={self._host!r}, "
            f"batch_size={self._batch_size}, dimensions={self._dimensions!r})"
        )

    async def probe(self, *, timeout: float | None = None) -> int:
        """Check that Ollama answers and has the model; return (and remember) the dimensions.

        Uses ``/api/show``, which does not load the model, with a short timeout;
        falls back to embedding one word when the model info has no embedding
        length.
        """
        wait = self._timeout if timeout is None else timeout
        client = ollama.AsyncClient(host=self._host, timeout=wait)
        try:
            info = await client.show(self._requested_model)
        except Exception as exc:
            raise self._translate(exc, wait) from exc
        finally:
            await client.close()  # type: ignore[no-untyped-call]  # ollama leaves it unannotated
        length = _embedding_length(info.modelinfo)
        if length is None:
            await self.embed(["dimension probe"])
        else:
            self._check_dimensions(length)
        return self.dimensions

    async def embed(self, texts: Sequence[str]) -> list[list[float]]:
        items = _check_texts(texts)
        vectors: list[list[float]] = []
        for start in range(0, len(items), self._batch_size):
            vectors.extend(await self._embed_batch(items[start : start + self._batch_size]))
        return vectors

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()  # type: ignore[no-untyped-call]  # ollama leaves it unannotated

    async def _embed_batch(self, batch: list[str]) -> list[list[float]]:
        if self._client is None:
            self._client = ollama.AsyncClient(host=self._host, timeout=self._timeout)
        try:
            response = await self._client.embed(
                model=self._requested_model, input=batch, keep_alive=self._keep_alive
            )
            vectors = [[float(x) for x in vector] for vector in response.embeddings]
        except Exception as exc:
            raise self._translate(exc, self._timeout) from exc
        if len(vectors) != len(batch):
            raise EmbedderError(
                f"Ollama at {self._host} returned {len(vectors)} embeddings for "
                f"{len(batch)} texts (model {self._model})",
                model=self._model,
                host=self._host,
            )
        for vector in vectors:
            self._check_dimensions(len(vector))
        return vectors

    def _check_dimensions(self, length: int) -> None:
        if length < 1:
            raise EmbedderError(
                f"Ollama at {self._host} returned an empty embedding for model {self._model}",
                model=self._model,
                host=self._host,
            )
        if self._dimensions is None:
            self._dimensions = length
        elif length != self._dimensions:
            raise EmbedderError(
                f"Ollama model {self._model} at {self._host} returned {length}-dimensional "
                f"vectors, expected {self._dimensions}; was the model replaced? Vectors of "
                "different sizes cannot be compared (reindex after changing models)",
                model=self._model,
                host=self._host,
            )

    def _translate(self, exc: Exception, timeout: float) -> EmbedderError:
        """Map ollama/httpx/pydantic failures to Chrysalis errors that say what to do."""
        model, host = self._model, self._host
        if isinstance(exc, EmbedderError):
            return exc
        if isinstance(exc, ollama.ResponseError):
            text = str(exc.error)
            lowered = text.lower()
            if exc.status_code == 404 and "model" in lowered:
                return EmbeddingModelMissingError(
                    f"Ollama at {host} does not have the embedding model {model!r} ({text}); "
                    f"pull it with `ollama pull {self._requested_model}`, or use the offline "
                    "embedder with CHRYSALIS_EMBEDDER=hashing",
                    model=model,
                    host=host,
                )
            if exc.status_code == 404:
                return EmbedderError(
                    f"the server at {host} does not offer Ollama's /api/embed ({text}); "
                    "upgrade Ollama (0.3 or newer) or check OLLAMA_HOST",
                    model=model,
                    host=host,
                )
            hint = ""
            if "support" in lowered and "embed" in lowered:
                hint = f"; choose an embedding model such as {DEFAULT_OLLAMA_MODEL}"
            return EmbedderError(
                f"Ollama at {host} failed to embed with model {model!r}: {text} "
                f"(HTTP {exc.status_code}){hint}",
                model=model,
                host=host,
            )
        if isinstance(exc, httpx.TimeoutException):
            return EmbedderUnavailableError(
                f"Ollama at {host} did not answer within {timeout:g} s; if it is not running, "
                + _START_OLLAMA_HINT,
                model=model,
                host=host,
            )
        if isinstance(exc, (ConnectionError, httpx.TransportError)):
            return EmbedderUnavailableError(
                f"Ollama is not reachable at {host}: {_START_OLLAMA_HINT}",
                model=model,
                host=host,
            )
        if isinstance(exc, (pydantic.ValidationError, ValueError, TypeError)):
            return EmbedderError(
                f"Ollama at {host} sent a response that is not an embedding for model "
                f"{model!r}: {exc}",
                model=model,
                host=host,
            )
        return EmbedderError(
            f"embedding with Ollama model {model!r} at {host} failed: {exc!r}",
            model=model,
            host=host,
        )


# --- choosing one -------------------------------------------------------------------


def parse_embedder_kind(value: str | None) -> EmbedderKind:
    """Validate a ``CHRYSALIS_EMBEDDER`` value (case-insensitive; unset or empty is ``auto``)."""
    cleaned = (value or "").strip().lower() or "auto"
    for kind in EMBEDDER_KINDS:
        if cleaned == kind:
            return kind
    raise ConfigError(
        f"CHRYSALIS_EMBEDDER must be one of {', '.join(EMBEDDER_KINDS)}; got {value!r}"
    )


async def select_embedder(
    kind: EmbedderKind = "auto",
    *,
    model: str = DEFAULT_OLLAMA_MODEL,
    host: str | None = None,
    probe_timeout: float = DEFAULT_PROBE_TIMEOUT,
    hashing_dimensions: int = DEFAULT_HASHING_DIMENSIONS,
    batch_size: int = DEFAULT_OLLAMA_BATCH_SIZE,
    timeout: float = DEFAULT_OLLAMA_TIMEOUT,
) -> tuple[Embedder, str]:
    """Build the embedder ``kind`` asks for; return it with a human-readable reason.

    * ``hashing``: the offline :class:`HashingEmbedder`.
    * ``ollama``: an :class:`OllamaEmbedder`, probed (``/api/show``, at most
      ``probe_timeout`` seconds) so that a missing server or model fails here,
      with :class:`EmbedderUnavailableError` or
      :class:`EmbeddingModelMissingError`, rather than at the first ``learn``.
    * ``auto``: the same probe; on any failure, the hashing embedder, and the
      reason says why (and what to run to get Ollama).
    """
    kind = parse_embedder_kind(kind)
    if kind == "hashing":
        hashing = HashingEmbedder(hashing_dimensions)
        return hashing, f"offline hashing embedder {hashing.model} (CHRYSALIS_EMBEDDER=hashing)"

    embedder = OllamaEmbedder(model, host, batch_size=batch_size, timeout=timeout)
    try:
        dims = await embedder.probe(timeout=probe_timeout)
    except EmbedderError as exc:
        await embedder.aclose()
        if kind == "ollama":
            raise
        hashing = HashingEmbedder(hashing_dimensions)
        fallback = f"using the offline hashing embedder {hashing.model}"
        if isinstance(exc, EmbedderUnavailableError):
            what = (
                f"Ollama at {embedder.host} did not answer within {probe_timeout:g} s"
                if isinstance(exc.__cause__, httpx.TimeoutException)
                else f"Ollama not reachable at {embedder.host}"
            )
            reason = (
                f"{what}: {fallback} (start Ollama with `ollama serve` to use {embedder.model})"
            )
        elif isinstance(exc, EmbeddingModelMissingError):
            reason = (
                f"Ollama at {embedder.host} does not have model {embedder.model} "
                f"(run `ollama pull {model}`): {fallback}"
            )
        else:
            reason = f"Ollama at {embedder.host} failed ({exc}): {fallback}"
        logger.info("embedder: %s", reason)
        return hashing, reason
    reason = f"ollama at {embedder.host} answered with model {embedder.model} ({dims} dimensions)"
    logger.info("embedder: %s", reason)
    return embedder, reason
