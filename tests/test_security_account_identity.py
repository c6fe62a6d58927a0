"""Threat: a session outlives the account it logged in as, and acts as its namesake.

Log in as X; the operator removes X and creates X again (or disables and enables it). The
old session must end within 2 s, and until then it must never receive the new X's private
messages, send as it, read its history or mint a token that logs into it.
"""

from __future__ import annotations

import time

from helpers import PASSWORD, Client, Server
from sealroom.cli.main import main as sealroom


def cli(server: Server, *args: str, password: str | None = None) -> int:
    import io
    import sys

    argv = [*args, "-c", str(server.config)]
    if password is None:
        return sealroom(argv)
    stdin, sys.stdin = sys.stdin, io.StringIO(password + "\n")
    try:
        return sealroom([*argv, "--password-stdin"])
    finally:
        sys.stdin = stdin


# Removed and created again back to back: the old record is gone either way.
GONE = ("BYE account-removed", "BYE account-changed")


def bye_within(client: Client, seconds: float) -> str:
    started = time.monotonic()
    lines = client.closed(timeout=seconds)
    assert time.monotonic() - started < seconds + 0.5
    byes = [line for line in lines if line.startswith("BYE ")]
    assert byes, lines
    return byes[-1]


def test_removed_and_recreated_account_ends_the_old_session(server: Server) -> None:
    old = server.user("xavier")
    assert cli(server, "user", "remove", "xavier") == 0
    assert cli(server, "user", "add", "xavier", password=PASSWORD) == 0
    # Whatever the old session tries now is refused as the old record, never done as the new.
    old.send("/token")
    assert bye_within(old, 2.0) in GONE
    new = server.client()
    new.login("xavier")
    assert new.request("/history #lobby").startswith("OK history")


def test_dm_to_a_recreated_name_never_reaches_the_old_session(server: Server) -> None:
    old = server.user("xavier")
    sender = server.user("sara")
    server.app.store.remove_account("xavier")
    server.add_user("xavier")  # back to back: the poll has not run yet
    reply = sender.request("/msg xavier for the new xavier only")
    assert reply.startswith("OK msg xavier ")
    lines = old.closed(timeout=3.0)
    assert not any(line.startswith("DM ") for line in lines), lines
    assert lines[-1] in GONE
    new = server.client()
    new.login("xavier")
    new.send("/ping")
    seen = [new.line()]
    while seen[-1] != "OK ping":
        seen.append(new.line())
    assert [line.rsplit(" ", 5)[-1] for line in seen[:-1] if line.startswith("HIST ")] == [
        "only"
    ]  # stored for the new xavier, delivered at its login


def test_old_session_cannot_send_as_the_new_account(server: Server) -> None:
    old = server.user("xavier")
    server.user("sara")
    server.app.store.remove_account("xavier")
    server.add_user("xavier")
    old.send("/msg sara from a ghost")
    lines = old.closed(timeout=3.0)
    assert not any(line.startswith("OK msg") for line in lines), lines
    assert lines[-1] in GONE
    new = server.client()
    new.login("xavier")
    assert new.request("/history sara").endswith("OK history sara 0")


def test_disable_then_enable_ends_the_session(server: Server) -> None:
    old = server.user("xavier")
    server.app.store.set_enabled("xavier", False)
    server.app.store.set_enabled("xavier", True)
    old.send("/token")
    assert bye_within(old, 2.0) in ("BYE account-disabled", "BYE account-changed")


def test_a_quiet_old_session_is_ended_by_the_account_change(server: Server) -> None:
    old = server.user("xavier")
    server.app.store.remove_account("xavier")
    server.add_user("xavier")
    assert bye_within(old, 2.0) in GONE
