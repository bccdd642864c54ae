"""LlamaIndex ``MetadataFilters`` over memories.

A filter's key names either a metadata key of the node (or of the memory, for
memories that were not written as nodes), or, with the ``chrysalis.`` prefix, a
field of the memory itself: ``chrysalis.memory_type``, ``chrysalis.tags``,
``chrysalis.importance``, ``chrysalis.confidence``, ``chrysalis.access_count``,
``chrysalis.source_instance`` (the agent that created it), ``chrysalis.created_at``
and ``chrysalis.updated_at`` (Unix seconds), ``chrysalis.id``, ``chrysalis.version``
and ``chrysalis.sync_status``. The prefix keeps them apart from the nodes' own
metadata (documents often carry a ``source`` or ``tags`` of their own).

Every :class:`FilterOperator` is supported, and the ``and``, ``or`` and ``not``
conditions, nested to any depth. Filters are evaluated here, exactly; those
that recall can apply itself (memory type, tags, creating agent, time of the
last update, under ``and``) are also passed down to it, so that it returns
fewer candidates to check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final

from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

from chrysalis_memory.model.document import MemoryDocument, MemoryType
from chrysalis_memory.validation import MAX_TAG_CHARS

__all__ = [
    "MEMORY_FIELDS",
    "PREFIX",
    "Pushdown",
    "compile_filters",
    "pushdown",
]

PREFIX: Final = "chrysalis."
MEMORY_FIELDS: Final = frozenset(
    {
        "access_count",
        "confidence",
        "created_at",
        "id",
        "importance",
        "memory_type",
        "source_instance",
        "sync_status",
        "tags",
        "updated_at",
        "version",
    }
)
_LIST_OPERATORS: Final = frozenset(
    {FilterOperator.IN, FilterOperator.NIN, FilterOperator.ANY, FilterOperator.ALL}
)
_ORDER_OPERATORS: Final = frozenset(
    {FilterOperator.GT, FilterOperator.GTE, FilterOperator.LT, FilterOperator.LTE}
)
_TEXT_OPERATORS: Final = frozenset(
    {FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE}
)

Predicate = Callable[[Mapping[str, Any], MemoryDocument], bool]
"""Whether a memory (with its node's metadata) passes the filters."""

_MISSING: Final = object()


def compile_filters(filters: MetadataFilters | None) -> Predicate:
    """A predicate for ``filters``; raises ``ValueError`` on a filter that cannot
    be applied (an unknown ``chrysalis.`` field, a list where a value is needed,
    ...), before anything is searched."""
    if filters is None or not filters.filters:
        return _always
    return _compile_group(filters)


def _always(metadata: Mapping[str, Any], memory: MemoryDocument) -> bool:
    return True


def _compile_group(group: MetadataFilters) -> Predicate:
    parts = [
        _compile_group(item) if isinstance(item, MetadataFilters) else _compile_one(item)
        for item in group.filters
    ]
    condition = group.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return lambda metadata, memory: all(part(metadata, memory) for part in parts)
    if condition == FilterCondition.OR:
        return lambda metadata, memory: any(part(metadata, memory) for part in parts)
    if condition == FilterCondition.NOT:  # none of them (as LlamaIndex's own stores read it)
        return lambda metadata, memory: not any(part(metadata, memory) for part in parts)
    raise ValueError(f"unsupported filter condition {condition!r}")


def _compile_one(item: MetadataFilter) -> Predicate:
    key, operator, expected = item.key, FilterOperator(item.operator), item.value
    _check_value(key, operator, expected)
    lookup = _lookup(key)

    def predicate(metadata: Mapping[str, Any], memory: MemoryDocument) -> bool:
        return _matches(operator, expected, lookup(metadata, memory))

    return predicate


def _lookup(key: str) -> Callable[[Mapping[str, Any], MemoryDocument], Any]:
    if key.startswith(PREFIX):
        name = key[len(PREFIX) :]
        if name not in MEMORY_FIELDS:
            known = ", ".join(PREFIX + n for n in sorted(MEMORY_FIELDS))
            raise ValueError(f"unknown memory field {key!r} in a filter; known: {known}")

        def memory_field(metadata: Mapping[str, Any], memory: MemoryDocument) -> Any:
            value = getattr(memory, name)
            return value.value if isinstance(value, Enum) else value

        return memory_field

    def metadata_key(metadata: Mapping[str, Any], memory: MemoryDocument) -> Any:
        if key in metadata:
            return metadata[key]
        if not key.startswith("_node_"):
            return memory.metadata.get(key, _MISSING)
        return _MISSING

    return metadata_key


def _check_value(key: str, operator: FilterOperator, value: Any) -> None:
    if operator == FilterOperator.IS_EMPTY:
        return
    if value is None:
        raise ValueError(f"the filter on {key!r} ({operator.value}) needs a value")
    if operator in _LIST_OPERATORS and operator != FilterOperator.ANY:
        if not isinstance(value, list):
            raise ValueError(
                f"the filter on {key!r} ({operator.value}) needs a list of values, got {value!r}"
            )
    elif (operator in _ORDER_OPERATORS or operator in _TEXT_OPERATORS) and isinstance(value, list):
        raise ValueError(f"the filter on {key!r} ({operator.value}) needs one value, not a list")
    if operator in _TEXT_OPERATORS and not isinstance(value, str):
        raise ValueError(f"the filter on {key!r} ({operator.value}) needs a string")


def _matches(operator: FilterOperator, expected: Any, actual: Any) -> bool:
    if operator == FilterOperator.IS_EMPTY:
        return actual is _MISSING or actual is None or actual in ("", [], {})
    if actual is _MISSING or actual is None:
        return operator in (FilterOperator.NE, FilterOperator.NIN)
    if operator == FilterOperator.EQ:
        return _equal(actual, expected)
    if operator == FilterOperator.NE:
        return not _equal(actual, expected)
    if operator in _ORDER_OPERATORS:
        return _ordered(operator, actual, expected)
    if operator in (FilterOperator.IN, FilterOperator.NIN, FilterOperator.ANY):
        options = expected if isinstance(expected, list) else [expected]
        found = any(_has(actual, option) for option in options)
        return not found if operator == FilterOperator.NIN else found
    if operator == FilterOperator.ALL:
        return all(_has(actual, option) for option in expected)
    if operator == FilterOperator.CONTAINS:
        if isinstance(actual, list):
            return any(_equal(item, expected) for item in actual)
        return isinstance(actual, str) and isinstance(expected, str) and expected in actual
    if operator == FilterOperator.TEXT_MATCH:
        return isinstance(actual, str) and expected in actual
    if operator == FilterOperator.TEXT_MATCH_INSENSITIVE:
        return isinstance(actual, str) and expected.casefold() in actual.casefold()
    raise ValueError(f"unsupported filter operator {operator!r}")


def _has(actual: Any, option: Any) -> bool:
    """``option`` is ``actual``, or one of its items when it is a list."""
    if isinstance(actual, list):
        return any(_equal(item, option) for item in actual)
    return _equal(actual, option)


def _is_number(value: Any) -> bool:
    """Numbers, and booleans as 0 and 1 (a filter's value cannot be a bool)."""
    return isinstance(value, int | float)


def _equal(actual: Any, expected: Any) -> bool:
    if _is_number(actual) and _is_number(expected):
        return bool(actual == expected)
    return type(actual) is type(expected) and bool(actual == expected)


def _ordered(operator: FilterOperator, actual: Any, expected: Any) -> bool:
    """Numbers compare with numbers and strings with strings; anything else fails."""
    comparable = (_is_number(actual) and _is_number(expected)) or (
        isinstance(actual, str) and isinstance(expected, str)
    )
    if not comparable or (isinstance(actual, float) and math.isnan(actual)):
        return False
    if operator == FilterOperator.GT:
        return bool(actual > expected)
    if operator == FilterOperator.GTE:
        return bool(actual >= expected)
    if operator == FilterOperator.LT:
        return bool(actual < expected)
    return bool(actual <= expected)


# --- what recall can apply itself ------------------------------------------------------


@dataclass
class Pushdown:
    """Filters recall applies itself (a superset of what passes: everything is
    checked again by the predicate)."""

    memory_type: str | None = None
    tags: list[str] = field(default_factory=list)
    source: str | None = None
    since: float | None = None
    until: float | None = None

    def recall_filters(self) -> dict[str, Any]:
        return {
            "memory_type": self.memory_type,
            "tags": self.tags or None,
            "source": self.source,
            "since": self.since,
            "until": self.until,
        }

    @property
    def thins(self) -> bool:
        """Whether recall filters anything (then fewer than k hits may remain)."""
        return any(value for value in self.recall_filters().values())


def pushdown(filters: MetadataFilters | None, tags: list[str] | None = None) -> Pushdown:
    """What recall can filter itself, of ``filters`` (combined with ``and``)."""
    result = Pushdown(tags=list(tags or []))
    if filters is not None:
        _push_group(filters, result)
    return result


def _push_group(group: MetadataFilters, result: Pushdown) -> None:
    if (group.condition or FilterCondition.AND) != FilterCondition.AND:
        return
    for item in group.filters:
        if isinstance(item, MetadataFilters):
            _push_group(item, result)
            continue
        key, operator, value = item.key, FilterOperator(item.operator), item.value
        if key == PREFIX + "memory_type" and operator == FilterOperator.EQ:
            # Another value than a memory type matches nothing: the predicate says so.
            if value in MemoryType._value2member_map_ and result.memory_type is None:
                result.memory_type = str(value)
        elif key == PREFIX + "source_instance" and operator == FilterOperator.EQ:
            if isinstance(value, str) and result.source is None:
                result.source = value
        elif key == PREFIX + "tags" and operator == FilterOperator.CONTAINS:
            if _is_tag(value):
                result.tags.append(str(value))
        elif key == PREFIX + "tags" and operator == FilterOperator.ALL:
            if isinstance(value, list) and all(_is_tag(v) for v in value):
                result.tags.extend(str(v) for v in value)
        elif key == PREFIX + "updated_at" and _is_number(value):
            number = float(value)  # type: ignore[arg-type]
            if operator in (FilterOperator.GT, FilterOperator.GTE) and number >= 0:
                result.since = number if result.since is None else max(result.since, number)
            elif operator in (FilterOperator.LT, FilterOperator.LTE) and number >= 0:
                result.until = number if result.until is None else min(result.until, number)


def _is_tag(value: object) -> bool:
    return isinstance(value, str) and bool(value.strip()) and len(value) <= MAX_TAG_CHARS
