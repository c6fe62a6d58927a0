"""Crash test: `kill -9` the server while clients flood private messages to offline
accounts; after a restart every message that got `OK msg` is delivered, none twice, and
`sealroom db check` passes. Repeated, at random moments."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from argon2 import PasswordHasher

from helpers import CHEAP_ARGON2, PASSWORD, Client, LineReader, write_config
from sealroom.store.sqlite import SqliteStore

ROUNDS = 10
SENDERS = ("s0", "s1", "s2")
RECIPIENTS = ("r0", "r1", "r2", "r3")


def start_server(env: dict[str, str]) -> tuple[subprocess.Popen[str], int, LineReader]:
    server = subprocess.Popen(
        [sys.executable, "-m", "sealroom", "serve"], env=env, stderr=subprocess.PIPE, text=True
    )
    log = LineReader(server.stderr)
    port = int(log.until(r"listening on 127\.0\.0\.1:\d+", timeout=30).rsplit(":", 1)[1])
    return server, port, log


def flood(port: int, ca: Path, sender: str, acked: dict[int, str], stop: threading.Event) -> None:
    """Send private messages in pipelined batches, recording each acknowledged id."""
    try:
        client = Client(port, ca)
    except OSError:
        return
    try:
        client.login(sender)
        n = 0
        while not stop.is_set():
            batch = []
            for _ in range(10):
                recipient = RECIPIENTS[n % len(RECIPIENTS)]
                text = f"{sender}-{n}"
                batch.append(text)
                client.send(f"/msg {recipient} {text}")
                n += 1
            for text in batch:
                reply = client.line(timeout=10)
                while reply.startswith(("JOIN ", "PART ")):  # others coming and going
                    reply = client.line(timeout=10)
                match = re.fullmatch(r"OK msg \S+ (\d+)", reply)
                assert match, reply
                acked[int(match.group(1))] = text
    except (OSError, EOFError):
        return  # the server was killed under us: what was acknowledged is in `acked`
    finally:
        client.close()


def collect(port: int, ca: Path) -> dict[int, str]:
    """Log in every recipient; the stored messages it receives, by id."""
    delivered: dict[int, str] = {}
    for recipient in RECIPIENTS:
        client = Client(port, ca)
        try:
            client.login(recipient)
            client.send("/ping done")
            while (line := client.line(timeout=20)) != "OK ping done":
                fields = line.split(" ", 5)
                assert fields[0] == "HIST", line
                assert fields[1] == recipient
                message_id = int(fields[2])
                assert message_id not in delivered, f"{message_id} delivered twice"
                delivered[message_id] = fields[5]
        finally:
            client.close()
    return delivered


@pytest.mark.slow
def test_kill_9_loses_no_acknowledged_message(tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        {
            "listen": ["127.0.0.1:0"],
            "auth": {"argon2": CHEAP_ARGON2},
            "rate": {
                "messages": {"rate": 100000, "burst": 100000},
                "logins_per_ip": {"rate": 1000, "burst": 1000},
                "connections_per_ip": {"rate": 1000, "burst": 1000},
            },
            "history": {"private_per_user": 1_000_000, "private_per_sender": 1_000_000},
        },
    )
    env = {**os.environ, "SEALROOM_CONFIG": str(config)}
    subprocess.run(
        [sys.executable, "-m", "sealroom", "certs", "init", "--dir", str(tmp_path / "certs")],
        env=env,
        check=True,
        capture_output=True,
    )
    ca = tmp_path / "certs" / "ca.crt"
    hasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
    with SqliteStore(tmp_path / "var" / "sealroom.db") as store:
        for name in SENDERS + RECIPIENTS:
            store.add_account(name, hasher.hash(PASSWORD))
    rng = random.Random(int(os.environ.get("CRASH_SEED", time.time_ns())))
    seen: dict[int, str] = {}
    total_acked = 0
    for _ in range(ROUNDS):
        server, port, _log = start_server(env)
        acked: dict[int, str] = {}
        stop = threading.Event()
        threads = [threading.Thread(target=flood, args=(port, ca, s, acked, stop)) for s in SENDERS]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(0.2, 0.8))  # the random moment of the crash
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=10)
        stop.set()
        for thread in threads:
            thread.join(timeout=20)
        assert server.stderr is not None
        server.stderr.close()
        server, port, _log = start_server(env)
        try:
            delivered = collect(port, ca)
        finally:
            server.send_signal(signal.SIGTERM)
            assert server.wait(timeout=20) == 0
            assert server.stderr is not None
            server.stderr.close()
        missing = {i: t for i, t in acked.items() if i not in delivered}
        assert not missing, f"acknowledged but lost: {sorted(missing)[:10]}"
        assert all(delivered[i] == t for i, t in acked.items())
        assert not set(delivered) & set(seen), "a message was delivered in two rounds"
        seen.update(delivered)
        total_acked += len(acked)
    assert total_acked > ROUNDS  # the floods really ran
    check = subprocess.run(
        [sys.executable, "-m", "sealroom", "db", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
