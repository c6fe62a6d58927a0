"""Threat: anonymous connections make the server work for nothing.

Before login every request draws on the connection's message bucket: pipelined `/help`
from a stranger is answered `rate-limited` after the burst, not 46-70 times its size.
"""

from __future__ import annotations

from helpers import ServerFactory


def test_pipelined_help_before_login_is_rate_limited(make_server: ServerFactory) -> None:
    server = make_server(rate={"messages": {"rate": 0.01, "burst": 5}})
    stranger = server.client()
    stranger.send(b"/help\n" * 20)
    finals: list[str] = []
    while len(finals) < 20:
        line = stranger.line()
        if line.startswith(("OK ", "ERR ", "BYE ")):
            finals.append(line)
        if line.startswith("BYE "):
            break
    assert finals[:5] == ["OK help"] * 5
    assert all(f.startswith("ERR rate-limited") for f in finals[5:]), finals
    assert stranger.request("/quit").startswith("OK quit")  # leaving is always free
