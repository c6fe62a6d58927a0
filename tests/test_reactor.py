"""The reactor drives every connection, from handshake to close; blocking work never runs on
it.

The shape (net/): listeners accept and wrap sockets and hand them to the reactor thread,
which runs each connection's state machine. What a request needs from the database or argon2
runs on the worker pools and comes back to the reactor. The test suite runs with
``SEALROOM_STRICT_BLOCKING=1``: a store or argon2 call on the reactor thread raises there.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

from helpers import Client, Server, ServerFactory
from sealroom.config import settings_from_mapping
from sealroom.core.blocking import BlockingCallError, check_may_block, forbid_blocking
from sealroom.core.model import RoomRecord
from sealroom.net.connection import OwnershipError
from sealroom.net.reactor import Reactor
from sealroom.policy.ratelimit import KeyedBuckets
from sealroom.session import COMMANDS, Command, Outcome, Pool, Services, Session
from sealroom.state.hub import Hub, HubLimits, Member
from sealroom.state.messages import MessageIds
from sealroom.state.outbox import Outbox


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    """Poll a condition the server gives no signal for, with a deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def skip_to(client: Client, prefix: str) -> str:
    """The next line that starts with ``prefix``, past JOIN and PART events."""
    for _ in range(100):
        line = client.line()
        if line.startswith(prefix):
            return line
    raise AssertionError(f"no {prefix!r} line")


def reactor_of(server: Server) -> Reactor:
    return server.app.reactor


def test_no_thread_per_connection(server: Server) -> None:
    reactor = reactor_of(server)
    server.user("warmup").close()
    baseline = threading.active_count()
    clients = [server.user(f"user{i}") for i in range(20)]
    assert wait_for(lambda: len(reactor) >= 20)  # handshake, login and chat: on the reactor
    assert threading.active_count() == baseline  # not one thread more for 20 connections

    # A broadcast: the reactor reads it, fans it out, writes it.
    sent = clients[0].request("hello, everyone")
    assert sent.startswith("OK say #lobby ")
    for client in clients[1:]:
        assert skip_to(client, "MSG #lobby ").endswith("hello, everyone")
    assert threading.active_count() == baseline


def test_every_blocking_request_runs_off_the_reactor(server: Server) -> None:
    """Strict mode is on: had any of these touched SQLite or argon2 on the reactor thread,
    the session would have ended with BYE internal-error."""
    server.add_user("alice", "old-secret-1")
    alice, bob = server.client(), server.user("bob")
    alice.login("alice", "old-secret-1")
    assert alice.request("/passwd old-secret-1 new password 1") == "OK passwd"
    assert alice.request("/msg bob psst").startswith("OK msg bob ")
    assert skip_to(bob, "DM alice ") == "DM alice psst"
    assert alice.request("/msg nobody-here hi").startswith("ERR no-such-user")
    assert alice.request("/history bob").endswith("OK history bob 1")
    assert alice.request("/history #lobby").startswith("OK history #lobby")
    token = alice.request("/token").split()[2]
    again = server.client()
    assert again.request(f"/resume alice {token}").startswith("OK login alice")
    assert alice.request("/ping back").startswith("OK ping back")


def test_a_blocking_call_on_the_reactor_fails_loudly(
    server: Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The guard itself: a handler that reads the store inline is caught on the reactor."""

    def reads_the_store_inline(session: Session, request: object) -> str:
        session.services.store.get_account("alice")
        return "OK ping"

    original = COMMANDS["ping"]
    patched = Command(original.syntax, reads_the_store_inline, "broken", login=False)
    monkeypatch.setitem(COMMANDS, "ping", patched)
    victim = server.client()
    with caplog.at_level(logging.ERROR, logger="sealroom"):
        victim.send("/ping")
        assert victim.closed() == ["BYE internal-error"]
    caught = [r for r in caplog.records if r.exc_info and r.exc_info[0] is BlockingCallError]
    assert caught


def test_the_guard_raises_only_on_a_marked_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SEALROOM_STRICT_BLOCKING", "1")
    check_may_block("SQLite")  # an unmarked thread may block
    failures: list[BaseException] = []

    def marked() -> None:
        forbid_blocking("test")
        try:
            check_may_block("SQLite")
        except BlockingCallError as error:
            failures.append(error)

    thread = threading.Thread(target=marked)
    thread.start()
    thread.join()
    assert len(failures) == 1


def test_only_the_owner_touches_a_tls_socket(server: Server) -> None:
    server.user("alice")
    (connection,) = list(server.app.shared.registry._live)
    assert connection.owner == reactor_of(server).thread.ident
    with pytest.raises(OwnershipError):
        connection.flush()  # from the test's thread, not the reactor
    with pytest.raises(OwnershipError):
        connection.read()


def test_pipelined_lines_keep_their_order_across_effects(server: Server) -> None:
    alice = server.user("alice")
    assert wait_for(lambda: len(reactor_of(server)) == 1)
    alice.send("/ping 1\n/history #lobby\n/ping 2\n/token\n/ping 3\n")
    replies = [alice.line() for _ in range(5)]
    assert [r.split()[:2] for r in replies] == [
        ["OK", "ping"],
        ["OK", "history"],
        ["OK", "ping"],
        ["OK", "token"],
        ["OK", "ping"],
    ]
    assert [r.split()[-1] for r in replies[::2]] == ["1", "2", "3"]


def test_idle_timeout_reaches_parked_sessions(make_server: ServerFactory) -> None:
    server = make_server(limits={"idle_timeout_s": 0.5})
    alice = server.user("alice")
    assert wait_for(lambda: len(reactor_of(server)) == 1, timeout=0.4)
    assert alice.closed(timeout=5)[-1] == "BYE idle-timeout"
    assert wait_for(lambda: len(reactor_of(server)) == 0)


def test_shutdown_says_bye_to_parked_sessions(server: Server) -> None:
    alice = server.user("alice")
    assert wait_for(lambda: len(reactor_of(server)) == 1)
    server.app.stop(grace_s=2.0)
    assert alice.closed(timeout=5)[-1] == "BYE shutting-down"
    assert len(server.app.shared.registry) == 0


# -- the session's side: which requests need which effects -----------------------------------


@pytest.fixture
def alice_session() -> tuple[Session, Outbox, MessageIds]:
    """A logged-in session over a real hub, with fakes for what blocks: the effects it asks
    for are inspected, never run."""
    settings = settings_from_mapping({}, Path("."))
    ids = MessageIds(cast(Any, None))  # nothing reserved yet: the first message must wait
    hub = Hub(HubLimits(100, 10, 100, True, "#lobby"), next_id=ids.take)
    hub.apply(RoomRecord("#lobby", None, "open", "", "now"))

    class Messages:
        backed_up = False
        writer = None

        def __init__(self) -> None:
            self.ids = ids

        def say(self, member: Member, room: str, text: str, admit: Any = None) -> int:
            return hub.say(member, room, text, admit)

    absent = cast(Any, None)
    messages = cast(Any, Messages())
    buckets = KeyedBuckets(100, 100, lambda: 0.0, max_keys=10)
    services = Services(settings, hub, absent, absent, messages, absent, buckets, lambda: 0.0)
    outbox = Outbox(65536, lambda: None)
    session = Session(services, outbox, "127.0.0.1")
    member = Member("alice", outbox)
    hub.attach(member)
    session.member = member
    hub.join(member, "#lobby", b"")
    session.current_room = "#lobby"
    return session, outbox, ids


@pytest.mark.parametrize(
    ("line", "pool"),
    [
        (b"/token", Pool.STORE),
        (b"/MSG bob hi", Pool.STORE),
        (b"/history #lobby 5", Pool.STORE),
        (b"/history bob", Pool.STORE),
        (b"/passwd old-secret new-secret-1", Pool.ARGON2),
        (b"hello", Pool.STORE),  # no id reserved yet: reserve a block first
        (b"/ping", None),
        (b"/who", None),
        (b"/join #other", Pool.STORE),  # a new room is stored before it is joined
        (b"/join #lobby", None),
        (b"/nonsense", None),
        (b"/\xe2\x84\xaaick bob", None),  # KELVIN SIGN: parsed, not guessed; not an admin
    ],
)
def test_what_a_request_needs_decides_where_it_runs(
    alice_session: tuple[Session, Outbox, MessageIds], line: bytes, pool: Pool | None
) -> None:
    session, outbox, _ids = alice_session
    session.feed(line + b"\n/ping after\n")
    session.process()
    effects = session.take_effects()
    if pool is None:
        assert effects == []
        assert outbox.take()[0].decode().splitlines()[-1] == "OK ping after"
    else:
        assert [effect.pool for effect in effects] == [pool]
        assert session.awaiting  # the next line waits for this one's reply
        assert b"OK ping after" not in outbox.take()[0]


def test_a_message_waits_for_ids_then_goes_out(
    alice_session: tuple[Session, Outbox, MessageIds],
) -> None:
    session, outbox, ids = alice_session
    session.feed(b"hello\n/ping after\n")
    session.process()
    (effect,) = session.take_effects()
    ids._blocks.append(range(41, 1041))  # what the worker's refill would have reserved
    session.complete(effect, Outcome(None))
    session.process()
    assert outbox.take()[0].decode().splitlines()[-2:] == ["OK say #lobby 41", "OK ping after"]


def test_a_watched_descriptor_is_read_on_the_reactor_thread_and_a_failure_stays_its_own(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The cluster's bus reader puts its Redis socket in the reactor's epoll: the reactor
    # calls it there when readable, and a watcher or hook that raises is logged, while the
    # reactor goes on (it owns every client's connection).
    reactor = Reactor()
    ours, theirs = socket.socketpair()
    seen: list[tuple[str, bytes]] = []
    turns: list[int] = []

    def on_readable() -> None:
        data = ours.recv(100)
        seen.append((threading.current_thread().name, data))
        if data == b"boom":
            raise RuntimeError("a watcher's bug")

    def hook() -> None:
        turns.append(1)
        if len(turns) == 1:
            reactor.watch(ours.fileno(), on_readable)  # on the reactor thread, as the reader
            raise RuntimeError("a hook's bug")

    reactor.after_turn(hook)
    reactor.start()
    try:
        reactor.wake()
        assert wait_for(lambda: len(turns) >= 1)
        theirs.sendall(b"boom")
        assert wait_for(lambda: len(seen) == 1)
        theirs.sendall(b"after")
        assert wait_for(lambda: len(seen) == 2)
        assert seen == [("reactor", b"boom"), ("reactor", b"after")]
        assert "a watcher of descriptor" in caplog.text
        assert "an after-turn hook failed" in caplog.text
        assert reactor.thread.is_alive()
    finally:
        reactor.stop()
        ours.close()
        theirs.close()


def test_an_unwatched_descriptor_is_no_longer_read() -> None:
    reactor = Reactor()
    ours, theirs = socket.socketpair()
    seen: list[bytes] = []
    watching = threading.Event()
    done: list[bool] = []

    def hook() -> None:
        if not done:
            reactor.watch(ours.fileno(), lambda: seen.append(ours.recv(100)))
            done.append(True)
            watching.set()
        elif len(seen) == 1 and len(done) == 1:
            reactor.unwatch(ours.fileno())
            done.append(True)

    reactor.after_turn(hook)
    reactor.start()
    try:
        reactor.wake()
        assert watching.wait(5)
        theirs.sendall(b"one")
        assert wait_for(lambda: len(done) == 2)
        theirs.sendall(b"two")
        reactor.wake()
        time.sleep(0.3)  # turns pass; nothing reads "two"
        assert seen == [b"one"]
        assert ours.recv(100) == b"two"
    finally:
        reactor.stop()
        ours.close()
        theirs.close()


def test_a_watched_descriptor_is_told_when_it_takes_more_only_while_asked() -> None:
    # The bus publisher's call may be larger than its socket takes at once: it asks to be
    # told when the socket takes more, and stops asking once all is sent (a writable socket
    # reported every turn would spin the reactor).
    reactor = Reactor()
    ours, theirs = socket.socketpair()
    writable: list[tuple[str, int]] = []  # the thread, and the hook's steps by then
    asked: list[bool] = []

    def on_writable() -> None:
        writable.append((threading.current_thread().name, len(asked)))
        if len(writable) == 3:
            reactor.writable(ours.fileno(), False)

    def hook() -> None:
        if not asked:
            reactor.watch(ours.fileno(), lambda: None, on_writable)
            reactor.wake()  # a turn without asking: nothing is reported
            asked.append(False)
        elif len(asked) == 1:
            reactor.writable(ours.fileno(), True)
            asked.append(True)

    reactor.after_turn(hook)
    reactor.start()
    try:
        reactor.wake()
        assert wait_for(lambda: len(writable) >= 3)
        reactor.wake()
        time.sleep(0.3)  # turns pass; no longer asked, no longer told
        assert writable == [("reactor", 2)] * 3  # only once asked, only until no longer
        assert asked == [False, True]
    finally:
        reactor.stop()
        ours.close()
        theirs.close()
