"""Ops: canonical encoding, content ids, signatures and rejection of bad input.

Invariant 3 (ARCHITECTURE §3): every stored op verifies against its CID; a
tampered op is rejected. Here: the encoding round-trips; changing any byte of
an op either makes it undecodable (``MalformedOpError``) or makes its
signature fail (``SignatureError``) -- never does a changed op verify; and
malformed input is rejected with a message that says what is wrong.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from chrysalis_memory.crdt import HLC, HybridClock
from chrysalis_memory.errors import (
    ChrysalisError,
    InvalidOpError,
    MalformedOpError,
    SignatureError,
)
from chrysalis_memory.model import (
    EmbeddingPatch,
    MemoryPatch,
    Op,
    OpAuthor,
    Signer,
    decode_op,
    verify_signature,
)
from chrysalis_memory.model.ops import MAX_OP_BYTES, Creation, encode_ops

from .strategies import HEAVY, LAWS, ManualClock, signed_ops, signer_for, vector_b64

SIGNER_A = signer_for("a")
SIGNER_B = signer_for("b")


def make_op(patch: MemoryPatch | EmbeddingPatch | None = None, doc: str = "m1") -> Op:
    author = OpAuthor("a", SIGNER_A, HybridClock(physical=ManualClock(1_700_000_000_000)))
    return author.make(doc, patch or MemoryPatch(create=Creation(), content="hello"))


# --- round trips ------------------------------------------------------------------------


@HEAVY
@given(signed_ops())
def test_canonical_encoding_round_trips(op: Op) -> None:
    decoded = decode_op(op.encoded)
    verify_signature(decoded)
    assert decoded.encoded == op.encoded
    assert decoded.cid == op.cid == hashlib.sha256(op.encoded).hexdigest()
    # Every accepted form gives the same op: text, plain data, an Op instance.
    for form in (op.encoded.decode(), op.to_dict(), op, msgspec.json.decode(op.encoded)):
        again = decode_op(form)
        assert again == decoded
        assert again.cid == op.cid
    # Sorted keys, no whitespace: the encoding is canonical.
    assert op.encoded == msgspec.json.encode(msgspec.json.decode(op.encoded), order="sorted")


@HEAVY
@given(signed_ops())
def test_encode_ops_is_newline_delimited_canonical_ops(op: Op) -> None:
    blob = encode_ops([op, op])
    lines = blob.split(b"\n")
    assert lines == [op.encoded, op.encoded, b""]


def test_cid_is_sha256_of_the_signed_encoding() -> None:
    op = make_op()
    assert len(op.cid) == 64
    assert op.cid == hashlib.sha256(op.encoded).hexdigest()
    assert op.signing_payload() != op.encoded  # the signature is part of the CID
    assert op.doc_type == "memory"


def test_author_numbers_its_ops_and_sorts_parents() -> None:
    author = OpAuthor("a", SIGNER_A, HybridClock(physical=ManualClock(5)))
    first = author.make("m1", MemoryPatch(create=Creation(), content="x"))
    second = author.make("m1", MemoryPatch(content="y"), ["f" * 64, first.cid])
    assert (first.seq, second.seq) == (1, 2)
    assert author.last_seq == 2
    assert second.parents == tuple(sorted([first.cid, "f" * 64]))
    assert second.hlc > first.hlc


# --- tampering ----------------------------------------------------------------------------


@HEAVY
@given(
    op=signed_ops(),
    flips=st.lists(
        st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)),
        min_size=1,
        max_size=3,
    ),
)
def test_changing_any_byte_is_rejected(op: Op, flips: list[tuple[int, int]]) -> None:
    data = bytearray(op.encoded)
    for position, xor in flips:
        data[position % len(data)] ^= xor
    tampered = bytes(data)
    if tampered == op.encoded:  # two flips cancelled out
        return
    try:
        decoded = decode_op(tampered)
    except MalformedOpError:
        return
    assert decoded.cid != op.cid, "different bytes decoded to the same CID"
    with pytest.raises(SignatureError):
        verify_signature(decoded)


def assert_rejected(tampered: bytes, original: Op) -> None:
    try:
        decoded = decode_op(tampered)
    except MalformedOpError:
        return
    assert decoded.cid != original.cid, f"{tampered!r} decoded to the original CID"
    with pytest.raises(SignatureError):
        verify_signature(decoded)


def test_every_single_bit_flip_is_rejected() -> None:
    """Exhaustive over one op with numbers in exponent form, an embedding ref,
    metadata, tags, parents: flip each bit of each byte in turn."""
    author = OpAuthor("agent-7", SIGNER_A, HybridClock(physical=ManualClock(1_700_000_000_123)))
    op = author.make(
        "m1",
        MemoryPatch(
            create=Creation(),
            content="Paris is the capital of France",
            importance=1e-7,
            confidence=0.25,
            metadata={"big": 1e300, "n": -12, "s": "x/y", "l": [True, None]},
            tags_add=("geo", "fact"),
            access=3,
        ),
        ["ab" * 32],
    )
    assert b"1e-7" in op.encoded
    assert b"1e300" in op.encoded
    for position in range(len(op.encoded)):
        for bit in range(8):
            data = bytearray(op.encoded)
            data[position] ^= 1 << bit
            assert_rejected(bytes(data), op)


def test_every_other_character_in_key_and_signature_is_rejected() -> None:
    op = make_op()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    for text in (op.key, op.sig):
        start = op.encoded.index(text.encode())
        for i in range(len(text)):
            for replacement in alphabet:
                if replacement != text[i]:
                    data = bytearray(op.encoded)
                    data[start + i] = ord(replacement)
                    assert_rejected(bytes(data), op)


def test_changing_a_field_changes_the_cid_and_breaks_the_signature() -> None:
    op = make_op(MemoryPatch(create=Creation(), content="hello", importance=0.5))
    forged = msgspec.structs.replace(op, patch=msgspec.structs.replace(op.patch, importance=1.0))
    assert forged.cid != op.cid
    with pytest.raises(SignatureError, match="does not verify"):
        verify_signature(decode_op(forged.encoded))


def test_non_canonical_spellings_of_an_op_are_rejected() -> None:
    """Same op, other bytes: accepting them would give one op two CIDs."""
    op = make_op(MemoryPatch(create=Creation(), content="x", importance=1e-7))
    assert b"1e-7" in op.encoded
    variants = [
        op.encoded.replace(b"1e-7", b"1E-7"),  # same number
        op.encoded.replace(b",", b", ", 1),  # whitespace
        op.encoded.replace(b'"type":"memory"', b'"type":"memory","tags_add":[]'),  # a default
    ]
    for variant in variants:
        with pytest.raises(MalformedOpError, match="not canonically encoded"):
            decode_op(variant)
        with pytest.raises(MalformedOpError, match="not canonically encoded"):
            decode_op(variant.decode())
    decode_op(op.encoded)


def test_signature_with_spare_base64_bits_changed_is_rejected() -> None:
    """The last base64 character of a signature carries 4 unused bits: flipping
    them leaves the signature bytes alone but would change the CID."""
    op = make_op()
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(op.sig[-1])
    twin = op.sig[:-1] + alphabet[last ^ 1]
    tampered = op.encoded.replace(op.sig.encode(), twin.encode())
    with pytest.raises(MalformedOpError, match="sig is not canonical base64url"):
        decode_op(tampered)
    key_twin = op.key[:-1] + alphabet[alphabet.index(op.key[-1]) ^ 1]
    with pytest.raises(MalformedOpError, match="key is not canonical base64url"):
        decode_op(op.encoded.replace(op.key.encode(), key_twin.encode()))


def test_op_signed_with_another_key_fails() -> None:
    op = make_op()
    resigned = msgspec.structs.replace(op, sig=SIGNER_B.sign(op.signing_payload()))
    with pytest.raises(SignatureError) as info:
        verify_signature(decode_op(resigned.encoded), index=4)
    assert info.value.cid == resigned.cid
    assert "op #4" in str(info.value)
    assert "writer 'a'" in str(info.value)


def test_forged_writer_verifies_signature_wise_but_names_the_signers_key() -> None:
    """Agent a writes an op claiming to be b, signed with its own key.

    The signature is a's and verifies: whether a key may write as a writer is
    the key registry's question (the store raises ForgedWriterError). What the
    core guarantees is that ``op.key`` is the key that signed it, so the store
    can make that check.
    """
    forger = OpAuthor("b", SIGNER_A, HybridClock(physical=ManualClock(1)))
    forged = decode_op(forger.make("m1", MemoryPatch(create=Creation(), content="I am b")).encoded)
    verify_signature(forged)
    assert forged.writer == "b"
    assert forged.key == SIGNER_A.public_key != SIGNER_B.public_key
    # Claiming b's key instead breaks the signature.
    claimed = msgspec.structs.replace(forged, key=SIGNER_B.public_key)
    with pytest.raises(SignatureError):
        verify_signature(decode_op(claimed.encoded))


def test_signer_round_trips_its_private_key() -> None:
    signer = Signer.generate()
    again = Signer.from_bytes(signer.private_bytes())
    assert again.public_key == signer.public_key
    assert len(signer.public_key) == 43


# --- malformed input ------------------------------------------------------------------


def valid_data(**patch: Any) -> dict[str, Any]:
    data = make_op(MemoryPatch(create=Creation(), content="hello", **patch)).to_dict()
    assert isinstance(data, dict)
    return data


def _set(path: str, value: Any) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = data
        for p in parents:
            target = target[p]
        target[last] = value

    return mutate


def _delete(path: str) -> Any:
    def mutate(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = data
        for p in parents:
            target = target[p]
        del target[last]

    return mutate


def _at(field: str) -> str:
    """Our prefix, and the field named: not the JSON decoder's own wording."""
    return rf"invalid op: .*\b{field}\b"


MALFORMED = {
    "seq is a string": (_set("seq", "one"), _at("seq")),
    "seq is zero": (_set("seq", 0), _at("seq")),
    "hlc is a number": (_set("hlc", 5), _at("hlc")),
    "negative hlc": (_set("hlc", [-1, 0]), "hlc wall time must be in 0"),
    "content is a number": (_set("patch.content", 3), _at("content")),
    "content is empty": (_set("patch.content", ""), _at("content")),
    "tags are a string": (_set("patch.tags_add", "abc"), _at("tags_add")),
    "missing writer": (_delete("writer"), _at("writer")),
    "missing patch": (_delete("patch"), _at("patch")),
    "missing patch type": (_delete("patch.type"), _at("type")),
    "unknown field": (_set("colour", "red"), _at("colour")),
    "unknown patch field": (_set("patch.colour", "red"), _at("colour")),
    "unknown patch type": (_set("patch.type", "poem"), _at("type")),
    "importance 1.5": (_set("patch.importance", 1.5), _at("importance")),
    "negative confidence": (_set("patch.confidence", -0.1), _at("confidence")),
    "importance NaN": (_set("patch.importance", math.nan), _at("importance")),
    "importance infinite": (_set("patch.importance", math.inf), _at("importance")),
    "unknown memory type": (_set("patch.memory_type", "dreamy"), _at("memory_type")),
    "access zero": (_set("patch.access", 0), _at("access")),
    "empty patch": (_set("patch", {"type": "memory"}), "patch changes nothing"),
    "unsigned": (_set("sig", ""), "op is not signed"),
    "signature too short": (_set("sig", "abc"), _at("sig")),
    "bad key": (_set("key", "not a key"), _at("key")),
    "bad writer id": (_set("writer", "no spaces please"), _at("writer")),
    "writer id ending in a new line": (_set("writer", "agent-a\n"), _at("writer")),
    "empty doc id": (_set("doc", ""), _at("doc")),
    "bad parent cid": (_set("parents", ["abc"]), _at("parents")),
    "repeated parent": (_set("parents", ["a" * 64, "a" * 64]), "parents must not repeat"),
    "future format version": (_set("v", 2), _at("v")),
    "memory op on an embedding id": (
        _set("doc", "emb:abc"),
        "embedding ops must target ids starting with 'emb:' and memory ops must not",
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_ops_are_rejected_with_a_helpful_message(case: str) -> None:
    mutate, message = MALFORMED[case]
    data = valid_data(importance=0.5)
    mutate(data)
    # As plain data (a JSON API) ...
    with pytest.raises(MalformedOpError, match=message):
        decode_op(data)
    # ... and as the canonical bytes a peer would send (NaN and inf have no
    # JSON spelling: msgspec writes them as null, which is rejected as well).
    raw = msgspec.json.encode(data, order="sorted")
    with pytest.raises(MalformedOpError, match=message.replace("NaN", "null")):
        decode_op(raw, index=7)
    with pytest.raises(InvalidOpError, match=r"^op #7: "):
        decode_op(raw, index=7)


def test_invalid_json_is_rejected() -> None:
    # The messages asserted here are ours, whatever the JSON decoder says.
    for raw in (b"", b"{", b"[1,2]", b"null", b'{"importance": NaN}'):
        with pytest.raises(MalformedOpError, match=r"^op is not valid JSON|^invalid op"):
            decode_op(raw)
    with pytest.raises(MalformedOpError, match="not valid Unicode"):
        decode_op("\ud800")


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe",
        make_op().encoded.replace(b'"doc"', b'"\xe4oc"'),  # in an object key
        make_op().encoded.replace(b'"hello"', b'"hell\xe4"'),  # in a string value
    ],
    ids=["alone", "in-a-key", "in-a-value"],
)
def test_bad_utf8_is_rejected_in_our_words(raw: bytes) -> None:
    with pytest.raises(MalformedOpError, match=r"^op is not valid UTF-8 \(byte \d+\)$"):
        decode_op(raw)


def test_wrong_input_type_is_rejected() -> None:
    with pytest.raises(MalformedOpError, match="expected op bytes, JSON text, a mapping or an Op"):
        decode_op(42)  # type: ignore[arg-type]


def test_in_memory_ops_are_validated_like_bytes() -> None:
    """An Op built in-process gets the same checks a peer would apply to its
    bytes: otherwise this replica would keep an op every peer rejects."""
    op = make_op(MemoryPatch(create=Creation(), content="x"))
    too_important = msgspec.structs.replace(
        op, patch=MemoryPatch(content="x", importance=1.5), sig=op.sig
    )
    with pytest.raises(MalformedOpError, match=_at("importance")):
        decode_op(too_important)
    nan = msgspec.structs.replace(op, patch=MemoryPatch(content="x", importance=math.nan))
    with pytest.raises(MalformedOpError, match=_at("importance")):
        decode_op(nan)
    # Values a peer cannot see are normalised to what it will decode.
    tupled = make_op(MemoryPatch(create=Creation(), content="x", metadata={"pair": (1, 2)}))
    decoded = decode_op(tupled)
    assert decoded.patch.metadata == {"pair": [1, 2]}  # type: ignore[union-attr]
    assert decoded.cid == tupled.cid
    unencodable = msgspec.structs.replace(
        op, patch=MemoryPatch(content="x", metadata={"obj": object()})
    )
    with pytest.raises(MalformedOpError, match="cannot be encoded as JSON"):
        decode_op(unencodable)


def test_oversized_ops_are_rejected_in_every_form() -> None:
    huge = make_op(MemoryPatch(create=Creation(), content="x" * MAX_OP_BYTES))
    assert len(huge.encoded) > MAX_OP_BYTES
    for form in (huge.encoded, huge.encoded.decode(), huge.to_dict(), huge):
        with pytest.raises(MalformedOpError, match=f"over the {MAX_OP_BYTES} byte limit"):
            decode_op(form)
    fits = make_op(MemoryPatch(create=Creation(), content="x" * (MAX_OP_BYTES - 1000)))
    assert decode_op(fits.encoded).cid == fits.cid


# --- embeddings ---------------------------------------------------------------------------


def embedding_patch(values: list[float], dimensions: int | None = None) -> EmbeddingPatch:
    return EmbeddingPatch(
        text_hash=hashlib.sha256(b"text").hexdigest(),
        model="nomic-embed-text",
        dimensions=len(values) if dimensions is None else dimensions,
        vector=vector_b64(values),
    )


def test_embedding_op_round_trips() -> None:
    op = make_op(embedding_patch([0.5, -1.0, 2.0]), doc="emb:abc")
    assert op.doc_type == "embedding"
    decoded = decode_op(op.encoded)
    verify_signature(decoded)
    assert decoded == op


def test_embedding_vector_length_must_match_dimensions() -> None:
    op = make_op(embedding_patch([0.5, -1.0, 2.0], dimensions=4), doc="emb:abc")
    with pytest.raises(MalformedOpError, match="3 float32 values, dimensions says 4"):
        decode_op(op.encoded)


def test_embedding_vector_must_be_base64() -> None:
    patch = msgspec.structs.replace(embedding_patch([1.0]), vector="A")
    with pytest.raises(MalformedOpError, match="embedding vector is not base64"):
        decode_op(make_op(patch, doc="emb:abc").encoded)


def test_embedding_op_must_target_an_embedding_id() -> None:
    op = make_op(embedding_patch([1.0]), doc="m1")
    with pytest.raises(MalformedOpError, match="embedding ops must target ids starting with"):
        decode_op(op.encoded)


# --- the error family -------------------------------------------------------------------


def test_op_errors_are_chrysalis_errors() -> None:
    for cls in (MalformedOpError, SignatureError):
        assert issubclass(cls, InvalidOpError)
        assert issubclass(cls, ChrysalisError)
    err = MalformedOpError("bad", cid="ab" * 32, index=3)
    assert str(err).startswith("op #3, cid abababababababab")
    assert err.cid == "ab" * 32
    assert err.index == 3


@LAWS
@given(st.integers(0, 2**40), st.integers(0, 100))
def test_hlc_round_trips_as_a_named_tuple(wall: int, counter: int) -> None:
    author = OpAuthor("a", SIGNER_A, HybridClock(last=HLC(wall, counter), physical=lambda: 0))
    op = decode_op(author.make("m1", MemoryPatch(content="x")).encoded)
    assert isinstance(op.hlc, HLC)
    assert op.hlc == HLC(wall, counter + 1)
