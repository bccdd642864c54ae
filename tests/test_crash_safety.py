"""Crash safety (ARCHITECTURE §3, invariant 2): kill -9 never loses an acknowledged write.

A child process (``tests/crash_child.py``) writes to one agent's data dir as
fast as it can and reports every write twice on stdout: an *intent* line just
before the call and an *ack* line once the awaited call has returned. The
parent SIGKILLs it at a random moment (right after a random number of acks,
after a random delay, or while it is still starting up), many times over; each
new child reopens the same data dir and carries on, touching memories of the
earlier runs too.

Afterwards the parent opens the data dir itself and checks:

* ``verify()`` is clean (CIDs, signatures, materialised state == replay);
* the materialised state equals ``fold(export_ops())``, independently of
  ``verify()``, document by document (and ``list`` shows exactly those);
* the op log holds ops ``1..N`` of the writer, with no gap and no duplicate
  (a restarted writer never reuses a sequence number), and no op that no
  intent could have produced;
* every acknowledged write is present: learned memories exist; the content
  is the last acknowledged one or one written after it; an acknowledged tag
  is present (and an acknowledged untag absent) unless a later, possibly
  unacknowledged, call reversed it; importance, evidence, access count and
  version are at least what was acknowledged and at most what was asked
  for; forgotten memories are gone from ``get``; and the op of every
  acknowledged learn/update/record_access/forget is in the log.

``CHRYSALIS_CRASH_CYCLES`` sets the number of kills (25 by default) and
``CHRYSALIS_CRASH_SEED`` the seed (random by default, printed on failure).
Run with ``-s`` to see the statistics.
"""

from __future__ import annotations

import asyncio
import json
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
from msgspec import UNSET

from chrysalis_memory import AgentMemory, AgentMemoryConfig
from chrysalis_memory.model import MemoryState, fold

REPO = Path(__file__).resolve().parents[1]
CHILD = Path(__file__).resolve().with_name("crash_child.py")
AGENT_ID = "crash-agent"  # as in crash_child.py
READY_TIMEOUT = 30.0  # seconds for a child to start and open the store
ACKS_TIMEOUT = 20.0  # seconds to wait for a given number of acks
EXIT_TIMEOUT = 10.0  # seconds for a killed child to be reaped and its pipe drained
MUST_MAKE_OP = frozenset({"learn", "update", "access", "forget"})
"""Calls that always append an op (tag, untag, reinforce may be no-ops)."""


# --- running and killing children ---------------------------------------------------


class Child:
    """One run of crash_child.py whose stdout lines a thread pumps into a queue."""

    def __init__(self, data_dir: Path, seed: int, stderr: IO[bytes]) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), str(data_dir), str(seed)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            cwd=REPO,
        )
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.events: list[dict[str, Any]] = []
        self._eof = False
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_event(self, deadline: float) -> dict[str, Any] | None:
        """The next event (kept in ``events``), or None at EOF; fails at the deadline."""
        if self._eof:
            return None
        try:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"child {self.proc.pid} said nothing before the deadline")
        if line is None:
            self._eof = True
            return None
        event: dict[str, Any] = json.loads(line)
        self.events.append(event)
        return event

    def wait_for(self, ev: str, count: int, timeout: float) -> bool:
        """Read until ``count`` events of kind ``ev`` arrived; False at EOF."""
        deadline = time.monotonic() + timeout
        seen = 0
        while seen < count:
            event = self.next_event(deadline)
            if event is None:
                return False
            seen += event["ev"] == ev
        return True

    def kill(self) -> int:
        """SIGKILL, reap, and read what is left in the pipe; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        code = self.proc.wait(timeout=EXIT_TIMEOUT)
        deadline = time.monotonic() + EXIT_TIMEOUT
        while self.next_event(deadline) is not None:
            pass
        self._pump.join(timeout=EXIT_TIMEOUT)
        return code

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=EXIT_TIMEOUT)
        self._pump.join(timeout=EXIT_TIMEOUT)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class Stats:
    cycles: int = 0
    kills: int = 0  # children that died of our SIGKILL
    before_ready: int = 0  # ... while still starting up / opening the store
    mid_write: int = 0  # ... between an intent and its ack
    committed_unacked: int = 0  # killed learns/updates found in the store anyway
    intents: int = 0
    acks: int = 0
    by_op: dict[str, int] = field(default_factory=dict)


def run_cycles(data_dir: Path, tmp: Path, cycles: int, seed: int) -> tuple[list[Any], Stats]:
    """Start and kill a child ``cycles`` times; returns every child's events, in order."""
    rng = random.Random(seed)
    runs: list[list[dict[str, Any]]] = []
    stats = Stats(cycles=cycles)
    for cycle in range(cycles):
        err_path = tmp / f"child-{cycle}.stderr"
        with err_path.open("wb") as err:
            child = Child(data_dir, seed * 1000 + cycle, err)
            try:
                mode = rng.choices(["acks", "delay", "startup"], weights=[45, 45, 10])[0]
                if mode == "startup":
                    time.sleep(rng.uniform(0.0, 0.5))  # kill it somewhere while it starts
                else:
                    ready = child.wait_for("ready", 1, READY_TIMEOUT)
                    if ready and mode == "acks":
                        child.wait_for("ack", rng.randint(0, 200), ACKS_TIMEOUT)
                    elif ready:
                        time.sleep(rng.uniform(0.002, 0.3))
                code = child.kill()
            finally:
                child.close()
        if code != -signal.SIGKILL:
            pytest.fail(
                f"crash child {cycle} (seed {seed}) exited with {code} before it was killed:\n"
                + err_path.read_text(errors="replace")[-4000:]
            )
        events = child.events
        runs.append(events)
        stats.kills += 1
        stats.before_ready += not any(e["ev"] == "ready" for e in events)
        stats.mid_write += bool(events) and events[-1]["ev"] == "intent"
        stats.intents += sum(e["ev"] == "intent" for e in events)
        stats.acks += sum(e["ev"] == "ack" for e in events)
        for e in events:
            if e["ev"] == "ack":
                stats.by_op[e["op"]] = stats.by_op.get(e["op"], 0) + 1
    return runs, stats


# --- what the children were told, and what they acknowledged ------------------------------


@dataclass
class Write:
    op: str
    data: dict[str, Any]
    acked: bool = False


@dataclass
class Expected:
    """Every write issued to one memory, in order, and whether it was acknowledged."""

    writes: list[Write] = field(default_factory=list)

    def acked(self, *ops: str) -> list[Write]:
        return [w for w in self.writes if w.acked and w.op in ops]

    def issued(self, *ops: str) -> list[Write]:
        return [w for w in self.writes if w.op in ops]


def replay_events(runs: list[list[dict[str, Any]]]) -> tuple[dict[str, Expected], list[Write]]:
    """Per memory id, the writes issued to it; plus learns whose id was never reported."""
    expected: dict[str, Expected] = {}
    anonymous: list[Write] = []  # learn(memory_id=None) that was killed before its ack
    for events in runs:
        pending: Write | None = None
        for event in events:
            kind = event["ev"]
            if kind == "ready":
                assert pending is None
            elif kind == "intent":
                assert pending is None, f"two intents without an ack in between: {event}"
                pending = Write(event["op"], event)
                if event["id"] is not None:
                    expected.setdefault(event["id"], Expected()).writes.append(pending)
            else:
                assert kind == "ack", event
                assert pending is not None, f"ack without intent: {event}"
                assert pending.op == event["op"], (pending, event)
                if pending.data["id"] is None:  # learn() drew the id: now we know it
                    pending.data = event
                    expected.setdefault(event["id"], Expected()).writes.append(pending)
                assert pending.data["id"] == event["id"], (pending, event)
                pending.acked = True
                if "version" in event:
                    pending.data = event
                pending = None
        if pending is not None and pending.data["id"] is None:
            anonymous.append(pending)
    return expected, anonymous


# --- the checks -----------------------------------------------------------------------


def check_memory(mid: str, exp: Expected, doc: Any, live: Any, log: list[Any]) -> None:
    """``doc`` is get(include_forgotten=True), ``live`` get(), ``log`` the memory's ops."""
    where = f"memory {mid}"
    if exp.acked("learn"):
        assert doc is not None, f"{where}: an acknowledged learn was lost"
    if doc is None:
        assert not log, f"{where}: has ops but get() does not return it"
        return

    # Content: the last acknowledged one, or one written after it.
    written = exp.issued("learn", "update")
    last_ack = max((i for i, w in enumerate(written) if w.acked), default=0)
    allowed = [w.data["content"] for w in written[last_ack:]]
    assert doc.content in allowed, (
        f"{where}: content {doc.content!r} is neither the last acknowledged content nor a "
        f"later one ({allowed})"
    )

    # Tags, one by one, in the order the calls were issued.
    issued_tags: set[str] = set()
    for tag in {t for w in exp.writes for t in _tags_touched(w)}:
        calls = [(w, w.op != "untag") for w in exp.writes if tag in _tags_touched(w)]
        issued_tags.update(tag for _, add in calls if add)
        acked_at = max((i for i, (w, _) in enumerate(calls) if w.acked), default=None)
        if acked_at is None:
            continue
        adding = calls[acked_at][1]
        reversed_later = any(add != adding for _, add in calls[acked_at + 1 :])
        if not reversed_later:
            state = "present" if adding else "absent"
            assert (tag in doc.tags) == adding, (
                f"{where}: acknowledged {calls[acked_at][0].op} of {tag!r} lost: tag not "
                f"{state} (tags {doc.tags})"
            )
    assert set(doc.tags) <= issued_tags, f"{where}: tags {doc.tags} were never added"

    # Importance and evidence only grow, between what was acknowledged and what was asked.
    raising = exp.issued("learn", "reinforce")
    acked_importance = max((w.data["importance"] for w in raising if w.acked), default=0.0)
    asked_importance = max((w.data["importance"] for w in raising), default=0.0)
    assert acked_importance <= doc.importance <= asked_importance, (
        f"{where}: importance {doc.importance} outside [{acked_importance}, {asked_importance}]"
    )
    proofs = exp.issued("reinforce")
    acked_evidence = {w.data["evidence"] for w in proofs if w.acked}
    assert acked_evidence <= set(doc.evidence) <= {w.data["evidence"] for w in proofs}, (
        f"{where}: evidence {doc.evidence} vs acknowledged {sorted(acked_evidence)}"
    )

    # Accesses: each acknowledged record_access counts; no more than were asked for.
    accesses = exp.issued("access")
    acked_accesses = sum(w.acked for w in accesses)
    assert acked_accesses <= doc.access_count <= len(accesses), (
        f"{where}: access_count {doc.access_count} outside [{acked_accesses}, {len(accesses)}]"
    )

    # Forgetting.
    forgets = exp.issued("forget")
    if any(w.acked for w in forgets):
        assert live is None, f"{where}: an acknowledged forget was lost: get() returns it"
        assert doc.forgotten
    elif not forgets:
        assert live is not None, f"{where}: forgotten although forget() was never called"
        assert not doc.forgotten

    # Versions (number of ops) never go back, and every call makes at most one op.
    acked_version = max((w.data.get("version", 0) for w in exp.writes if w.acked), default=0)
    must_ops = sum(w.acked and w.op in MUST_MAKE_OP for w in exp.writes)
    assert max(acked_version, must_ops) <= doc.version == len(log) <= len(exp.writes), (
        f"{where}: version {doc.version} with {len(log)} ops, acknowledged version "
        f"{acked_version}, {must_ops} acknowledged op-making calls, {len(exp.writes)} calls"
    )

    # The op of every acknowledged learn, update, record_access and forget is in the log.
    logged_contents = {op.patch.content for op in log}
    for w in exp.acked("learn", "update"):
        assert w.data["content"] in logged_contents, f"{where}: op of acknowledged {w} lost"
    patches = [op.patch for op in log]
    if exp.acked("learn"):
        assert any(_is_set(p.create) for p in patches), f"{where}: no creating op"
    assert sum(_is_set(p.access) for p in patches) >= acked_accesses
    if any(w.acked for w in forgets):
        assert any(p.forgotten is True for p in patches), f"{where}: forget op lost"


def _tags_touched(w: Write) -> list[str]:
    if w.op == "learn":
        return list(w.data["tags"])
    if w.op in ("tag", "untag"):
        return [w.data["tag"]]
    return []


def _is_set(value: Any) -> bool:
    return value is not UNSET


async def check_store(
    data_dir: Path, runs: list[list[dict[str, Any]]], stats: Stats, seed: int
) -> None:
    expected, anonymous = replay_events(runs)
    config = AgentMemoryConfig(agent_id=AGENT_ID, data_dir=data_dir)
    async with AgentMemory(config) as mem:
        report = await mem.verify()
        assert report.ok, f"verify() after crashes (seed {seed}): {report.problems}"
        assert not report.problems

        ops = await mem.export_ops()
        assert report.ops_checked == len(ops)

        # Sequence numbers: 1..N per writer, no gap, no duplicate, never reused.
        pairs = [(op.writer, op.seq) for op in ops]
        assert len(set(pairs)) == len(ops), "two ops share a (writer, seq)"
        assert len({op.cid for op in ops}) == len(ops)
        assert {op.writer for op in ops} <= {AGENT_ID}
        seqs = sorted(seq for _, seq in pairs)
        assert seqs == list(range(1, len(ops) + 1)), "sequence numbers have gaps"
        assert len(ops) <= stats.intents, "more ops than calls that could have made them"

        # The materialised state equals a replay of the op log, memory by memory.
        replay = fold(ops)
        assert report.documents_checked == len(replay)
        existing: set[str] = set()
        for doc_id, state in replay.items():
            assert isinstance(state, MemoryState)
            got = await mem.get(doc_id, include_forgotten=True)
            if not state.exists:
                assert got is None, f"{doc_id}: get() returns a memory never created"
                continue
            existing.add(doc_id)
            assert got is not None, f"{doc_id}: in the op log but get() returns None"
            want = state.to_document().model_dump(exclude={"sync_status"})
            assert got.model_dump(exclude={"sync_status"}) == want, f"{doc_id} != replay"
        listed = await mem.list(include_forgotten=True, limit=len(replay) + 10)
        assert {doc.id for doc in listed} == existing

        # Memories created by a learn() that drew its own id and was killed
        # before acknowledging it: allowed, if their creation is such a learn.
        by_doc: dict[str, list[Any]] = {}
        for op in ops:
            by_doc.setdefault(op.doc, []).append(op)
        unclaimed = {w.data["content"]: w for w in anonymous}
        for doc_id in existing:
            exp = expected.get(doc_id)
            if exp is not None and exp.issued("learn"):
                continue
            created = [op.patch for op in by_doc[doc_id] if _is_set(op.patch.create)]
            assert len(created) == 1, f"{doc_id}: exists but no learn() of it was issued"
            origin = unclaimed.pop(created[0].content, None)
            assert origin is not None, f"{doc_id}: created by no learn() that was issued"
            origin.data = {**origin.data, "id": doc_id}
            origin.acked = True  # it committed: from here on it counts as acknowledged
            expected.setdefault(doc_id, Expected()).writes.insert(0, origin)
            stats.committed_unacked += 1

        # How many killed learn/update calls committed anyway (their content is unique).
        logged = {op.patch.content for op in ops}
        stats.committed_unacked += sum(
            w.data["content"] in logged
            for exp in expected.values()
            for w in exp.issued("learn", "update")
            if not w.acked
        )

        for mid, exp in expected.items():
            doc = await mem.get(mid, include_forgotten=True)
            live = await mem.get(mid)
            check_memory(mid, exp, doc, live, by_doc.get(mid, []))
        assert set(expected) >= existing


@pytest.mark.slow
def test_kill_9_never_loses_an_acknowledged_write(tmp_path: Path) -> None:
    cycles = int(os.environ.get("CHRYSALIS_CRASH_CYCLES", "25"))
    seed = int(os.environ.get("CHRYSALIS_CRASH_SEED", str(random.randrange(1, 10**6))))
    data_dir = tmp_path / "data"
    started = time.monotonic()
    runs, stats = run_cycles(data_dir, tmp_path, cycles, seed)
    with (tmp_path / "events.jsonl").open("w") as log:  # for post-mortems
        log.writelines(json.dumps(e) + "\n" for events in runs for e in events)
    assert stats.kills == cycles
    assert stats.acks > 0, "the children never acknowledged a write"
    asyncio.run(check_store(data_dir, runs, stats, seed))
    print(
        f"\ncrash safety (seed {seed}): {stats.kills} SIGKILLs ({stats.mid_write} between an "
        f"intent and its ack, {stats.before_ready} before ready), {stats.acks} acknowledged "
        f"writes of {stats.intents} issued {dict(sorted(stats.by_op.items()))}, "
        f"{stats.committed_unacked} unacknowledged learns/updates committed anyway, "
        f"{time.monotonic() - started:.1f} s"
    )
