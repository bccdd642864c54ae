"""The hub and its agents as separate processes (issue 4, item 6).

Every test runs ``chrysalis hub`` as a child process on loopback ports, with
its own SQLite store under ``tmp_path``, and agents in other child processes
(``tests/hub/agent_child.py``, driven over stdin/stdout). Nothing is shared
but the network and the files each process owns; the parent checks the
stores afterwards. Every wait is ``wait_until`` with a deadline.

``CHRYSALIS_PROCESS_SEED`` fixes the random kill points of the SIGKILL test
(random by default; the seed is in every failure message).
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from chrysalis_memory import AgentMemory
from chrysalis_memory.crdt import HybridClock
from chrysalis_memory.errors import HubRejectedError
from chrysalis_memory.hub.tokens import TokenStore
from chrysalis_memory.keys import load_or_create_signer
from chrysalis_memory.model import MemoryPatch, MemoryState, Op, OpAuthor, Signer
from chrysalis_memory.model.document import SyncStatus
from chrysalis_memory.model.ops import Creation
from chrysalis_memory.store import OpStore
from chrysalis_memory.store.verify import verify_store
from chrysalis_memory.sync import Acked, ClientEvent, ClientProtocol, Welcome
from chrysalis_memory.verifier import SignatureVerifier
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).resolve().with_name("agent_child.py")
CHRYSALIS = [sys.executable, "-m", "chrysalis_memory.cli"]
LISTENING = re.compile(r"listening on ws://[^\s:]+:(\d+) \(http://[^\s:]+:(\d+)/health")
START_TIMEOUT = 30.0  # a child process starting up, on a busy machine
PARIS = "The capital of France is Paris."


def child_env() -> dict[str, str]:
    """The environment of every child: no CHRYSALIS_* setting of ours leaks in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRYSALIS_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "200"
    return env


async def until(predicate: Callable[[], bool], *, timeout: float, what: str) -> None:
    async def holds() -> bool:
        return predicate()

    await wait_until(holds, timeout=timeout, what=what)


class Child:
    """A child process whose stdout lines a thread collects, and whose stderr
    goes to a log file (quoted when something fails)."""

    def __init__(self, name: str, argv: list[str], logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.stderr"
        self._log: IO[bytes] = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=child_env(),
            cwd=REPO,
        )
        self.lines: list[str] = []
        self.eof = False
        self._pump = threading.Thread(target=self._read, daemon=True)
        self._pump.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))
        self.eof = True

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr_tail(self, chars: int = 3000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]

    async def wait_line(self, pattern: re.Pattern[str], timeout: float) -> re.Match[str]:
        found: list[re.Match[str]] = []

        def seen() -> bool:
            for line in self.lines:
                if match := pattern.search(line):
                    found.append(match)
                    return True
            if self.eof:
                raise AssertionError(f"{self.name} exited: {self.stderr_tail()}")
            return False

        await until(seen, timeout=timeout, what=f"{self.name} printing {pattern.pattern!r}")
        return found[0]

    async def wait_exit(self, timeout: float = 20.0) -> int:
        await until(lambda: not self.alive, timeout=timeout, what=f"{self.name} exiting")
        await until(lambda: self.eof, timeout=timeout, what=f"{self.name} closing stdout")
        return self.proc.returncode

    def kill(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)

    def cleanup(self) -> None:
        """Kill if still running, reap, close the pipes (for the fixture's finally)."""
        self.kill()
        try:
            self.proc.wait(timeout=20)
        finally:
            self._pump.join(timeout=20)
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            self._log.close()


class HubProcess(Child):
    """``chrysalis hub`` in a child process."""

    def __init__(self, name: str, data_dir: Path, logs: Path, port: int, http_port: int) -> None:
        super().__init__(
            name,
            [
                *CHRYSALIS,
                "hub",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--http-port",
                str(http_port),
                "--data-dir",
                str(data_dir),
                "--tokens-file",
                str(data_dir / "tokens.json"),
                "--embedder",
                "hashing",
            ],
            logs,
        )
        self.data_dir = data_dir
        self.port = port
        self.http_port = http_port

    async def started(self) -> HubProcess:
        match = await self.wait_line(LISTENING, START_TIMEOUT)
        self.port, self.http_port = int(match[1]), int(match[2])
        return self

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def get(self, path: str) -> bytes:
        url = f"http://127.0.0.1:{self.http_port}{path}"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200
            return bytes(response.read())

    def health(self) -> dict[str, Any]:
        health: dict[str, Any] = json.loads(self.get("/health"))
        assert health["status"] == "ok"
        return health

    def metric(self, name: str) -> float:
        """One sample of /metrics, e.g. ``chrysalis_hub_ops_sent_total{kind="page"}``."""
        for line in self.get("/metrics").decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        return 0.0

    async def stop(self) -> None:
        """SIGTERM: the hub must stop cleanly, with exit code 0."""
        self.proc.send_signal(signal.SIGTERM)
        code = await self.wait_exit()
        assert code == 0, self.stderr_tail()


class AgentProcess(Child):
    """``agent_child.py`` running some agents; see its docstring for the commands."""

    def __init__(self, name: str, spec: dict[str, Any], logs: Path) -> None:
        spec_path = logs / f"{name}.json"
        spec_path.write_text(json.dumps(spec))
        super().__init__(name, [sys.executable, str(CHILD), str(spec_path)], logs)
        self._next = 0  # events before this index were consumed

    def events(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.lines if line.startswith("{")]

    def send(self, cmd: str, **args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())
        self.proc.stdin.flush()

    async def expect(
        self,
        ev: str,
        timeout: float,
        where: Callable[[dict[str, Any]], bool] = lambda _: True,
    ) -> dict[str, Any]:
        """The next event of kind ``ev`` (that satisfies ``where``); events before
        it are consumed. Fails at once if the child reports an error or exits."""
        found: list[dict[str, Any]] = []

        def arrived() -> bool:
            events = self.events()
            for index in range(self._next, len(events)):
                event = events[index]
                if event["ev"] == "error":
                    raise AssertionError(f"{self.name}: {event['error']}\n{self.stderr_tail()}")
                if event["ev"] == ev and where(event):
                    found.append(event)
                    self._next = index + 1
                    return True
            if self.eof:
                raise AssertionError(f"{self.name} exited early:\n{self.stderr_tail()}")
            return False

        await until(arrived, timeout=timeout, what=f"{self.name}: {ev}")
        return found[0]

    async def ask(self, cmd: str, ev: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        self.send(cmd, **args)
        return await self.expect(ev, timeout)

    async def close(self) -> None:
        """Ask the child to close its agents and exit, which it must do cleanly."""
        await self.ask("exit", "closed")
        assert await self.wait_exit() == 0, self.stderr_tail()


class Processes:
    """Starts hubs and agent processes for one test; kills what is left after it."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.logs = tmp_path / "logs"
        self.logs.mkdir()
        self.hub_dir = tmp_path / "hub"
        self.agents_dir = tmp_path / "agents"
        self.tokens = TokenStore(self.hub_dir / "tokens.json")
        self.children: list[Child] = []
        self._hubs = 0

    async def hub(self, port: int = 0, http_port: int = 0) -> HubProcess:
        """A hub on ``self.hub_dir`` (always the same store), once it listens."""
        self._hubs += 1
        hub = HubProcess(f"hub-{self._hubs}", self.hub_dir, self.logs, port, http_port)
        self.children.append(hub)
        return await hub.started()

    async def agents(
        self, name: str, hub: HubProcess, agent_ids: list[str], **spec: Any
    ) -> AgentProcess:
        """A process running these agents (a token is created for each), once ready."""
        spec.update(
            hub_url=hub.url,
            data_dir=str(self.agents_dir),
            agents=[{"agent_id": a, "token": self.token(a)} for a in agent_ids],
        )
        child = AgentProcess(name, spec, self.logs)
        self.children.append(child)
        await child.expect("ready", START_TIMEOUT)
        return child

    def token(self, agent_id: str) -> str:
        """The agent's token (a new one replaces the previous one)."""
        return self.tokens.create(agent_id)

    def cleanup(self) -> None:
        for child in self.children:
            child.kill()
        for child in self.children:
            child.cleanup()


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    procs = Processes(tmp_path)
    try:
        yield procs
    finally:
        procs.cleanup()


async def hub_store_report(hub_dir: Path) -> tuple[list[tuple[int, Op]], str, list[str]]:
    """The stopped hub's log (seqno, op), its state root and verify_store's problems."""
    store = OpStore(hub_dir / "collective.db", read_only=True)
    await store.open()
    verifier = SignatureVerifier()
    try:
        log = [(seqno, op) async for seqno, op, _ in store.iter_ops()]
        root = await store.state_root()
        report = await verify_store(store, verifier)
        problems = [] if report.ok else report.problems
    finally:
        verifier.close()
        await store.close()
    return log, root, problems


def assert_clean_log(log: list[tuple[int, Op]]) -> None:
    """Numbered 1..N with no gap, and no op twice."""
    assert [seqno for seqno, _ in log] == list(range(1, len(log) + 1))
    cids = [op.cid for _, op in log]
    assert len(set(cids)) == len(cids), "an op is twice in the hub's log"


# --- 1. spec §6.6 with three processes ------------------------------------------------


async def test_verification_a_learns_b_recalls(processes: Processes) -> None:
    """Spec §6.6 across three processes. How fast is a benchmark's question
    (`chrysalis bench`: propagation p50/p99 beside a bare relay), not this test's."""
    hub = await processes.hub()
    b = await processes.agents("agent-b", hub, ["agent-b"], warm_recall=True)
    a = await processes.agents("agent-a", hub, ["agent-a"])
    for child in (a, b):
        (state,) = (await child.ask("sync", "synced"))["agents"]
        assert state["connection"] == "connected" and state["hub_id"] == hub.health()["hub_id"]

    # B recalls over and over (every 10 ms) until a hit says Paris.
    b.send("find", query="What is the capital of France?", needle="Paris", timeout=20)
    learned = await a.ask("learn", "learned", text=PARIS, importance=0.9)
    found = await b.expect("found", 30)

    assert found["found"], f"B never recalled it ({found['recalls']} recalls in 20 s)"
    assert found["content"] == PARIS and found["id"] == learned["id"]
    latency = found["t"] - learned["t"]
    print(f"\nA's learn returned -> B's recall found it: {latency * 1000:.0f} ms")

    (a_state,) = (await a.ask("sync", "synced"))["agents"]
    (b_state,) = (await b.ask("sync", "synced"))["agents"]
    assert a_state["counts"]["ops_pending"] == 0
    await a.close()
    await b.close()
    await hub.stop()
    log, _, problems = await hub_store_report(processes.hub_dir)
    assert not problems
    assert learned["id"] in {op.doc for _, op in log}
    # B's recall counted an access and embedded the text: those ops sync too.
    assert {op.writer for _, op in log} == {"agent-a", "agent-b"}
    assert b_state["counts"]["ops"] >= a_state["counts"]["ops"]


# --- 2. fifty agents, concurrent writes to the same memories --------------------------


async def test_fifty_agents_writing_concurrently_converge(processes: Processes) -> None:
    hub = await processes.hub()
    groups, per_group = 5, 10
    children = [
        await processes.agents(
            f"agents-{g}", hub, [f"agent-{g * per_group + i:02d}" for i in range(per_group)]
        )
        for g in range(groups)
    ]
    for g, child in enumerate(children):  # all at once
        child.send("workload", first_index=g * per_group)
    for child in children:
        worked = await child.expect("worked", 60)
        assert all(s["last_error"] is None for s in worked["agents"]), worked
    for child in children:
        child.send("sync", timeout=60)
    for child in children:
        await child.expect("synced", 90)

    states: list[dict[str, Any]] = []

    async def converged() -> bool:
        for child in children:
            child.send("state")
        states[:] = [s for c in children for s in (await c.expect("state", 30))["agents"]]
        ops = hub.health()["ops"]
        return len({s["root"] for s in states}) == 1 and all(
            s["counts"]["ops"] == ops for s in states
        )

    await wait_until(converged, timeout=60, poll=0.2, what="one state root on all 50 agents")
    assert len(states) == groups * per_group
    # A final round: everyone syncs once more, and nothing changes.
    for child in children:
        child.send("sync")
    final = [s for c in children for s in (await c.expect("synced", 60))["agents"]]
    assert {s["root"] for s in final} == {states[0]["root"]}
    assert all(s["counts"]["ops_pending"] == s["counts"]["ops_retry"] == 0 for s in final)
    assert all(s["counts"]["memories_live"] == 50 * 2 + 3 for s in final)
    ops = hub.health()["ops"]
    assert all(s["counts"]["ops"] == ops for s in final)
    for child in children:
        await child.close()
    await hub.stop()

    log, root, problems = await hub_store_report(processes.hub_dir)
    assert not problems
    assert_clean_log(log)
    assert len(log) == ops, "the hub's /health ops is not its number of distinct ops"
    assert root == states[0]["root"], "the hub holds other ops than the agents"
    assert len({op.writer for _, op in log}) == 50
    # Every agent's creation and tag of the shared memories survived the merges.
    store = OpStore(processes.hub_dir / "collective.db", read_only=True)
    await store.open()
    try:
        for shared in ("shared-0", "shared-1", "shared-2"):
            entry = await store.get_state(shared)
            assert entry is not None and isinstance(entry[0], MemoryState)
            doc = entry[0].to_document(entry[1])
            assert {f"by-{i}" for i in range(50)} <= set(doc.tags)
            assert doc.access_count == 50
    finally:
        await store.close()


# --- 3. the hub killed with SIGKILL mid-push, and restarted ---------------------------


def replays(hub: HubProcess) -> int:
    """Ops this hub run received but did not store: pushed again, already held."""
    received = hub.metric("chrysalis_hub_ops_received_total")
    return int(received - hub.metric("chrysalis_hub_ops_stored_total"))


async def test_hub_killed_mid_push_loses_nothing_and_applies_nothing_twice(
    processes: Processes,
) -> None:
    seed = int(os.environ.get("CHRYSALIS_PROCESS_SEED") or secrets.randbits(32))
    rng = random.Random(seed)
    # Kill 1 after a random number of writes; kill 2 once the restarted hub has
    # stored a random number of further ops (the agent must have reconnected).
    first_kill, more = rng.randint(20, 150), rng.randint(1, 60)
    context = f"(seed {seed}: kill after {first_kill} writes, then after {more} more ops)"
    total = 400

    hub = await processes.hub()
    port, http_port = hub.port, hub.http_port
    writer = await processes.agents("writer", hub, ["agent-w"])
    await writer.ask("sync", "synced")
    writer.send("write_many", n=total, prefix="durable", pace_s=0.004)
    hub_ops_at_kill: list[int] = []
    replayed: list[int] = []

    async def kill_and_restart(hub: HubProcess) -> HubProcess:
        hub_ops_at_kill.append(hub.health()["ops"])
        replayed.append(replays(hub))
        hub.kill()
        assert await hub.wait_exit() == -signal.SIGKILL
        return await processes.hub(port, http_port)  # same data dir, same ports

    await writer.expect("wrote", 60, lambda e: e["i"] >= first_kill)
    hub = await kill_and_restart(hub)
    restarted = hub
    await until(
        lambda: restarted.health()["ops"] >= hub_ops_at_kill[0] + more,
        timeout=30,
        what=f"the restarted hub storing {more} more ops {context}",
    )
    hub = await kill_and_restart(hub)
    await writer.expect("wrote_all", 60)
    (state,) = (await writer.ask("sync", "synced", timeout=60))["agents"]
    counts = state["counts"]
    assert counts["ops"] == total and counts["ops_synced"] == total, f"{counts} {context}"
    assert state["last_error"] is None
    assert hub.health()["ops"] == total, context
    replayed.append(replays(hub))
    await writer.close()
    await hub.stop()

    print(
        f"\nhub ops at the kills: {hub_ops_at_kill} of {total}; ops pushed again that the "
        f"hub already held, per hub run: {replayed[1:]} {context}"
    )
    async with AgentMemory(agent_id="agent-w", data_dir=processes.agents_dir) as mem:
        mine = {op.cid for op in await mem.export_ops()}
        statuses = {s async for _, _, s in mem.store.iter_ops()}
    assert len(mine) == total and statuses == {SyncStatus.SYNCED}, context
    log, _, problems = await hub_store_report(processes.hub_dir)
    assert not problems, context
    assert_clean_log(log)
    assert {op.cid for _, op in log} == mine, context


# --- 4. an agent that was offline catches up from its cursor --------------------------


async def test_an_offline_agent_catches_up_from_its_cursor(processes: Processes) -> None:
    hub = await processes.hub()
    a = await processes.agents("agent-a", hub, ["agent-a"])
    a.send("write_many", n=10, prefix="before")
    await a.expect("wrote_all", 30)
    await a.ask("sync", "synced")

    b = await processes.agents("agent-b-1", hub, ["agent-b"])
    (b1,) = (await b.ask("sync", "synced"))["agents"]
    assert b1["cursor"] == 10 and b1["counts"]["ops"] == 10
    await b.close()  # B is offline from here on

    a.send("write_many", n=200, prefix="while B was away")
    await a.expect("wrote_all", 60)
    (a_state,) = (await a.ask("sync", "synced"))["agents"]
    assert hub.health()["ops"] == 210

    store = OpStore(processes.agents_dir / "agent-b" / "memory.db", read_only=True)
    await store.open()
    try:
        saved_cursor = int(await store.meta("sync_cursor") or 0)
    finally:
        await store.close()
    assert saved_cursor == 10
    pages = 'chrysalis_hub_ops_sent_total{kind="page"}'
    sent_before = hub.metric(pages)

    b = await processes.agents("agent-b-2", hub, ["agent-b"])  # same data dir
    b2: dict[str, Any] = {}

    async def caught_up() -> bool:  # in the background, as soon as it connects
        (state,) = (await b.ask("state", "state"))["agents"]
        b2.update(state)
        return bool(state["cursor"] == 210)

    await wait_until(caught_up, timeout=30, what="B catching up in the background")
    assert b2["pulled"] == 200 and b2["counts"]["ops"] == 210
    assert b2["root"] == a_state["root"]
    # The hub sent B the 200 ops it missed, not the 10 it already had. (Measured
    # before sync_now: a sync_now during the background pull pulls twice.)
    assert hub.metric(pages) - sent_before == 200
    (b2,) = (await b.ask("sync", "synced"))["agents"]
    assert b2["cursor"] == 210 and b2["root"] == a_state["root"] and b2["pulled"] == 200
    await b.close()
    await a.close()
    await hub.stop()


# --- 5. bad tokens and forged writers ----------------------------------------------------


def cli(*args: str) -> str:
    result = subprocess.run(
        [*CHRYSALIS, *args], capture_output=True, text=True, timeout=60, env=child_env()
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


async def handshake_status(hub: HubProcess, token: str | None) -> int:
    """The HTTP status of a websocket handshake (101 when it succeeds)."""
    headers = None if token is None else {"Authorization": f"Bearer {token}"}
    try:
        async with connect(hub.url, additional_headers=headers, proxy=None, open_timeout=10):
            return 101
    except InvalidStatus as refused:
        response = refused.response
    assert response.headers.get("WWW-Authenticate", "").startswith("Bearer")
    return response.status_code


async def receive(ws: ClientConnection, protocol: ClientProtocol, kind: type) -> Any:
    """Read frames until an event of ``kind`` arrives (others are dropped)."""
    events: list[ClientEvent] = []

    async def received() -> bool:
        events.extend(protocol.receive(await ws.recv()))
        return any(isinstance(e, kind) for e in events)

    await wait_until(received, timeout=10, poll=0, what=f"a {kind.__name__} from the hub")
    return next(e for e in events if isinstance(e, kind))


async def test_bad_tokens_and_forged_writers_are_refused(processes: Processes) -> None:
    tokens_file = str(processes.hub_dir / "tokens.json")
    hub = await processes.hub()
    revoked = cli("token", "create", "agent-r", "--tokens-file", tokens_file).splitlines()[0]
    assert await handshake_status(hub, revoked) == 101
    cli("token", "revoke", "agent-r", "--tokens-file", tokens_file)
    wrong = "chry_" + secrets.token_urlsafe(32)
    for token in (None, wrong, revoked):
        assert await handshake_status(hub, token) == 401, token
    assert "chrysalis_hub_connections_refused_total" in hub.get("/metrics").decode()

    # An agent with a bad token: refused, and its writes wait locally.
    async with AgentMemory(
        agent_id="agent-c",
        data_dir=processes.agents_dir,
        hub_url=hub.url,
        hub_token=wrong,
        embedder="hashing",
    ) as c:
        ids = [await c.learn(f"kept for later {i}", importance=0.9) for i in range(3)]
        started = time.monotonic()
        with pytest.raises(HubRejectedError, match="refused this agent's token"):
            await c.sync_now(timeout=20)
        assert time.monotonic() - started < 5, "a refused token should fail sync_now at once"
        counts = await c.store.counts()
        assert counts["ops_pending"] == 3 and counts["ops_synced"] == 0
        for mid in ids:
            doc = await c.get(mid)
            assert doc is not None and doc.sync_status == SyncStatus.PENDING
        state = c.sync_state()
        assert state is not None and state.connection != "connected"

    # Agent B connects (binding its key), then agent A's token pushes an op
    # written as B and signed with B's own key, next to one of its own.
    async with AgentMemory(
        agent_id="agent-b",
        data_dir=processes.agents_dir,
        hub_url=hub.url,
        hub_token=processes.token("agent-b"),
        embedder="hashing",
    ) as b:
        await b.sync_now()
        b_signer = load_or_create_signer(processes.agents_dir / "agent-b" / "keys" / "signing.key")
        a_signer = Signer.generate()
        legit = OpAuthor("agent-a", a_signer, HybridClock()).make(
            "legit-1", MemoryPatch(create=Creation(), content="agent A writes as itself")
        )
        forged = OpAuthor("agent-b", b_signer, HybridClock(), last_seq=1000).make(
            "forged-1", MemoryPatch(create=Creation(), content="The capital of France is Rome.")
        )
        wrong_key = OpAuthor("agent-a", b_signer, HybridClock(), last_seq=1000).make(
            "forged-2", MemoryPatch(create=Creation(), content="A, signed with B's key")
        )
        headers = {"Authorization": f"Bearer {processes.token('agent-a')}"}
        async with connect(hub.url, additional_headers=headers, proxy=None) as ws:
            protocol = ClientProtocol("agent-a", a_signer.public_key)
            await ws.send(protocol.hello(0), text=True)
            welcome = await receive(ws, protocol, Welcome)
            assert welcome.keys["agent-b"] == b_signer.public_key
            batch, frame = protocol.push([legit, forged, wrong_key])
            await ws.send(frame, text=True)
            ack: Acked = await receive(ws, protocol, Acked)
        assert ack.batch == batch and list(ack.accepted) == [legit.cid]
        assert set(ack.rejected) == {forged.cid, wrong_key.cid}
        assert all(reason.startswith("forbidden_writer") for reason in ack.rejected.values())

        await b.sync_now()  # B receives what the hub accepted, and only that
        assert await b.store.known_cids([legit.cid, forged.cid, wrong_key.cid]) == {legit.cid}
        assert await b.get("forged-1") is None
    assert hub.health()["ops"] == 1
    await hub.stop()
    log, _, problems = await hub_store_report(processes.hub_dir)
    assert not problems
    assert [op.cid for _, op in log] == [legit.cid]
