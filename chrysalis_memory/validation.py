"""Checks of caller-supplied arguments, with messages that say what to fix.

Everything here raises :class:`~chrysalis_memory.errors.InvalidArgumentError`
before any op is minted, so a rejected call never changes what is stored.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any, Final, cast

import msgspec

from chrysalis_memory.errors import InvalidArgumentError
from chrysalis_memory.model.document import MemoryType
from chrysalis_memory.model.ops import AGENT_ID_PATTERN, MemoryKind

MAX_CONTENT_BYTES: Final = 512 * 1024
"""Content above this belongs in a document store; its summary belongs here."""
MAX_TAG_CHARS: Final = 256
MAX_ID_CHARS: Final = 256
MAX_EVIDENCE_CHARS: Final = 8192
MAX_METADATA_BYTES: Final = 64 * 1024

_MEMORY_TYPES: Final = ", ".join(t.value for t in MemoryType)

MAX_AGENT_ID_CHARS: Final = 128
AGENT_ID_RULE: Final = (
    f"1 to {MAX_AGENT_ID_CHARS} characters: ASCII letters, digits and . _ : @ -, "
    "starting with a letter or digit (e.g. agent-001)"
)
"""What ``AGENT_ID_PATTERN`` allows, in words (for messages)."""
_AGENT_ID_START: Final = frozenset(string.ascii_letters + string.digits)
_AGENT_ID_CHARS: Final = _AGENT_ID_START | frozenset("._:@-")


def agent_id_problem(value: str) -> str | None:
    """None if ``value`` is a valid agent id, else what is wrong with it, in words:
    "'a b' is not a valid agent id: it contains ' '. An agent id is 1 to 128 ..."."""
    if re.fullmatch(AGENT_ID_PATTERN, value):
        return None
    shown = repr(value if len(value) <= 60 else value[:60] + "…")
    if not value:
        problem = "is empty"
    elif len(value) > MAX_AGENT_ID_CHARS:
        problem = f"is {len(value)} characters long"
    elif bad := sorted(set(value) - _AGENT_ID_CHARS, key=value.index):
        problem = "contains " + ", ".join(map(repr, bad[:5]))
    else:
        problem = f"starts with {value[0]!r}"
    return f"{shown} is not a valid agent id: it {problem}. An agent id is {AGENT_ID_RULE}"


def unit_interval(name: str, value: object) -> float:
    """A number in [0, 1] (importance, confidence)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"{name} must be a number, got {type(value).__name__}")
    number = float(value)
    if not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise InvalidArgumentError(f"{name} must be between 0.0 and 1.0, got {value!r}")
    return number


def memory_type(value: object) -> MemoryKind:
    if isinstance(value, MemoryType):
        return value.value
    if isinstance(value, str) and value in MemoryType._value2member_map_:
        return cast(MemoryKind, value)
    raise InvalidArgumentError(f"memory_type must be one of {_MEMORY_TYPES}; got {value!r}")


def content(value: object) -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"content must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidArgumentError("content must not be empty")
    size = len(value.encode("utf-8", errors="surrogatepass"))
    if size > MAX_CONTENT_BYTES:
        raise InvalidArgumentError(
            f"content is {size} bytes, over the {MAX_CONTENT_BYTES} byte limit: store the "
            "document elsewhere and learn a summary with a reference in metadata"
        )
    return value


def memory_id(value: object, name: str = "memory id") -> str:
    if not isinstance(value, str):
        raise InvalidArgumentError(f"{name} must be a string, got {type(value).__name__}")
    if not value or len(value) > MAX_ID_CHARS:
        raise InvalidArgumentError(f"{name} must be 1 to {MAX_ID_CHARS} characters, got {value!r}")
    if value.startswith("emb:"):
        raise InvalidArgumentError(f"{name} must not start with 'emb:' (reserved for embeddings)")
    return value


def reference(name: str, value: object) -> str:
    """A non-empty id of another document (any id space)."""
    if not isinstance(value, str) or not value or len(value) > MAX_ID_CHARS:
        raise InvalidArgumentError(f"{name} must be a string of 1 to {MAX_ID_CHARS} characters")
    return value


def strings(name: str, values: object, *, max_chars: int) -> tuple[str, ...]:
    """A collection of non-empty strings, de-duplicated and sorted (canonical)."""
    if values is None:
        return ()
    if isinstance(values, str | bytes):
        raise InvalidArgumentError(
            f"{name} must be a list of strings, not a single string: write {name}=[{values!r}]"
        )
    if not isinstance(values, Iterable):
        raise InvalidArgumentError(f"{name} must be a list of strings, got {type(values).__name__}")
    result: set[str] = set()
    for item in values:
        if not isinstance(item, str) or not item.strip():
            raise InvalidArgumentError(
                f"every item of {name} must be a non-empty string, got {item!r}"
            )
        if len(item) > max_chars:
            raise InvalidArgumentError(f"an item of {name} is longer than {max_chars} characters")
        result.add(item)
    return tuple(sorted(result))


def tags(values: object) -> tuple[str, ...]:
    return strings("tags", values, max_chars=MAX_TAG_CHARS)


def ids(name: str, values: object) -> tuple[str, ...]:
    checked = strings(name, values, max_chars=MAX_ID_CHARS)
    for value in checked:
        memory_id(value, f"an item of {name}")
    return checked


def metadata(value: object) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidArgumentError(f"metadata must be a mapping, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str) or not key:
            raise InvalidArgumentError(f"metadata keys must be non-empty strings, got {key!r}")
    try:
        encoded = msgspec.json.encode(value)
    except (TypeError, msgspec.EncodeError) as exc:
        raise InvalidArgumentError(f"metadata must be JSON-serialisable: {exc}") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise InvalidArgumentError(f"metadata is over {MAX_METADATA_BYTES} bytes as JSON")
    plain: dict[str, Any] = msgspec.json.decode(encoded)  # NaN becomes null: reject it
    if plain != value and _has_non_finite(value):
        raise InvalidArgumentError("metadata must not contain NaN or infinite numbers")
    return plain


def _has_non_finite(value: object) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, Mapping):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_has_non_finite(v) for v in value)
    return False


def timestamp_ms(name: str, value: object) -> int | None:
    """Unix seconds or a datetime, as milliseconds."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return int(value * 1000)
    raise InvalidArgumentError(f"{name} must be a datetime or Unix seconds, got {value!r}")


def limit(value: object, name: str = "limit") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgumentError(f"{name} must be a non-negative integer, got {value!r}")
    return value


MAX_QUERY_CHARS: Final = 8192


def query(value: object) -> str:
    """A search query: a non-empty string of reasonable length."""
    if not isinstance(value, str):
        raise InvalidArgumentError(f"query must be a string, got {type(value).__name__}")
    if not value.strip():
        raise InvalidArgumentError("query must not be empty: say what to recall")
    if len(value) > MAX_QUERY_CHARS:
        raise InvalidArgumentError(f"query is longer than {MAX_QUERY_CHARS} characters")
    return value


def query_vector(value: object) -> list[float]:
    """A query embedding: a non-empty sequence of finite numbers."""
    if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
        raise InvalidArgumentError(f"vector must be a sequence of numbers, got {value!r:.60}")
    try:
        vector = [float(x) for x in value]
    except (TypeError, ValueError):
        raise InvalidArgumentError("vector must hold numbers only") from None
    if not vector or not all(math.isfinite(x) for x in vector):
        raise InvalidArgumentError("vector must be non-empty and hold finite numbers only")
    return vector


def positive(name: str, value: object, *, maximum: int) -> int:
    """A whole number from 1 to ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= maximum:
        raise InvalidArgumentError(
            f"{name} must be a whole number from 1 to {maximum}, got {value!r}"
        )
    return value
