"""A small local stand-in for an Ollama server, for tests and for recording cassettes.

No Ollama runs in CI (or here), so :class:`OllamaStandIn` speaks just enough of
Ollama's HTTP API, with the same request and response shapes
(https://github.com/ollama/ollama/blob/main/docs/api.md):

* ``POST /api/embed`` ``{"model", "input": str | [str, ...]}`` ->
  ``{"model", "embeddings": [[...], ...], "total_duration", "load_duration",
  "prompt_eval_count"}``; an unknown model answers 404
  ``{"error": "model \\"x\\" not found, try pulling it first"}``.
* ``POST /api/show`` ``{"model"}`` -> ``{"details", "model_info":
  {"general.architecture", "<arch>.embedding_length", ...}, "capabilities"}``;
  404 ``{"error": "model 'x' not found"}`` for an unknown model.
* ``GET /``, ``GET /api/version``, ``GET /api/tags`` for probes.

Vectors are deterministic (derived from a BLAKE2b hash of model and text) and
unit length; :func:`standin_vector` computes the same vector without a server.
It runs ``http.server`` in a daemon thread on ``127.0.0.1`` with an ephemeral
port and records every request it serves in :attr:`OllamaStandIn.requests`.

    with OllamaStandIn() as server:
        embedder = OllamaEmbedder(host=server.url)
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

STANDIN_VERSION = "0.6.3-standin"
DEFAULT_MODELS: Mapping[str, int] = {"nomic-embed-text": 768, "all-minilm": 384}


def standin_vector(model: str, text: str, dimensions: int) -> list[float]:
    """The unit vector the stand-in returns for ``text`` (rounded like a float32 JSON dump)."""
    raw: list[float] = []
    counter = 0
    seed = f"{_base_name(model)}\x00{text}".encode()
    while len(raw) < dimensions:
        block = hashlib.blake2b(seed + counter.to_bytes(4, "little"), digest_size=64).digest()
        # 16 uint32 per block, mapped to [-1, 1)
        raw.extend(x / 2**31 - 1.0 for x in struct.unpack("<16I", block))
        counter += 1
    raw = raw[:dimensions]
    norm = math.sqrt(sum(v * v for v in raw)) or 1.0
    return [round(v / norm, 7) for v in raw]


def _base_name(model: str) -> str:
    return model.removesuffix(":latest")


@dataclass
class SeenRequest:
    method: str
    path: str
    body: Any


@dataclass
class OllamaStandIn:
    """A fake Ollama on 127.0.0.1:<ephemeral port>; use as a context manager."""

    models: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    #: Include ``<arch>.embedding_length`` in ``/api/show`` (real Ollama does).
    show_embedding_length: bool = True
    #: Seconds to sleep before answering any request (to test timeouts).
    delay: float = 0.0
    #: When set, ``/api/embed`` answers this (status, error message) instead.
    embed_error: tuple[int, str] | None = None
    requests: list[SeenRequest] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> OllamaStandIn:
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name="ollama-standin",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OllamaStandIn:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what the tests look at -----------------------------------------------------

    def seen(self, path: str) -> list[SeenRequest]:
        with self._lock:
            return [r for r in self.requests if r.path == path]

    def _record(self, request: SeenRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _dimensions(self, model: object) -> int | None:
        if not isinstance(model, str):
            return None
        return self.models.get(_base_name(model))

    # -- the API ----------------------------------------------------------------------

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        if method == "GET" and path == "/":
            return 200, "Ollama is running"
        if method == "GET" and path == "/api/version":
            return 200, {"version": STANDIN_VERSION}
        if method == "GET" and path == "/api/tags":
            return 200, {"models": [self._tag(name) for name in sorted(self.models)]}
        if method == "POST" and path == "/api/show":
            return self._show(body)
        if method == "POST" and path == "/api/embed":
            return self._embed(body)
        return 404, "404 page not found"

    def _tag(self, name: str) -> dict[str, Any]:
        full = f"{name}:latest"
        return {
            "name": full,
            "model": full,
            "modified_at": "2025-01-01T00:00:00Z",
            "size": 274302450,
            "digest": hashlib.sha256(full.encode()).hexdigest(),
            "details": {
                "parent_model": "",
                "format": "gguf",
                "family": "nomic-bert",
                "families": ["nomic-bert"],
                "parameter_size": "137M",
                "quantization_level": "F16",
            },
        }

    def _show(self, body: Any) -> tuple[int, Any]:
        model = body.get("model") if isinstance(body, dict) else None
        dims = self._dimensions(model)
        if dims is None:
            return 404, {"error": f"model '{model}' not found"}
        model_info: dict[str, Any] = {
            "general.architecture": "nomic-bert",
            "general.parameter_count": 136727040,
            "nomic-bert.context_length": 2048,
        }
        if self.show_embedding_length:
            model_info["nomic-bert.embedding_length"] = dims
        return 200, {
            "license": "Apache-2.0",
            "modelfile": f"FROM {model}",
            "parameters": "num_ctx                        8192",
            "template": "{{ .Prompt }}",
            "details": self._tag(_base_name(str(model)))["details"],
            "model_info": model_info,
            "capabilities": ["embedding"],
            "modified_at": "2025-01-01T00:00:00Z",
        }

    def _embed(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 400, {"error": "invalid request body"}
        if self.embed_error is not None:
            status, message = self.embed_error
            return status, {"error": message}
        model = body.get("model")
        dims = self._dimensions(model)
        if dims is None or not isinstance(model, str):
            return 404, {"error": f'model "{model}" not found, try pulling it first'}
        texts = body.get("input", "")
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            return 400, {"error": "invalid input type"}
        return 200, {
            "model": model,
            "embeddings": [standin_vector(model, text, dims) for text in texts],
            "total_duration": 14143917,
            "load_duration": 1019500,
            "prompt_eval_count": sum(len(t.split()) + 2 for t in texts),
        }


class _Handler(BaseHTTPRequestHandler):
    standin: OllamaStandIn
    server_version = "ollama-standin"

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode("utf-8", "replace")
        path = self.path.split("?", 1)[0]
        self.standin._record(SeenRequest(method, path, body))
        if self.standin.delay:
            time.sleep(self.standin.delay)
        status, payload = self.standin.handle(method, path, body)
        if isinstance(payload, str):
            data, content_type = payload.encode(), "text/plain; charset=utf-8"
        else:
            data, content_type = json.dumps(payload).encode(), "application/json; charset=utf-8"
        try:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet
