"""A user's path, end to end: `sealroom certs init`, `sealroom user add`, `sealroom serve` as a
real process, `openssl s_client` as one client, and SIGTERM for a graceful stop."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import CHEAP_ARGON2, Client, LineReader, write_config

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def sealroom(*argv: str, env: dict[str, str], stdin: str = "") -> str:
    done = subprocess.run(
        [sys.executable, "-m", "sealroom", *argv],
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path, subprocess.Popen[str]]]:
    config = write_config(tmp_path, {"listen": ["127.0.0.1:0"], "auth": {"argon2": CHEAP_ARGON2}})
    env = {**os.environ, "SEALROOM_CONFIG": str(config)}
    sealroom("certs", "init", "--dir", str(tmp_path / "certs"), env=env)
    sealroom("db", "init", env=env)
    for name in ("alice", "bob"):
        sealroom("user", "add", name, "--password-stdin", env=env, stdin=f"{name} password\n")
    server = subprocess.Popen(
        [sys.executable, "-m", "sealroom", "serve"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        yield env, tmp_path, server
    finally:
        if server.poll() is None:
            server.kill()
        server.wait(timeout=10)
        assert server.stderr is not None
        server.stderr.close()


def test_s_client_chat_and_graceful_stop(
    deployment: tuple[dict[str, str], Path, subprocess.Popen[str]],
) -> None:
    _env, folder, server = deployment
    assert server.stderr is not None
    log = LineReader(server.stderr)
    port = int(log.until(r"listening on 127\.0\.0\.1:\d+").rsplit(":", 1)[1])
    s_client = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-quiet",
            "-verify_return_error",
            "-verify_hostname",
            "localhost",
            "-CAfile",
            str(folder / "certs" / "ca.crt"),
            "-connect",
            f"127.0.0.1:{port}",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert s_client.stdin is not None
    bob: Client | None = None
    try:
        alice = LineReader(s_client.stdout)
        alice.until("^HELLO sealroom 1 ")
        s_client.stdin.write("/login alice alice password\n/join #tea\n")
        s_client.stdin.flush()
        alice.until("^OK login alice")
        alice.until("^OK join #tea")
        bob = Client(port, folder / "certs" / "ca.crt")
        bob.login("bob", "bob password")
        assert bob.request("/join #tea").startswith("OK join #tea")
        alice.until("^JOIN #tea bob$")
        s_client.stdin.write("hello from s_client\r\n")  # -crlf style line endings work too
        s_client.stdin.flush()
        assert bob.line() == "MSG #tea alice hello from s_client"
        assert bob.request("/msg alice hi alice").startswith("OK msg alice")
        alice.until("^DM bob hi alice$")
        server.send_signal(signal.SIGTERM)
        alice.until("^BYE shutting-down$")
        assert bob.closed()[-1] == "BYE shutting-down"
        assert server.wait(timeout=15) == 0
        log.until("stopped")
    finally:
        if bob is not None:
            bob.close()
        s_client.kill()
        s_client.wait(timeout=5)
        s_client.stdin.close()
        assert s_client.stdout is not None
        s_client.stdout.close()
