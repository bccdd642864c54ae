"""Damaged storage: how a store finds damage in its file, and what it knows of it.

An op row is *intact* when its bytes hash to its CID (SHA-256: byte for byte the
op that was checked, signature included, when it was stored), the columns copied
out of it (document, writer, sequence number, clock) say what its bytes say, and
its sync status is one the schema allows. Damage to a disk, a copy or a restore
cannot leave a damaged row intact: a changed byte changes the hash. (Rewriting an
op *and* its CID on purpose can: ``verify`` checks every signature for that.)

:class:`~chrysalis_memory.store.sqlite.OpStore` checks at open (``PRAGMA
quick_check`` for the file's structure, then every op row) and again whenever it
reads an op to hand it on: a damaged op is recorded in :class:`StoreDamage`,
logged once, and never served, sent or folded. Damage to the file's structure
is a :class:`~chrysalis_memory.errors.StoreCorruptError` (the store refuses to
open). ``chrysalis verify`` names every damaged row.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from chrysalis_memory.errors import MalformedOpError, StoreCorruptError
from chrysalis_memory.model.document import SyncStatus
from chrysalis_memory.model.ops import Op, decode_op
from chrysalis_memory.store.schema import SCHEMA

log = logging.getLogger("chrysalis_memory.store")

OP_ROWS_SQL: Final = (
    # Text columns are read as bytes: damage can leave them invalid UTF-8, which
    # sqlite3 would refuse to return at all (and with them the whole batch).
    "SELECT seqno, CAST(cid AS BLOB), CAST(doc_id AS BLOB), CAST(writer AS BLOB), wseq, "
    "hlc_ms, hlc_c, CAST(body AS BLOB), CAST(sync_status AS BLOB) FROM ops WHERE seqno > ? "
    "ORDER BY seqno LIMIT ?"
)
"""Every column of the op rows after a ``seqno``, as :func:`row_problem` takes them."""

SCHEMA_ROWS_SQL: Final = (
    "SELECT CAST(type AS BLOB), CAST(name AS BLOB), CAST(sql AS BLOB) FROM sqlite_master"
)
"""The schema as a file records it, as :func:`schema_problem` takes it."""

_CORE_TABLES: Final = ("meta", "ops", "docs", "writers")  # in every store ever written
_SQLITE_CORRUPT: Final = 11
_SQLITE_NOTADB: Final = 26
_SHOWN: Final = 10  # damaged ops listed in a summary or a message


class _Columns(msgspec.Struct):
    """The fields of an op that the ``ops`` table copies into columns."""

    doc: str
    writer: str
    seq: int
    hlc: tuple[int, int]


_COLUMNS: Final = msgspec.json.Decoder(_Columns)
_STATUSES: Final = frozenset(status.value.encode() for status in SyncStatus)


def _text(value: object) -> str:
    """A column value as text for a message, whatever damage made of it."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return repr(value)


def row_problem(row: Sequence[Any]) -> str | None:
    """What is wrong with one op row of :data:`OP_ROWS_SQL`, or None if it is intact."""
    _, cid, doc, writer, wseq, hlc_ms, hlc_c, body, status = row
    if not isinstance(body, bytes):
        return "its bytes are gone: the body column is empty (NULL)"
    digest = hashlib.sha256(body).hexdigest()
    if cid != digest.encode("ascii"):
        return hash_problem(digest)
    try:
        fields = _COLUMNS.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):  # stored so by a buggy writer
        return "its bytes match its CID but are not an op"
    for name, stored, actual in (
        ("doc_id", doc, fields.doc.encode()),
        ("writer", writer, fields.writer.encode()),
        ("wseq", wseq, fields.seq),
        ("hlc_ms", hlc_ms, fields.hlc[0]),
        ("hlc_c", hlc_c, fields.hlc[1]),
    ):
        if type(stored) is not type(actual) or stored != actual:
            return f"its {name} column says {_text(stored)}, its bytes say {_text(actual)}"
    if status not in _STATUSES:
        return f"its sync status {_text(status)!r} is not one the schema allows"
    return None


def hash_problem(digest: str) -> str:
    return f"its bytes hash to {digest[:16]}…, not to its CID: it was altered or damaged"


def op_of_row(row: Sequence[Any]) -> Op | str:
    """The op of a ``(seqno, CID as bytes, body, ...)`` row if the row is intact (its
    bytes decode to an op whose CID is the one recorded), else what is wrong: the
    check made whenever a store reads an op to hand it on."""
    try:
        op = decode_op(row[2])
    except MalformedOpError as error:
        return f"its bytes are not an op ({error}): it was altered or damaged"
    if op.cid.encode("ascii") != row[1]:
        return hash_problem(op.cid)
    return op


@functools.cache
def _expected_schema() -> dict[tuple[str, str], bytes | None]:
    db = sqlite3.connect(":memory:")
    try:
        db.executescript(SCHEMA)
        rows = db.execute(SCHEMA_ROWS_SQL).fetchall()
    finally:
        db.close()
    return {(kind.decode(), name.decode()): sql for kind, name, sql in rows}


def schema_problem(rows: Iterable[Sequence[Any]]) -> str | None:
    """What is wrong with the schema a file records (:data:`SCHEMA_ROWS_SQL`), or None:
    each of our tables, indexes, views and triggers it holds must be defined as this
    version defines it, and the tables every store has must be there. (Objects it
    does not know are let be: a later version may have added them.) Without this, a
    damaged name would make the store create a new, empty table beside the old one.
    A schema change that alters an existing object must teach this check the old
    definition too."""
    found = {(_text(kind), _text(name)): sql for kind, name, sql in rows}
    if not found:
        return None  # a new file
    expected = _expected_schema()
    for (kind, name), sql in sorted(found.items()):
        if (kind, name) in expected and sql != expected[kind, name]:
            return f"the definition of its {kind} {name!r} is not the one Chrysalis writes"
    for table in _CORE_TABLES:
        if ("table", table) not in found:
            return f"its schema has no {table!r} table"
    return None


@dataclass(frozen=True)
class DamagedOp:
    """One damaged op row: its ``rowid`` (the op's local number, ``seqno``), the
    CID its row records (itself possibly damaged) and what is wrong."""

    rowid: int
    cid: str
    problem: str

    def __str__(self) -> str:
        return f"op row {self.rowid} (cid {self.cid[:16]}…): {self.problem}"


def damaged_op(row: Sequence[Any], problem: str) -> DamagedOp:
    cid = row[1]
    return DamagedOp(int(row[0]), _text(cid) if isinstance(cid, bytes) else repr(cid), problem)


class StoreDamage:
    """What a store knows to be damaged in its file: the op rows it will not serve.

    Filled at open and whenever a read finds another damaged row; empty (false)
    for a sound store. :meth:`summary` is what ``/health`` shows.
    """

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._ops: dict[int, DamagedOp] = {}
        self.ops_checked_at_open = 0
        self.seconds_at_open = 0.0

    def __len__(self) -> int:
        return len(self._ops)

    def __bool__(self) -> bool:
        return bool(self._ops)

    def __contains__(self, rowid: object) -> bool:
        return rowid in self._ops

    @property
    def ops(self) -> list[DamagedOp]:
        """The damaged op rows, by row number."""
        return [self._ops[rowid] for rowid in sorted(self._ops)]

    def add(self, damaged: DamagedOp, *, quiet: bool = False) -> None:
        """Record a damaged op row (logged the first time, unless ``quiet``)."""
        if damaged.rowid in self._ops:
            return
        self._ops[damaged.rowid] = damaged
        if not quiet:
            log.warning(
                "%s: %s. It is not served; `%s` lists all the damage",
                self.path or "in-memory store",
                damaged,
                verify_command(self.path),
            )

    def found_at_open(self, damaged: Iterable[DamagedOp], checked: int, seconds: float) -> None:
        for item in damaged:
            self.add(item, quiet=True)
        self.ops_checked_at_open = checked
        self.seconds_at_open = seconds
        if self._ops:
            shown = "; ".join(str(d) for d in self.ops[:3])
            log.warning(
                "%s: %d of %d op rows are damaged (%s%s). They are never served or sent; "
                "the rest is. `%s` lists them all",
                self.path,
                len(self._ops),
                checked,
                shown,
                "; …" if len(self._ops) > 3 else "",
                verify_command(self.path),
            )

    def summary(self) -> dict[str, Any]:
        """JSON-ready: how many op rows are damaged, and the first few of them."""
        return {
            "damaged_ops": len(self._ops),
            "ops": [
                {"rowid": d.rowid, "cid": d.cid, "problem": d.problem} for d in self.ops[:_SHOWN]
            ],
            "db_path": None if self.path is None else str(self.path),
            "verify": verify_command(self.path),
        }


def verify_command(path: Path | None) -> str:
    return "chrysalis verify" if path is None else f"chrysalis verify --db {path}"


def is_corruption(error: BaseException) -> bool:
    """Whether an error from sqlite3 says the database file is damaged.

    By SQLite's result code (SQLITE_CORRUPT, SQLITE_NOTADB), not its wording.
    sqlite3 raises :class:`UnicodeDecodeError` when a damaged schema puts invalid
    UTF-8 into SQLite's own error message.
    """
    if isinstance(error, UnicodeDecodeError):
        return True
    if not isinstance(error, sqlite3.DatabaseError):
        return False
    code = getattr(error, "sqlite_errorcode", None)  # Python 3.11+
    if code is None:  # sqlite3 raises these two codes, and only these, as the base class
        return type(error) is sqlite3.DatabaseError
    return code & 0xFF in (_SQLITE_CORRUPT, _SQLITE_NOTADB)


def corrupt_error(path: Path | None, what: str) -> StoreCorruptError:
    """The error of a store whose file is damaged beyond serving from: names the
    file, what was found and what to do."""
    where = "the in-memory store" if path is None else str(path)
    return StoreCorruptError(
        f"{where} is damaged: {what}. Run `{verify_command(path)}` to list the damage, then "
        "restore the file from a backup, or move it away (with its -wal file) and let the "
        'replica fill up again from its peers (docs/storage.md, "Damaged storage")',
        path=path,
    )
