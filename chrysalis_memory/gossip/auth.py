"""Who may gossip, and how a peer proves it: the member list and the handshake.

Pure: no I/O (the transport, :mod:`chrysalis_memory.gossip.peer`, moves the
bytes). See ``docs/gossip.md`` ("Who may gossip").

**Members.** :class:`Membership` holds the agents admitted to gossip, each with
the ed25519 public key it signs with: ``{agent id: key}`` from the configuration
(``GossipConfig.members``, ``members_file``) and, with a hub, from the hub's
registered agents (whose keys the hub bound when they first connected with
their token). Those keys were never learned from a peer: a peer cannot make
itself a member, nor bind a key to an agent id, by anything it sends. The same
keys check ops: a gossiped op is taken only if its writer is a member and it is
signed with that member's key (:meth:`Membership.writer_key`).

**The handshake.** Mutual challenge-response on every connection, before any
gossip frame is read. The connecting side (client, C) dials the listening
side (server, S)::

    S -> C  {"v": 1, "type": "challenge", "nonce": n_s}
    C -> S  {"v": 1, "type": "hello", "from": C, "addr": C's address, "nonce": n_c,
             "sig": sign_C("chrysalis-gossip-auth/1" client C addr n_s n_c)}
    S -> C  {"v": 1, "type": "welcome", "from": S,
             "sig": sign_S("chrysalis-gossip-auth/1" server S C n_s n_c)}

Nonces are 32 random bytes, signatures ed25519, both in unpadded base64url.
The server checks that C is a member and that the signature verifies against
C's member key, and only then says anything but its nonce; the client checks S
the same way before it sends any gossip. Each signature covers both fresh
nonces, so none can be replayed on another connection, and a role label, so a
server's signature never passes for a client's. After the handshake, every
frame on the connection must name C as its sender and ``addr`` as its address.

The handshake authenticates the two ends; it does not encrypt, nor protect a
connection from someone on the network path who can rewrite it: use ``wss://``
(a TLS proxy) or a private network for that.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Annotated, Final, Union

import msgspec
from msgspec import Meta, Struct
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from chrysalis_memory.errors import GossipAuthError
from chrysalis_memory.model.ops import AgentId, Signer, b64decode, b64encode
from chrysalis_memory.sync.messages import SyncProtocolError, decode_frame

AUTH_VERSION: Final = 1
HANDSHAKE_MAX_BYTES: Final = 2048
"""Largest handshake frame (a hello with a 128-character id and a 512-character
address is about 900 bytes). Until the handshake is over, no larger frame is read."""
NONCE_BYTES: Final = 32
MAX_ADDR_CHARS: Final = 512
_LABEL: Final = b"chrysalis-gossip-auth/1\x00"

Nonce = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{43}$")]
Signature = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{86}$")]
Address = Annotated[str, Meta(min_length=1, max_length=MAX_ADDR_CHARS)]


class _Frame(Struct, frozen=True, kw_only=True, forbid_unknown_fields=True, tag_field="type"):
    v: Annotated[int, Meta(ge=1, le=65_535)]


class ChallengeFrame(_Frame, tag="challenge", frozen=True, kw_only=True):
    nonce: Nonce


class HelloFrame(_Frame, tag="hello", frozen=True, kw_only=True):
    sender: AgentId = msgspec.field(name="from")
    addr: Address
    nonce: Nonce
    sig: Signature


class WelcomeFrame(_Frame, tag="welcome", frozen=True, kw_only=True):
    sender: AgentId = msgspec.field(name="from")
    sig: Signature


HandshakeFrame = Union[ChallengeFrame, HelloFrame, WelcomeFrame]  # noqa: UP007 - runtime type

_ENCODER: Final = msgspec.json.Encoder()
_DECODER: Final = msgspec.json.Decoder(HandshakeFrame)


def _decode(data: bytes | str, expected: type[_Frame]) -> _Frame:
    try:
        frame = decode_frame(
            data,
            _DECODER,
            max_bytes=HANDSHAKE_MAX_BYTES,
            versions=(AUTH_VERSION,),
            what="gossip handshake",
        )
    except SyncProtocolError as error:
        raise GossipAuthError(f"bad handshake: {error}") from None
    if frame.v != AUTH_VERSION:
        raise GossipAuthError(f"handshake version {frame.v} is not supported")
    if not isinstance(frame, expected):
        raise GossipAuthError(
            f"expected a {expected.__struct_config__.tag!r} frame, "
            f"got {type(frame).__struct_config__.tag!r}"
        )
    return frame


def _payload(role: bytes, *names: str, server_nonce: str, client_nonce: str) -> bytes:
    """What one side signs: the label, its role, the ids (and address) it vouches
    for, and both nonces (fixed length, last: the encoding is unambiguous, as
    ids and addresses hold no NUL)."""
    parts = [_LABEL, role, b"\x00"]
    for name in names:
        parts += [name.encode(), b"\x00"]
    parts += [b64decode(server_nonce), b64decode(client_nonce)]
    return b"".join(parts)


def _verify(key: str, payload: bytes, sig: str) -> bool:
    try:
        VerifyKey(b64decode(key)).verify(payload, b64decode(sig))
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def new_nonce() -> str:
    return b64encode(secrets.token_bytes(NONCE_BYTES))


# --- the member list ---------------------------------------------------------------------


class Membership:
    """The agents admitted to gossip and their keys, from every source.

    Sources are named (``"config"``, ``"file"``, ``"hub"``) and replaced whole
    when they change. An agent two sources give different keys is no member
    at all (and is reported by :meth:`conflicts`): which key is right cannot be
    told from here. ``revoked`` keys (the hub's revoked agents) may no longer
    connect, but the ops they signed before stay verifiable. At most
    ``max_members`` agents are admitted, all sources together (the first ones
    by source order, then by id).
    """

    def __init__(self, me: str, my_key: str, *, max_members: int) -> None:
        self.me, self.my_key = me, my_key
        self.max_members = max_members
        self._sources: dict[str, tuple[dict[str, str], dict[str, str]]] = {}
        self._members: dict[str, str] = {}
        self._writers: dict[str, str] = {me: my_key}
        self._conflicts: set[str] = set()
        self.dropped = 0
        """Members left out by the last update, over ``max_members``."""

    def set_source(
        self,
        name: str,
        members: Mapping[str, str],
        revoked: Mapping[str, str] | None = None,
    ) -> bool:
        """Replace what source ``name`` says; returns whether the admitted members
        or their keys changed."""
        self._sources[name] = (dict(members), dict(revoked or {}))
        before = (self._members, self._writers)
        self._rebuild()
        return (self._members, self._writers) != before

    def _rebuild(self) -> None:
        keys: dict[str, set[str]] = {}
        revoked: dict[str, set[str]] = {}
        for admitted, gone in self._sources.values():
            for agent, key in admitted.items():
                keys.setdefault(agent, set()).add(key)
            for agent, key in gone.items():
                revoked.setdefault(agent, set()).add(key)
        said = {a: keys.get(a, set()) | revoked.get(a, set()) for a in keys.keys() | revoked.keys()}
        self._conflicts = {a for a, ks in said.items() if len(ks) > 1}
        if said.get(self.me, {self.my_key}) != {self.my_key}:
            self._conflicts.add(self.me)  # our own id is ours: another key for it is wrong
        members: dict[str, str] = {}
        order = [a for source in self._sources.values() for a in sorted(source[0])]
        for agent in dict.fromkeys(order):
            if agent == self.me or agent in self._conflicts or agent in revoked:
                continue  # a revocation wins over a listing
            members[agent] = next(iter(keys[agent]))
        self.dropped = max(0, len(members) - self.max_members)
        self._members = dict(list(members.items())[: self.max_members])
        writers = {self.me: self.my_key, **self._members}
        for agent in sorted(revoked):
            if len(writers) > 2 * self.max_members:
                break
            if agent not in self._conflicts and agent not in writers:
                writers[agent] = next(iter(revoked[agent]))
        self._writers = writers

    def connectable(self, agent: str) -> str | None:
        """The key ``agent`` must prove it holds to gossip with us; None if it may not."""
        return self._members.get(agent)

    def writer_key(self, writer: str) -> str | None:
        """The key ``writer``'s gossiped ops must be signed with; None: not taken."""
        return self._writers.get(writer)

    def ids(self) -> frozenset[str]:
        """The members this agent gossips with (itself aside)."""
        return frozenset(self._members)

    def conflicts(self) -> set[str]:
        return set(self._conflicts)

    def __len__(self) -> int:
        return len(self._members)

    def __contains__(self, agent: object) -> bool:
        return agent in self._members


# --- the handshake -----------------------------------------------------------------------


class ServerHandshake:
    """The listening side: :meth:`challenge` first, then :meth:`hello` on the answer."""

    def __init__(
        self, me: str, signer: Signer, members: Membership, *, nonce: str | None = None
    ) -> None:
        self.me, self.signer, self.members = me, signer, members
        self.nonce = nonce or new_nonce()

    def challenge(self) -> bytes:
        return _ENCODER.encode(ChallengeFrame(v=AUTH_VERSION, nonce=self.nonce))

    def hello(self, data: bytes | str) -> tuple[str, str, bytes]:
        """Check the client's hello: ``(its id, its address, the welcome to send)``.

        Raises :class:`GossipAuthError` (then send nothing, and close)."""
        hello = _decode(data, HelloFrame)
        assert isinstance(hello, HelloFrame)
        if hello.sender == self.me:
            raise GossipAuthError("a peer claims this agent's own id")
        key = self.members.connectable(hello.sender)
        if key is None:
            raise GossipAuthError(f"{hello.sender!r} is not a gossip member")
        payload = _payload(
            b"client",
            hello.sender,
            hello.addr,
            server_nonce=self.nonce,
            client_nonce=hello.nonce,
        )
        if not _verify(key, payload, hello.sig):
            raise GossipAuthError(f"{hello.sender!r} did not prove it holds its member key")
        sig = self.signer.sign(
            _payload(
                b"server", self.me, hello.sender, server_nonce=self.nonce, client_nonce=hello.nonce
            )
        )
        welcome = WelcomeFrame(v=AUTH_VERSION, sender=self.me, sig=sig)
        return hello.sender, hello.addr, _ENCODER.encode(welcome)


class ClientHandshake:
    """The connecting side: :meth:`challenge` answers the server's challenge,
    :meth:`welcome` checks its proof and returns who it is."""

    def __init__(
        self,
        me: str,
        addr: str,
        signer: Signer,
        members: Membership,
        *,
        nonce: str | None = None,
    ) -> None:
        self.me, self.addr, self.signer, self.members = me, addr, signer, members
        self.nonce = nonce or new_nonce()
        self._server_nonce: str | None = None

    def challenge(self, data: bytes | str) -> bytes:
        challenge = _decode(data, ChallengeFrame)
        assert isinstance(challenge, ChallengeFrame)
        self._server_nonce = challenge.nonce
        sig = self.signer.sign(
            _payload(
                b"client", self.me, self.addr, server_nonce=challenge.nonce, client_nonce=self.nonce
            )
        )
        hello = HelloFrame(
            v=AUTH_VERSION, sender=self.me, addr=self.addr, nonce=self.nonce, sig=sig
        )
        return _ENCODER.encode(hello)

    def welcome(self, data: bytes | str) -> str:
        """The server's id, once it proved it is that member; else :class:`GossipAuthError`."""
        if self._server_nonce is None:
            raise GossipAuthError("a welcome before the challenge")
        welcome = _decode(data, WelcomeFrame)
        assert isinstance(welcome, WelcomeFrame)
        key = self.members.connectable(welcome.sender)
        if key is None or welcome.sender == self.me:
            raise GossipAuthError(f"the peer says it is {welcome.sender!r}, not a gossip member")
        payload = _payload(
            b"server",
            welcome.sender,
            self.me,
            server_nonce=self._server_nonce,
            client_nonce=self.nonce,
        )
        if not _verify(key, payload, welcome.sig):
            raise GossipAuthError(f"the peer did not prove it is {welcome.sender!r}")
        return welcome.sender
