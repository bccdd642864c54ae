"""Each agent's ed25519 signing key, kept in its data directory.

The key file is created once, readable only by its owner (mode 0600), and
written atomically, so a crash can never leave a half-written key behind.
Losing it means the agent can no longer write as itself: peers have pinned
its public key. Back it up with the data directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from chrysalis_memory._files import fsync_dir
from chrysalis_memory.errors import StoreError
from chrysalis_memory.model.ops import Signer


def load_or_create_signer(path: Path) -> Signer:
    """The signer stored at ``path``, creating a new key pair if there is none."""
    if path.exists():
        return _load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    signer = Signer.generate()
    pem = Ed25519PrivateKey.from_private_bytes(signer.private_bytes()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process created the key meanwhile
    except FileExistsError:
        return _load(path)
    finally:
        tmp.unlink()
    fsync_dir(path.parent)
    return signer


def _load(path: Path) -> Signer:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise StoreError(
            f"the signing key at {path} cannot be read ({exc}); restore it from a backup. "
            "Deleting it makes this agent a new writer that peers will not accept under "
            "the same agent id."
        ) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise StoreError(f"{path} holds a {type(key).__name__}, not an ed25519 key")
    return Signer(key)
