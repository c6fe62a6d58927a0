"""Threat: a thief keeps an account after its owner or the operator changes the password.

A password change — `sealroom user passwd` or `/passwd` — ends every other session of the
account and revokes its resume tokens; two concurrent `/passwd` cannot both succeed.
"""

from __future__ import annotations

import threading

from helpers import CHEAP_ARGON2, Client, Server
from sealroom.policy.auth import password_hasher


def test_operator_reset_ends_the_thiefs_session_and_tokens(server: Server) -> None:
    thief = server.user("carol")
    token = thief.request("/token").split()[2]
    new_hash = password_hasher(**CHEAP_ARGON2).hash("new-secret-9")
    server.app.store.set_password_hash("carol", new_hash)  # what `sealroom user passwd` does
    lines = thief.closed(timeout=3.0)
    assert lines[-1] == "BYE account-changed"
    again = server.client()
    assert again.request(f"/resume carol {token}").startswith("ERR auth-failed")


OLD = "old-secret-1"  # /passwd OLD NEW: the old password has no space


def test_passwd_ends_the_accounts_other_sessions(server: Server) -> None:
    server.add_user("carol", OLD)
    owner, thief = server.client(), server.client()
    owner.login("carol", OLD)
    thief.login("carol", OLD)
    token = thief.request("/token").split()[2]
    assert owner.request(f"/passwd {OLD} a brand new secret") == "OK passwd"
    assert thief.closed(timeout=3.0)[-1] == "BYE account-changed"
    assert owner.request("/ping still here") == "OK ping still here"
    assert owner.request("/token").startswith("OK token ")  # the owner's record is current
    assert server.client().request(f"/resume carol {token}").startswith("ERR auth-failed")


def test_concurrent_passwd_one_wins(server: Server) -> None:
    server.add_user("carol", OLD)
    first, second = server.client(), server.client()
    first.login("carol", OLD)
    second.login("carol", OLD)
    replies: dict[str, list[str]] = {}

    def change(client: Client, new: str) -> None:
        client.send(f"/passwd {OLD} {new}")
        replies[new] = [client.line(timeout=4.0)]

    threads = [
        threading.Thread(target=change, args=(first, "first new secret")),
        threading.Thread(target=change, args=(second, "second new secret")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    winners = [new for new, lines in replies.items() if lines[0] == "OK passwd"]
    assert len(winners) == 1, replies
    losers = [new for new in replies if new not in winners]
    for new in losers:
        assert replies[new][0].startswith(("BYE account-changed", "ERR auth-failed")), replies
    check = server.client()
    assert check.request(f"/login carol {winners[0]}").startswith("OK login carol")
    other = server.client()
    assert other.request(f"/login carol {losers[0]}").startswith("ERR auth-failed")
