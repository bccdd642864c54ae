"""Ops: the immutable, signed, content-addressed unit of change and replication.

An op names one document, its writer and that writer's sequence number, a
hybrid logical timestamp, the document heads the writer had seen (its causal
parents: the Merkle clock) and a patch saying which fields change and how.

Encoding is canonical JSON (sorted keys, no whitespace). The writer signs the
canonical encoding of the op with an empty ``sig``; the op's CID is the
SHA-256 of the canonical encoding of the whole signed op, so any change to any
byte, signature included, changes the CID.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import hashlib
import math
import sys
from array import array
from collections.abc import Iterable, Mapping, Sequence
from functools import cached_property, lru_cache
from typing import Annotated, Any, Final, Literal

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from msgspec import UNSET, Meta, Struct, UnsetType
from nacl.exceptions import BadSignatureError
from nacl.signing import VerifyKey

from chrysalis_memory.crdt.hlc import CEILING, HLC, MAX_COUNTER, MAX_WALL_MS, HybridClock
from chrysalis_memory.errors import (
    BackdatedError,
    ClockExhaustedError,
    MalformedOpError,
    SignatureError,
)

FORMAT_VERSION: Final = 1
MAX_OP_BYTES: Final = 1 << 20
"""Largest encoded op accepted from anywhere (1 MiB): bounds memory per op."""

EMBEDDING_ID_PREFIX: Final = "emb:"
"""Embedding documents live in their own id space, so a memory id and an
embedding id can never name the same document."""

CID_PATTERN: Final = r"^[0-9a-f]{64}$"
AGENT_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}\Z"

Cid = Annotated[str, Meta(pattern=CID_PATTERN)]
AgentId = Annotated[str, Meta(pattern=AGENT_ID_PATTERN)]
DocId = Annotated[str, Meta(min_length=1, max_length=256)]
Tag = Annotated[str, Meta(min_length=1, max_length=256)]
Unit = Annotated[float, Meta(ge=0.0, le=1.0)]
PublicKeyB64 = Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{43}$")]
SignatureB64 = Annotated[str, Meta(pattern=r"^([A-Za-z0-9_-]{86})?$")]

# --- the range of every number an op carries ----------------------------------------
# Each bound leaves headroom so that nothing computed from an accepted value can
# overflow later: not ``+ 1`` (the next sequence number, the clock's next tick),
# not a sum (a G-Counter's total), not SQLite's 64-bit INTEGER columns, and not a
# JSON double (every bound is below 2^53, so JSON readers in any language see the
# exact value). The HLC's bounds are in :mod:`chrysalis_memory.crdt.hlc`
# (``MAX_WALL_MS`` = 2^47 - 1 ms, in the year 6429; ``MAX_COUNTER`` = 2^32 - 1).

MAX_SEQ: Final = (1 << 53) - 1
"""Largest sequence number (2^53 - 1): a million ops a second for 285 years.
``+ 1`` fits SQLite's INTEGER; exact as a JSON double; gossip's intervals of
sequence numbers use the same bound."""

MAX_ACCESS: Final = (1 << 40) - 1
"""Largest access count one writer may report for one memory (about 1.1e12: ten
thousand recalls a second for three and a half years). The G-Counter's total
saturates at :data:`chrysalis_memory.crdt.counters.MAX_TOTAL` (2^53 - 1), which
8,192 writers at this bound reach; up to there the sum is exact."""

Seq = Annotated[int, Meta(ge=1, le=MAX_SEQ)]

MemoryKind = Literal["episodic", "semantic", "procedural"]
DocKind = Literal["memory", "bead", "embedding_ref", "metadata"]
WireDot = tuple[AgentId, Seq]


class Creation(Struct, frozen=True, forbid_unknown_fields=True, omit_defaults=True):
    """Marks an op that creates a document; the earliest creation wins."""

    kind: DocKind = "memory"


class MemoryPatch(
    Struct,
    frozen=True,
    omit_defaults=True,
    forbid_unknown_fields=True,
    tag="memory",
    tag_field="type",
):
    """What one op changes in a memory. Absent fields are untouched.

    ``access`` is the writer's *cumulative* access count for the memory (a
    G-Counter entry), not a delta: that keeps replay idempotent.
    ``tags_remove`` maps each removed tag to the add-dots its writer observed.
    """

    create: Creation | UnsetType = UNSET
    content: Annotated[str, Meta(min_length=1)] | UnsetType = UNSET
    memory_type: MemoryKind | UnsetType = UNSET
    embedding_ref: str | UnsetType | None = UNSET
    metadata: dict[str, Any] | UnsetType = UNSET
    tags_add: tuple[Tag, ...] = ()
    tags_remove: dict[Tag, tuple[WireDot, ...]] = {}
    importance: Unit | UnsetType = UNSET
    confidence: Unit | UnsetType = UNSET
    evidence: tuple[Annotated[str, Meta(min_length=1)], ...] = ()
    related_memories: tuple[DocId, ...] = ()
    parent_memories: tuple[DocId, ...] = ()
    access: Annotated[int, Meta(ge=1, le=MAX_ACCESS)] | UnsetType = UNSET
    forgotten: bool | UnsetType = UNSET


class EmbeddingPatch(
    Struct,
    frozen=True,
    omit_defaults=True,
    forbid_unknown_fields=True,
    tag="embedding",
    tag_field="type",
):
    """An embedding of a text by a model; ``vector`` is base64 of float32 LE."""

    text_hash: Cid
    model: Annotated[str, Meta(min_length=1, max_length=256)]
    dimensions: Annotated[int, Meta(ge=1, le=65536)]
    vector: str


Patch = MemoryPatch | EmbeddingPatch


def text_hash(text: str) -> str:
    """SHA-256 (hex) of a text: what an embedding is cached under."""
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def embedding_id(model: str, hashed_text: str) -> str:
    """The id of the embedding document of a text under a model.

    Derived, not chosen: every replica that embeds the same text with the same
    model addresses the same document, so an embedding is made once and shared.
    """
    digest = hashlib.sha256(f"{model}\0{hashed_text}".encode()).hexdigest()
    return EMBEDDING_ID_PREFIX + digest


def encode_vector(vector: Sequence[float]) -> str:
    """A vector as base64 of little-endian float32 (compact and exact)."""
    values = array("f", vector)
    if sys.byteorder != "little":
        values.byteswap()
    return b64encode(values.tobytes())


def decode_vector(encoded: str) -> list[float]:
    values = array("f")
    values.frombytes(b64decode(encoded))
    if sys.byteorder != "little":
        values.byteswap()
    return values.tolist()


class Op(Struct, frozen=True, dict=True, forbid_unknown_fields=True, kw_only=True):
    """One signed change to one document. Build ops with :class:`OpAuthor`."""

    v: Literal[1] = FORMAT_VERSION
    doc: DocId
    writer: AgentId
    seq: Seq
    hlc: HLC
    parents: tuple[Cid, ...] = ()
    key: PublicKeyB64
    patch: Patch
    sig: SignatureB64 = ""

    @cached_property
    def encoded(self) -> bytes:
        """The canonical encoding: what is stored, sent and hashed."""
        return _ENCODER.encode(self)

    @cached_property
    def cid(self) -> str:
        """SHA-256 (hex) of the canonical encoding."""
        return hashlib.sha256(self.encoded).hexdigest()

    @property
    def doc_type(self) -> str:
        """``"memory"`` or ``"embedding"``: which kind of document this op changes."""
        return "embedding" if isinstance(self.patch, EmbeddingPatch) else "memory"

    def signing_payload(self) -> bytes:
        """The bytes the writer signs: the canonical op with an empty ``sig``."""
        return _ENCODER.encode(msgspec.structs.replace(self, sig=""))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-compatible data (for JSON APIs and debugging)."""
        result: dict[str, Any] = msgspec.to_builtins(self)
        return result


_ENCODER: Final = msgspec.json.Encoder(order="sorted")
_DECODER: Final = msgspec.json.Decoder(Op)


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# --- decoding and validation ------------------------------------------------------


def _undecodable_reason(raw: bytes, exc: Exception) -> str:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"op is not valid UTF-8 (byte {bad.start})"
    return f"op is not valid JSON: {exc}"


def decode_op(data: bytes | str | Mapping[str, Any] | Op, *, index: int | None = None) -> Op:
    """Parse and structurally validate one op (no signature check yet).

    Accepts canonical bytes, a JSON string, plain data or an :class:`Op`.
    Raises :class:`MalformedOpError` saying what is wrong and where.

    Every form is checked as the canonical bytes a peer would receive, and the
    op returned is the one those bytes decode to: whether an op is valid, and
    the values it folds into a document, never depend on the form it came in.
    Bytes and text must already be canonical, so that the CID is the hash of
    the bytes as received (otherwise "1e-7" and "1E-7" would carry one op).
    """
    if isinstance(data, Op | Mapping):
        try:
            raw = data.encoded if isinstance(data, Op) else _ENCODER.encode(data)
        except (msgspec.EncodeError, TypeError, ValueError, OverflowError) as exc:
            raise MalformedOpError(f"op cannot be encoded as JSON: {exc}", index=index) from None
        canonical_only = False
    elif isinstance(data, bytes | bytearray | memoryview | str):
        try:
            raw = data.encode() if isinstance(data, str) else bytes(data)
        except UnicodeEncodeError:
            raise MalformedOpError("op text is not valid Unicode", index=index) from None
        canonical_only = True
    else:
        raise MalformedOpError(
            f"expected op bytes, JSON text, a mapping or an Op, got {type(data).__name__}",
            index=index,
        )
    if len(raw) > MAX_OP_BYTES:
        raise MalformedOpError(
            f"op is {len(raw)} bytes, over the {MAX_OP_BYTES} byte limit", index=index
        )
    try:
        op = _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        raise MalformedOpError(f"invalid op: {exc}", index=index) from None
    except RecursionError:
        raise MalformedOpError("op is nested too deeply", index=index) from None
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        # msgspec reports bad UTF-8 as a DecodeError or a UnicodeDecodeError depending
        # on its version and where the byte is: name the cause ourselves.
        raise MalformedOpError(_undecodable_reason(raw, exc), index=index) from None
    if canonical_only and op.encoded != raw:
        raise MalformedOpError(
            "op is not canonically encoded (sorted keys, no whitespace, shortest "
            "numbers, no default fields): send Op.encoded unchanged",
            index=index,
        )
    _check_semantics(op, index)
    return op


def _shown(number: int) -> str:
    """A number for an error message: in full unless it is long (up to 4,300 digits
    decode, more than an error frame should carry)."""
    text = str(number)
    return text if len(text) <= 24 else f"a {len(text)}-digit number"


def _check_semantics(op: Op, index: int | None) -> None:
    """Rules the schema alone cannot express."""
    wall, counter = op.hlc
    if not 0 <= wall <= MAX_WALL_MS:
        raise MalformedOpError(
            f"hlc wall time must be in 0..{MAX_WALL_MS} ms (MAX_WALL_MS), got {_shown(wall)}",
            index=index,
        )
    if not 0 <= counter <= MAX_COUNTER:
        raise MalformedOpError(
            f"hlc counter must be in 0..{MAX_COUNTER} (MAX_COUNTER), got {_shown(counter)}",
            index=index,
        )
    if len(op.parents) != len(set(op.parents)):
        raise MalformedOpError("parents must not repeat", index=index)
    if not op.sig:
        raise MalformedOpError("op is not signed", index=index)
    for name in ("key", "sig"):
        # base64 leaves spare low bits in the last character: without this check
        # several spellings of one signature (or key) would verify, each with
        # its own CID.
        text = getattr(op, name)
        if b64encode(b64decode(text)) != text:
            raise MalformedOpError(f"{name} is not canonical base64url", index=index)
    patch = op.patch
    if isinstance(patch, EmbeddingPatch) != op.doc.startswith(EMBEDDING_ID_PREFIX):
        raise MalformedOpError(
            f"embedding ops must target ids starting with {EMBEDDING_ID_PREFIX!r} "
            "and memory ops must not",
            index=index,
        )
    if isinstance(patch, MemoryPatch):
        for name in ("importance", "confidence"):
            value = getattr(patch, name)
            if value is not UNSET and not math.isfinite(value):
                raise MalformedOpError(f"{name} must be a finite number", index=index)
        if patch == _EMPTY_MEMORY_PATCH:
            raise MalformedOpError("patch changes nothing", index=index)
    else:
        try:
            raw = b64decode(patch.vector)
        except (binascii.Error, ValueError):
            raise MalformedOpError("embedding vector is not base64", index=index) from None
        if len(raw) != 4 * patch.dimensions:
            raise MalformedOpError(
                f"embedding vector has {len(raw) // 4} float32 values, "
                f"dimensions says {patch.dimensions}",
                index=index,
            )


_EMPTY_MEMORY_PATCH: Final = MemoryPatch()


# --- stamps against what their writer had seen ------------------------------------------


def check_stamps(
    ops: Iterable[Op],
    stamps_of: Mapping[str, HLC],
    writer_stamps: Mapping[str, Sequence[tuple[int, HLC]]],
) -> None:
    """Refuse an op stamped before something its writer had provably seen.

    An honest writer's clock never goes back (:class:`HybridClock`), and it has
    observed every op it holds before it writes: so each of its ops is stamped
    after the writer's own ops with lower sequence numbers, before those with
    higher ones, and after every op it names as a parent. An op that breaks this
    carries a forged stamp. The check matters most for creations: the earliest
    creation of a memory is its provenance (who created it, and when), so a
    backdated creation would hand the memory to its writer (docs/concepts.md,
    "Provenance").

    ``stamps_of`` gives the stamps of the ops held, by CID; ``writer_stamps``,
    per writer, ``(seq, stamp)`` of that writer's held ops near the ones checked,
    sorted by ``seq``. ``ops`` are checked in order, each against what is held
    and the ops before it, as if stored one by one. Parents not known are skipped
    (they may arrive later), as are stamps above
    :data:`~chrysalis_memory.crdt.hlc.CEILING`, which no clock takes over.
    Raises :class:`BackdatedError` for the first op refused.
    """
    stamps = dict(stamps_of)
    writers = {writer: list(entries) for writer, entries in writer_stamps.items()}
    for op in ops:
        for parent in op.parents:
            seen = stamps.get(parent)
            if seen is not None and op.hlc <= seen <= CEILING:
                raise BackdatedError(
                    f"stamped {list(op.hlc)}, not after its parent {parent[:16]}… stamped "
                    f"{list(seen)}: its writer {op.writer!r} had seen that op, so its clock "
                    "was already past it",
                    cid=op.cid,
                )
        mine = writers.setdefault(op.writer, [])
        at = bisect.bisect_left(mine, op.seq, key=lambda entry: entry[0])
        before = mine[at - 1] if at > 0 else None
        after = next((entry for entry in mine[at:] if entry[0] > op.seq), None)
        if before is not None and not before[1] < op.hlc and before[1] <= CEILING:
            raise BackdatedError(
                f"#{op.seq} of {op.writer!r} is stamped {list(op.hlc)}, not after its "
                f"#{before[0]} stamped {list(before[1])}: a writer's clock never goes back",
                cid=op.cid,
            )
        if after is not None and not op.hlc < after[1] and op.hlc <= CEILING:
            raise BackdatedError(
                f"#{op.seq} of {op.writer!r} is stamped {list(op.hlc)}, not before its "
                f"#{after[0]} stamped {list(after[1])}: a writer's clock never goes back",
                cid=op.cid,
            )
        stamps[op.cid] = op.hlc
        mine.insert(at, (op.seq, op.hlc))


# --- signatures -----------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _verify_key(key_b64: str) -> VerifyKey:
    return VerifyKey(b64decode(key_b64))


def verify_signature(op: Op, *, index: int | None = None) -> None:
    """Check that ``op.sig`` is ``op.key``'s signature of the op.

    Raises :class:`SignatureError`. Whether ``op.key`` belongs to ``op.writer``
    is the key registry's question (see the store).

    Ops are signed with ``cryptography`` (see :class:`Signer`) and verified with
    libsodium through PyNaCl: both are RFC 8032 Ed25519, and libsodium verifies
    twice as fast (about 55 µs against 100 µs here), which is what bounds how
    fast a replica can ingest remote ops.
    """
    try:
        _verify_key(op.key).verify(op.signing_payload(), b64decode(op.sig))
    except (BadSignatureError, ValueError, TypeError, binascii.Error):
        raise SignatureError(
            f"signature by writer {op.writer!r} does not verify: the op was altered "
            "or signed with another key",
            cid=op.cid,
            index=index,
        ) from None


class Signer:
    """An agent's ed25519 key pair."""

    __slots__ = ("_private", "public_key")

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._private = private_key
        self.public_key: str = b64encode(private_key.public_key().public_bytes_raw())

    @classmethod
    def generate(cls) -> Signer:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_bytes(cls, raw: bytes) -> Signer:
        return cls(Ed25519PrivateKey.from_private_bytes(raw))

    def private_bytes(self) -> bytes:
        return self._private.private_bytes_raw()

    def sign(self, payload: bytes) -> str:
        return b64encode(self._private.sign(payload))


# --- authoring --------------------------------------------------------------------------


class OpAuthor:
    """Mints one writer's ops: sequence numbers, timestamps and signatures.

    Pure: the caller persists each op before minting the next, and restores
    ``last_seq`` and the clock from the store on restart.
    """

    __slots__ = ("clock", "last_seq", "signer", "writer")

    def __init__(
        self, writer: str, signer: Signer, clock: HybridClock | None = None, last_seq: int = 0
    ) -> None:
        self.writer = writer
        self.signer = signer
        self.clock = clock or HybridClock()
        self.last_seq = last_seq

    def make(self, doc: str, patch: Patch, parents: Iterable[str] = ()) -> Op:
        if self.last_seq >= MAX_SEQ:
            raise ClockExhaustedError(
                f"writer {self.writer!r} has used every sequence number up to {MAX_SEQ}"
            )
        unsigned = Op(
            doc=doc,
            writer=self.writer,
            seq=self.last_seq + 1,
            hlc=self.clock.now(),
            parents=tuple(sorted(parents)),
            key=self.signer.public_key,
            patch=patch,
        )
        op = msgspec.structs.replace(unsigned, sig=self.signer.sign(unsigned.encoded))
        self.last_seq += 1
        return op


def encode_ops(ops: Iterable[Op]) -> bytes:
    """Newline-delimited canonical ops (the export file format)."""
    return b"".join(op.encoded + b"\n" for op in ops)
