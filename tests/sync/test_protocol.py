"""The sync protocol's state machines talking over an in-memory link (no sockets)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import msgspec
import pytest

from chrysalis_memory.errors import InvalidArgumentError, ProtocolError, UsageError
from chrysalis_memory.model import Op
from chrysalis_memory.sync import (
    Acked,
    ClientError,
    ClientProtocol,
    ClientState,
    HelloReceived,
    MalformedOp,
    OpsReceived,
    PullRequested,
    PushReceived,
    SearchFilters,
    SearchHit,
    SearchRequested,
    SearchResult,
    ServerError,
    ServerEvent,
    ServerProtocol,
    ServerState,
    SyncProtocolError,
    UpdateReceived,
    Welcome,
)

from .helpers import POOL, Link, make_ops, signer_for

AGENT = "agent-a"
KEY = signer_for(AGENT).public_key
HUB_KEYS = {AGENT: KEY, "hub-writer": signer_for("hub-writer").public_key}


class Hub:
    """A toy hub over a list of ops: answers pulls, acks pushes, searches nothing."""

    def __init__(self, server: ServerProtocol, log: list[Op]) -> None:
        self.server = server
        self.log = log

    def __call__(self, event: ServerEvent) -> list[bytes]:
        s = self.server
        if isinstance(event, HelloReceived):
            return [s.welcome(len(self.log), HUB_KEYS)]
        if isinstance(event, PushReceived):
            foreign = {op.cid for op in event.foreign}
            accepted = [op.cid for op in event.ops if op.cid not in foreign]
            for op in event.ops:
                if op.cid not in foreign and op not in self.log:
                    self.log.append(op)
            return [s.ack(event.batch, accepted, dict.fromkeys(foreign, "forbidden_writer"))]
        if isinstance(event, PullRequested):
            page = self.log[event.after : event.after + event.limit]
            cursor = event.after + len(page)
            return [s.ops(page, cursor, more=cursor < len(self.log))]
        if isinstance(event, SearchRequested):
            return [s.search_result(event.request, [("m1", 0.9), ("m2", 0.5)][: event.k])]
        return []


def session(log: list[Op] | None = None, *, max_batch: int = 10, cursor: int = 0) -> Link:
    client = ClientProtocol(AGENT, KEY, max_batch=max_batch)
    server = ServerProtocol("hub", max_batch=max_batch, authenticated_agent=AGENT)
    link = Link(client, server, Hub(server, list(POOL[:25]) if log is None else log))
    link.send(client.hello(cursor))
    (welcome,) = link.run()
    assert isinstance(welcome, Welcome)
    return link


def frame(**fields: Any) -> bytes:
    return json.dumps({"v": 1, **fields}).encode()


# --- happy paths ----------------------------------------------------------------------


def test_hello_welcome() -> None:
    link = session()
    welcome = link.client_events[0]
    assert welcome == Welcome("hub", 1, 25, HUB_KEYS, 10, 4 << 20)
    assert link.client.state is ClientState.READY
    assert link.server.state is ServerState.READY
    assert link.server.agent_id == AGENT
    assert link.server_events == [HelloReceived(AGENT, KEY, 0, 1)]
    assert link.client.keys == HUB_KEYS and link.client.hub_id == "hub"


def test_push_is_acked_and_idempotent_by_cid() -> None:
    link = session(log=[])
    mine = make_ops(AGENT, 3)
    batch, data = link.client.push(mine)
    link.send(data)
    assert link.client.unacked_batches == {batch}
    (acked,) = link.run()
    assert acked == Acked(batch, tuple(op.cid for op in mine), {})
    assert link.client.unacked_batches == frozenset()
    # Replaying the same batch: the hub accepts again and stores nothing twice.
    batch2, data = link.client.push(mine)
    link.send(data)
    (acked2,) = link.run()
    assert isinstance(acked2, Acked) and acked2.batch == batch2 != batch
    assert acked2.accepted == acked.accepted
    hub = link.handler
    assert isinstance(hub, Hub) and hub.log == mine


def test_push_exposes_foreign_ops_and_hub_rejects_them() -> None:
    link = session(log=[])
    mine, theirs = make_ops(AGENT, 1), make_ops("mallory", 2)
    _, data = link.client.push([*mine, *theirs])
    link.send(data)
    (acked,) = link.run()
    pushed = link.server_events[-1]
    assert isinstance(pushed, PushReceived)
    assert pushed.foreign == tuple(theirs)
    assert isinstance(acked, Acked)
    assert acked.accepted == (mine[0].cid,)
    assert acked.rejected == {op.cid: "forbidden_writer" for op in theirs}


def test_pull_pages_until_more_is_false() -> None:
    link = session(max_batch=10)
    pages: list[OpsReceived] = []
    link.send(link.client.pull())
    while True:
        (page,) = link.run()
        assert isinstance(page, OpsReceived)
        pages.append(page)
        assert link.client.applied(page) == page.cursor
        if not page.more:
            break
        link.send(link.client.pull())
    assert [len(p.ops) for p in pages] == [10, 10, 5]
    assert [(p.after, p.cursor) for p in pages] == [(0, 10), (10, 20), (20, 25)]
    assert [op for p in pages for op in p.ops] == POOL[:25]
    assert link.client.cursor == 25
    # Caught up: an empty final page.
    link.send(link.client.pull())
    assert link.run() == [OpsReceived((), 25, False, 25)]


def test_resume_from_a_cursor() -> None:
    link = session(cursor=20)
    link.send(link.client.pull())
    (page,) = link.run()
    assert isinstance(page, OpsReceived)
    assert page.ops == tuple(POOL[20:25]) and page.cursor == 25 and not page.more


def test_updates_advance_the_cursor_and_detect_gaps() -> None:
    link = session(cursor=25)
    server, client = link.server, link.client
    # Contiguous: (25, 27] with ops 26 and 27.
    (ev,) = client.receive(server.update(POOL[25:27], 25, 27))
    assert ev == UpdateReceived(tuple(POOL[25:27]), 25, 27, gap=False)
    assert client.applied(ev) == client.cursor == 27
    # Op 28 was the agent's own: the hub leaves it out, no gap.
    (ev,) = client.receive(server.update(POOL[28:29], 27, 29))
    assert isinstance(ev, UpdateReceived) and not ev.gap
    assert client.applied(ev) == 29
    # Ops 30..31 were lost (a dropped broadcast): gap, and the cursor stays put.
    (gap,) = client.receive(server.update(POOL[31:32], 31, 32))
    assert isinstance(gap, UpdateReceived) and gap.gap and gap.ops == (POOL[31],)
    assert client.applied(gap) == client.cursor == 29
    # The gap is repaired by a pull from the cursor.
    hub = link.handler
    assert isinstance(hub, Hub)
    hub.log = list(POOL[:32])
    link.send(client.pull())
    (page,) = link.run()
    assert isinstance(page, OpsReceived) and page.ops == tuple(POOL[29:32])
    assert client.applied(page) == 32
    # A duplicate broadcast changes nothing.
    (ev,) = client.receive(server.update(POOL[31:32], 31, 32))
    assert isinstance(ev, UpdateReceived) and not ev.gap
    assert client.applied(ev) == 32


def test_the_cursor_moves_when_a_page_is_applied_not_when_it_arrives() -> None:
    link = session(max_batch=10)
    client = link.client
    link.send(client.pull())
    (page,) = link.run()
    assert isinstance(page, OpsReceived) and (page.after, page.cursor) == (0, 10)
    # Received, not stored yet: a connection lost now must pull these ops again.
    assert client.cursor == 0 and client.received == 10
    assert client.cursor_after(page) == 10 and client.cursor == 0  # asking changes nothing
    assert client.applied(page) == client.cursor == 10
    with pytest.raises(UsageError, match=r"no page or update covering \(0, 10\]"):
        client.applied(page)  # once only
    with pytest.raises(UsageError, match="waiting to be applied"):
        client.applied(OpsReceived((), 99, False, 10))  # never received


def test_ranges_applied_out_of_order_join_up_when_the_first_is_applied() -> None:
    link = session(max_batch=10)
    client, server = link.client, link.server
    link.send(client.pull())
    (page,) = link.run()
    assert isinstance(page, OpsReceived)
    # An update joining the page received, not the cursor: no gap (nothing was missed).
    (update,) = client.receive(server.update(POOL[25:27], 25, 27))
    assert isinstance(update, UpdateReceived) and update.gap
    (update,) = client.receive(server.update(POOL[10:12], 10, 12))
    assert isinstance(update, UpdateReceived) and not update.gap
    # Applied before the page it follows: the cursor cannot move past the page's ops.
    assert client.cursor_after(update) == 0
    assert client.applied(update) == 0
    assert client.cursor_after(page) == 12
    assert client.applied(page) == client.cursor == 12


def test_an_op_that_does_not_decode_is_delivered_as_malformed_not_a_violation() -> None:
    link = session()
    client = link.client
    client.pull(after=0, limit=3)
    bad = b'{"doc":"x","v":1}'
    data = (
        b'{"type":"ops","v":1,"cursor":3,"more":false,"ops":['
        + POOL[0].encoded
        + b","
        + bad
        + b',{"writer":"agent-z","seq":"nope"}]}'
    )
    (page,) = client.receive(data)
    assert isinstance(page, OpsReceived) and page.ops == (POOL[0],)
    assert [m.index for m in page.malformed] == [1, 2]
    first = page.malformed[0]
    assert isinstance(first, MalformedOp) and first.raw == bad and first.writer is None
    assert first.cid == hashlib.sha256(bad).hexdigest() and "invalid op" in first.reason
    assert page.malformed[1].writer == "agent-z"
    assert client.state is ClientState.READY
    assert client.applied(page) == 3
    # Counted against the page's range like any op: three ops need three positions.
    client.pull(after=3, limit=3)
    with pytest.raises(SyncProtocolError, match="no room for 2 ops"):
        client.receive(b'{"type":"ops","v":1,"cursor":4,"more":false,"ops":[' + bad + b",1]}")


def test_search_round_trip() -> None:
    link = session()
    request, data = link.client.search(
        "capital of France", k=1, vector=[0.1, 0.2], model="m", tags=["geo"], source="agent-b"
    )
    link.send(data)
    (result,) = link.run()
    assert result == SearchResult(request, (SearchHit(id="m1", score=0.9),))
    (asked,) = [e for e in link.server_events if isinstance(e, SearchRequested)]
    assert asked == SearchRequested(
        request,
        "capital of France",
        (0.1, 0.2),
        "m",
        1,
        SearchFilters(tags=("geo",), source="agent-b"),
    )
    assert link.client.pending_searches == frozenset()


def test_frames_are_text_json_with_version_and_type() -> None:
    client = ClientProtocol(AGENT, KEY)
    hello = json.loads(client.hello(7))
    assert hello == {
        "type": "hello",
        "v": 1,
        "agent_id": AGENT,
        "public_key": KEY,
        "cursor": 7,
        "versions": [1],
    }


def test_ops_travel_in_canonical_form() -> None:
    link = session()
    op = make_ops(AGENT, 1)[0]
    _, data = link.client.push([op])
    assert op.encoded in data
    assert json.loads(data)["ops"] == [msgspec.json.decode(op.encoded)]


# --- errors ---------------------------------------------------------------------------


def test_non_fatal_error_names_its_batch() -> None:
    link = session()
    batch, _ = link.client.push(make_ops(AGENT, 1))
    (ev,) = link.client.receive(
        ServerProtocol("hub2").error("rate_limited", "slow down", fatal=False, batch=batch)
    )
    assert ev == ServerError("rate_limited", "slow down", False, batch, None)
    assert link.client.unacked_batches == frozenset()
    assert link.client.state is ClientState.READY


def test_fatal_error_closes_both_ends() -> None:
    link = session()
    data = link.server.error("internal", "shutting down", fatal=True)
    assert link.server.state is ServerState.CLOSED
    (ev,) = link.client.receive(data)
    assert ev == ServerError("internal", "shutting down", True)
    assert link.client.state is ClientState.CLOSED
    with pytest.raises(ProtocolError, match="closed"):
        link.client.receive(data)


def test_client_error_reaches_the_server() -> None:
    link = session()
    (ev,) = link.server.receive(link.client.error("bad_message", "what?", fatal=True))
    assert ev == ClientError("bad_message", "what?", True)
    assert link.server.state is ServerState.CLOSED


def test_hello_from_another_agent_is_unauthorized() -> None:
    server = ServerProtocol("hub", authenticated_agent="agent-b")
    client = ClientProtocol(AGENT, KEY)
    with pytest.raises(SyncProtocolError, match="authenticated as 'agent-b'") as info:
        server.receive(client.hello(0))
    assert info.value.code == "unauthorized"
    assert server.state is ServerState.CLOSED
    (ev,) = client.receive(server.error_for(info.value))
    assert ev == ServerError("unauthorized", str(info.value), True)
    assert client.state is ClientState.CLOSED


def test_unsupported_versions() -> None:
    server = ServerProtocol("hub")
    hello = frame(type="hello", agent_id=AGENT, public_key=KEY, cursor=0, versions=[2, 3])
    hello = hello.replace(b'"v": 1', b'"v": 2')
    with pytest.raises(SyncProtocolError) as info:
        server.receive(hello)
    assert info.value.code == "unsupported_version"
    # A v2 frame with a shape v1 does not know is still an unsupported version.
    with pytest.raises(SyncProtocolError) as info:
        ServerProtocol("hub").receive(b'{"v": 2, "type": "hello", "features": []}')
    assert info.value.code == "unsupported_version"
    # After negotiating v1, a frame claiming v2 is refused.
    link = session()
    with pytest.raises(SyncProtocolError) as info:
        link.server.receive(frame(type="pull", after=0, limit=1).replace(b'"v": 1', b'"v": 2'))
    assert info.value.code == "unsupported_version"


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not a JSON object"),
        (b"{", "not a JSON object"),
        (b"[1, 2]", "invalid message"),
        (b'{"v": 1}', "missing required field `type`"),
        (b'{"v": 1, "type": "launch"}', "Invalid value 'launch'"),
        (frame(type="pull", after=0), "missing required field `limit`"),
        (frame(type="pull", after=-1, limit=1), r"\$.after"),
        (frame(type="pull", after=0, limit=0), r"\$.limit"),
        (frame(type="pull", after=0, limit=1, extra=1), "unknown field `extra`"),
        (frame(type="pull", after="0", limit=1), "Expected `int`, got `str`"),
        (frame(type="pull", after=0, limit=11), "over the limit of 10"),
        (frame(type="push", batch=1, ops=[]), "no ops"),
        (frame(type="push", batch=1, ops=[{"x": 1}]), "push 1: op #0: invalid op"),
        (frame(type="search", request=1, text="q", k=0), r"\$.k"),
        (frame(type="search", request=1, text="q", k=1, filters={"color": "red"}), "color"),
        (
            frame(
                type="welcome",
                hub_id="h",
                version=1,
                agent_id=AGENT,
                cursor=0,
                max_batch=1,
                max_message_bytes=1024,
                keys={},
            ),
            "does not send WelcomeMessage",
        ),
        (
            frame(type="hello", agent_id=AGENT, public_key=KEY, cursor=0, versions=[1]),
            "before welcome|HelloMessage",
        ),
        (b"\xff\xfe", "not a JSON object"),
        (b"[" * 100_000, "invalid message|nested"),
    ],
)
def test_server_rejects_malformed_frames(data: bytes, match: str) -> None:
    link = session()
    with pytest.raises(SyncProtocolError, match=match):
        link.server.receive(data)
    assert link.server.state is ServerState.CLOSED


def test_bad_op_inside_a_batch_names_its_index() -> None:
    link = session()
    ops = make_ops(AGENT, 3)
    body = json.loads(link.client.push(ops)[1])
    body["ops"][1]["seq"] = 99  # the signature no longer matters here: the CID changes,
    body["ops"][2]["doc"] = ""  # but this one is structurally invalid
    with pytest.raises(SyncProtocolError, match="op #2") as info:
        link.server.receive(json.dumps(body, separators=(",", ":")))
    assert info.value.index == 2


def test_non_canonical_op_is_rejected() -> None:
    link = session()
    op = make_ops(AGENT, 1)[0]
    spaced = json.dumps(msgspec.json.decode(op.encoded))  # whitespace: not canonical
    data = b'{"type":"push","v":1,"batch":1,"ops":[' + spaced.encode() + b"]}"
    with pytest.raises(SyncProtocolError, match="not canonically encoded"):
        link.server.receive(data)


def test_oversized_frame_is_too_large_before_parsing() -> None:
    server = ServerProtocol("hub", max_message_bytes=1024)
    with pytest.raises(SyncProtocolError, match="over the 1024 byte limit") as info:
        server.receive(b"x" * 1025)
    assert info.value.code == "too_large"
    assert json.loads(server.error_for(info.value))["code"] == "too_large"


def test_batch_over_max_batch_is_too_large() -> None:
    link = session(max_batch=2)
    body = {"type": "push", "v": 1, "batch": 1, "ops": ["{}"] * 3}
    with pytest.raises(SyncProtocolError, match="3 ops, over the limit of 2") as info:
        link.server.receive(json.dumps(body))
    assert info.value.code == "too_large"


def test_repeated_op_in_a_batch_is_rejected() -> None:
    link = session()
    op = make_ops(AGENT, 1)[0]
    data = b'{"type":"push","v":1,"batch":1,"ops":[' + op.encoded + b"," + op.encoded + b"]}"
    with pytest.raises(SyncProtocolError, match="op #1 repeats"):
        link.server.receive(data)


# --- state violations -------------------------------------------------------------------


def test_client_refuses_messages_out_of_state() -> None:
    server = ServerProtocol("hub")
    client = ClientProtocol(AGENT, KEY)
    with pytest.raises(SyncProtocolError, match="before hello"):
        client.receive(frame(type="ops", ops=[], cursor=0, more=False))
    client = ClientProtocol(AGENT, KEY)
    client.hello(0)
    with pytest.raises(SyncProtocolError, match="expected welcome"):
        client.receive(frame(type="ops", ops=[], cursor=0, more=False))
    assert client.state is ClientState.CLOSED
    del server


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (frame(type="ops", ops=[], cursor=0, more=False), "without a pull"),
        (frame(type="ack", batch=9, accepted=[], rejected=[]), "not awaiting an ack"),
        (frame(type="search_result", request=3, hits=[]), "not pending"),
        (frame(type="update", ops=[], after=5, cursor=4), "no room"),
        (frame(type="pull", after=0, limit=1), "does not send PullMessage"),
        (
            frame(
                type="welcome",
                hub_id="h",
                version=1,
                agent_id=AGENT,
                cursor=0,
                max_batch=1,
                max_message_bytes=1024,
                keys={},
            ),
            "does not send WelcomeMessage",
        ),
    ],
)
def test_client_refuses_unexpected_messages_when_ready(data: bytes, match: str) -> None:
    link = session()
    with pytest.raises(SyncProtocolError, match=match):
        link.client.receive(data)
    assert link.client.state is ClientState.CLOSED


def test_client_checks_acks_and_pages() -> None:
    link = session()
    ops = make_ops(AGENT, 2)
    batch, _ = link.client.push(ops)
    with pytest.raises(SyncProtocolError, match="decide each"):
        link.client.receive(frame(type="ack", batch=batch, accepted=[ops[0].cid], rejected=[]))
    link = session()
    link.client.pull(after=0, limit=2)
    page = frame(
        type="ops", ops=[msgspec.json.decode(op.encoded) for op in POOL[:3]], cursor=3, more=False
    )
    with pytest.raises(SyncProtocolError, match="3 ops, over the limit of 2"):
        link.client.receive(json.dumps(json.loads(page), separators=(",", ":")))
    link = session()
    link.client.pull(after=4, limit=2)
    with pytest.raises(SyncProtocolError, match="did not advance"):
        link.client.receive(frame(type="ops", ops=[], cursor=4, more=True))


def test_welcome_for_another_agent_or_version_is_refused() -> None:
    base = {
        "type": "welcome",
        "hub_id": "h",
        "cursor": 0,
        "max_batch": 1,
        "max_message_bytes": 1024,
        "keys": {},
    }
    client = ClientProtocol(AGENT, KEY)
    client.hello(0)
    with pytest.raises(SyncProtocolError, match="welcome is for agent 'x'"):
        client.receive(frame(**base, agent_id="x", version=1))
    client = ClientProtocol(AGENT, KEY)
    client.hello(0)
    with pytest.raises(SyncProtocolError) as info:
        client.receive(frame(**base, agent_id=AGENT, version=2))
    assert info.value.code == "unsupported_version"


def test_caller_misuse_is_a_usage_error() -> None:
    client = ClientProtocol(AGENT, KEY, max_batch=2)
    with pytest.raises(UsageError, match="cannot push in state connected"):
        client.push(make_ops(AGENT, 1))
    server = ServerProtocol("hub")
    with pytest.raises(UsageError, match="cannot welcome"):
        server.welcome(0)
    link = session(max_batch=2)
    with pytest.raises(InvalidArgumentError, match="at most 2 ops"):
        link.client.push(make_ops(AGENT, 3))
    with pytest.raises(InvalidArgumentError, match="at least one op"):
        link.client.push([])
    with pytest.raises(InvalidArgumentError, match="limit must be at most 2"):
        link.client.pull(limit=3)
    with pytest.raises(InvalidArgumentError, match="k must be"):
        link.client.search("q", k=0)
    with pytest.raises(InvalidArgumentError, match="invalid search"):
        link.client.search("q", source="not an id")
    with pytest.raises(UsageError, match="no pull is waiting"):
        link.server.ops([], 0, more=False)
    with pytest.raises(InvalidArgumentError, match="not awaiting an ack"):
        link.server.ack(5, [])
    with pytest.raises(InvalidArgumentError, match="no room"):
        link.server.update(POOL[:2], 10, 11)
    with pytest.raises(InvalidArgumentError):
        ClientProtocol("bad id", KEY)
    with pytest.raises(InvalidArgumentError):
        ServerProtocol("hub", max_batch=0)
    with pytest.raises(InvalidArgumentError, match="versions"):
        ServerProtocol("hub", versions=(2,))


def test_push_that_does_not_fit_a_frame_must_be_split() -> None:
    client = ClientProtocol(AGENT, KEY, max_message_bytes=1024)
    client.hello(0)
    server = ServerProtocol("hub", max_message_bytes=1024)
    server.receive(ClientProtocol(AGENT, KEY).hello(0))
    client.receive(server.welcome(0))
    assert len(make_ops(AGENT, 1)[0].encoded) * 4 > 1024
    with pytest.raises(InvalidArgumentError, match="send fewer ops"):
        client.push(make_ops(AGENT, 4))
    assert client.unacked_batches == frozenset()
