"""The hub's agent tokens: who may connect, and which signing key each agent uses.

An operator creates a token per agent with ``chrysalis token create AGENT_ID``;
the agent presents it in the websocket handshake as ``Authorization: Bearer
<token>``. The hub stores only a hash of each token, in a JSON file written
atomically and readable only by its owner (mode 0600)::

    {"version": 1,
     "agents": {"agent-a": {"hash": "sha256:…", "created_ms": 1718000000000,
                            "revoked": false, "public_key": "9tEh…" | null}}}

Tokens look like ``chry_`` followed by 43 base64url characters (256 random
bits); the random part is independent of the agent id, so a token reveals
nothing about whom it belongs to.

The file is re-read whenever it changes on disk, so a token created or revoked
by ``chrysalis token`` takes effect in a running hub without a restart. Every
read-modify-write holds a lock file next to it, so concurrent writers (the CLI
and the hub binding a key) never lose each other's changes.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from filelock import FileLock, Timeout

from chrysalis_memory._files import fsync_dir
from chrysalis_memory.errors import (
    AuthenticationError,
    InvalidArgumentError,
    StoreError,
    UnknownAgentError,
)
from chrysalis_memory.model.ops import AGENT_ID_PATTERN

TOKEN_PREFIX: Final = "chry_"
FILE_VERSION: Final = 1
LOCK_TIMEOUT_S: Final = 10.0

_AGENT = re.compile(AGENT_ID_PATTERN)
_TOKEN = re.compile(r"^chry_[A-Za-z0-9_-]{43}$")
_KEY = re.compile(r"^[A-Za-z0-9_-]{43}$")  # an ed25519 public key, base64url
_HASH = re.compile(r"^sha256:[0-9a-f]{64}$")
_HINT = "send `Authorization: Bearer <token>` with a token from `chrysalis token create AGENT_ID`"
_WHERE = "--tokens-file or CHRYSALIS_HUB_TOKENS_FILE (the hub's tokens_file)"


def hash_token(token: str) -> str:
    """The hash the token file stores for ``token``.

    A single SHA-256, without salt or key stretching, on purpose: tokens are
    256 bits from :func:`secrets.token_urlsafe`, so nobody can guess or
    brute-force one from its hash, and slow password KDFs (bcrypt, scrypt,
    Argon2) only protect low-entropy secrets. This is what GitHub and others
    do for API tokens, and it keeps authentication cheap for every connection.
    """
    return "sha256:" + hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token: ``chry_`` and 43 base64url characters (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class AgentRecord:
    """One agent's entry in the token file, without its token hash."""

    agent_id: str
    created_ms: int
    """When its current token was created (Unix milliseconds)."""
    revoked: bool
    public_key: str | None
    """Its bound ed25519 signing key (base64url), or ``None`` until it connects."""

    def to_json(self) -> dict[str, Any]:
        return {
            "agent_id": self.agent_id,
            "created_ms": self.created_ms,
            "revoked": self.revoked,
            "public_key": self.public_key,
        }


@dataclass(frozen=True)
class _Entry:
    hash: str
    created_ms: int
    revoked: bool
    public_key: str | None


_Stamp = tuple[int, int, int, int]  # (device, inode, mtime_ns, size)


class TokenStore:
    """The token file at ``path`` (which need not exist yet).

    Methods are synchronous and quick (one small file); they may be called from
    several threads. A file that cannot be read, written or parsed raises
    :class:`StoreError` saying why and what to do, rather than being ignored:
    the hub then refuses everyone (fails closed).
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._file_lock = FileLock(self.path.with_name(self.path.name + ".lock"))
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._stamp: _Stamp | None = None

    # --- managing tokens ------------------------------------------------------------

    def create(self, agent_id: str, *, public_key: str | None = None) -> str:
        """A new token for ``agent_id``, returned in plain text this once.

        It replaces the agent's previous token, which stops working at once.
        The signing key bound to the agent is kept unless ``public_key`` names
        another one: a new token is not a new identity.
        """
        _check_agent_id(agent_id)
        if public_key is not None:
            _check_key(public_key)
        token = new_token()
        with self._modify() as entries:
            previous = entries.get(agent_id)
            if public_key is None and previous is not None:
                public_key = previous.public_key
            entries[agent_id] = _Entry(
                hash=hash_token(token),
                created_ms=time.time_ns() // 1_000_000,
                revoked=False,
                public_key=public_key,
            )
        return token

    def revoke(self, agent_id: str) -> None:
        """Revoke the agent's token (revoking a revoked token does nothing).

        Raises :class:`UnknownAgentError` if the agent never had a token.
        """
        with self._modify() as entries:
            entry = entries.get(agent_id)
            if entry is None:
                raise UnknownAgentError(
                    f"no token for agent {agent_id!r} in {self.path}; "
                    "`chrysalis token list` shows the agents that have one"
                )
            entries[agent_id] = dataclasses.replace(entry, revoked=True)

    def bind_key(self, agent_id: str, public_key: str) -> None:
        """Bind the agent's signing key, at its first authenticated connection.

        Binding the key already bound does nothing. Raises
        :class:`AuthenticationError` if another key is bound, or if the agent has
        no valid token (it was revoked since it authenticated).
        """
        _check_key(public_key)
        with self._lock:
            self._refresh()
            current = self._entries.get(agent_id)
            if current is not None and not current.revoked and current.public_key == public_key:
                return  # the common case: no lock file, no write
        with self._modify() as entries:
            entry = entries.get(agent_id)
            if entry is None or entry.revoked:
                raise AuthenticationError(f"agent {agent_id!r} has no valid token")
            if entry.public_key is None:
                entries[agent_id] = dataclasses.replace(entry, public_key=public_key)
            elif entry.public_key != public_key:
                raise AuthenticationError(
                    f"agent {agent_id!r} signs with a key other than the one bound to it "
                    f"({entry.public_key[:8]}…); an agent keeps its signing key for life"
                )

    # --- reading --------------------------------------------------------------------

    def authenticate(self, authorization: str | None) -> str:
        """The agent id of an HTTP ``Authorization`` header value ``Bearer <token>``.

        Raises :class:`AuthenticationError` saying what is wrong: no header, not
        a Bearer token, a malformed token, or a token unknown or revoked. The
        token itself never appears in the message.
        """
        if authorization is None or not authorization.strip():
            raise AuthenticationError(f"missing Authorization header: {_HINT}")
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            raise AuthenticationError(f"the Authorization header is not a Bearer token: {_HINT}")
        token = credentials.strip()
        if not token:
            raise AuthenticationError(f"the Bearer token is empty: {_HINT}")
        if not _TOKEN.match(token):
            raise AuthenticationError(
                f"malformed token: expected {TOKEN_PREFIX} followed by 43 base64url characters"
            )
        digest = hash_token(token)
        found: tuple[str, _Entry] | None = None
        with self._lock:
            self._refresh()
            for agent_id, entry in self._entries.items():
                # Constant time per comparison; no early exit on a match.
                if hmac.compare_digest(entry.hash, digest):
                    found = (agent_id, entry)
        if found is None:
            raise AuthenticationError(
                "unknown token: it was never issued by this hub, or was replaced by a newer one"
            )
        agent_id, entry = found
        if entry.revoked:
            raise AuthenticationError(f"the token of agent {agent_id!r} was revoked")
        return agent_id

    def public_keys(self) -> dict[str, str]:
        """``{agent id: bound public key}`` of the agents that have one (for ``welcome``).

        Revoked agents are included: ops they signed earlier must stay verifiable.
        """
        with self._lock:
            self._refresh()
            return {
                agent: entry.public_key
                for agent, entry in sorted(self._entries.items())
                if entry.public_key is not None
            }

    def record(self, agent_id: str) -> AgentRecord | None:
        """The agent's entry as the file says now (None if it never had a token)."""
        with self._lock:
            self._refresh()
            entry = self._entries.get(agent_id)
        if entry is None:
            return None
        return AgentRecord(agent_id, entry.created_ms, entry.revoked, entry.public_key)

    def agents(self) -> list[AgentRecord]:
        """Every agent with a token (current or revoked), sorted by id; no hashes."""
        with self._lock:
            self._refresh()
            return [
                AgentRecord(agent, entry.created_ms, entry.revoked, entry.public_key)
                for agent, entry in sorted(self._entries.items())
            ]

    # --- the file -------------------------------------------------------------------

    def _refresh(self) -> None:
        """Re-read the file if it changed on disk since we last read or wrote it."""
        stamp = self._stat()
        if stamp == self._stamp and stamp is not None:
            return
        self._entries = self._read() if stamp is not None else {}
        self._stamp = stamp

    def _stat(self) -> _Stamp | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _file_error(self.path, "read", exc) from None
        return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def _read(self) -> dict[str, _Entry]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return {}
        except OSError as exc:
            raise _file_error(self.path, "read", exc) from None
        try:
            return _parse(json.loads(raw))
        except (ValueError, TypeError, KeyError, RecursionError) as exc:
            raise StoreError(
                f"the token file {self.path} is damaged ({exc}); restore it from a backup "
                "or delete it and create new tokens"
            ) from None

    @contextlib.contextmanager
    def _modify(self) -> Iterator[dict[str, _Entry]]:
        """Read the file under the lock file, let the caller change the entries,
        and write them back atomically (unless the caller raised)."""
        with self._lock:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise _file_error(self.path, "create the directory of", exc) from None
            try:
                self._file_lock.acquire(timeout=LOCK_TIMEOUT_S)
            except Timeout:
                raise StoreError(
                    f"the token file {self.path} stayed locked for {LOCK_TIMEOUT_S:.0f} s "
                    f"(by {self._file_lock.lock_file}); if no `chrysalis` command or hub is "
                    "using it, delete that lock file"
                ) from None
            except OSError as exc:
                raise _file_error(self.path, "lock", exc) from None
            try:
                stamp = self._stat()
                entries = self._read() if stamp is not None else {}
                yield entries
                self._write(entries)
                self._entries = entries
                self._stamp = self._stat()
            finally:
                self._file_lock.release()

    def _write(self, entries: dict[str, _Entry]) -> None:
        document = {
            "version": FILE_VERSION,
            "agents": {
                agent: {
                    "hash": e.hash,
                    "created_ms": e.created_ms,
                    "revoked": e.revoked,
                    "public_key": e.public_key,
                }
                for agent, e in sorted(entries.items())
            },
        }
        data = (json.dumps(document, indent=2) + "\n").encode("utf-8")
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.fchmod(fd, 0o600)  # whatever the umask
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path)
            fsync_dir(self.path.parent)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise _file_error(self.path, "write", exc) from None


def _file_error(path: Path, action: str, exc: OSError) -> StoreError:
    """Why ``action`` failed on the token file at ``path``, and what to do about it.

    Decided by the kind of error and the file system, not by its message.
    """
    in_the_way = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
    if in_the_way is not None:
        return StoreError(
            f"cannot use the token file {path}: {in_the_way} is a file, not a directory; "
            f"move that file away, or give {_WHERE} a path in a directory"
        )
    if isinstance(exc, IsADirectoryError) or path.is_dir():
        return StoreError(
            f"the token file {path} is a directory, not a file; give {_WHERE} the path of a "
            f"file, such as {path / 'tokens.json'}"
        )
    if isinstance(exc, PermissionError):
        return StoreError(
            f"permission denied: this user cannot {action} the token file {path}; run as the "
            f"user who owns it and its directory {path.parent} (the file is private to its "
            f"owner, mode 0600), or give {_WHERE} another path"
        )
    reason = exc.strerror or type(exc).__name__
    return StoreError(
        f"cannot {action} the token file {path}: {reason}; check the disk and that {path} "
        f"is the path you meant ({_WHERE})"
    )


def _parse(document: Any) -> dict[str, _Entry]:
    if not isinstance(document, dict) or document.get("version") != FILE_VERSION:
        raise ValueError(f"not a version {FILE_VERSION} token file")
    agents = document["agents"]
    if not isinstance(agents, dict):
        raise TypeError("'agents' is not an object")
    entries: dict[str, _Entry] = {}
    for agent, record in agents.items():
        if not isinstance(agent, str) or not _AGENT.match(agent) or not isinstance(record, dict):
            raise ValueError(f"invalid entry {agent!r}")
        digest, created, revoked, key = (
            record["hash"],
            record["created_ms"],
            record["revoked"],
            record["public_key"],
        )
        if (
            not isinstance(digest, str)
            or not _HASH.match(digest)
            or type(created) is not int
            or type(revoked) is not bool
            or not (key is None or (isinstance(key, str) and _KEY.match(key)))
        ):
            raise ValueError(f"invalid entry for agent {agent!r}")
        entries[agent] = _Entry(digest, created, revoked, key)
    return entries


def _check_agent_id(agent_id: str) -> None:
    if not isinstance(agent_id, str) or not _AGENT.match(agent_id):
        raise InvalidArgumentError(
            f"invalid agent id {agent_id!r}: 1-128 characters from A-Z a-z 0-9 . _ : @ -, "
            "starting with a letter or digit"
        )


def _check_key(public_key: str) -> None:
    if not isinstance(public_key, str) or not _KEY.match(public_key):
        raise InvalidArgumentError(
            "public_key must be an ed25519 public key: 43 characters of base64url"
        )
