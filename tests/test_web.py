"""The web door over real TLS on loopback (SPEC section 5): HTTPS answers, and the protocol
over a WebSocket, sharing rooms and private messages with the TLS port."""

from __future__ import annotations

import http.client
import logging
import re
import ssl
import time

import pytest

from helpers import PASSWORD, Server, ServerFactory, WebClient, tls_connection, wait_until

WEB = {"web": {"listen": "127.0.0.1:0"}}
ID = r"[1-9][0-9]*"


@pytest.fixture
def web(make_server: ServerFactory) -> Server:
    return make_server(**WEB)


def https(server: Server) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(server.ca_file))
    return http.client.HTTPSConnection("localhost", server.web_port, context=ctx, timeout=5)


def get(server: Server, path: str, method: str = "GET") -> http.client.HTTPResponse:
    conn = https(server)
    conn.request(method, path)
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


# -- HTTP ----------------------------------------------------------------------------------


def test_off_by_default(server: Server) -> None:
    assert server.app.web is None
    assert server.app.snapshot().web is None


@pytest.mark.parametrize(
    ("path", "content_type", "needle"),
    [
        ("/", "text/html; charset=utf-8", b'<script src="/app.js" defer></script>'),
        ("/app.js", "text/javascript; charset=utf-8", b'"use strict";'),
        ("/app.css", "text/css; charset=utf-8", b".messages"),
        ("/favicon.svg", "image/svg+xml", b"<svg"),
    ],
)
def test_the_page_and_its_files(web: Server, path: str, content_type: str, needle: bytes) -> None:
    conn = https(web)
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    assert response.status == 200
    assert response.getheader("Content-Type") == content_type
    assert needle in body
    assert int(response.getheader("Content-Length", "-1")) == len(body)
    conn.close()


def test_security_headers_on_every_answer(web: Server) -> None:
    for path in ("/", "/app.js", "/nowhere"):
        response = get(web, path)
        headers = {k.lower(): v for k, v in response.getheaders()}
        csp = headers["content-security-policy"]
        assert "default-src 'self'" in csp
        assert "script-src 'self'" in csp
        assert "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert headers["strict-transport-security"].startswith("max-age=")
        assert headers["x-content-type-options"] == "nosniff"
        assert headers["referrer-policy"] == "no-referrer"
        assert headers["cache-control"] == "no-store"
        assert "set-cookie" not in headers


def test_the_page_has_no_inline_script_or_style_and_no_third_party_resource(web: Server) -> None:
    conn = https(web)
    conn.request("GET", "/")
    page = conn.getresponse().read().decode()
    conn.close()
    assert re.findall(r"<script[^>]*>", page) == ['<script src="/app.js" defer>']
    assert "<style" not in page
    assert " style=" not in page
    assert not re.search(r"\son[a-z]+=", page)  # no inline event handlers either
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page)


@pytest.mark.parametrize("path", ["/index.html", "/ws/", "/app.js/", "/../app.js", "/static"])
def test_every_other_path_is_404(web: Server, path: str) -> None:
    assert get(web, path).status == 404


def test_keep_alive_serves_the_page_and_its_files_on_one_connection(web: Server) -> None:
    conn = https(web)
    for path in ("/", "/app.css", "/app.js", "/favicon.svg", "/missing"):
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        assert response.status == (404 if path == "/missing" else 200)
    conn.close()


def test_head_and_other_methods(web: Server) -> None:
    response = get(web, "/", "HEAD")
    assert response.status == 200
    assert int(response.getheader("Content-Length", "0")) > 0
    response = get(web, "/", "POST")
    assert response.status == 405
    assert response.getheader("Allow") == "GET, HEAD"


def test_a_request_with_a_body_is_refused_and_closed(web: Server) -> None:
    conn = https(web)
    conn.request("GET", "/", body=b"x" * 100)
    response = conn.getresponse()
    response.read()
    assert response.status == 413
    assert response.getheader("Connection") == "close"
    conn.close()


def raw_request(server: Server, data: bytes, timeout: float = 5.0) -> bytes:
    sock = tls_connection(server.web_port, server.ca_file, timeout=timeout)
    try:
        sock.sendall(data)
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received
    finally:
        sock.close()


def test_request_size_is_bounded(make_server: ServerFactory) -> None:
    server = make_server(web={"listen": "127.0.0.1:0", "max_request_bytes": 2048})
    head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Filler: " + b"a" * 4096
    # Whole in one piece, and as a head that never ends.
    assert raw_request(server, head + b"\r\n\r\n").startswith(b"HTTP/1.1 431 ")
    assert raw_request(server, head).startswith(b"HTTP/1.1 431 ")


def test_header_count_is_bounded(make_server: ServerFactory) -> None:
    server = make_server(web={"listen": "127.0.0.1:0", "max_headers": 10})
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(11))
    answer = raw_request(server, b"GET / HTTP/1.1\r\nHost: localhost\r\n" + fields + b"\r\n")
    assert answer.startswith(b"HTTP/1.1 431 ")


def test_garbage_gets_400_and_the_connection_closes(web: Server) -> None:
    assert raw_request(web, b"\x16\x03\x01 not http at all\r\n\r\n").startswith(b"HTTP/1.1 400 ")


def test_a_slow_request_times_out(make_server: ServerFactory) -> None:
    server = make_server(web={"listen": "127.0.0.1:0"}, limits={"handshake_timeout_s": 0.5})
    sock = tls_connection(server.web_port, server.ca_file)
    sock.sendall(b"GET / HTTP/1.1\r\n")  # ...and never the rest
    started = time.monotonic()
    sock.settimeout(5)
    assert sock.recv(100) == b""
    assert time.monotonic() - started < 3
    sock.close()


# -- the WebSocket ---------------------------------------------------------------------------


def test_upgrade_says_hello(web: Server) -> None:
    client = web.web_client()
    assert re.fullmatch(r"HELLO sealroom 1 localhost .+", client.hello)
    assert client.request("/ping web") == "OK ping web"


def test_a_plain_get_of_ws_is_not_an_upgrade(web: Server) -> None:
    conn = https(web)
    conn.request("GET", "/ws", headers={"Origin": f"https://localhost:{web.web_port}"})
    response = conn.getresponse()
    response.read()
    conn.close()
    assert response.status == 426


def test_binary_message_closes_with_1003(web: Server) -> None:
    client = web.web_client()
    client.send(b"\x00\x01binary")
    assert client.closed() == ["BYE binary-message"]
    assert client.close_code == 1003


def test_text_that_is_not_utf8_closes_with_1007(web: Server) -> None:
    client = web.web_client()
    client.ws.send(b"/ping \xff\xfe", text=True)
    assert client.closed() == []
    assert client.close_code == 1007


def test_oversized_message_gets_line_too_long_and_the_connection_stays(web: Server) -> None:
    limit = web.settings.limits.max_line_bytes
    client = web.web_client()
    assert client.request("x" * limit).startswith("ERR line-too-long")
    assert client.request("é" * limit).startswith("ERR line-too-long")
    # A message is a line without its LF: limit - 1 bytes fit, as on the TLS port.
    assert client.request("/ping " + "y" * (limit - 7)).startswith("OK ping yyy")
    assert client.request("/ping still here") == "OK ping still here"


def test_a_fragmented_message_is_one_line(web: Server) -> None:
    client = web.web_client()
    client.ws.send(iter(["/ping ", "in ", "three"]))
    assert client.line() == "OK ping in three"


def test_line_breaks_inside_a_message_are_refused_not_split(web: Server) -> None:
    alice = web.web_user("alice")
    bob = web.user("bob")
    alice.expect("JOIN #lobby bob")
    for text in ("one\ntwo", "one\r\ntwo", "trailing\r", "\n"):
        assert alice.request(text).startswith("ERR bad-input"), text
    assert alice.request("fine").startswith("OK say #lobby")
    assert bob.line() == "MSG #lobby alice fine"


def test_empty_message_is_ignored(web: Server) -> None:
    client = web.web_client()
    client.send("")
    assert client.request("/ping after") == "OK ping after"


def test_ping_gets_pong(web: Server) -> None:
    client = web.web_client()
    latency = client.ws.ping(b"are you there").wait(5)
    assert latency
    assert client.request("/ping x") == "OK ping x"


def test_client_close_is_answered(web: Server) -> None:
    client = web.web_client()
    client.ws.close(code=1000, reason="bye")
    assert client.close_code == 1000
    wait_until(lambda: web.app.web is not None and web.app.web.door.counts()[0] == 0)


def test_quit_sends_bye_then_a_normal_close(web: Server) -> None:
    client = web.web_user("alice")
    assert client.request("/quit") == "OK quit"
    assert client.closed() == ["BYE quit"]
    assert client.close_code == 1000


def test_web_and_tls_users_chat_both_ways(web: Server) -> None:
    alice = web.web_user("alice")
    bob = web.user("bob")
    alice.expect("JOIN #lobby bob")
    assert re.fullmatch(rf"OK say #lobby {ID}", alice.request("hello from the browser"))
    assert bob.line() == "MSG #lobby alice hello from the browser"
    assert re.fullmatch(rf"OK say #lobby {ID}", bob.request("hello from the terminal"))
    assert alice.line() == "MSG #lobby bob hello from the terminal"
    assert alice.request("/join #dev").startswith("OK join #dev")
    assert bob.request("/join #dev").startswith("OK join #dev")
    alice.expect("JOIN #dev bob")
    assert alice.request("/who #dev") == "OK who #dev alice bob"
    assert re.fullmatch(rf"OK msg bob {ID}", alice.request("/msg bob psst"))
    assert bob.line() == "DM alice psst"
    assert re.fullmatch(rf"OK msg alice {ID}", bob.request("/msg alice <script>x</script>"))
    assert alice.line() == "DM bob <script>x</script>"
    bob.send("/quit")
    assert {alice.line(), alice.line()} == {"PART #dev bob", "PART #lobby bob"}


def test_the_same_pipeline_applies(make_server: ServerFactory) -> None:
    """Before login, auth-required; a wrong password, auth-failed; rate limits alike."""
    server = make_server(**WEB, rate={"messages": {"rate": 0.001, "burst": 2}})
    server.add_user("alice")
    client = server.web_client()
    assert client.request("/join #x").startswith("ERR auth-required")
    assert client.request("/login alice wrong password").startswith("ERR auth-failed")
    assert client.request(f"/login alice {PASSWORD}").startswith("OK login alice")
    assert client.request("one").startswith("OK say")
    assert client.request("two").startswith("OK say")
    assert re.match(r"ERR rate-limited .*retry in \d+s", client.request("three"))
    assert client.request("\x1b[2J").startswith("ERR bad-input")


def test_stored_private_messages_reach_a_web_login(web: Server) -> None:
    web.add_user("alice")
    bob = web.user("bob")
    assert bob.request("/msg alice while you were away").startswith("OK msg alice")
    client = web.web_client()
    client.send(f"/login alice {PASSWORD}")
    assert client.line().startswith("OK login alice")
    assert re.fullmatch(rf"HIST alice {ID} \S+Z bob while you were away", client.line())


def test_login_timeout_applies(make_server: ServerFactory) -> None:
    server = make_server(**WEB, limits={"login_timeout_s": 0.5})
    client = server.web_client()
    assert client.closed(timeout=5) == ["BYE login-timeout"]


def test_resume_over_the_web(web: Server) -> None:
    alice = web.web_user("alice")
    token = alice.request("/token").split()[2]
    alice.close()
    again = web.web_client()
    assert again.request(f"/resume alice {token}").startswith("OK login alice")


def test_slow_web_consumer_is_dropped(
    make_server: ServerFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sealroom")
    server = make_server(
        **WEB,
        limits={"outbound_queue_bytes": 65536},
        rate={"messages": {"rate": 1e6, "burst": 1e6}},
    )
    server.add_user("bob")
    # bob reads nothing after his login: a library client whose queue of unread messages is
    # full stops reading its socket, and a small receive buffer makes that soon.
    bob = WebClient(server.web_port, server.ca_file, rcvbuf=4096, max_queue=1)
    bob.login("bob")
    alice = server.user("alice")
    wait_until(lambda: server.app.hub.who("#lobby") == ["alice", "bob"], what="both in")
    text = "z" * 3000
    for n in range(3000):
        assert alice.request(f"{n} {text}").startswith("OK say #lobby")
        if server.app.hub.who("#lobby") == ["alice"]:
            break
    wait_until(lambda: server.app.hub.who("#lobby") == ["alice"], what="bob dropped")
    assert "[bob]: connection closed (slow-consumer)" in caplog.text
    assert alice.request("/ping still fast") == "OK ping still fast"
    bob.close()


def test_status_and_metrics_count_web_sessions_apart(web: Server) -> None:
    alice = web.web_user("alice")
    web.user("bob")
    web.web_client()  # connected, not logged in
    assert alice.request("/ping") == "OK ping"
    snapshot = web.app.snapshot()
    assert snapshot.web == f"127.0.0.1:{web.web_port}"
    assert (snapshot.web_connections, snapshot.web_sessions) == (2, 1)
    assert snapshot.sessions == 2
    assert snapshot.web_answers.get(101) == 2
    from sealroom.ops.observe import metric_families, status_report, status_text

    report = status_report(snapshot)
    assert report["web"]["sessions"] == 1
    assert report["web"]["connections"] == 2
    assert any(line.startswith("web door on https://127.0.0.1:") for line in status_text(report))
    names = {family.name for family in metric_families(snapshot)}
    assert {"sealroom_web_sessions", "sealroom_web_connections"} <= names


def test_shutdown_says_bye_and_closes_1001(web: Server) -> None:
    client = web.web_user("alice")
    web.app.stop(grace_s=2.0)
    assert client.closed() == ["BYE shutting-down"]
    assert client.close_code == 1001


def test_kicked_over_the_web(web: Server) -> None:
    web.user("root", admin=True).request("/ping")
    admin = web.client()
    admin.login("root")
    alice = web.web_user("alice")
    assert admin.request("/kick alice") == "OK kick alice"
    lines = alice.closed()
    assert lines[-1].startswith("BYE kicked")


def test_a_port_taken_by_another_program_is_one_line(make_server: ServerFactory) -> None:
    """Sealroom nodes may share a port (SO_REUSEPORT); a port another program holds
    (without it) is a user error naming the key."""
    import socket

    from sealroom.core.errors import UserError

    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        with pytest.raises(UserError, match=r"\(web.listen\)"):
            make_server(web={"listen": f"127.0.0.1:{port}"})
    finally:
        holder.close()
