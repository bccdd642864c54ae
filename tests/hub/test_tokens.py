"""The hub's token file: hashed tokens, revocation, key binding, reloads, CLI."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from chrysalis_memory.errors import (
    AuthenticationError,
    ChrysalisError,
    InvalidArgumentError,
    StoreError,
    UnknownAgentError,
)
from chrysalis_memory.hub.tokens import TokenStore, hash_token
from chrysalis_memory.model.ops import Signer


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "hub" / "tokens.json"


@pytest.fixture
def store(path: Path) -> TokenStore:
    return TokenStore(path)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_create_then_authenticate(store: TokenStore) -> None:
    a = store.create("agent-a")
    b = store.create("agent-b")
    assert a.startswith("chry_") and len(a) == 5 + 43
    assert a != b
    assert store.authenticate(bearer(a)) == "agent-a"
    assert store.authenticate(bearer(b)) == "agent-b"
    assert store.authenticate(f"  bearer   {a}  ") == "agent-a"  # the scheme is case-insensitive


def test_token_reveals_nothing_about_the_agent(store: TokenStore) -> None:
    token = store.create("agent-a")
    assert "agent" not in token.lower()


def test_file_is_private_and_holds_only_hashes(store: TokenStore, path: Path) -> None:
    token = store.create("agent-a")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert token not in text and token[5:] not in text
    document = json.loads(text)
    assert document["agents"]["agent-a"]["hash"] == hash_token(token)
    assert document["agents"]["agent-a"]["revoked"] is False
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_file_stays_private_whatever_the_umask(path: Path) -> None:
    old = os.umask(0)
    try:
        TokenStore(path).create("agent-a")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_revoke(store: TokenStore) -> None:
    token = store.create("agent-a")
    store.revoke("agent-a")
    with pytest.raises(AuthenticationError, match="revoked"):
        store.authenticate(bearer(token))
    store.revoke("agent-a")  # idempotent
    assert [r.revoked for r in store.agents()] == [True]


def test_revoke_unknown_agent(store: TokenStore) -> None:
    with pytest.raises(UnknownAgentError, match="no token for agent 'nobody'"):
        store.revoke("nobody")
    assert issubclass(UnknownAgentError, ChrysalisError)


def test_create_replaces_the_previous_token(store: TokenStore) -> None:
    old = store.create("agent-a")
    store.revoke("agent-a")
    new = store.create("agent-a")
    assert store.authenticate(bearer(new)) == "agent-a"
    with pytest.raises(AuthenticationError, match="unknown token"):
        store.authenticate(bearer(old))
    assert [(r.agent_id, r.revoked) for r in store.agents()] == [("agent-a", False)]


@pytest.mark.parametrize("agent_id", ["", "-a", "a b", "a/b", "x" * 129, "é"])
def test_create_rejects_bad_agent_ids(store: TokenStore, agent_id: str) -> None:
    with pytest.raises(InvalidArgumentError, match="invalid agent id"):
        store.create(agent_id)


def test_create_rejects_bad_public_keys(store: TokenStore) -> None:
    with pytest.raises(InvalidArgumentError, match="public_key"):
        store.create("agent-a", public_key="not-a-key")
    assert not store.path.exists()


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (None, "missing Authorization header"),
        ("", "missing Authorization header"),
        ("   ", "missing Authorization header"),
        ("Basic dXNlcjpwYXNz", "not a Bearer token"),
        ("chry_" + "a" * 43, "not a Bearer token"),
        ("Bearer", "empty"),
        ("Bearer   ", "empty"),
        ("Bearer abc", "malformed token"),
        ("Bearer chry_short", "malformed token"),
        ("Bearer chry_" + "a" * 44, "malformed token"),
        ("Bearer chry_" + "a" * 42 + "!", "malformed token"),
        ("Bearer xxxx_" + "a" * 43, "malformed token"),
    ],
)
def test_bad_headers(store: TokenStore, header: str | None, message: str) -> None:
    store.create("agent-a")
    with pytest.raises(AuthenticationError, match=message):
        store.authenticate(header)


def test_forged_tokens_are_refused(store: TokenStore) -> None:
    token = store.create("agent-a")
    flipped = token[:-1] + ("A" if token[-1] != "A" else "B")
    for forged in (flipped, "chry_" + "A" * 43, "chry_" + hash_token(token)[7:50]):
        with pytest.raises(AuthenticationError, match="unknown token") as raised:
            store.authenticate(bearer(forged))
        assert forged not in str(raised.value)


def test_the_hash_itself_is_not_a_token(store: TokenStore, path: Path) -> None:
    store.create("agent-a")
    stored = json.loads(path.read_text())["agents"]["agent-a"]["hash"]
    with pytest.raises(AuthenticationError):
        store.authenticate(bearer(stored))


def test_no_file_means_no_agents(store: TokenStore) -> None:
    assert store.agents() == []
    assert store.public_keys() == {}
    with pytest.raises(AuthenticationError, match="unknown token"):
        store.authenticate(bearer("chry_" + "a" * 43))


def test_bind_key(store: TokenStore) -> None:
    key, other = Signer.generate().public_key, Signer.generate().public_key
    store.create("agent-a")
    store.create("agent-b", public_key=other)
    assert store.public_keys() == {"agent-b": other}
    store.bind_key("agent-a", key)
    store.bind_key("agent-a", key)  # the same key again is fine
    assert store.public_keys() == {"agent-a": key, "agent-b": other}
    with pytest.raises(AuthenticationError, match="key other than the one bound"):
        store.bind_key("agent-a", other)
    with pytest.raises(AuthenticationError, match="key other than the one bound"):
        store.bind_key("agent-b", key)
    assert TokenStore(store.path).public_keys() == {"agent-a": key, "agent-b": other}


def test_bind_key_needs_a_valid_token(store: TokenStore) -> None:
    key = Signer.generate().public_key
    with pytest.raises(AuthenticationError, match="no valid token"):
        store.bind_key("agent-a", key)
    store.create("agent-a")
    store.revoke("agent-a")
    with pytest.raises(AuthenticationError, match="no valid token"):
        store.bind_key("agent-a", key)
    with pytest.raises(InvalidArgumentError):
        store.bind_key("agent-a", "bad")


def test_a_new_token_keeps_the_bound_key(store: TokenStore) -> None:
    key = Signer.generate().public_key
    store.create("agent-a")
    store.bind_key("agent-a", key)
    store.revoke("agent-a")
    assert store.public_keys() == {"agent-a": key}  # old ops stay verifiable
    store.create("agent-a")
    assert store.public_keys() == {"agent-a": key}
    replacement = Signer.generate().public_key
    store.create("agent-a", public_key=replacement)  # the operator says so explicitly
    assert store.public_keys() == {"agent-a": replacement}


def test_agents_exposes_no_hashes(store: TokenStore) -> None:
    store.create("agent-b")
    store.create("agent-a")
    records = store.agents()
    assert [r.agent_id for r in records] == ["agent-a", "agent-b"]
    assert set(records[0].to_json()) == {"agent_id", "created_ms", "revoked", "public_key"}
    assert records[0].created_ms > 1_600_000_000_000


def test_reloads_after_an_external_change(path: Path) -> None:
    hub = TokenStore(path)
    cli = TokenStore(path)
    assert hub.agents() == []
    token = cli.create("agent-a")
    assert hub.authenticate(bearer(token)) == "agent-a"
    cli.revoke("agent-a")
    with pytest.raises(AuthenticationError, match="revoked"):
        hub.authenticate(bearer(token))
    fresh = cli.create("agent-a")
    assert hub.authenticate(bearer(fresh)) == "agent-a"
    path.unlink()
    with pytest.raises(AuthenticationError, match="unknown token"):
        hub.authenticate(bearer(fresh))


def test_writers_do_not_lose_each_others_changes(path: Path) -> None:
    stores = [TokenStore(path) for _ in range(4)]
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(10):
                stores[n].create(f"agent-{n}-{i}")
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(TokenStore(path).agents()) == 40


def test_damaged_file_fails_closed(path: Path) -> None:
    path.parent.mkdir(parents=True)
    for content in ("{not json", '{"version": 2, "agents": {}}', '{"version": 1, "agents": []}'):
        path.write_text(content)
        with pytest.raises(StoreError, match="damaged"):
            TokenStore(path).authenticate(bearer("chry_" + "a" * 43))
    path.write_text(json.dumps({"version": 1, "agents": {"a": {"hash": "md5:x"}}}))
    with pytest.raises(StoreError, match="damaged"):
        TokenStore(path).agents()


def test_damaged_beyond_what_the_parser_can_nest_fails_closed(path: Path) -> None:
    path.parent.mkdir(parents=True)
    for content in (b"[" * 100_000, b"\x80\x81 not utf-8", b'{"version": 1}'):
        path.write_bytes(content)
        with pytest.raises(StoreError, match="damaged") as caught:
            TokenStore(path).agents()
        assert str(path) in str(caught.value)


def test_a_file_where_a_directory_should_be(tmp_path: Path) -> None:
    in_the_way = tmp_path / "afile"
    in_the_way.write_text("not a directory")
    path = in_the_way / "tokens.json"
    for call in (lambda s: s.create("a1"), lambda s: s.agents(), lambda s: s.revoke("a1")):
        with pytest.raises(StoreError, match="is a file, not a directory") as caught:
            call(TokenStore(path))
        message = str(caught.value)
        assert str(path) in message and "--tokens-file" in message
    assert in_the_way.read_text() == "not a directory"


def test_a_directory_where_the_file_should_be(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.mkdir()
    for call in (lambda s: s.create("a1"), lambda s: s.agents()):
        with pytest.raises(StoreError, match="is a directory, not a file") as caught:
            call(TokenStore(path))
        assert str(path) in str(caught.value) and "--tokens-file" in str(caught.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root may read anything")
def test_a_file_this_user_may_not_read_or_write(tmp_path: Path) -> None:
    path = tmp_path / "hub" / "tokens.json"
    TokenStore(path).create("a1")
    path.chmod(0o000)
    try:
        with pytest.raises(StoreError, match="permission denied") as caught:
            TokenStore(path).agents()
        assert str(path) in str(caught.value)
    finally:
        path.chmod(0o600)
    path.parent.chmod(0o500)  # the lock file and the new file cannot be created
    try:
        with pytest.raises(StoreError, match="permission denied") as caught:
            TokenStore(path).create("a2")
        assert str(path) in str(caught.value)
    finally:
        path.parent.chmod(0o700)
    assert [r.agent_id for r in TokenStore(path).agents()] == ["a1"]


# --- the command line --------------------------------------------------------------

CHRYSALIS = [sys.executable, "-m", "chrysalis_memory.cli"]


def run(*args: str, cwd: Path | None = None, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHRYSALIS_")}
    env["COLUMNS"] = "200"
    env.update(extra)
    return subprocess.run(
        [*CHRYSALIS, *args], capture_output=True, text=True, timeout=120, env=env, cwd=cwd
    )


def test_cli_create_list_revoke(path: Path) -> None:
    created = run("token", "create", "a1", "--tokens-file", str(path))
    assert created.returncode == 0, created.stderr
    token = created.stdout.strip()
    assert created.stdout == token + "\n"  # only the token on stdout
    assert "CHRYSALIS_HUB_TOKEN" in created.stderr
    assert TokenStore(path).authenticate(bearer(token)) == "a1"

    listed = run("token", "list", "--tokens-file", str(path), "--json")
    assert listed.returncode == 0, listed.stderr
    agents = json.loads(listed.stdout)["agents"]
    assert [(a["agent_id"], a["revoked"]) for a in agents] == [("a1", False)]
    assert "hash" not in agents[0] and "sha256" not in listed.stdout

    table = run("token", "list", "--tokens-file", str(path))
    assert table.returncode == 0 and "a1" in table.stdout and "active" in table.stdout

    revoked = run("token", "revoke", "a1", "--tokens-file", str(path))
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(AuthenticationError, match="revoked"):
        TokenStore(path).authenticate(bearer(token))


def test_cli_public_key_and_env_default(tmp_path: Path) -> None:
    key = Signer.generate().public_key
    tokens = tmp_path / "t.json"
    created = run(
        "token", "create", "a1", "--public-key", key, CHRYSALIS_HUB_TOKENS_FILE=str(tokens)
    )
    assert created.returncode == 0, created.stderr
    assert TokenStore(tokens).public_keys() == {"a1": key}


def test_cli_default_tokens_file(tmp_path: Path) -> None:
    assert run("token", "create", "a1", cwd=tmp_path).returncode == 0
    assert [r.agent_id for r in TokenStore(tmp_path / "data/hub/tokens.json").agents()] == ["a1"]


def test_cli_errors(path: Path) -> None:
    unknown = run("token", "revoke", "nobody", "--tokens-file", str(path))
    assert unknown.returncode == 2 and "no token for agent 'nobody'" in unknown.stderr
    bad = run("token", "create", "bad id", "--tokens-file", str(path))
    assert bad.returncode == 2 and "invalid agent id" in bad.stderr
    assert bad.stdout == ""
    help_ = run("token", "--help")
    assert help_.returncode == 0 and "create" in help_.stdout and "revoke" in help_.stdout


def test_cli_reports_a_token_file_it_cannot_use_without_a_traceback(tmp_path: Path) -> None:
    in_the_way = tmp_path / "afile"
    in_the_way.write_text("")
    directory = tmp_path / "dir.json"
    directory.mkdir()
    damaged = tmp_path / "damaged.json"
    damaged.write_text("{not json")
    cases = [
        (("create", "a1"), in_the_way / "tokens.json", "is a file, not a directory"),
        (("list",), in_the_way / "tokens.json", "is a file, not a directory"),
        (("create", "a1"), directory, "is a directory, not a file"),
        (("revoke", "a1"), directory, "is a directory, not a file"),
        (("create", "a1"), damaged, "damaged"),
        (("list",), damaged, "damaged"),
    ]
    for command, tokens_file, reason in cases:
        result = run("token", *command, "--tokens-file", str(tokens_file))
        assert result.returncode != 0, (command, tokens_file)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.stdout == ""  # no token was printed
        one_line = " ".join(result.stderr.split())
        assert one_line.startswith("error:") and reason in one_line, one_line
        assert str(tokens_file) in one_line
