"""Hub benchmarks (``chrysalis bench``): the hub runs as its own process, as in
production, and each figure has a baseline measured in the same run.

* **propagation**: agent A learns, how long until agent B holds the memory
  (A → hub → B, two real ``AgentMemory`` replicas syncing over loopback), next
  to the same bytes relayed A → B by a bare websocket relay process.
* **hub ingest** with 1, 10 and 50 agents pushing at once: ops the hub verifies,
  stores and relays per second, next to a raw SQLite insert of the same bytes.
  The pushers speak the protocol directly with ops signed beforehand, so the
  figure is the hub's cost, not the agents' signing.
* **bytes per op** on the wire, from the hub's own counters, next to the size
  of the op's canonical encoding.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from chrysalis_memory.bench.core import (
    Figure,
    Reporter,
    Settings,
    SilentReporter,
    _check,
    _latency_figure,
    _ratio,
    _raw_db,
    build_ops,
)
from chrysalis_memory.hub.tokens import TokenStore
from chrysalis_memory.memory import AgentMemory
from chrysalis_memory.model.ops import Op
from chrysalis_memory.sync import Acked, ClientProtocol, ServerError

PROPAGATION_P50_MS = 50.0
PROPAGATION_P99_MS = 200.0
HUB_INGEST_OPS_S = 5_000.0
_LISTENING = re.compile(r"listening on ws://([\d.]+):(\d+) \(http://[\d.]+:(\d+)/health")
_RELAY = re.compile(r"relay listening on (\d+)")
_UPDATE = '{"type":"update"'


@contextlib.asynccontextmanager
async def hub_process(data_dir: Path) -> AsyncIterator[tuple[str, int]]:
    """``chrysalis hub`` in a child process on free ports; yields (ws url, http port)."""
    async with _child(
        [
            *("chrysalis_memory.cli", "hub", "--port", "0", "--http-port", "0"),
            *("--data-dir", str(data_dir), "--embedder", "hashing"),
        ],
        _LISTENING,
    ) as found:
        yield f"ws://{found[1]}:{found[2]}", int(found[3])


@contextlib.asynccontextmanager
async def _child(args: list[str], ready: re.Pattern[str]) -> AsyncIterator[re.Match[str]]:
    """``python -m ARGS`` until the block ends; yields the match of its ready line."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        while True:
            line = (await asyncio.wait_for(process.stdout.readline(), 60)).decode()
            if not line:
                raise RuntimeError(f"{args[0]} exited ({await process.wait()}) before it was ready")
            found = ready.search(line)
            if found:
                break
        yield found
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 20)
            except asyncio.TimeoutError:
                process.kill()
                await process.wait()


def _metrics(http_port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    return values


# --- propagation ------------------------------------------------------------------------


async def bench_propagation(
    root: Path, settings: Settings, reporter: Reporter
) -> tuple[Figure, dict[str, Any]]:
    """A learns, B holds it: p50/p99 next to a bare websocket relay of the same bytes."""
    samples = max(20, settings.n // 10)
    tokens = TokenStore(root / "hub" / "tokens.json")
    token_a, token_b = tokens.create("bench-a"), tokens.create("bench-b")
    reporter.phase("hub propagation", samples)
    took: list[float] = []
    relayed: list[float] = []
    sizes: list[int] = []
    async with hub_process(root / "hub") as (url, http_port):
        common: dict[str, Any] = {"data_dir": root / "agents", "hub_url": url}
        async with (
            AgentMemory(agent_id="bench-a", hub_token=token_a, **common) as a,
            AgentMemory(agent_id="bench-b", hub_token=token_b, **common) as b,
            _relay() as (send, receive),
        ):
            await a.sync_now()
            await b.sync_now()
            for i in range(settings.warmup // 10 + samples):
                text = f"fact {i}: the hub relays this to every other agent"
                started = time.perf_counter()
                mid = await a.learn(text, importance=0.9)
                # Polled from outside, as a user would see it (no hook into the agent).
                while await b.store.get_state(mid) is None:  # noqa: ASYNC110
                    await asyncio.sleep(0.0002)
                elapsed = time.perf_counter() - started
                op = (await a.history(mid))[-1]
                t0 = time.perf_counter()
                await send(op.encoded)
                await receive()
                relay_s = time.perf_counter() - t0
                if i >= settings.warmup // 10:
                    took.append(elapsed)
                    relayed.append(relay_s)
                    sizes.append(len(op.encoded))
                    reporter.advance()
            wire = await asyncio.to_thread(_metrics, http_port)

    def checks(p50: float, p99: float, ratio: float) -> list[Any]:
        return [
            _check("p50", p50, "<=", PROPAGATION_P50_MS, " ms"),
            _check("p99", p99, "<=", PROPAGATION_P99_MS, " ms"),
        ]

    figure = _latency_figure(
        "propagation",
        "propagation A→hub→B",
        "agent A learns a memory until agent B holds it: A's store, push, hub verify + "
        "store + relay, B's verify + store (hub in its own process, loopback)",
        took,
        relayed,
        "the op's bytes sent A → bare websocket relay process → B (transport alone)",
        checks,
        f"p50 <= {PROPAGATION_P50_MS:g} ms, p99 <= {PROPAGATION_P99_MS:g} ms",
        {"mean_op_bytes": round(statistics.fmean(sizes))},
    )
    return figure, wire


@contextlib.asynccontextmanager
async def _relay() -> AsyncIterator[tuple[Any, Any]]:
    """A bare websocket relay in its own process: what A sends, B receives."""
    async with _child(["chrysalis_memory.bench.relay"], _RELAY) as found:
        uri = f"ws://127.0.0.1:{found[1]}"
        async with (
            connect(uri, compression=None, proxy=None) as sender,
            connect(uri, compression=None, proxy=None) as receiver,
        ):
            await sender.send("sender")
            await receiver.send("receiver")
            await receiver.recv()  # the relay says both are there

            async def send(data: bytes) -> None:
                await sender.send(data, text=True)

            async def receive() -> None:
                await receiver.recv()

            yield send, receive


# --- ingest -----------------------------------------------------------------------------


async def _push_all(url: str, token: str, ops: Sequence[Op], batch: int, window: int) -> None:
    """Push ``ops`` (one writer's) in batches, ``window`` unacknowledged at once;
    updates relayed from the other pushers are read and dropped unparsed."""
    writer, key = ops[0].writer, ops[0].key
    async with connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
        max_size=None,
        proxy=None,
    ) as connection:
        protocol = ClientProtocol(writer, key, max_batch=batch)
        await connection.send(protocol.hello(0), text=True)
        protocol.receive(await connection.recv())
        slots = asyncio.Semaphore(window)
        reading = asyncio.create_task(_read_acks(connection, protocol, len(ops), slots))
        for start in range(0, len(ops), batch):
            await slots.acquire()
            if reading.done():
                break
            _, frame = protocol.push(ops[start : start + batch])
            await connection.send(frame, text=True)
        await reading


async def _read_acks(
    connection: ClientConnection, protocol: ClientProtocol, total: int, slots: asyncio.Semaphore
) -> None:
    decided = 0
    async for frame in connection:
        if isinstance(frame, str) and frame.startswith(_UPDATE):
            continue
        for event in protocol.receive(frame):
            if isinstance(event, Acked):
                if event.rejected:
                    raise RuntimeError(f"the hub rejected ops: {event.rejected}")
                decided += len(event.accepted)
                slots.release()
            elif isinstance(event, ServerError):
                raise RuntimeError(f"hub error {event.code}: {event.message}")
        if decided >= total:
            return


async def bench_hub_ingest(
    root: Path, agents: int, total: int, settings: Settings, reporter: Reporter
) -> tuple[Figure, dict[str, float]]:
    """``agents`` pushers at once, ``total`` ops in all, vs a raw SQLite insert."""
    per_agent = max(1, total // agents)
    hub_dir = root / f"hub-ingest-{agents}"
    tokens = TokenStore(hub_dir / "tokens.json")
    streams = [
        build_ops(per_agent, 1, settings.seed + 100 + k, SilentReporter(), prefix=f"pusher{k:02d}")
        for k in range(agents)
    ]
    credentials = [tokens.create(s[0].writer, public_key=s[0].key) for s in streams]
    ops = [op for stream in streams for op in stream]
    reporter.phase(f"hub ingest ({agents} agents)", 2)
    async with hub_process(hub_dir) as (url, http_port):
        started = time.perf_counter()
        await asyncio.gather(
            *(
                _push_all(url, token, stream, batch=100, window=4)
                for token, stream in zip(credentials, streams, strict=True)
            )
        )
        seconds = time.perf_counter() - started
        wire = await asyncio.to_thread(_metrics, http_port)
    reporter.advance()
    raw = await _raw_db(root / f"raw-hub-ingest-{agents}.db", "normal")
    try:
        t0 = time.perf_counter()
        for start in range(0, len(ops), 100):
            chunk = ops[start : start + 100]
            await raw.executemany(
                "INSERT INTO rows (id, body) VALUES (?, ?)", [(op.cid, op.encoded) for op in chunk]
            )
            await raw.commit()
        raw_s = time.perf_counter() - t0
    finally:
        await raw.close()
    reporter.advance()
    stored = wire.get("chrysalis_hub_ops_stored_total", 0.0)
    if stored != len(ops):
        raise RuntimeError(f"benchmark bug: the hub stored {stored:.0f} of {len(ops)} ops")
    value, baseline = len(ops) / seconds, len(ops) / raw_s
    check = _check("value", round(value), ">=", HUB_INGEST_OPS_S, " ops/s")
    figure = Figure(
        name=f"hub_ingest_{agents}",
        short=f"hub ingest, {agents} agent{'s' if agents > 1 else ''}",
        label=f"ops/s the hub verifies, stores and relays with {agents} agents pushing at once "
        "(batches of 100, 4 in flight each; hub in its own process, loopback)",
        unit="ops/s",
        value=round(value),
        baseline=round(baseline),
        ratio=_ratio(value, baseline),
        baseline_label="raw aiosqlite executemany INSERT + COMMIT of the same op bytes, "
        "batches of 100, WAL, synchronous=NORMAL",
        target=f">= {HUB_INGEST_OPS_S:,.0f} ops/s" if agents == 50 else "-",
        met=check.met if agents == 50 else None,
        checks=[check] if agents == 50 else [],
        n=len(ops),
        details={
            "agents": agents,
            "seconds": round(seconds, 3),
            "baseline_seconds": round(raw_s, 3),
            "relayed_ops": wire.get('chrysalis_hub_ops_sent_total{kind="update"}', 0.0),
        },
    )
    return figure, wire


def _bytes_figure(wire: dict[str, float], mean_op_bytes: float) -> Figure:
    received = wire.get("chrysalis_hub_bytes_received_total", 0.0)
    ops_in = wire.get("chrysalis_hub_ops_received_total", 0.0) or 1.0
    per_op = received / ops_in
    sent_ops = sum(v for k, v in wire.items() if k.startswith("chrysalis_hub_ops_sent"))
    return Figure(
        name="wire_bytes",
        short="bytes per op pushed",
        label="payload bytes the hub received per op pushed (push frames, hello included)",
        unit="bytes",
        value=round(per_op, 1),
        baseline=round(mean_op_bytes, 1),
        ratio=_ratio(per_op, mean_op_bytes),
        baseline_label="the op's canonical encoding (what is signed and hashed)",
        target="-",
        met=None,
        n=int(ops_in),
        details={
            "bytes_sent_per_op_relayed": round(
                wire.get("chrysalis_hub_bytes_sent_total", 0.0) / max(1.0, sent_ops), 1
            ),
            "note": "websocket framing (2-14 bytes a frame) and TCP are not counted",
        },
    )


async def run_hub_benchmarks(
    root: Path, settings: Settings, reporter: Reporter
) -> dict[str, Figure]:
    figures: dict[str, Figure] = {}
    propagation, _ = await bench_propagation(root / "propagation", settings, reporter)
    figures["propagation"] = propagation
    total = settings.n * 10
    wire: dict[str, float] = {}
    for agents in settings.hub_agents:
        figure, wire = await bench_hub_ingest(root, agents, total, settings, reporter)
        figures[figure.name] = figure
    if wire:
        sample = build_ops(200, 1, settings.seed, SilentReporter(), prefix="size")
        figures["wire_bytes"] = _bytes_figure(
            wire, statistics.fmean(len(o.encoded) for o in sample)
        )
    return figures
