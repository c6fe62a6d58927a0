"""Password guessing: the per-address login bucket holds across reconnects.

Every password check (``/login``, ``/passwd``) and every token check (``/resume``) draws on
one bucket per client address, taken before any hashing. Reconnecting starts a new session
but not a new bucket; another address has its own; and within one connection the error
bucket ends a guesser with ``BYE too-many-errors``.
"""

from __future__ import annotations

import re

from adversary import ATTACKER_ADDRESSES
from helpers import PASSWORD, ServerFactory

RATE_LIMITED = re.compile(r"ERR rate-limited .*retry in [0-9]+s")


def test_login_bucket_is_per_address(make_server: ServerFactory) -> None:
    server = make_server(rate={"logins_per_ip": {"rate": 0.01, "burst": 2}})
    for _ in range(2):
        client = server.client()
        assert client.request("/login mallory guess").startswith("ERR auth-failed")
        client.close()
    client = server.client()  # reconnecting does not reset the bucket
    assert client.request("/login mallory guess").startswith("ERR rate-limited")


def test_guessing_across_reconnects_is_stopped_even_for_the_right_password(
    make_server: ServerFactory,
) -> None:
    server = make_server(rate={"logins_per_ip": {"rate": 0.01, "burst": 5}})
    server.add_user("alice")
    replies = []
    for attempt in range(12):  # a new connection for every guess
        client = server.client(source=ATTACKER_ADDRESSES[0])
        replies.append(client.request(f"/login alice guess-{attempt}"))
        client.close()
    assert all(r == "ERR auth-failed wrong name or password" for r in replies[:5])
    assert all(RATE_LIMITED.fullmatch(r) for r in replies[5:]), replies[5:]
    # The right password does not get through either: the bucket answers before argon2 runs.
    late = server.client(source=ATTACKER_ADDRESSES[0])
    assert RATE_LIMITED.fullmatch(late.request(f"/login alice {PASSWORD}"))
    late.close()
    # alice herself, from another address, is not locked out by the guesser.
    alice = server.client(source=ATTACKER_ADDRESSES[1])
    assert alice.request(f"/login alice {PASSWORD}").startswith("OK login alice")
    alice.close()


def test_resume_token_guessing_shares_the_login_bucket(make_server: ServerFactory) -> None:
    server = make_server(rate={"logins_per_ip": {"rate": 0.01, "burst": 3}})
    server.add_user("alice")
    guesser = server.client(source=ATTACKER_ADDRESSES[0])
    assert guesser.request("/login alice guess-1").startswith("ERR auth-failed")
    replies = [guesser.request(f"/resume alice {'A' * 42}{n}") for n in range(4)]
    assert [r.split(" ", 2)[1] for r in replies] == [
        "auth-failed",
        "auth-failed",
        "rate-limited",
        "rate-limited",
    ]
    guesser.close()


def test_passwd_guessing_shares_the_login_bucket(make_server: ServerFactory) -> None:
    """Someone at an unlocked session cannot brute-force the old password either."""
    server = make_server(rate={"logins_per_ip": {"rate": 0.01, "burst": 3}})
    intruder = server.user("alice")  # its login took one token
    replies = [intruder.request(f"/passwd guess-{n} new password 1") for n in range(4)]
    assert [r.split(" ", 2)[1] for r in replies] == [
        "auth-failed",
        "auth-failed",
        "rate-limited",
        "rate-limited",
    ]


def test_one_connection_guessing_fast_is_disconnected(make_server: ServerFactory) -> None:
    server = make_server(
        rate={"logins_per_ip": {"rate": 1000, "burst": 1000}, "errors": {"rate": 0.01, "burst": 5}}
    )
    guesser = server.client()
    for n in range(5):
        assert guesser.request(f"/login alice guess-{n}").startswith("ERR auth-failed")
    guesser.send("/login alice guess-5")
    last = guesser.closed()[-2:]
    assert last == ["ERR auth-failed wrong name or password", "BYE too-many-errors"]
