"""OpenSSL's own share of a handshake: the server side driven through memory BIOs.

No sockets, threads or Python connection objects — only ``do_handshake`` on the server's
real context (``sealroom.net.tls.build_server_context``), timed on the thread's CPU clock. Set
against the whole-server figure of the handshakes scenario it shows how much of a
connection's cost resumption could ever save; :func:`plain_connection_us` measures the
floor beneath both, a connection with no TLS at all.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import socket
import socketserver
import ssl
import time
from pathlib import Path
from typing import Any

from sealroom.config import load_settings
from sealroom.net.tls import build_server_context


def _pump(source: ssl.MemoryBIO, sink: ssl.MemoryBIO) -> None:
    data = source.read()
    if data:
        sink.write(data)


def _step(obj: ssl.SSLObject) -> bool:
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        return False
    return True


def server_handshake_us(config: Path, ca: Path, count: int, *, resume: bool) -> float:
    """Median server CPU (µs) in ``do_handshake`` per TLS 1.3 handshake, full or resumed."""
    tls = load_settings(config).tls
    server_ctx = build_server_context(tls.cert, tls.key, tls.client_ca, tls.profile)
    client_ctx = ssl.create_default_context(cafile=str(ca))
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    session = None
    costs: list[float] = []
    for round_ in range(count + 1):  # the first one makes the ticket
        c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
        client = client_ctx.wrap_bio(c_in, c_out, server_hostname="localhost", session=session)
        server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
        spent = 0.0
        client_done = server_done = False
        while not (client_done and server_done):
            client_done = client_done or _step(client)
            _pump(c_out, s_in)
            started = time.thread_time()
            server_done = server_done or _step(server)
            spent += time.thread_time() - started
            _pump(s_out, c_in)
        # The ticket comes after the handshake: let the client read it.
        with contextlib.suppress(ssl.SSLWantReadError):
            client.read(1)
        if resume:
            if session is not None and not client.session_reused:
                raise RuntimeError("the ticket did not resume the session")
            session = client.session
        if round_ > 0:
            costs.append(spent)
    costs.sort()
    return costs[len(costs) // 2] * 1e6


class _Hello(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"HELLO\n")


class _PlainServer(socketserver.ThreadingMixIn, socketserver.TCPServer):
    daemon_threads = True
    block_on_close = False
    request_queue_size = 1024

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = self.socket.accept()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, address


def _serve_plain(port: Any) -> None:
    with _PlainServer(("127.0.0.1", 0), _Hello) as plain:
        port.put(plain.server_address[1])
        plain.serve_forever(0.5)


def plain_connection_us(count: int) -> float:
    """Server CPU (µs) per connection of a bare ThreadingMixIn TCP server that writes one
    line and closes: no TLS, no Sealroom. The floor under any handshake figure here."""
    port: Any = mp.Queue()
    server = mp.Process(target=_serve_plain, args=(port,), daemon=True)
    server.start()
    try:
        number = port.get(timeout=30)
        stat = Path(f"/proc/{server.pid}/stat")

        def cpu() -> float:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        before = cpu()
        for _ in range(count):
            with socket.create_connection(("127.0.0.1", number)) as sock:
                sock.recv(16)
        return (cpu() - before) / count * 1e6
    finally:
        server.terminate()
        server.join(10)
