"""Canonical bytes of plain values, used where a total order must not depend
on insertion order (LWW tie-breaks, canonical sets)."""

from __future__ import annotations

from typing import Any

import msgspec

_encoder = msgspec.json.Encoder(order="sorted")


def canonical_bytes(value: Any) -> bytes:
    """Deterministic JSON encoding: sorted keys, no whitespace."""
    return _encoder.encode(value)
