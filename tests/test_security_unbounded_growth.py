"""Unbounded-growth attempts: everything a client can make the server keep meets a bound.

Joining thousands of rooms, creating rooms in a loop, messaging thousands of accounts,
flooding one offline account, filling a room's history, asking for token after token,
coming from ever more addresses: each ends at a configured limit with a clear error, and
what is kept stays within it. SECURITY.md's resource-bound table points here.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

import pytest

from adversary import ATTACKER_ADDRESSES
from helpers import PASSWORD, Client, ServerFactory
from sealroom.core.model import StoredMessage
from sealroom.state import messages
from sealroom.store.sqlite import SqliteStore

# So that the bound under test, not the message or error bucket, is what stops the client.
UNTHROTTLED = {
    "messages": {"rate": 100_000, "burst": 100_000},
    "errors": {"rate": 100_000, "burst": 100_000},
}


def replies(client: Client, lines: list[str], timeout: float = 30.0) -> list[str]:
    """Send every line at once (pipelined), then collect one final reply per line."""
    client.sock.sendall("".join(line + "\n" for line in lines).encode())
    found = []
    while len(found) < len(lines):
        line = client.line(timeout)
        if line.startswith(("OK", "ERR", "BYE")):
            found.append(line)
        if line.startswith("BYE"):
            break
    return found


def test_room_bounds(make_server: ServerFactory) -> None:
    server = make_server(limits={"max_rooms_per_session": 3, "max_rooms": 4, "max_room_members": 2})
    alice = server.user("alice")
    assert alice.request("/join #a").startswith("OK join")
    assert alice.request("/join #b").startswith("OK join")
    assert alice.request("/join #c").startswith("ERR forbidden")  # lobby + 2
    bob = server.user("bob")
    carol = server.user("carol")  # lobby now full for a third member? 2 members max
    assert carol.request("/join #a").startswith("OK join")
    assert bob.request("/join #a").startswith("ERR forbidden")
    assert bob.request("/join #x").startswith("OK join")
    assert bob.request("/join #y").startswith("ERR server-busy")


def test_joining_thousands_of_rooms(make_server: ServerFactory) -> None:
    # The default bound: 100 rooms per session (one account may create as many here).
    server = make_server(rate=UNTHROTTLED, rooms={"max_created_per_user": 10_000})
    alice = server.user("alice")
    got = replies(alice, [f"/join #r{n}" for n in range(2000)])
    assert got[:99] == [f"OK join #r{n}" for n in range(99)]  # plus #lobby: 100
    assert set(got[99:]) == {"ERR forbidden a session may be in at most 100 rooms"}
    assert server.app.hub.counts() == (1, 100)


def test_creating_rooms_in_a_loop(make_server: ServerFactory) -> None:
    server = make_server(
        limits={"max_rooms": 150}, rate=UNTHROTTLED, rooms={"max_created_per_user": 10_000}
    )
    alice = server.user("alice")
    bob = server.user("bob")
    # Join-and-leave churn of one room keeps one room.
    churn = [line for _ in range(500) for line in ("/join #tmp", "/part #tmp")]
    assert all(r.startswith(("OK join", "OK part")) for r in replies(alice, churn))
    assert server.app.hub.counts() == (2, 2)
    # Rooms are stored until destroyed: creating meets the server-wide bound with a clear
    # error, and destroying frees the names again.
    assert all(r.startswith("OK join") for r in replies(alice, [f"/join #a{n}" for n in range(98)]))
    got = replies(bob, [f"/join #b{n}" for n in range(99)])
    assert got[:50] == [f"OK join #b{n}" for n in range(50)]
    assert set(got[50:]) == {"ERR server-busy too many rooms on this server"}
    assert server.app.hub.counts() == (2, 150)
    destroyed = replies(bob, [f"/destroy #b{n}" for n in range(50)])
    assert all(r.startswith("OK destroy") for r in destroyed)
    assert server.app.hub.counts() == (2, 100)


def test_room_members_bound(make_server: ServerFactory) -> None:
    server = make_server(limits={"max_room_members": 5})
    members = [server.user(f"u{n}") for n in range(5)]
    latecomer = server.user("late")  # the lobby is full: logged in, but in no room
    assert latecomer.request("/rooms") == "OK rooms"
    assert latecomer.request("/join #lobby") == "ERR forbidden #lobby is full"
    assert members[0].request("/who").count(" ") == 2 + 5


def test_messaging_thousands_of_accounts_is_rate_limited(make_server: ServerFactory) -> None:
    server = make_server(rate={**UNTHROTTLED, "messages": {"rate": 5, "burst": 20}})
    for n in range(2000):
        server.app.store.add_account(f"user{n}", "not a usable hash")
    alice = server.user("alice")
    got = replies(alice, [f"/msg user{n} hello" for n in range(2000)])
    accepted = [r for r in got if r.startswith("OK msg")]
    refused = [r for r in got if re.fullmatch(r"ERR rate-limited retry in [0-9]+s", r)]
    assert got[:20] == accepted[:20]  # the burst...
    assert 20 <= len(accepted) < 40  # ...plus what refilled at 5/s while the test ran
    assert len(accepted) + len(refused) == 2000
    stored = sum(server.app.store.pending_count(f"user{n}") for n in range(2000))
    assert stored == len(accepted)


def test_messaging_nonexistent_accounts_stores_nothing(make_server: ServerFactory) -> None:
    server = make_server()  # default error bucket: 20, then BYE
    alice = server.user("alice")
    got = replies(alice, [f"/msg ghost{n} hello" for n in range(1000)])
    assert got == [f"ERR no-such-user no account ghost{n}" for n in range(21)] + [
        "BYE too-many-errors"
    ]
    assert not any(server.app.hub.is_online(f"ghost{n}") for n in range(1000))


def test_flooding_one_offline_account_meets_its_quota(make_server: ServerFactory) -> None:
    server = make_server(history={"private_per_user": 10})
    server.add_user("bob")
    alice = server.user("alice")
    got = replies(alice, [f"/msg bob note {n}" for n in range(50)])
    assert all(r.startswith("OK msg bob") for r in got[:10])
    assert set(got[10:]) == {"ERR rate-limited bob has 10 messages waiting; retry in 60s"}
    assert server.app.store.pending_count("bob") == 10
    bob = server.user("bob")
    hist = [bob.line() for _ in range(10)]
    assert [line.rsplit(" ", 1)[1] for line in hist] == [str(n) for n in range(10)]


def test_room_history_is_pruned(make_server: ServerFactory) -> None:
    server = make_server(history={"per_room": 10})
    alice = server.user("alice")
    assert all(r.startswith("OK say") for r in replies(alice, [f"m{n}" for n in range(100)]))
    alice.send("/history #lobby 100")
    lines = []
    while not (line := alice.line()).startswith("OK history"):
        lines.append(line)
    assert line == "OK history #lobby 10"
    assert [entry.rsplit(" ", 1)[1] for entry in lines] == [f"m{n}" for n in range(90, 100)]
    # And one reply holds at most history.max_query lines (default 500).
    assert alice.request("/history #lobby 501") == "ERR bad-argument N is a number from 1 to 500"


def test_resume_tokens_per_account_are_capped(make_server: ServerFactory) -> None:
    server = make_server()
    alice = server.user("alice")
    tokens = [reply.split(" ")[2] for reply in replies(alice, ["/token"] * 30)]  # pipelined
    working = []
    for token in tokens:
        client = server.client()
        working.append(client.request(f"/resume alice {token}").startswith("OK login alice"))
        client.close()
    assert sum(working) == 20  # older tokens of the account are dropped beyond 20


def test_tracked_addresses_are_capped_and_fail_closed(make_server: ServerFactory) -> None:
    server = make_server(
        limits={"max_tracked_addresses": 2},
        rate={"connections_per_ip": {"rate": 0.01, "burst": 5}},  # buckets stay non-full
    )
    first = server.user("alice")  # 127.0.0.1
    second = server.client(source=ATTACKER_ADDRESSES[0])
    # A third address finds no room in the table: refused rather than tracked.
    with pytest.raises((ssl.SSLError, ConnectionError, EOFError, TimeoutError)):
        server.client(source=ATTACKER_ADDRESSES[1], timeout=2)
    assert len(server.app.shared.admission.buckets) == 2
    assert first.request("/ping") == "OK ping"
    assert second.request(f"/login alice {PASSWORD}").startswith("OK login")
    second.close()


def test_history_writer_queue_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A disk that stops keeping up: the queue stops at QUEUE_LIMIT, the publisher waits
    SUBMIT_WAIT_S at most, then that message goes unstored (and is said so in the log)."""
    monkeypatch.setattr(messages, "SUBMIT_WAIT_S", 0.05)
    # The writer is never started: nothing drains its queue.
    writer = messages.HistoryWriter(SqliteStore(tmp_path / "history.db"), 100, 100)
    try:
        for number in range(messages.QUEUE_LIMIT):
            writer.submit(StoredMessage(number + 1, "#lobby", None, "alice", "hi", "t"))
        assert writer.backed_up
        assert writer.dropped == 0
        writer.submit(StoredMessage(0, "#lobby", None, "alice", "one too many", "t"))
        assert writer.lag == messages.QUEUE_LIMIT
        assert writer.dropped == 1
        assert "history writer is behind: message 0 not stored" in caplog.text
    finally:
        writer.stop(timeout=0)
