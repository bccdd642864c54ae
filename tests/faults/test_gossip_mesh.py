"""Jepsen's set test on a gossip mesh with no hub, under faults and attacks (issue
13, deliverable 3).

Four members, each in a child process with its own members file, gossip on
loopback websockets while each writes memories. One is SIGKILLed mid-write and
restarted on its data dir (same port); one is frozen with SIGSTOP for a while
(its connections hang, its peers suspect it, then declare it dead) and thawed;
and the mesh is split in two for a window. Gossip peers dial each other at the
addresses they announce, so no proxy can sit between them: the split is made by
membership, as an operator would cut a group off (each side's members files
list only that side: the agents disconnect and refuse the other side), and healed
by listing everyone again. Meanwhile an outsider and a member ("mallory", listed
as a member) attack: frames without a handshake, a handshake with no member key
or with a member's id and another key, ops forged as another member, by a writer
nobody listed and with out-of-range numbers, a backdated creation of another
member's memory, a frame naming another sender, a malformed frame.

Afterwards, with every process stopped, each store is read: every acknowledged
write (and any a killed run committed unacknowledged) is on every member, the
state roots are equal, verify is clean, no forged op is anywhere and the attacked
memory's provenance is unchanged.

``CHRYSALIS_FAULTS_SEED`` replays the schedule; ``-s`` shows the summary.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from collections.abc import Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from chrysalis_memory.gossip import wire
from chrysalis_memory.gossip.messages import Digest, Ping, Push
from chrysalis_memory.gossip.summary import BUCKETS
from chrysalis_memory.keys import load_or_create_signer
from chrysalis_memory.model import MemoryPatch, Signer
from chrysalis_memory.model.ops import Creation
from tests.faults.attacks import INT64_MAX, Attack, Mallory, now_ms
from tests.faults.harness import (
    Clock,
    Writer,
    memory_id,
    provenance,
    replica_report,
    rng_for,
    seed_from_env,
    summary,
)
from tests.gossip.conftest import connect_as
from tests.hub.conftest import free_port
from tests.hub.test_processes import until
from tests.waiting import wait_until

pytestmark = pytest.mark.slow

MEMBERS = ("g0", "g1", "g2", "g3")
SIDES = (("g0", "g1"), ("g2", "g3"))
WRITES = 120
PACE_S = 0.015
KILLED, FROZEN = "g1", "g3"
SPLIT_S = 2.0
FROZEN_S = 1.5
UNREACHABLE = "ws://127.0.0.1:9"  # mallory's "address": nothing listens there


def write_members(path: Path, keys: dict[str, str], names: Sequence[str]) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({n: keys[n] for n in names}))
    os.replace(temporary, path)


async def closed_code(connection: Any, timeout: float = 10.0) -> int | None:
    """What the peer closed the connection with (None: it did not, within timeout)."""
    with contextlib.suppress(ConnectionClosed, asyncio.TimeoutError):
        while True:
            await asyncio.wait_for(connection.recv(), timeout)
    rcvd = connection.protocol.close_rcvd
    return None if rcvd is None else int(rcvd.code)


async def test_a_gossip_mesh_loses_nothing_to_kills_a_split_and_attacks(tmp_path: Path) -> None:
    seed = seed_from_env()
    rng = rng_for(seed, "gossip schedule")
    log = Clock()
    agents_dir, logs = tmp_path / "agents", tmp_path / "logs"
    logs.mkdir()
    signers = {m: load_or_create_signer(agents_dir / m / "keys" / "signing.key") for m in MEMBERS}
    keys = {m: s.public_key for m, s in signers.items()}
    m_signer = Signer.generate()
    keys["mallory"] = m_signer.public_key
    everyone = (*MEMBERS, "mallory")
    files = {m: tmp_path / f"members-{m}.json" for m in MEMBERS}
    for m in MEMBERS:
        write_members(files[m], keys, everyone)
    ports = {m: free_port() for m in MEMBERS}
    urls = {m: f"ws://127.0.0.1:{ports[m]}" for m in MEMBERS}
    writers = {
        m: Writer(
            m,
            {
                "agent_id": m,
                "data_dir": str(agents_dir),
                "gossip": {
                    "listen_host": "127.0.0.1",
                    "listen_port": ports[m],
                    "seeds": [urls[o] for o in MEMBERS if o != m],
                    "members_file": str(files[m]),
                    "interval_ms": 100,
                    "anti_entropy_interval_ms": 1000,
                },
            },
            logs,
            WRITES,
        )
        for m in MEMBERS
    }
    results: list[Attack] = []
    healed = asyncio.Event()
    mallory = Mallory("", "", m_signer)  # only its op-making is used here
    forged_cids: list[str] = []
    async with AsyncExitStack() as stack:
        for w in writers.values():
            stack.callback(w.cleanup)
        await asyncio.gather(*(w.start(PACE_S) for w in writers.values()))
        log("four members writing")
        everything = WRITES * len(MEMBERS)

        def total_acks() -> int:
            return sum(w.acks() for w in writers.values())

        async def after_acks(n: int) -> None:
            await until(lambda: total_acks() >= n, timeout=60, what=f"{n} acks")

        async def kill() -> None:
            w = writers[KILLED]
            point = rng.randint(20, WRITES - 40)
            await until(lambda: w.acks() >= point, timeout=60, what=f"{KILLED}'s acks")
            for _ in range(3):  # aimed at a learn; again if it came after the learn's return
                await w.kill(mid_write=rng.uniform(0, 0.0004))
                log(f"SIGKILLed {KILLED} after {w.acks()} acks, in a learn: {w.mid_write}")
                await w.start(PACE_S)
                log(f"{KILLED} restarted on port {ports[KILLED]}")
                if w.mid_write:
                    break

        async def freeze() -> None:
            await after_acks(everything // 3)
            child = writers[FROZEN].child
            child.proc.send_signal(signal.SIGSTOP)
            log(f"SIGSTOPped {FROZEN}")
            await asyncio.sleep(FROZEN_S)  # the window it stays frozen for
            child.proc.send_signal(signal.SIGCONT)
            log(f"SIGCONTed {FROZEN}")

        async def split() -> None:
            await after_acks(everything // 5)
            for side in SIDES:
                for m in side:
                    write_members(files[m], keys, (*side, "mallory"))
            log(f"split {SIDES[0]} | {SIDES[1]}")
            await asyncio.sleep(SPLIT_S)  # the window the split is held for
            for m in MEMBERS:
                write_members(files[m], keys, everyone)
            log("split healed")
            healed.set()

        async def attack() -> None:
            await after_acks(everything // 4)
            results.append(await outsider(urls["g0"]))
            log(f"attack {results[-1].kind}: {results[-1].outcome}")
            # Once the split is over and g2 lists everyone again, so that what g2
            # refuses, and why, is the forging member's doing alone.
            await healed.wait()

            async def everyone_listed() -> bool:
                state = await writers["g2"].child.ask("state", "state")
                return bool(state["gossip"]["members"] == 4)

            await wait_until(everyone_listed, timeout=20, what="g2 reading its members again")
            results.extend(await forging_member(urls["g2"], keys["g2"]))
            for result in results[1:]:
                log(f"attack {result.kind}: {result.outcome}")

        async def outsider(url: str) -> Attack:
            attack = Attack("outsider", "gossip frames with no handshake; handshakes without a key")
            stranger = Signer.generate()
            op = mallory.op(
                "injected",
                MemoryPatch(create=Creation(), content="x"),
                writer="intruder",
                signer=stranger,
            )
            forged_cids.append(op.cid)
            said: list[str] = []
            async with connect(url, proxy=None, max_size=None) as raw:
                for message in (Push((op,)), Ping(0), Digest(1, (b"\0" * 8,) * BUCKETS)):
                    with contextlib.suppress(ConnectionClosed):
                        await raw.send(wire.encode("intruder", UNREACHABLE, message), text=True)
                with contextlib.suppress(ConnectionClosed, asyncio.TimeoutError):
                    while True:
                        said.append(json.loads(await asyncio.wait_for(raw.recv(), 10))["type"])
                code = raw.protocol.close_rcvd.code if raw.protocol.close_rcvd else None
            refusals = []
            for who in ("intruder", "g1"):  # its own id, and a member's id without its key
                try:
                    await connect_as(url, who, stranger, {}, addr=UNREACHABLE)
                    refusals.append(f"{who}: admitted")
                except ConnectionClosed as closed:
                    refusals.append(f"{who}: closed {closed.rcvd.code if closed.rcvd else None}")
            attack.outcome = f"sent only {said}, closed {code}; handshakes: {', '.join(refusals)}"
            attack.refused = (
                said in ([], ["challenge"])
                and code in (1008, 1009)
                and all(r.endswith("closed 1008") for r in refusals)
            )
            return attack

        async def forging_member(url: str, their_key: str) -> list[Attack]:
            """Mallory, a member, on an authenticated connection to g2."""
            target = memory_id("g0", 0)
            heads = await heads_of(target)
            forged = [
                mallory.op(
                    "g0-forged",
                    MemoryPatch(create=Creation(), content="forged"),
                    writer="g0",
                    seq=9000,
                ),
                mallory.op(
                    "nobody-1",
                    MemoryPatch(create=Creation(), content="no member"),
                    writer="nobody",
                    signer=Signer.generate(),
                ),
            ]
            used = mallory.op(target, MemoryPatch(access=1), seq=1, parents=heads)
            backdated = mallory.op(
                target, MemoryPatch(create=Creation(), content="mine"), seq=2, hlc=(1000, 0)
            )
            honest = mallory.op(
                "mallory-g", MemoryPatch(create=Creation(), content="hi"), seq=3, hlc=(now_ms(), 1)
            )
            out_of_range = [
                mallory.op("poison", MemoryPatch(create=Creation(), content="p"), seq=1 << 63),
                mallory.op("poison", MemoryPatch(access=INT64_MAX), seq=4),
                mallory.op(
                    "poison",
                    MemoryPatch(create=Creation(), content="p"),
                    seq=5,
                    hlc=(now_ms() + 590_000, INT64_MAX),
                ),
            ]
            forged_cids.extend(op.cid for op in [*forged, backdated, *out_of_range])
            before = await refusals_at_g2()
            connection, proved = await connect_as(
                url, "mallory", m_signer, {"g2": their_key}, addr=UNREACHABLE
            )
            async with connection:
                push = Push((*forged, used, backdated, honest))
                await connection.send(wire.encode("mallory", UNREACHABLE, push), text=True)
                seen: dict[str, int] = {}

                async def refused() -> bool:
                    now = await refusals_at_g2()
                    seen.update({k: now.get(k, 0) - before.get(k, 0) for k in now})
                    return sum(seen.values()) >= 3

                await wait_until(refused, timeout=20, what="g2 refusing mallory's push")
                lie = wire.encode("g0", UNREACHABLE, Push((forged[0],)))
                await connection.send(lie, text=True)
                lie_code = await closed_code(connection)
            codes = []
            for op in out_of_range:
                connection, _ = await connect_as(
                    url, "mallory", m_signer, {"g2": their_key}, addr=UNREACHABLE
                )
                async with connection:
                    # Encoded by hand: the codec would refuse to write these numbers.
                    frame = json.dumps(
                        {
                            "v": 1,
                            "from": "mallory",
                            "addr": UNREACHABLE,
                            "msg": {"type": "push", "ops": ["OP"], "members": []},
                        },
                        separators=(",", ":"),
                    ).replace('"OP"', op.encoded.decode())
                    await connection.send(frame, text=True)
                    codes.append(await closed_code(connection))
            connection, _ = await connect_as(
                url, "mallory", m_signer, {"g2": their_key}, addr=UNREACHABLE
            )
            async with connection:
                await connection.send('{"v":1,"from":"mallory"', text=True)
                malformed_code = await closed_code(connection)
            return [
                Attack(
                    "member forging ops",
                    "ops as g0 with mallory's key; a writer nobody "
                    "listed; a frame naming g0 as its sender",
                    outcome=f"authenticated as mallory to {proved}; g2 refused "
                    f"{seen.get('wrong_key', 0)} wrong_key, {seen.get('not_member', 0)} "
                    f"not_member; the lying frame: closed {lie_code}",
                    refused=lie_code == 1008
                    and seen.get("wrong_key") == 1
                    and seen.get("not_member") == 1,
                    cids=[op.cid for op in forged],
                ),
                Attack(
                    "backdated create over gossip",
                    f"a 1970 creation of {target} after using it",
                    outcome=f"g2 refused {seen.get('invalid', 0)} as invalid",
                    refused=seen.get("invalid") == 1,
                    cids=[backdated.cid],
                ),
                Attack(
                    "out-of-range number over gossip",
                    "seq 2^63; access 2^63-1; HLC counter 2^63-1",
                    outcome=f"closed {codes}",
                    refused=codes == [1008, 1008, 1008],
                    cids=[o.cid for o in out_of_range],
                ),
                Attack(
                    "malformed frame from a member",
                    "truncated JSON",
                    outcome=f"closed {malformed_code}",
                    refused=malformed_code == 1008,
                ),
            ]

        async def refusals_at_g2() -> dict[str, int]:
            reply = await writers["g2"].child.ask("state", "state")
            return dict(reply["gossip"]["rejections"])

        async def heads_of(mid: str) -> list[str]:
            """g0's memory as g2 holds it (mallory would have received it by gossip)."""

            async def arrived() -> bool:
                return bool((await writers["g2"].child.ask("history", "history", id=mid))["cids"])

            await wait_until(arrived, timeout=20, what=f"{mid} on g2")
            reply = await writers["g2"].child.ask("history", "history", id=mid)
            return list(reply["cids"])

        chaos = [kill(), freeze(), split(), attack()]
        await asyncio.gather(*chaos)
        for w in writers.values():
            await w.finished()
        log(f"every write made ({total_acks()} acks)")

        states: dict[str, Any] = {}

        async def agreed() -> bool:
            for w in writers.values():
                states[w.agent_id] = await w.child.ask("state", "state")
            roots = {s["root"] for s in states.values()}
            return len(roots) == 1

        converging = log.elapsed
        try:
            await wait_until(agreed, timeout=60, poll=0.25, what="one state root on the mesh")
        except AssertionError as failed:
            counts = {a: s["counts"]["ops"] for a, s in states.items()}
            raise AssertionError(f"{failed}: ops {counts} (seed {seed})") from None
        converge_s = log.elapsed - converging
        log("converged")
        gossip = {a: s["gossip"] for a, s in states.items()}
        for w in writers.values():
            await w.close()

    acked = {memory_id(w.agent_id, i) for w in writers.values() for i in w.acked}
    stores = {m: agents_dir / m / "memory.db" for m in MEMBERS}
    # Writes committed unacknowledged by a killed run, found by the next: they spread too.
    found = {memory_id(w.agent_id, i) for w in writers.values() for i in w.present}
    reports = {m: await replica_report(path, acked | found) for m, path in stores.items()}
    target = memory_id("g0", 0)
    owners = {m: await provenance(path, target) for m, path in stores.items()}
    rejections: dict[str, int] = {}
    for state in gossip.values():
        for reason, n in state["rejections"].items():
            rejections[reason] = rejections.get(reason, 0) + n
    held = {m: set(r["cids"]) for m, r in reports.items()}
    for result in results:
        result.cids_held = sum(len(set(result.cids) & cids) for cids in held.values())
    backdating = results[2]
    creators = sorted({o[0] for o in owners.values()})
    backdating.outcome += f"; the creator on every member: {creators}"
    backdating.refused = backdating.refused and creators == ["g0"]
    killed = writers[KILLED]
    figures = {
        "writes": {
            **{
                m: f"{len(w.acked)} acknowledged, {len(w.present - w.acked)} committed "
                f"unacknowledged, {w.kills} SIGKILLs ({w.mid_write} between a learn's start "
                f"and its return), {len(w.runs)} runs"
                for m, w in writers.items()
            },
            "acknowledged in all": len(acked),
            "ops on each member": sorted({r["ops"] for r in reports.values()}),
        },
        "faults": {
            "SIGKILLs": f"{KILLED}: {killed.kills} ({killed.mid_write} in a learn), each "
            "restarted on the same port",
            "SIGSTOP": f"{FROZEN} frozen for {FROZEN_S} s",
            "split": f"{SIDES[0]} | {SIDES[1]} for {SPLIT_S} s (by membership)",
            "messages lost (not sent: peer unreachable, refused, dropped)": sum(
                s["messages_lost"] for s in gossip.values()
            ),
            "handshakes failed": sum(s["handshakes_failed"] for s in gossip.values()),
            "inbound connections refused": sum(s["peers_refused"] for s in gossip.values()),
            "frames rejected": sum(s["frames_rejected"] for s in gossip.values()),
            "ops refused, by reason": dict(sorted(rejections.items())),
        },
        "attacks": {
            a.kind: f"{a.outcome} ({'refused' if a.refused else 'NOT REFUSED'})" for a in results
        },
        "outcome": {
            "time to converge after the last write (s)": round(converge_s, 1),
            "acknowledged or committed writes missing, all members": sum(
                len(r["missing"]) for r in reports.values()
            ),
            "distinct state roots": len({r["root"] for r in reports.values()}),
            "verify problems": sum(len(r["problems"]) for r in reports.values()),
            "quarantined ops": sum(len(r["quarantine"]) for r in reports.values()),
            "attack ops held, all members": sum(a.cids_held for a in results),
            "whole test (s)": round(log.elapsed, 1),
        },
    }
    summary("gossip mesh set test", seed, figures)
    context = f"(seed {seed})"
    for m, report in reports.items():
        assert report["missing"] == [], f"{m} lost writes {context}"
        assert report["verify_ok"], f"{m}: {report['problems']} {context}"
        assert report["quarantine"] == [], f"{m}: {report['quarantine']} {context}"
    assert len({r["root"] for r in reports.values()}) == 1, context
    assert all(a.cids_held == 0 for a in results), context
    for result in results:
        assert result.refused, f"{result.kind}: {result.outcome} {context}"
    assert 1 <= writers[KILLED].kills <= 3
