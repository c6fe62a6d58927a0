"""N nodes on one host share a port (SO_REUSEPORT), so N processes use N cores.

Two real ``sealroom serve`` processes, each with its own database and control socket, are
started on the same fixed port; the kernel spreads new connections across them, and each
one's ``sealroom status`` counts its share.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import trustme

from helpers import CHEAP_ARGON2, LineReader, tls_connection, write_config
from opshelp import NotifyListener, write_leaf

CONNECTIONS = 16  # all on one node by chance: 2 * 2**-16


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def node(ca: trustme.CA, folder: Path, port: int) -> Iterator[Path]:
    """``python -m sealroom serve -c CONFIG`` on 127.0.0.1:``port``, until ready; yields
    its configuration file."""
    folder.mkdir()
    cert, key = write_leaf(ca, folder, "server")
    config = write_config(
        folder,
        {
            "listen": [f"127.0.0.1:{port}"],
            "tls": {"cert": str(cert), "key": str(key)},
            "auth": {"argon2": CHEAP_ARGON2},
            "limits": {"shutdown_grace_s": 2},
        },
    )
    notify = NotifyListener(folder / "notify")
    env = {**os.environ, "NOTIFY_SOCKET": str(notify.path)}
    env.pop("JOURNAL_STREAM", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "sealroom", "serve", "-c", str(config)],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stderr is not None
    try:
        LineReader(process.stderr).until(rf"listening on 127\.0\.0\.1:{port}\b")
        notify.until("READY")
        yield config
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        process.stderr.close()
        notify.close()


def connections_of(config: Path) -> int:
    result = subprocess.run(
        [sys.executable, "-m", "sealroom", "status", "--json", "-c", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return int(json.loads(result.stdout)["connections"])


def test_two_nodes_share_one_port(ca: trustme.CA, tmp_path: Path) -> None:
    port = free_port()
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    with (
        node(ca, tmp_path / "node1", port) as first,
        node(ca, tmp_path / "node2", port) as second,
        contextlib.ExitStack() as clients,
    ):
        for _ in range(CONNECTIONS):
            tls = clients.enter_context(tls_connection(port, ca_file))
            assert tls.recv(1024).startswith(b"HELLO ")  # served, by one node or the other
        counts = [connections_of(first), connections_of(second)]
        assert sum(counts) == CONNECTIONS
        assert min(counts) > 0, counts
