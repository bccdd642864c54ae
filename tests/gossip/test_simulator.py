"""The gossip node under the deterministic simulator: convergence despite loss,
duplication, reordering, a partition and crashes; the same seed, the same run."""

from __future__ import annotations

import pytest

from chrysalis_memory.gossip import wire
from chrysalis_memory.gossip.messages import (
    Ack,
    Digest,
    Entries,
    Member,
    Ping,
    PingReq,
    Push,
    PushReply,
    Want,
)
from chrysalis_memory.gossip.node import GossipSettings
from chrysalis_memory.gossip.simulator import (
    Crash,
    NetworkSettings,
    Partition,
    SimOp,
    Simulation,
    expected_rounds,
    message_bytes,
    run_dissemination,
)
from chrysalis_memory.gossip.summary import Summary
from tests.sync.helpers import make_ops


def hostile_run(seed: int) -> tuple[Simulation, float]:
    """200 agents, thousands of ops, 10% loss, duplication, reordering delays,
    a partition that heals and two crashed agents that restart."""
    network = NetworkSettings(loss=0.10, duplicate=0.05, min_delay_ms=1, max_delay_ms=120)
    settings = GossipSettings(anti_entropy_interval_ms=2000)
    ids = [f"a{i:05d}" for i in range(200)]
    sim = Simulation(
        200,
        settings,
        network,
        seed=seed,
        partitions=[Partition(1000, 6000, frozenset(ids[:80]))],
        crashes=[Crash("a00003", 2000, 4000), Crash("a00150", 2500, 7000)],
    )
    writers = sim.rng.sample(ids, 40)
    t = 0.0
    for burst in range(10):  # writes keep coming, during the partition too
        t = 600.0 * burst
        sim.run(t, stop_when_complete=False)
        for writer in writers[burst * 4 : burst * 4 + 4]:
            if writer not in sim.down:
                sim.inject(writer, 60)
    return sim, t


@pytest.mark.slow
def test_everything_reaches_everyone_on_a_hostile_network() -> None:
    sim, last_write = hostile_run(seed=11)
    assert len(sim.injected) >= 2000
    result = sim.run(last_write + 60_000)
    assert result.converged, f"{result.ops_missing} ops missing"
    assert result.ops_missing == 0
    assert result.lost > 0 and result.duplicated > 0  # the network really was hostile
    summaries = {tuple(node.summary.digests()) for node in sim.nodes.values()}
    assert len(summaries) == 1  # every replica holds the same set


@pytest.mark.slow
def test_the_same_seed_replays_the_same_run() -> None:
    runs = []
    for _ in range(2):
        sim, last_write = hostile_run(seed=5)
        runs.append(sim.run(last_write + 20_000))
    assert runs[0].trace == runs[1].trace
    assert runs[0].messages == runs[1].messages
    assert runs[0].curve == runs[1].curve
    other, last_write = hostile_run(seed=6)
    assert other.run(last_write + 20_000).trace != runs[0].trace


@pytest.mark.parametrize("agents", [10, 100, 1000])
def test_dissemination_is_logarithmic(agents: int) -> None:
    result = run_dissemination(agents, fanout=3, interval_ms=500, seed=2)
    assert result.converged
    rounds = result.rounds("100%")
    assert rounds is not None
    # Within a few rounds of push gossip's expectation, and far from linear.
    assert rounds <= expected_rounds(agents, 3) + 4
    assert result.rounds("50%") <= result.rounds("99%") <= rounds  # type: ignore[operator]


def test_a_crashed_agent_is_declared_dead_and_skipped() -> None:
    # Probes wait longer than the network's worst round trip (2 x 50 ms).
    settings = GossipSettings(
        interval_ms=100, probe_timeout_ms=150, suspect_timeout_ms=600, anti_entropy_interval_ms=None
    )
    sim = Simulation(30, settings, seed=3, crashes=[Crash("a00007", 500, 1e9)])
    sim.run(5000, stop_when_complete=False)
    views = [node.state_of("a00007") for a, node in sim.nodes.items() if a != "a00007"]
    known = [v for v in views if v is not None]
    assert known and all(v == "dead" for v in known)
    # Restarted, it is heard from and alive again.
    sim2 = Simulation(30, settings, seed=3, crashes=[Crash("a00007", 500, 3000)])
    sim2.run(8000, stop_when_complete=False)
    states = {n.state_of("a00007") for a, n in sim2.nodes.items() if a != "a00007"} - {None}
    assert states == {"alive"}


def test_simulated_sizes_follow_the_wire_codec() -> None:
    real_ops = tuple(make_ops("agent-a", 20))
    sim_ops = tuple(SimOp(o.writer, o.seq, o.cid, size=len(o.encoded)) for o in real_ops)
    members = (Member("agent-a", "ws://127.0.0.1:40123", "alive", 1_732_150_000_000),) * 3
    summary = Summary()
    for i in range(1, 100):
        summary.add(f"writer-{i % 30}", i)
    entries = {w: tuple(iv) for w, iv in summary.entries(range(64)).items()}
    pairs = [
        (Push(real_ops, members), Push(sim_ops, members)),
        (PushReply(tuple(o.cid for o in real_ops), members), None),
        (Ping(3, members), None),
        (Ack(3, members), None),
        (PingReq(3, "agent-b", members), None),
        (Digest(1, tuple(summary.digests())), None),
        (Want(1, {"writer-1": ((1, 5), (7, 9))}), None),
    ]
    for real, simulated in pairs:
        estimate = message_bytes(simulated or real)
        actual = wire.encoded_size(real) + wire.ENVELOPE_BYTES
        assert abs(estimate - actual) <= 0.2 * actual, type(real).__name__
    # Reconciliation entries are over-counted, never under-counted.
    entries_message = Entries(1, tuple(range(64)), entries)
    assert message_bytes(entries_message) >= wire.encoded_size(entries_message)
