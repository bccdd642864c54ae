"""What the fault-and-attack scenarios share: agents in child processes (started,
SIGKILLed, restarted), the record of acknowledged writes (Jepsen's set test:
a write is acknowledged once ``learn()`` has returned), the checks run on every
replica afterwards, and the summary each scenario prints.

Set ``CHRYSALIS_FAULTS_REPORT=path.jsonl`` to have each scenario append its
figures there as one JSON line (docs/reliability.md is written from such a run).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from chrysalis_memory.model import MemoryState
from chrysalis_memory.store import OpStore
from chrysalis_memory.store.verify import verify_store
from chrysalis_memory.verifier import SignatureVerifier
from tests.hub.test_processes import Child, until

CHILD = Path(__file__).resolve().with_name("agent_child.py")
START_TIMEOUT = 30.0


def seed_from_env(name: str = "CHRYSALIS_FAULTS_SEED") -> int:
    """The run's seed: ``$CHRYSALIS_FAULTS_SEED``, or a fresh one (printed either way)."""
    seed = int(os.environ.get(name) or secrets.randbits(32))
    print(f"\n{name}={seed}")
    return seed


class Clock:
    """Prints what happens when, from the start of a scenario (shown with ``-s``)."""

    def __init__(self) -> None:
        self.started = time.monotonic()

    def __call__(self, what: str) -> None:
        print(f"  {time.monotonic() - self.started:7.2f} s  {what}", flush=True)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started


def memory_id(agent_id: str, i: int) -> str:
    return f"{agent_id}-{i:04d}"  # as agent_child.py names them


class AgentChild(Child):
    """One run of tests/faults/agent_child.py."""

    def __init__(self, name: str, spec: dict[str, Any], logs: Path) -> None:
        spec_path = logs / f"{name}.json"
        spec_path.write_text(json.dumps(spec))
        self.kill_at_intent: float | None = None
        """Set to a delay in seconds: the pump SIGKILLs the child that long after the
        next intent line it reads (so, while ``learn`` is under way)."""
        super().__init__(name, [sys.executable, str(CHILD), str(spec_path)], logs)
        self._next = 0
        self.info: dict[str, Any] = {}

    def _read(self) -> None:
        """Child's pump, which can also kill the child the moment it announces a write."""
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            delay = self.kill_at_intent
            if delay is not None and line.startswith('{"ev":"intent"'):
                self.kill_at_intent = None
                time.sleep(delay)  # in the pump's thread: a few milliseconds into the learn
                self.proc.send_signal(signal.SIGKILL)
        self.eof = True

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines) if line.startswith("{")]

    def send(self, cmd: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        self.proc.stdin.flush()

    def check(self) -> None:
        for event in self.events():
            if event["ev"] == "error":
                raise AssertionError(f"{self.name}: {event['error']}\n{self.stderr_tail()}")

    async def expect(
        self,
        ev: str | tuple[str, ...],
        timeout: float,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> dict[str, Any]:
        """The next event of kind ``ev`` (one of them, for a tuple) that satisfies
        ``where``; the events before it are consumed."""
        kinds = (ev,) if isinstance(ev, str) else ev
        found: list[dict[str, Any]] = []

        def arrived() -> bool:
            events = self.events()
            for index in range(self._next, len(events)):
                event = events[index]
                if event["ev"] == "error":
                    raise AssertionError(f"{self.name}: {event['error']}\n{self.stderr_tail()}")
                if event["ev"] in kinds and where(event):
                    found.append(event)
                    self._next = index + 1
                    return True
            if self.eof:
                raise AssertionError(f"{self.name} exited early:\n{self.stderr_tail()}")
            return False

        await until(arrived, timeout=timeout, what=f"{self.name}: {ev}")
        return found[0]

    async def ask(
        self, cmd: str, ev: str | tuple[str, ...], timeout: float = 60.0, **args: Any
    ) -> dict[str, Any]:
        self.send(cmd, **args)
        return await self.expect(ev, timeout)


class Writer:
    """One agent of a set test and what it acknowledged, across its runs (a run
    ends with a SIGKILL or a clean exit; the next one opens the same data dir)."""

    def __init__(self, agent_id: str, spec: dict[str, Any], logs: Path, total: int) -> None:
        self.agent_id = agent_id
        self.spec = spec
        self.logs = logs
        self.total = total
        self.acked: set[int] = set()
        self.present: set[int] = set()  # committed unacknowledged by a killed run, found later
        self.intents = 0
        self.kills = 0
        self.mid_write = 0  # kills that fell between a write's intent and its ack
        self.runs: list[AgentChild] = []

    @property
    def child(self) -> AgentChild:
        return self.runs[-1]

    def acks(self) -> int:
        """Acknowledged writes so far, the current run's included."""
        current = {e["i"] for e in self.child.events() if e["ev"] == "ack"} if self.runs else set()
        return len(self.acked | current)

    async def start(self, pace_s: float) -> None:
        child = AgentChild(f"{self.agent_id}-run{len(self.runs)}", self.spec, self.logs)
        self.runs.append(child)
        ready = await child.expect("ready", START_TIMEOUT)
        child.info = ready
        start = max(self.acked) + 1 if self.acked else 0
        if start < self.total:
            child.send("write", start=start, n=self.total - start, pace_s=pace_s)

    async def finished(self, timeout: float = 120.0) -> None:
        """Wait until this agent has made all its writes (in whichever run)."""

        def done() -> bool:
            self.child.check()
            if self.child.eof:
                raise AssertionError(f"{self.child.name} exited:\n{self.child.stderr_tail()}")
            return self.acks() >= self.total or any(e["ev"] == "wrote" for e in self.child.events())

        await until(done, timeout=timeout, what=f"{self.agent_id} making all its writes")

    def _collect(self, child: AgentChild) -> None:
        for event in child.events():
            if event["ev"] == "ack":
                self.acked.add(event["i"])
            elif event["ev"] == "present":
                self.present.add(event["i"])
            elif event["ev"] == "intent":
                self.intents += 1

    async def kill(self, *, mid_write: float | None = None) -> None:
        """SIGKILL the current run and read every line it printed before dying.
        With ``mid_write`` (seconds), the kill falls that long after the child's next
        announced write: ``learn`` is under way, its transaction perhaps committed,
        perhaps not (unless the child has no write left: then it is killed at once)."""
        child = self.child
        if mid_write is not None and not any(e["ev"] == "wrote" for e in child.events()):
            # A learn takes a millisecond or two: the pump's thread must get the GIL at
            # once when the intent line arrives, not after the default 5 ms switch.
            switch = sys.getswitchinterval()
            sys.setswitchinterval(0.0001)
            child.kill_at_intent = mid_write

            def dead() -> bool:
                return not child.alive

            try:
                with contextlib.suppress(AssertionError):
                    await until(dead, timeout=5, what="a kill in the middle of a learn")
            finally:
                sys.setswitchinterval(switch)
        child.kill()
        assert await child.wait_exit() == -signal.SIGKILL, child.stderr_tail()
        child.check()
        self._collect(child)
        child.cleanup()
        self.kills += 1
        writes = [e["ev"] for e in child.events() if e["ev"] in ("intent", "ack")]
        self.mid_write += bool(writes) and writes[-1] == "intent"

    async def close(self) -> None:
        child = self.child
        await child.ask("exit", "closed")
        assert await child.wait_exit() == 0, child.stderr_tail()
        self._collect(child)
        child.cleanup()

    def cleanup(self) -> None:
        """Kill and reap whatever run is left (for a test's finally)."""
        for child in self.runs:
            child.cleanup()

    def acked_ids(self) -> set[str]:
        return {memory_id(self.agent_id, i) for i in self.acked}


async def replica_report(db_path: Path, memory_ids: Iterable[str]) -> dict[str, Any]:
    """A stopped replica's store, read-only: its state root, verify_store's verdict,
    its ops' CIDs, which of ``memory_ids`` it lacks, and its quarantine."""
    store = OpStore(db_path, read_only=True)
    await store.open()
    verifier = SignatureVerifier()
    try:
        ids = sorted(memory_ids)
        states = await store.get_states(ids)
        missing = [mid for mid in ids if not isinstance(states.get(mid, (None,))[0], MemoryState)]
        log = [(seqno, op) async for seqno, op, _ in store.iter_ops()]
        report = await verify_store(store, verifier)
        quarantine = await store.quarantined()
        return {
            "root": await store.state_root(),
            "verify_ok": report.ok,
            "problems": report.problems,
            "ops": len(log),
            "cids": [op.cid for _, op in log],
            "seqnos": [seqno for seqno, _ in log],
            "missing": missing,
            "quarantine": [(q.writer, q.reason) for q in quarantine],
        }
    finally:
        verifier.close()
        await store.close()


async def provenance(db_path: Path, memory_id: str) -> tuple[str, float]:
    store = OpStore(db_path, read_only=True)
    await store.open()
    try:
        entry = await store.get_state(memory_id)
        assert entry is not None and isinstance(entry[0], MemoryState)
        doc = entry[0].to_document(entry[1])
        return doc.source_instance, doc.created_at
    finally:
        await store.close()


def rng_for(seed: int, what: str) -> random.Random:
    return random.Random(f"{seed}/{what}")


# --- the summary ------------------------------------------------------------------------


def summary(scenario: str, seed: int, sections: Mapping[str, Mapping[str, Any]]) -> str:
    """Print (and, with CHRYSALIS_FAULTS_REPORT, record) a scenario's figures."""
    lines = [f"== {scenario} (seed {seed}) =="]
    for title, rows in sections.items():
        lines.append(f"-- {title}")
        width = max((len(str(k)) for k in rows), default=0)
        lines.extend(f"   {k!s:<{width}}  {v}" for k, v in rows.items())
    text = "\n".join(lines)
    print("\n" + text)
    path = os.environ.get("CHRYSALIS_FAULTS_REPORT")
    if path:
        record = {
            "scenario": scenario,
            "seed": seed,
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "sections": {t: {str(k): v for k, v in r.items()} for t, r in sections.items()},
        }
        with open(path, "a") as out:
            out.write(json.dumps(record, default=str) + "\n")
    return text


def counted(counter: Counter[str]) -> dict[str, int]:
    return dict(sorted(counter.items()))
