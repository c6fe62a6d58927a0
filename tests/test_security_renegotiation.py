"""Client-initiated renegotiation (TLS 1.2): refused, and the refusal costs nobody else.

Renegotiation lets a client make the server redo the expensive half of a handshake as often
as it likes over one connection, and has a history of attacks; TLS 1.3 removed it. The
server context sets ``OP_NO_RENEGOTIATION``, so OpenSSL answers a second ClientHello with a
``no_renegotiation`` alert instead of a second handshake. ``openssl s_client`` sends one
through its interactive ``R`` command.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest

from adversary import round_trip
from helpers import PASSWORD, LineReader, ServerFactory

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


def test_client_renegotiation_is_refused(make_server: ServerFactory, tmp_path: Path) -> None:
    server = make_server()
    server.add_user("mallory")
    alice = server.user("alice")
    msg_file = tmp_path / "msg.txt"
    process = subprocess.Popen(
        [
            "openssl",
            "s_client",
            "-quiet",
            "-no_ign_eof",  # keeps the command letters on (-quiet alone turns them off)
            "-tls1_2",
            "-verify_return_error",
            "-CAfile",
            str(server.ca_file),
            "-connect",
            f"127.0.0.1:{server.port}",
            "-msg",
            "-msgfile",
            str(msg_file),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert process.stdin is not None
    try:
        mallory = LineReader(process.stdout)
        mallory.until("^HELLO sealroom 1 ")
        process.stdin.write(f"/login mallory {PASSWORD}\n")
        process.stdin.flush()
        mallory.until("^OK login mallory")
        time.sleep(0.2)  # the command letter must arrive in a read of its own
        for _ in range(3):  # s_client gives up after the first refusal; the rest is moot
            if process.poll() is not None:
                break
            process.stdin.write("R\n")
            process.stdin.flush()
            time.sleep(0.2)
        status = process.wait(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
        process.stdin.close()
        assert process.stdout is not None
        process.stdout.close()
    messages = msg_file.read_text()
    assert messages.count("ClientHello") == 2  # the first handshake and the attempt
    assert messages.count("ServerHello\n") == 1  # ... but only one was ever answered
    assert "<<< TLS 1.2, Alert [length 0002], warning no_renegotiation" in messages
    assert status != 0  # s_client reports the refusal as an error
    # Nobody else noticed; the server keeps taking new connections.
    assert round_trip(alice, "after-renegotiation") < 1.0
    assert server.user("bob").request("/ping") == "OK ping"
