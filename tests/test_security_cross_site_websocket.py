"""Cross-site WebSocket hijacking: another site's page opening Sealroom's WebSocket.

A browser sends cookies and client certificates with a cross-site WebSocket upgrade, and
reads whatever comes back: a server that accepts any Origin lets a page on evil.example
talk to it as the visitor. Sealroom's web door has no cookie to steal, but the rule holds
anyway (SPEC section 5): only the server's own origin, ``https://SERVER_NAME[:PORT]``, and
those listed in ``web.origins`` may open it. Every other upgrade gets 403 and a closed
connection, before any session exists.
"""

from __future__ import annotations

import pytest
from websockets.exceptions import InvalidStatus

from helpers import Server, ServerFactory, WebClient, tls_connection, wait_until


@pytest.fixture
def web(make_server: ServerFactory) -> Server:
    return make_server(web={"listen": "127.0.0.1:0"})


def refused_status(server: Server, origin: str) -> int:
    with pytest.raises(InvalidStatus) as refused:
        WebClient(server.web_port, server.ca_file, origin=origin)
    return refused.value.response.status_code


@pytest.mark.parametrize(
    "origin",
    [
        "https://evil.example",
        "http://localhost:{port}",  # the right host, without TLS
        "https://localhost",  # the right host, another port
        "https://localhost:{port}.evil.example",  # a look-alike that starts right
        "https://evil.example/https://localhost:{port}",
        "null",  # a sandboxed frame, a file: page, a data: URL
    ],
)
def test_a_foreign_origin_gets_403(web: Server, origin: str) -> None:
    assert refused_status(web, origin.format(port=web.web_port)) == 403


def test_a_refused_upgrade_starts_no_session_and_leaves_nothing(web: Server) -> None:
    before = web.app.snapshot()
    for _ in range(5):
        assert refused_status(web, "https://evil.example") == 403
    after = web.app.snapshot()
    assert after.web_answers.get(403, 0) - before.web_answers.get(403, 0) == 5
    assert after.web_answers.get(101, 0) == before.web_answers.get(101, 0)
    assert after.sessions == before.sessions
    door = web.app.web.door if web.app.web is not None else None
    assert door is not None
    # The refused connections close as soon as the reactor has written the 403.
    wait_until(lambda: door.counts() == (0, 0), what="the refused connections closed")


def test_an_upgrade_without_origin_gets_403(web: Server) -> None:
    sock = tls_connection(web.web_port, web.ca_file)
    sock.sendall(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    answer = b""
    while chunk := sock.recv(65536):  # the server closes after its answer
        answer += chunk
    sock.close()
    assert answer.startswith(b"HTTP/1.1 403 ")
    assert b"set-cookie" not in answer.lower()


def test_origins_the_operator_lists_are_allowed(make_server: ServerFactory) -> None:
    server = make_server(
        web={"listen": "127.0.0.1:0", "origins": ["https://Chat.Example.org:443"]},
        server_name="localhost",
    )
    client = WebClient(server.web_port, server.ca_file, origin="https://chat.example.org")
    assert client.hello.startswith("HELLO ")
    client.close()
    own = WebClient(server.web_port, server.ca_file)  # https://localhost:PORT still works
    assert own.hello.startswith("HELLO ")
    own.close()
    assert refused_status(server, "https://chat.example.org:8443") == 403
