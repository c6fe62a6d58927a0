"""Memory exhaustion through one endless line: 64 MiB with no LF.

The line buffer keeps at most ``max_line_bytes`` of an unfinished line (plus the chunk being
read), so the server's resident memory stays flat however long the line grows; once the LF
comes the line is answered ``ERR line-too-long`` and the connection carries on.
The server runs in this process, so its memory is this process's (VmRSS / VmHWM).
"""

from __future__ import annotations

from adversary import MIB, PeakRss
from helpers import ServerFactory

LINE_BYTES = 64 * MIB
CHUNK = b"A" * MIB  # one buffer sent again and again: the client itself stays small


def test_64_mib_line_without_lf_keeps_memory_flat(make_server: ServerFactory) -> None:
    server = make_server()
    mallory = server.user("mallory")
    bob = server.user("bob")
    mallory.expect("JOIN #lobby bob")
    # Warm up every buffer on both sides first, so the measurement sees only the line.
    mallory.sock.sendall(CHUNK * 2 + b"\n")
    assert mallory.line().startswith("ERR line-too-long")
    with PeakRss() as memory:
        for _ in range(LINE_BYTES // len(CHUNK)):
            mallory.sock.sendall(CHUNK)
        assert mallory.request("/ping still-here", timeout=30).startswith("ERR line-too-long")
    # The ping was part of the long line; the next line is served as usual.
    assert mallory.request("/ping after") == "OK ping after"
    assert memory.growth < 16 * MIB, f"resident memory grew {memory.growth / MIB:.1f} MiB"
    assert bob.request("/ping") == "OK ping"  # nothing of it reached anyone else


def test_long_line_before_login_is_bounded_too(make_server: ServerFactory) -> None:
    server = make_server(limits={"max_line_bytes": 512})
    stranger = server.client()
    with PeakRss() as memory:
        for _ in range(8):
            stranger.sock.sendall(CHUNK)
        stranger.send(b"")
        assert stranger.line(timeout=30).startswith("ERR line-too-long")
    assert stranger.request("/ping") == "OK ping"
    assert memory.growth < 16 * MIB
