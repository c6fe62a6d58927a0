"""Quiet logged-in connections are owned by the reactor thread; blocking requests are not.

The shape (server.py): a connection's own thread handshakes and logs in, then hands the
connection to the reactor and ends. The reactor must never run a request that blocks —
argon2, SQLite — so those go back to a thread of their own, which parks the connection again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from helpers import Client, Server, ServerFactory
from sealroom.config import settings_from_mapping
from sealroom.net.server import Reactor
from sealroom.session.machine import Pending, Services, Session
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
    reactor = server.app.shared.reactor
    assert reactor is not None
    return reactor


def test_quiet_sessions_are_parked_and_their_threads_end(server: Server) -> None:
    reactor = reactor_of(server)
    baseline = threading.active_count()
    clients = [server.user(f"user{i}") for i in range(20)]
    assert wait_for(lambda: len(reactor) == 20)
    assert wait_for(lambda: threading.active_count() <= baseline)  # no thread per session

    # A broadcast among parked sessions: the reactor reads it, fans it out, writes it.
    sent = clients[0].request("hello, everyone")
    assert sent.startswith("OK say #lobby ")
    for client in clients[1:]:
        assert skip_to(client, "MSG #lobby ").endswith("hello, everyone")
    assert len(reactor) == 20


def test_blocking_requests_run_off_the_reactor_and_come_back(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    reactor = reactor_of(server)
    server.add_user("alice", "old-secret-1")
    alice, bob = server.client(), server.user("bob")
    alice.login("alice", "old-secret-1")
    assert wait_for(lambda: len(reactor) == 2)
    with caplog.at_level(logging.INFO, logger="sealroom"):
        assert alice.request("/passwd old-secret-1 new password 1") == "OK passwd"
    changed = [r for r in caplog.records if r.getMessage().endswith("password changed")]
    assert len(changed) == 1
    assert changed[0].threadName != "reactor"  # argon2 ran on a thread of its own

    assert alice.request("/msg bob psst").startswith("OK msg bob ")
    assert skip_to(bob, "DM alice ") == "DM alice psst"
    assert alice.request("/history bob").endswith("OK history bob 1")
    assert wait_for(lambda: len(reactor) == 2)  # parked again once quiet
    assert alice.request("/ping back").startswith("OK ping back")


def test_pipelined_lines_keep_their_order_across_hand_overs(server: Server) -> None:
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


# -- the session's side: which lines the reactor may run ----------------------------------------


@dataclass
class History:
    backed_up: bool = False


@pytest.fixture
def history() -> History:
    return History()


@pytest.fixture
def lone_session(history: History) -> tuple[Session, Outbox]:
    """A session before login: enough to see what ``process(inline=True)`` holds back.

    Every request below is refused before it reaches a service: it needs a login."""
    settings = settings_from_mapping({}, Path("."))
    absent = cast(Any, None)  # no request below reaches the hub, store or authenticator
    messages = cast(Any, history)
    services = Services(settings, absent, absent, absent, messages, absent, absent, lambda: 0.0)
    outbox = Outbox(65536, lambda: None)
    return Session(services, outbox, "127.0.0.1"), outbox


@pytest.mark.parametrize(
    ("line", "blocks"),
    [
        (b"/token", True),
        (b"/MSG bob hi", True),
        (b"/history #lobby 5", True),
        (b"/\xe2\x84\xaaick bob", True),  # KELVIN SIGN lower-cases to "k": /kick
        (b"/ping", False),
        (b"/nonsense", False),
        (b"//history is a message", False),
        (b"hello", False),
    ],
)
def test_inline_processing_holds_back_blocking_lines(
    lone_session: tuple[Session, Outbox], line: bytes, blocks: bool
) -> None:
    session, outbox = lone_session
    session.feed(line + b"\n/ping after\n")
    if blocks:
        assert session.process(inline=True) is Pending.BLOCKING
        assert outbox.take()[0] == b""  # nothing handled yet, the line is kept
        assert session.process(inline=True) is Pending.BLOCKING  # still first in line
    assert session.process() is Pending.NOTHING
    replies = outbox.take()[0].decode().splitlines()
    assert len(replies) == 2
    assert replies[-1] == "OK ping after"


def test_every_line_waits_for_a_thread_while_history_is_backed_up(
    lone_session: tuple[Session, Outbox], history: History
) -> None:
    session, outbox = lone_session
    history.backed_up = True  # storing a message would wait up to SUBMIT_WAIT_S for the disk
    session.feed(b"/ping\n")
    assert session.process(inline=True) is Pending.BLOCKING
    assert session.process() is Pending.NOTHING
    assert outbox.take()[0] == b"OK ping\n"
