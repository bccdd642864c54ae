"""The SQLite schema of a replica.

``ops`` is the op log: append-only (triggers refuse deletes and changes to an
op's content; only its sync bookkeeping may change), keyed by CID, with a local
arrival number (``seqno``) that gives resumable cursors. ``docs`` holds the
materialised CRDT state of every document, always equal to a replay of
``ops`` (``verify()`` checks it), plus a few columns copied out of the state
for filtering (``visibility``: 0 while only ops that precede a memory's
creation have arrived, 1 live, 2 forgotten). ``writers`` pins each writer id
to the first public key seen for it. ``quarantine`` keeps the ops received from
the hub that this replica refused (a bad signature, a writer pinned to another
key, an equivocation, bytes that do not decode), with the reason: the sync
cursor moves past an op only once it is stored or quarantined, and a
quarantined op is tried again when its cause may have gone away (the hub
confirmed new keys), and removed once stored.
"""

from __future__ import annotations

from typing import Final

SCHEMA_VERSION: Final = 1

SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS ops (
    seqno       INTEGER PRIMARY KEY,
    cid         TEXT NOT NULL UNIQUE,
    doc_id      TEXT NOT NULL,
    writer      TEXT NOT NULL,
    wseq        INTEGER NOT NULL,
    hlc_ms      INTEGER NOT NULL,
    hlc_c       INTEGER NOT NULL,
    body        BLOB NOT NULL,
    sync_status TEXT NOT NULL CHECK (sync_status IN ('local', 'pending', 'retry', 'synced')),
    attempts    INTEGER NOT NULL DEFAULT 0,
    next_try_ms INTEGER NOT NULL DEFAULT 0,
    UNIQUE (writer, wseq)
);
CREATE INDEX IF NOT EXISTS ops_by_doc ON ops (doc_id);
CREATE INDEX IF NOT EXISTS ops_unsynced ON ops (sync_status, seqno)
    WHERE sync_status IN ('pending', 'retry');

CREATE TRIGGER IF NOT EXISTS ops_append_only_delete BEFORE DELETE ON ops
BEGIN
    SELECT RAISE(ABORT, 'the op log is append-only');
END;
CREATE TRIGGER IF NOT EXISTS ops_append_only_update
BEFORE UPDATE OF cid, doc_id, writer, wseq, hlc_ms, hlc_c, body ON ops
BEGIN
    SELECT RAISE(ABORT, 'ops are immutable');
END;

CREATE TABLE IF NOT EXISTS docs (
    id          TEXT PRIMARY KEY,
    doc_type    TEXT NOT NULL,
    state       BLOB NOT NULL,
    visibility  INTEGER NOT NULL,  -- 0: not created yet, 1: live, 2: forgotten
    memory_type TEXT,
    importance  REAL,
    confidence  REAL,
    accesses    INTEGER,
    source      TEXT,
    created_ms  INTEGER,
    updated_ms  INTEGER,
    updated_c   INTEGER,
    tags        TEXT NOT NULL DEFAULT '[]',
    sync_status TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS docs_listing ON docs (doc_type, visibility, updated_ms, updated_c);

-- One local write (an op and its document's new state, plus an optional
-- promotion of the document's short-term ops) is one INSERT into this view:
-- a single statement, so a single round trip, atomic on its own.
CREATE VIEW IF NOT EXISTS local_writes AS SELECT
    NULL AS cid, NULL AS doc_id, NULL AS writer, NULL AS wseq, NULL AS hlc_ms,
    NULL AS hlc_c, NULL AS body, NULL AS op_status, NULL AS promote,
    NULL AS doc_type, NULL AS state, NULL AS visibility, NULL AS memory_type,
    NULL AS importance, NULL AS confidence, NULL AS accesses, NULL AS source,
    NULL AS created_ms, NULL AS updated_ms, NULL AS updated_c, NULL AS tags,
    NULL AS doc_status;

CREATE TRIGGER IF NOT EXISTS local_writes_insert INSTEAD OF INSERT ON local_writes
BEGIN
    INSERT INTO ops (cid, doc_id, writer, wseq, hlc_ms, hlc_c, body, sync_status)
    VALUES (NEW.cid, NEW.doc_id, NEW.writer, NEW.wseq, NEW.hlc_ms, NEW.hlc_c, NEW.body,
            NEW.op_status);
    UPDATE ops SET sync_status = 'pending'
    WHERE NEW.promote AND doc_id = NEW.doc_id AND sync_status = 'local';
    INSERT INTO docs (id, doc_type, state, visibility, memory_type, importance, confidence,
                      accesses, source,
                      created_ms, updated_ms, updated_c, tags, sync_status)
    VALUES (NEW.doc_id, NEW.doc_type, NEW.state, NEW.visibility, NEW.memory_type,
            NEW.importance, NEW.confidence, NEW.accesses, NEW.source, NEW.created_ms,
            NEW.updated_ms, NEW.updated_c, NEW.tags, NEW.doc_status)
    ON CONFLICT (id) DO UPDATE SET
        state = excluded.state, visibility = excluded.visibility,
        memory_type = excluded.memory_type, importance = excluded.importance,
        confidence = excluded.confidence, accesses = excluded.accesses,
        source = excluded.source, created_ms = excluded.created_ms,
        updated_ms = excluded.updated_ms, updated_c = excluded.updated_c,
        tags = excluded.tags, sync_status = excluded.sync_status;
END;

-- Keyword search over live memories, kept by the recall indexer (not by
-- triggers: indexing happens after the write, off its hot path).
CREATE VIRTUAL TABLE IF NOT EXISTS memory_fts USING fts5(
    doc_id UNINDEXED, memory_type UNINDEXED, content, tags, tokenize = 'porter unicode61'
);

CREATE TABLE IF NOT EXISTS writers (
    writer      TEXT PRIMARY KEY,
    public_key  TEXT NOT NULL,
    pinned_ms   INTEGER NOT NULL
) WITHOUT ROWID;

-- Ops refused on arrival, kept with the reason (docs/protocol.md, "Refused ops").
-- ``body`` is the bytes as received (NULL if they were too large to keep), ``cid``
-- their SHA-256, ``writer`` the writer they claim when that could be read.
CREATE TABLE IF NOT EXISTS quarantine (
    cid         TEXT PRIMARY KEY,
    writer      TEXT,
    body        BLOB,
    reason      TEXT NOT NULL,
    detail      TEXT NOT NULL,
    source      TEXT NOT NULL,
    first_ms    INTEGER NOT NULL,
    last_ms     INTEGER NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 1
);
"""
