"""TLS 1.3 KeyUpdate requests from a client while the server fans out heavily to it.

A KeyUpdate that asks for one back makes the server's *next write* carry its own KeyUpdate.
A server that reads a TLS socket on one thread and writes it from another corrupts its state
exactly here; Sealroom's rule is one thread per SSL object, broadcasts going through the
outbox. Python's ssl module cannot send KeyUpdate, so ``openssl s_client`` does, through its
interactive ``k`` (update) and ``K`` (update and request one back) commands.
"""

from __future__ import annotations

import logging
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import IO

import pytest

from helpers import PASSWORD, Client, LineReader, Server, ServerFactory

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")

MESSAGES = 2000
TEXT = "x" * 150


def _s_client(server: Server, folder: Path) -> subprocess.Popen[str]:
    # -quiet alone would also turn on -ign_eof, which disables the command letters.
    return subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-quiet",
            "-no_ign_eof",
            "-tls1_3",
            "-verify_return_error",
            "-CAfile",
            str(server.ca_file),
            "-connect",
            f"127.0.0.1:{server.port}",
            "-msg",
            "-msgfile",
            str(folder / "msg.txt"),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=10)
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def test_key_updates_during_heavy_fan_out(
    make_server: ServerFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="sealroom.server")
    server = make_server(rate={"messages": {"rate": 100_000, "burst": 100_000}})
    server.add_user("bob")
    process = _s_client(server, tmp_path)
    assert process.stdin is not None
    stdin = process.stdin
    try:
        bob = LineReader(process.stdout)
        bob.until("^HELLO sealroom 1 ")
        stdin.write(f"/login bob {PASSWORD}\n")
        stdin.flush()
        bob.until("^OK login bob")
        listeners = [server.user(name) for name in ("carol", "dave", "erin", "frank")]
        alice = server.user("alice")
        with KeyUpdates(stdin) as updates:
            _flood(alice, MESSAGES)
            received = _messages(bob, MESSAGES, timeout=30)
            updates.wait_for(40, timeout=10)  # on a fast machine the flood ends first
        assert received == [f"MSG #lobby alice {i} {TEXT}" for i in range(MESSAGES)]
        for listener in listeners:
            assert _messages(listener, MESSAGES, timeout=10) == received
        time.sleep(0.2)  # let s_client read the last command on its own
        stdin.write("/ping after-updates\n")
        stdin.flush()
        bob.until("^OK ping after-updates$")
    finally:
        _stop(process)
    assert updates.sent["k"] >= 10
    assert updates.sent["K"] >= 10
    messages = (tmp_path / "msg.txt").read_text()
    sent = messages.count(">>> TLS 1.3, Handshake [length 0005], KeyUpdate")
    answered = messages.count("<<< TLS 1.3, Handshake [length 0005], KeyUpdate")
    assert sent >= 20  # ours went out...
    assert answered >= 5  # ...and the server answered the requests (K) with its own
    assert "[bob]: read failed" not in caplog.text
    assert "[bob]: write failed" not in caplog.text


class KeyUpdates:
    """Feeds s_client ``k`` and ``K`` commands on a thread while the ``with`` block runs.

    Each command must arrive in a read of its own, hence the pauses; and OpenSSL allows at
    most 32 KeyUpdates in a row without application data, so now and then a line goes in
    between.
    """

    def __init__(self, stdin: IO[str]) -> None:
        self.stdin = stdin
        self.sent = {"k": 0, "K": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def __enter__(self) -> KeyUpdates:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(0.015):
            if n % 6 == 5:
                self.stdin.write(f"/ping between-{n}\n")
            else:
                letter = "K" if n % 2 else "k"
                self.stdin.write(f"{letter}\n")
                self.sent[letter] += 1
            self.stdin.flush()
            n += 1

    def wait_for(self, total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while sum(self.sent.values()) < total and time.monotonic() < deadline:
            time.sleep(0.05)


def _flood(sender: Client, count: int) -> None:
    """``count`` messages to the current room, pipelined in batches of 100."""
    for batch in range(0, count, 100):
        for i in range(batch, batch + 100):
            sender.send(f"{i} {TEXT}")
        for _ in range(100):
            assert sender.line(timeout=20).startswith(("OK say", "JOIN"))


def _messages(source: LineReader | Client, count: int, timeout: float) -> list[str]:
    """The next ``count`` MSG lines from ``source``, skipping other lines."""
    deadline = time.monotonic() + timeout
    found: list[str] = []
    while len(found) < count:
        remaining = max(0.0, deadline - time.monotonic())
        try:
            if isinstance(source, Client):
                line = source.line(timeout=remaining)
            else:
                line = source.lines.get(timeout=remaining)
        except (queue.Empty, TimeoutError):
            raise AssertionError(f"only {len(found)} of {count} messages arrived") from None
        if line.startswith("MSG"):
            found.append(line)
    return found
