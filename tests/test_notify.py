"""systemd notifications on a real datagram socket: readiness, status, reload, stop, watchdog."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import Server, ServerFactory, start_server
from opshelp import NotifyListener, captured_lines
from sealroom.ops.notify import Notifier


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[NotifyListener]:
    notify = NotifyListener(tmp_path / "notify")
    yield notify
    notify.close()


def test_nothing_happens_without_notify_socket() -> None:
    notifier = Notifier({})
    assert not notifier.enabled
    assert notifier.watchdog_interval is None
    assert not notifier.ready("x")
    assert not notifier.watchdog()
    notifier.close()


def test_fields_reach_a_path_socket(listener: NotifyListener) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(listener.path)})
    try:
        assert notifier.ready("2 connections,\n1 session")
        assert listener.next() == {"READY": "1", "STATUS": "2 connections, 1 session"}
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert notifier.reloading()
        fields = listener.next()
        assert fields["RELOADING"] == "1"
        assert before <= int(fields["MONOTONIC_USEC"]) <= before + 10_000_000
        assert notifier.stopping()
        assert listener.next() == {"STOPPING": "1"}
    finally:
        notifier.close()


def test_abstract_socket_names_work() -> None:
    name = f"sealroom-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        try:
            assert notifier.watchdog()
            manager.settimeout(5)
            assert manager.recv(100) == b"WATCHDOG=1"
        finally:
            notifier.close()


@pytest.mark.parametrize(
    ("environ", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval_is_half_the_timeout(
    environ: dict[str, str], interval: float | None
) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/nonexistent/notify", **environ})
    assert notifier.watchdog_interval == interval


def test_a_missing_manager_is_not_fatal(tmp_path: Path) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    try:
        with captured_lines() as logs:
            assert not notifier.ready()
            assert not notifier.ready()
        assert sum("cannot notify" in line for line in logs.lines) == 1  # said once
    finally:
        notifier.close()


@pytest.fixture
def managed(
    tmp_path: Path, tls_files: dict[str, Path], listener: NotifyListener
) -> Iterator[Server]:
    """An in-process server told (as serve() would be) that a manager with a 1 s watchdog
    listens on ``listener``."""
    folder = tmp_path / "managed"
    folder.mkdir()
    environ = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "1000000"}
    server = start_server(folder, tls_files, {}, Notifier(environ))
    try:
        yield server
    finally:
        server.stop()


def test_a_server_reports_its_life(managed: Server, listener: NotifyListener) -> None:
    server = managed
    ready = listener.until("READY")
    assert ready["STATUS"] == "0 connections, 0 sessions, 1 rooms"
    listener.until("WATCHDOG")
    alice = server.user("alice")
    assert listener.until("STATUS", "1 connections, 1 sessions, 1 rooms")

    assert server.app.reload()
    reloading = listener.until("RELOADING")
    assert int(reloading["MONOTONIC_USEC"]) > 0
    assert listener.until("READY")["STATUS"] == "1 connections, 1 sessions, 1 rooms"
    assert alice.request("/ping still here") == "OK ping still here"

    listener.until("WATCHDOG")  # still fed after the reload
    alice.close()
    server.app.stop(grace_s=1.0)
    listener.until("STOPPING")


@pytest.mark.slow
def test_a_stuck_serving_loop_starves_the_watchdog(
    managed: Server, listener: NotifyListener
) -> None:
    server = managed  # a ping every 0.5 s
    with captured_lines() as logs:
        listener.until("WATCHDOG")
        admission = server.app.shared.admission
        # Wedge the listener: it blocks in verify_request on the admission lock we hold.
        with admission._lock, socket.create_connection(("127.0.0.1", server.port)):
            logs.wait_for("is stuck; not feeding the watchdog", timeout=10)
            listener.drain()
            quiet_until = time.monotonic() + 1.2  # more than two ping intervals
            while (remaining := quiet_until - time.monotonic()) > 0:
                try:
                    fields = listener.next(remaining)
                except TimeoutError:
                    break
                assert "WATCHDOG" not in fields
        listener.until("WATCHDOG", timeout=5)  # unwedged: fed again
        logs.wait_for("serving loops turn again")


def test_an_app_outside_serve_ignores_the_environment(
    make_server: ServerFactory, listener: NotifyListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    server = make_server()
    assert not server.app.notifier.enabled
    server.app.stop(grace_s=1.0)
    assert listener.drain() == []
