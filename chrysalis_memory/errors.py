"""Every error Chrysalis raises on purpose is a :class:`ChrysalisError`.

Two families matter to callers:

* :class:`UsageError` — the caller asked for something impossible (a bad
  argument, an unknown memory, a misconfiguration). Fix the call.
* :class:`InvalidOpError` — something that came from *elsewhere* (a peer, the
  hub, a file) is malformed, tampered with or forged. It was rejected and
  nothing was stored.

Storage failures are :class:`StoreError`; errors of the libraries underneath
(sqlite3, chromadb, websockets) are translated into these at the boundary, so
callers never need to import them.
"""

from __future__ import annotations


class ChrysalisError(Exception):
    """Base class of every error Chrysalis raises."""


# --- the caller misused the API -------------------------------------------------


class UsageError(ChrysalisError):
    """The caller asked for something that cannot be done as asked."""


class InvalidArgumentError(UsageError, ValueError):
    """An argument is out of range, of the wrong type or empty."""


class UnknownMemoryError(UsageError, LookupError):
    """No memory with this id exists on this replica (or it was forgotten)."""

    def __init__(self, memory_id: str, *, forgotten: bool = False) -> None:
        self.memory_id = memory_id
        self.forgotten = forgotten
        if forgotten:
            message = (
                f"memory {memory_id!r} was forgotten; forgotten memories are kept in the "
                "op log but can no longer be changed"
            )
        else:
            message = (
                f"no memory with id {memory_id!r} on this replica; check the id, or "
                "sync first if another agent created it"
            )
        super().__init__(message)


class ConfigError(UsageError):
    """The configuration (arguments or CHRYSALIS_* variables) is invalid."""


class ClosedError(UsageError):
    """The memory was used before ``open()`` or after ``close()``."""


# --- something received from elsewhere is bad ----------------------------------


class InvalidOpError(ChrysalisError):
    """An op received from a peer, the hub or a file was rejected.

    ``cid`` is the op's content id when it could be computed, ``index`` its
    position in the batch that carried it.
    """

    def __init__(self, message: str, *, cid: str | None = None, index: int | None = None):
        self.cid = cid
        self.index = index
        where = []
        if index is not None:
            where.append(f"op #{index}")
        if cid is not None:
            where.append(f"cid {cid[:16]}…")
        prefix = f"{', '.join(where)}: " if where else ""
        super().__init__(prefix + message)


class MalformedOpError(InvalidOpError):
    """The bytes are not a well-formed op of a supported format version."""


class SignatureError(InvalidOpError):
    """The op's signature does not verify against the key it names."""


class ForgedWriterError(InvalidOpError):
    """The op claims a writer whose registered key differs from the signing key."""


class EquivocationError(InvalidOpError):
    """Two different ops claim the same (writer, sequence number)."""


class BackdatedError(InvalidOpError):
    """An op is stamped before something its writer had provably seen: one of its
    parents, or an op the same writer wrote earlier (a lower sequence number).
    A writer's clock never goes back, so the stamp is forged; taken in, a
    backdated creation would make its writer the memory's creator."""


class ProtocolError(ChrysalisError):
    """A peer broke the wire protocol (bad message, wrong state, limits)."""


# --- storage ------------------------------------------------------------------------


class StoreError(ChrysalisError):
    """The local store failed (disk, permissions, corruption)."""


class DataDirError(ConfigError, StoreError):
    """The data directory (or ``db_path``) cannot be used: a file is in the way, or
    it cannot be created or written (permissions, a read-only disk, a name too long).
    Point ``data_dir`` (``CHRYSALIS_DATA_DIR``) at a directory this process can write."""


class DataDirLockedError(StoreError):
    """Another process already owns this agent's data directory."""


class ClockExhaustedError(StoreError):
    """This replica's hybrid logical clock, or a writer's sequence numbers, ran
    out of values (see ``MAX_WALL_MS`` and ``MAX_SEQ``): unreachable by honest
    use, and never by one received op."""


class KeyMismatchError(StoreError):
    """The agent's signing key does not match the ops its store says it wrote."""


class StoreCorruptError(StoreError):
    """The store's database file is damaged (its structure, as SQLite's own check
    sees it, or a page that cannot be read), so nothing read from it can be vouched
    for. ``path`` names the file. ``chrysalis verify --db PATH`` lists the damage;
    restore the file from a backup, or move it away and let the replica fill up
    again from its peers (see docs/storage.md)."""

    def __init__(self, message: str, *, path: object = None) -> None:
        self.path = path
        super().__init__(message)


# --- embedders ----------------------------------------------------------------------


class EmbedderError(ChrysalisError):
    """The embedder could not turn text into vectors.

    ``model`` and ``host`` name the embedding model and the service asked (when
    there is one), so a caller can report them or fall back to another embedder.
    """

    def __init__(self, message: str, *, model: str | None = None, host: str | None = None):
        self.model = model
        self.host = host
        super().__init__(message)


class EmbedderUnavailableError(EmbedderError):
    """The embedding service (Ollama) could not be reached or did not answer in time."""


class EmbeddingModelMissingError(EmbedderError):
    """The embedding service answered but does not have the model (it was not pulled)."""


# --- the local vector cache ---------------------------------------------------------


class VectorCacheError(StoreError):
    """The local vector cache (Chroma) failed or does not match the embedder.

    The cache only holds derived data: ``chrysalis reindex`` rebuilds it from
    the op log, so no memory is ever lost with it.
    """


class VectorCacheCorruptError(VectorCacheError):
    """The vector cache's files are damaged, or were deleted or replaced while open.

    The cache refuses every further call (it never answers from damaged data).
    Close it, delete its directory (``ChromaVectorCache.reset_directory``) and
    rebuild it from the op log (``chrysalis reindex``).
    """


# --- hub authentication -------------------------------------------------------------


class AuthenticationError(ChrysalisError):
    """A hub client could not be authenticated (missing, malformed, unknown or
    revoked token), or presented a signing key other than the one bound to it."""


class GossipAuthError(AuthenticationError, ProtocolError):
    """A gossip peer was refused: it is not a member (its agent id is not on the
    member list, or was removed from it), or it could not prove it holds that
    member's signing key, or it broke the handshake. Nothing it sent was used."""


class UnknownAgentError(UsageError, LookupError):
    """The hub's token file has no token for this agent id."""


# --- sync ---------------------------------------------------------------------------


class SyncError(ChrysalisError):
    """Syncing with the hub failed: it could not be reached in time, or it refused
    this agent. Local writes are kept and pushed once the hub can be reached."""


class HubUnreachableError(SyncError):
    """The hub did not answer (not running, wrong ``hub_url``, network down)."""


class HubRejectedError(SyncError, AuthenticationError):
    """The hub refused this agent: its token is missing, wrong or revoked (HTTP 401),
    or its signing key is not the one bound to it."""


class HubBusyError(ChrysalisError):
    """The hub refused a piece of work at one of its limits (on the wire: a non-fatal
    ``rate_limited`` error saying which); retry later. ``reason`` names the limit:
    ``agent_limit`` (this agent has as many searches in progress as it may) or
    ``busy`` (as many searches wait as the hub queues)."""

    def __init__(self, message: str, *, reason: str) -> None:
        self.reason = reason
        super().__init__(message)
