"""Properties of the sync protocol: hostile input and pull paging."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from chrysalis_memory.errors import ProtocolError
from chrysalis_memory.model import Op
from chrysalis_memory.sync import (
    ClientProtocol,
    OpsReceived,
    PullRequested,
    ServerProtocol,
)

from .helpers import POOL, make_ops, signer_for

AGENT = "agent-a"
KEY = signer_for(AGENT).public_key
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TYPES = [
    "hello",
    "welcome",
    "push",
    "ack",
    "pull",
    "ops",
    "update",
    "search",
    "search_result",
    "error",
]
FIELDS = [
    "v",
    "type",
    "agent_id",
    "public_key",
    "cursor",
    "versions",
    "batch",
    "ops",
    "after",
    "limit",
    "more",
    "request",
    "text",
    "vector",
    "model",
    "k",
    "filters",
    "hits",
    "accepted",
    "rejected",
    "code",
    "message",
    "fatal",
    "hub_id",
    "version",
    "keys",
    "max_batch",
    "max_message_bytes",
    "first",
    "id",
    "score",
    "cid",
    "reason",
]
VALID_OP = json.loads(make_ops(AGENT, 1)[0].encoded)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.sampled_from([*TYPES, AGENT, KEY, "a" * 64])
    | st.just(VALID_OP),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=5), inner, max_size=5)
    ),
    max_leaves=20,
)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(TYPES), "v": st.sampled_from([1, 1, 1, 2, 0, "1"])},
    optional=dict.fromkeys(FIELDS[2:], json_values),
)


def ready_pair() -> tuple[ClientProtocol, ServerProtocol]:
    client = ClientProtocol(AGENT, KEY, max_batch=5)
    server = ServerProtocol("hub", max_batch=5, authenticated_agent=AGENT)
    server.receive(client.hello(0))
    client.receive(server.welcome(3))
    client.pull(0, 5)  # so that an "ops" frame is expected
    client.push(make_ops(AGENT, 1))
    client.search("q", k=2)
    return client, server


def fresh_pair() -> tuple[ClientProtocol, ServerProtocol]:
    client = ClientProtocol(AGENT, KEY)
    client.hello(0)
    return client, ServerProtocol("hub")


def feed_everyone(data: bytes | str) -> None:
    for client, server in (fresh_pair(), ready_pair()):
        for side in (client, server):
            try:
                side.receive(data)
            except ProtocolError:
                assert side.closed


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_only_ever_raise_protocol_error(data: bytes) -> None:
    feed_everyone(data)


@FUZZ
@given(st.text(max_size=300))
def test_arbitrary_text_only_ever_raises_protocol_error(data: str) -> None:
    feed_everyone(data)


@FUZZ
@given(messages)
def test_arbitrary_json_messages_only_ever_raise_protocol_error(message: dict[str, Any]) -> None:
    feed_everyone(json.dumps(message, separators=(",", ":")))


@settings(max_examples=150, deadline=None)
@given(
    n_ops=st.integers(0, len(POOL)),
    start=st.integers(0, len(POOL)),
    max_batch=st.integers(1, 12),
    limits=st.lists(st.integers(1, 12), min_size=1, max_size=8),
)
def test_a_pull_loop_delivers_every_op_once_in_order(
    n_ops: int, start: int, max_batch: int, limits: list[int]
) -> None:
    log = POOL[:n_ops]
    start = min(start, n_ops)
    client = ClientProtocol(AGENT, KEY, max_batch=max_batch)
    server = ServerProtocol("hub", max_batch=max_batch)
    server.receive(client.hello(start))
    client.receive(server.welcome(len(log)))
    received: list[Op] = []
    for round_ in range(10 * len(POOL) + 2):
        limit = min(limits[round_ % len(limits)], max_batch)
        (request,) = server.receive(client.pull(limit=limit))
        assert isinstance(request, PullRequested) and request.after == client.cursor
        page_ops = log[request.after : request.after + request.limit]
        cursor = request.after + len(page_ops)
        (page,) = client.receive(server.ops(page_ops, cursor, more=cursor < len(log)))
        assert isinstance(page, OpsReceived)
        received.extend(page.ops)
        client.applied(page)
        if not page.more:
            break
    else:
        raise AssertionError("the pull loop did not end")
    assert received == log[start:]
    assert client.cursor == len(log)


def valid_frames() -> list[tuple[str, dict[str, Any]]]:
    """One valid frame of every type, and which side receives it."""
    client, server = ready_pair()
    _, push = client.push(make_ops(AGENT, 2, start=5))
    frames = [
        ("server", ClientProtocol(AGENT, KEY).hello(0)),
        ("server", push),
        ("server", client.pull(0, 5)),
        ("server", client.search("q", k=2, vector=[0.5], model="m", tags=["t"])[1]),
        ("client", server.update(POOL[3:5], 3, 5)),
        ("client", server.error("internal", "x", fatal=False, batch=1)),
        ("client", b'{"type":"ack","v":1,"batch":1,"accepted":[],"rejected":[]}'),
        ("client", b'{"type":"search_result","v":1,"request":1,"hits":[{"id":"m","score":1}]}'),
    ]
    server.receive(client.pull(0, 5))
    frames.append(("client", server.ops(POOL[:2], 2, more=True)))
    return [(side, json.loads(data)) for side, data in frames]


VALID_FRAMES = valid_frames()


@FUZZ
@given(st.sampled_from(VALID_FRAMES), st.data())
def test_valid_frames_with_one_field_changed_only_raise_protocol_error(
    case: tuple[str, dict[str, Any]], data: st.DataObject
) -> None:
    side, message = case
    message = dict(message)
    name = data.draw(st.sampled_from(sorted(message)) | st.sampled_from(FIELDS))
    if data.draw(st.booleans()) and name in message:
        del message[name]
    else:
        message[name] = data.draw(json_values)
    encoded = json.dumps(message, separators=(",", ":"))
    client, server = ready_pair()
    receiver = server if side == "server" else client
    if case[1]["type"] == "hello":
        receiver = ServerProtocol("hub")
    try:
        receiver.receive(encoded)
    except ProtocolError:
        assert receiver.closed
