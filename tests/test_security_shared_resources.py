"""Threat: one account with many sessions takes what everyone shares.

Sessions, the message bucket, room creation and another user's offline mailbox are bounded
per account, so that many sessions of one account get no more than one does.
"""

from __future__ import annotations

from helpers import ServerFactory


def test_sessions_per_account_are_bounded(make_server: ServerFactory) -> None:
    server = make_server(limits={"max_sessions_per_user": 3})
    sessions = [server.user("mallory") for _ in range(3)]
    extra = server.client()
    assert extra.request("/login mallory correct horse battery").startswith("ERR forbidden")
    sessions[0].close()
    for _ in range(50):  # the closed session leaves the hub
        again = server.client()
        if again.request("/login mallory correct horse battery").startswith("OK login"):
            break
    else:
        raise AssertionError("a freed session slot was never given back")


def test_the_message_bucket_is_one_per_account(make_server: ServerFactory) -> None:
    server = make_server(rate={"messages": {"rate": 0.01, "burst": 10}})
    sessions = [server.user("mallory") for _ in range(5)]
    replies = [s.request(f"hello {n}") for n in range(4) for s in sessions]
    accepted = [r for r in replies if r.startswith("OK say")]
    assert len(accepted) == 10, replies  # one burst for the account, not one per session
    other = server.user("bob")
    assert other.request("hi").startswith("OK say")  # others keep theirs


def test_rooms_created_per_account_are_bounded(make_server: ServerFactory) -> None:
    server = make_server(rooms={"max_created_per_user": 3})
    first, second = server.user("mallory"), server.user("mallory")
    assert first.request("/join #m1").startswith("OK join")
    assert second.request("/join #m2").startswith("OK join")
    assert first.request("/join #m3").startswith("OK join")
    assert second.request("/join #m4").startswith("ERR forbidden")
    bob = server.user("bob")
    assert bob.request("/join #b1").startswith("OK join")  # bob is not held to mallory's count
    assert bob.request("/join #m1").startswith("OK join")  # joining is not creating
    assert first.request("/destroy #m3").startswith("OK destroy")
    assert second.request("/join #m4").startswith("OK join")  # a destroyed room frees one


def test_one_sender_cannot_fill_another_users_mailbox(make_server: ServerFactory) -> None:
    server = make_server(history={"private_per_sender": 5, "private_per_user": 50})
    server.add_user("alice")  # offline: her messages are stored
    mallory = server.user("mallory")
    replies = [mallory.request(f"/msg alice spam {n}") for n in range(7)]
    assert all(r.startswith("OK msg") for r in replies[:5]), replies
    assert all(r.startswith("ERR rate-limited") and "retry in" in r for r in replies[5:])
    bob = server.user("bob")
    assert bob.request("/msg alice a real message").startswith("OK msg")
