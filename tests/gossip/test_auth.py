"""The member list, the handshake and the node's table of peers, without sockets."""

from __future__ import annotations

import json
import string

import pytest

from chrysalis_memory import GossipConfig
from chrysalis_memory.errors import ConfigError, GossipAuthError
from chrysalis_memory.gossip import wire
from chrysalis_memory.gossip.auth import (
    HANDSHAKE_MAX_BYTES,
    ClientHandshake,
    Membership,
    ServerHandshake,
)
from chrysalis_memory.gossip.messages import Member, Ping
from chrysalis_memory.gossip.node import GossipNode, GossipSettings, Send
from chrysalis_memory.model.ops import Signer
from chrysalis_memory.sync.messages import MAX_ID

A, B, C = Signer.generate(), Signer.generate(), Signer.generate()
ADDR = "ws://127.0.0.1:7401"


def members_of(me: str, signer: Signer, **others: Signer) -> Membership:
    membership = Membership(me, signer.public_key, max_members=100)
    membership.set_source("config", {agent: s.public_key for agent, s in others.items()})
    return membership


def server(**others: Signer) -> ServerHandshake:
    return ServerHandshake("agent-a", A, members_of("agent-a", A, **others))


def client(me: str, signer: Signer, **others: Signer) -> ClientHandshake:
    return ClientHandshake(me, ADDR, signer, members_of(me, signer, **others))


# --- the handshake -----------------------------------------------------------------------


def test_two_members_prove_who_they_are_to_each_other() -> None:
    s = server(**{"agent-b": B})
    c = client("agent-b", B, **{"agent-a": A})
    challenge = s.challenge()
    assert sorted(json.loads(challenge)) == ["nonce", "type", "v"]  # nothing but a nonce
    peer, addr, welcome = s.hello(c.challenge(challenge))
    assert (peer, addr) == ("agent-b", ADDR)
    assert c.welcome(welcome) == "agent-a"


def test_a_stranger_or_a_member_id_without_its_key_is_refused() -> None:
    s = server(**{"agent-b": B})
    stranger = client("stranger", C, **{"agent-a": A})
    with pytest.raises(GossipAuthError, match="not a gossip member"):
        s.hello(stranger.challenge(s.challenge()))
    s = server(**{"agent-b": B})
    impostor = client("agent-b", C, **{"agent-a": A})  # agent-b's id, another key
    with pytest.raises(GossipAuthError, match="did not prove"):
        s.hello(impostor.challenge(s.challenge()))
    s = server(**{"agent-a": A})
    with pytest.raises(GossipAuthError, match="own id"):
        s.hello(client("agent-a", A, **{"agent-a": A}).challenge(s.challenge()))


def test_a_proof_is_good_for_one_connection_and_one_role_only() -> None:
    first, second = server(**{"agent-b": B}), server(**{"agent-b": B})
    c = client("agent-b", B, **{"agent-a": A})
    hello = c.challenge(first.challenge())
    second.challenge()
    with pytest.raises(GossipAuthError, match="did not prove"):
        second.hello(hello)  # replayed on another connection: another nonce
    # A server's signature (its welcome) does not pass for a client's proof.
    _, _, welcome = first.hello(hello)
    signature = json.loads(welcome)["sig"]
    third = server(**{"agent-b": B})
    forged = json.loads(client("agent-b", B, **{"agent-a": A}).challenge(third.challenge()))
    forged["sig"] = signature
    with pytest.raises(GossipAuthError):
        third.hello(json.dumps(forged).encode())


def test_a_client_refuses_a_server_that_is_no_member_or_cannot_prove_it() -> None:
    c = client("agent-b", B, **{"agent-a": A})
    s = ServerHandshake("agent-x", C, members_of("agent-x", C, **{"agent-b": B}))
    _, _, welcome = s.hello(c.challenge(s.challenge()))
    with pytest.raises(GossipAuthError, match="not a gossip member"):
        c.welcome(welcome)
    c = client("agent-b", B, **{"agent-a": A})
    s = ServerHandshake("agent-a", C, members_of("agent-a", C, **{"agent-b": B}))  # a's id
    _, _, welcome = s.hello(c.challenge(s.challenge()))
    with pytest.raises(GossipAuthError, match="did not prove"):
        c.welcome(welcome)
    with pytest.raises(GossipAuthError, match="before the challenge"):
        client("agent-b", B, **{"agent-a": A}).welcome(welcome)


@pytest.mark.parametrize(
    "frame",
    [
        b"x" * (HANDSHAKE_MAX_BYTES + 1),
        b"{",
        b'{"v": 1, "type": "push", "ops": []}',
        b'{"v": 2, "type": "challenge", "nonce": "' + b"A" * 43 + b'"}',
        b'{"v": 1, "type": "hello", "from": "agent-b", "addr": "ws://h:1", "nonce": "x",'
        b' "sig": "y"}',
        b'{"v": 1, "type": "welcome", "from": "agent-a", "sig": "' + b"A" * 86 + b'"}',
    ],
)
def test_a_bad_or_unexpected_handshake_frame_is_refused(frame: bytes) -> None:
    with pytest.raises(GossipAuthError):
        server(**{"agent-b": B}).hello(frame)


# --- the member list ---------------------------------------------------------------------


def test_sources_that_disagree_on_a_key_admit_no_one_under_that_id() -> None:
    members = members_of("agent-a", A, **{"agent-b": B, "agent-c": C})
    assert members.ids() == {"agent-b", "agent-c"}
    assert members.set_source("hub", {"agent-b": C.public_key, "agent-d": B.public_key})
    assert members.ids() == {"agent-c", "agent-d"}
    assert members.conflicts() == {"agent-b"}
    assert members.writer_key("agent-b") is None
    assert members.writer_key("agent-a") == A.public_key  # itself, always
    members.set_source("hub", {"agent-a": B.public_key})  # another key for our own id
    assert "agent-a" in members.conflicts() and members.writer_key("agent-a") == A.public_key


def test_a_revoked_member_may_not_connect_but_its_ops_stay_verifiable() -> None:
    members = members_of("agent-a", A, **{"agent-b": B})
    members.set_source("hub", {}, revoked={"agent-b": B.public_key, "agent-c": C.public_key})
    assert members.connectable("agent-b") is None and "agent-b" not in members
    assert members.writer_key("agent-b") == B.public_key
    assert members.writer_key("agent-c") == C.public_key


def test_members_are_capped() -> None:
    members = Membership("agent-a", A.public_key, max_members=3)
    changed = members.set_source("hub", {f"agent-{i:02d}": B.public_key for i in range(10)})
    assert changed and len(members) == 3 and members.dropped == 7
    assert not members.set_source("hub", {f"agent-{i:02d}": B.public_key for i in range(10)})


def test_members_from_the_environment() -> None:
    pairs = f"agent-b={B.public_key}, agent-c={C.public_key}"
    expected = {"agent-b": B.public_key, "agent-c": C.public_key}
    assert GossipConfig.from_env({"CHRYSALIS_GOSSIP_MEMBERS": pairs}).members == expected
    as_json = json.dumps(expected)
    assert GossipConfig.from_env({"CHRYSALIS_GOSSIP_MEMBERS": as_json}).members == expected
    for bad in ("agent-b", "agent-b=short", f"bad id={B.public_key}", "{nope"):
        with pytest.raises(ConfigError, match="members"):
            GossipConfig.from_env({"CHRYSALIS_GOSSIP_MEMBERS": bad})
    # The same 32 bytes spelled otherwise (a padding bit set) would not equal the
    # key ops carry: refused.
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "-_"
    last = alphabet[alphabet.index(B.public_key[-1]) ^ 1]
    with pytest.raises(ConfigError, match="public key"):
        GossipConfig(members={"agent-b": B.public_key[:-1] + last})


# --- the node's table of peers -----------------------------------------------------------


def fakes(n: int, prefix: str = "fake") -> tuple[Member, ...]:
    return tuple(Member(f"{prefix}-{i}", f"ws://10.0.0.{i % 250}:1", "alive", 1) for i in range(n))


def test_only_admitted_members_enter_the_table_and_strangers_are_not_answered() -> None:
    node = GossipNode("agent-a", "ws://h:1")
    node.admit({"agent-b", "agent-c"})
    out = node.receive("stranger", "ws://h:9", Ping(1, fakes(10)), 0.0)
    assert out == [] and node.members(None) == {}
    node.add_peers({"agent-c": "ws://h:3", "agent-x": "ws://h:4"}, 0.0)
    out = node.receive("agent-b", "ws://h:2", Ping(2, (*fakes(64), *fakes(2, "agent"))), 0.0)
    assert len(out) == 1  # the ack
    assert set(node.members(None)) == {"agent-b", "agent-c"}
    node.admit({"agent-c"})  # agent-b removed from the member list: forgotten
    assert set(node.members(None)) == {"agent-c"}


def test_the_table_of_peers_is_bounded_even_with_anyone_admitted() -> None:
    node = GossipNode("agent-a", "ws://h:1", GossipSettings(max_peers=50))
    for frame in range(20):
        node.receive(f"peer-{frame}", "ws://h:2", Ping(frame, fakes(64, f"f{frame}")), 0.0)
    assert len(node.members(None)) == 50


def test_a_suspicion_at_the_top_incarnation_is_refuted_within_the_wire_range() -> None:
    node = GossipNode("agent-a", "ws://h:1")
    node.admit({"agent-b"})
    suspicion = Member("agent-a", "ws://h:1", "suspect", MAX_ID)
    out = node.receive("agent-b", "ws://h:2", Ping(1, (suspicion,)), 0.0)
    assert node.incarnation == MAX_ID  # not MAX_ID + 1, which no peer would decode
    sent = [o.message for o in out if isinstance(o, Send)]
    assert sent
    for message in sent:  # what it says about itself is still a valid frame
        wire.decode(wire.encode("agent-a", "ws://h:1", message))
