"""What the server remembers: ids, room history, offline private messages, migrations."""

from __future__ import annotations

import re
import socket
import sqlite3
import struct
from pathlib import Path

import pytest

from helpers import PASSWORD, Client, FakeWallClock, Server, ServerFactory, tls_connection
from sealroom.core.model import StoredMessage
from sealroom.store.sqlite import MIGRATIONS, SqliteStore

HIST = re.compile(r"HIST (\S+) ([1-9][0-9]*) (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (\S+) (.*)")


def history(client: Client, request: str) -> tuple[list[re.Match[str]], str]:
    """Send a /history request: its HIST data lines and its final reply."""
    client.send(request)
    lines = []
    while (line := client.line()).startswith("HIST"):
        match = HIST.fullmatch(line)
        assert match, line
        lines.append(match)
    return lines, line


def test_room_history_and_ids_survive_restart(server: Server) -> None:
    alice = server.user("alice")
    ids = [int(alice.request(f"before restart {i}").rsplit(" ", 1)[1]) for i in range(3)]
    server.restart()
    alice = server.user("alice")
    lines, final = history(alice, "/history #lobby")
    assert final == "OK history #lobby 3"
    assert [int(m.group(2)) for m in lines] == ids
    assert [m.group(5) for m in lines] == [f"before restart {i}" for i in range(3)]
    assert {m.group(1) for m in lines} == {"#lobby"}
    assert {m.group(4) for m in lines} == {"alice"}
    new_id = int(alice.request("after restart").rsplit(" ", 1)[1])
    assert new_id > max(ids)


def test_history_bounds_and_permissions(make_server: ServerFactory) -> None:
    server = make_server(history={"per_room": 5, "max_query": 4})
    alice = server.user("alice")
    for i in range(8):
        alice.request(f"m{i}")
    lines, final = history(alice, "/history #lobby 4")
    assert final == "OK history #lobby 4"
    assert [m.group(5) for m in lines] == ["m4", "m5", "m6", "m7"]
    assert alice.request("/history #lobby 5").startswith("ERR bad-argument")
    assert alice.request("/history #lobby 0").startswith("ERR bad-argument")
    assert alice.request("/history #lobby x").startswith("ERR bad-argument")
    bob = server.user("bob")
    assert bob.request("/part #lobby") == "OK part #lobby"
    assert bob.request("/history #lobby").startswith("ERR forbidden")  # for its members only
    assert bob.request("/history #nowhere").startswith("ERR no-such-room")
    assert bob.request("/history nobody").startswith("ERR no-such-user")
    # Retention: only the newest per_room messages are kept.
    with SqliteStore(server.settings.storage.database) as store:
        assert len(store.room_history("#lobby", 100)) == 5


def test_offline_messages_are_delivered_once(server: Server) -> None:
    server.add_user("bob")
    alice = server.user("alice")
    replies = [alice.request(f"/msg bob note {i}") for i in range(3)]
    ids = [int(r.rsplit(" ", 1)[1]) for r in replies]
    assert all(r.startswith("OK msg bob ") for r in replies)
    bob = server.client()
    bob.login("bob")
    delivered = [HIST.fullmatch(bob.line()) for _ in range(3)]
    assert [(m.group(1), int(m.group(2)), m.group(4), m.group(5)) for m in delivered if m] == [
        ("bob", ids[i], "alice", f"note {i}") for i in range(3)
    ]
    assert bob.request("/ping") == "OK ping"  # nothing more queued
    again = server.client()
    again.login("bob")
    assert again.request("/ping") == "OK ping"  # a second login gets nothing again
    lines, final = history(again, "/history alice")
    assert final == "OK history alice 3"
    assert [m.group(5) for m in lines] == ["note 0", "note 1", "note 2"]


def test_offline_messages_survive_restart(server: Server) -> None:
    server.add_user("bob")
    alice = server.user("alice")
    assert alice.request("/msg bob kept across a restart").startswith("OK msg bob")
    server.restart()
    bob = server.client()
    bob.login("bob")
    match = HIST.fullmatch(bob.line())
    assert match
    assert match.group(5) == "kept across a restart"


def test_private_quota(make_server: ServerFactory) -> None:
    server = make_server(history={"private_per_user": 2})
    server.add_user("bob")
    alice = server.user("alice")
    assert alice.request("/msg bob one").startswith("OK msg")
    assert alice.request("/msg bob two").startswith("OK msg")
    refused = alice.request("/msg bob three")
    assert re.fullmatch(r"ERR rate-limited .*retry in \d+s.*", refused)
    bob = server.client()
    bob.login("bob")
    assert [bob.line().rsplit(" ", 1)[1] for _ in range(2)] == ["one", "two"]
    assert alice.request("/msg bob three").startswith("OK msg")  # bob is online now
    assert bob.line() == "DM alice three"


def test_connection_killed_during_delivery_gets_them_again(make_server: ServerFactory) -> None:
    server = make_server(history={"private_per_user": 2000})
    server.add_user("bob")
    count, text = 1500, "y" * 3000  # 4.5 MB: more than the socket buffers take at once
    ids = server.app.store.reserve_ids(count)
    server.app.store.add_messages(
        [
            StoredMessage(i, None, "bob", "alice", f"{i} {text}", "2026-01-01T00:00:00.000Z")
            for i in ids
        ],
        delivered=False,
    )
    first = tls_connection(server.port, server.ca_file, rcvbuf=4096)
    first.sendall(f"/login bob {PASSWORD}\n".encode())
    first.recv(1024)
    # Die abruptly (RST) while the server is still writing the stored messages.
    first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    first.close()
    with SqliteStore(server.settings.storage.database) as store:
        waiting = {m.id for m in store.pending("bob", count)}
    assert waiting  # some were not written yet
    bob = server.client()
    bob.login("bob")
    got = [int(HIST.fullmatch(bob.line(timeout=20)).group(2)) for _ in range(len(waiting))]  # type: ignore[union-attr]
    assert sorted(got) == sorted(waiting)
    assert len(set(got)) == len(got)
    assert bob.request("/ping", timeout=20) == "OK ping"
    with SqliteStore(server.settings.storage.database) as store:
        assert store.pending("bob", count) == []


def test_removing_an_account_removes_its_messages(server: Server) -> None:
    server.add_user("bob")
    alice = server.user("alice")
    alice.request("public words")
    alice.request("/msg bob private words")
    server.app.writer.flush()
    server.app.store.remove_account("alice")
    with SqliteStore(server.settings.storage.database) as store:
        assert store.room_history("#lobby", 10) == []
        assert store.pending("bob", 10) == []


def test_migration_from_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    path.touch()
    with SqliteStore(path) as store:
        assert store.check() == []
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    conn.close()


def test_migration_from_version_1(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)
    for statement in MIGRATIONS[0]:
        conn.execute(statement)
    conn.execute(
        "INSERT INTO accounts (name, password_hash, is_admin, enabled, created_at)"
        " VALUES ('old', 'hash', 0, 1, '2026-01-01T00:00:00.000Z')"
    )
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    with SqliteStore(path) as store:
        assert store.get_account("old") is not None
        assert list(store.reserve_ids(2)) == [1, 2]
        assert store.accounts_version() == 0
        store.set_enabled("old", False)
        assert store.accounts_version() == 1


def test_ids_are_reserved_in_blocks_and_never_reused(tmp_path: Path) -> None:
    path = tmp_path / "ids.db"
    with SqliteStore(path) as store:
        first = store.reserve_ids(10)
    with SqliteStore(path) as store:  # a "crash" after using only part of the block
        assert store.reserve_ids(10).start == first.stop


@pytest.mark.parametrize("command", [["db", "check"]])
def test_db_commands(
    server: Server, tmp_path: Path, command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    from sealroom.cli.main import main

    alice = server.user("alice")
    alice.request("keep me")
    server.app.writer.flush()
    backup = tmp_path / "backup.db"
    assert main(["db", "backup", str(backup), "-c", str(server.config)]) == 0
    assert main(["db", "backup", str(backup), "-c", str(server.config)]) == 1  # no overwrite
    assert "exists" in capsys.readouterr().err
    with SqliteStore(backup) as copy:
        assert [m.body for m in copy.room_history("#lobby", 5)] == ["keep me"]
    assert main([*command, "-c", str(server.config)]) == 0
    assert "ok" in capsys.readouterr().out


TOKEN = re.compile(r"OK token ([A-Za-z0-9_-]{43}) (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")


def test_resume_tokens(server: Server) -> None:
    alice = server.user("alice")
    match = TOKEN.fullmatch(alice.request("/token"))
    assert match, "OK token TOKEN EXPIRES"
    token = match.group(1)
    again = server.client()
    assert again.request(f"/resume alice {token[:-1]}x").startswith("ERR auth-failed")
    assert again.request(f"/resume bob {token}").startswith("ERR auth-failed")
    assert again.request(f"/resume ALICE {token}").startswith("OK login alice")
    assert again.request(f"/resume alice {token}").startswith("ERR already-logged-in")
    server.restart()  # tokens are stored: a restart does not end them
    after = server.client()
    assert after.request(f"/resume alice {token}").startswith("OK login alice")


def test_tokens_are_stored_as_digests_and_revoked(server: Server) -> None:
    alice = server.user("alice")
    token = alice.request("/token").split()[2]
    raw = server.settings.storage.database.read_bytes()
    assert token.encode() not in raw
    server.app.store.set_enabled("alice", False)
    server.app.store.set_enabled("alice", True)
    assert server.client().request(f"/resume alice {token}").startswith("ERR auth-failed")
    token = server.user("alice").request("/token").split()[2]
    server.app.store.set_password_hash("alice", server.app.store.get_account("alice").password_hash)  # type: ignore[union-attr]
    assert server.client().request(f"/resume alice {token}").startswith("ERR auth-failed")


def test_token_expiry(make_server: ServerFactory) -> None:
    from datetime import UTC, datetime, timedelta

    from sealroom.policy.auth import ResumeTokens

    server = make_server()
    server.add_user("alice")
    clock = FakeWallClock(datetime(2026, 1, 1, tzinfo=UTC))
    tokens = ResumeTokens(server.app.store, 7, clock=clock)
    token, expires = tokens.issue("alice")
    assert expires == "2026-01-08T00:00:00.000Z"
    assert tokens.verify("alice", token) is not None
    clock.now += timedelta(days=7)
    assert tokens.verify("alice", token) is None


def test_resume_draws_on_the_login_bucket(make_server: ServerFactory) -> None:
    server = make_server(rate={"logins_per_ip": {"rate": 0.01, "burst": 2}})
    client = server.client()
    assert client.request("/resume alice " + "A" * 43).startswith("ERR auth-failed")
    assert client.request("/resume alice " + "A" * 43).startswith("ERR auth-failed")
    assert client.request("/resume alice " + "A" * 43).startswith("ERR rate-limited")
