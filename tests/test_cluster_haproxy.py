"""A real HAProxy in front of two cluster nodes, sending the PROXY protocol v2.

Clients connect to HAProxy from 127.0.0.2 and 127.0.0.3; HAProxy spreads them over two
`sealroom serve` nodes that trust it. The nodes see the clients' own addresses, and the
per-address limits they share through Redis count each client once across both nodes.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from adversary import closed_by_server, raw_connection
from cluster import Cluster, Node, read_until
from engines import free_port
from helpers import Client, wait_until
from sealroom.core.proxy import V2_SIGNATURE
from test_proxy_haproxy import haproxy_binary, listening

BALANCER = "127.0.0.1"


@pytest.fixture
def balanced(cluster: Cluster, tmp_path: Path) -> Iterator[tuple[int, list[Node]]]:
    """Two nodes behind HAProxy (round robin, send-proxy-v2): its port and the nodes."""
    trusted = {
        "cluster": {"trusted_proxies": [BALANCER]},
        "rate": {"connections_per_ip": {"rate": 0.01, "burst": 3}},
    }
    nodes = [cluster.node("one", **trusted), cluster.node("two", **trusted)]
    for name in ("alice", "bob"):
        cluster.add_user(name)
    port = free_port()
    servers = "\n".join(
        f"    server {node.name} 127.0.0.1:{node.port} send-proxy-v2" for node in nodes
    )
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        "global\n    maxconn 200\n\ndefaults\n    mode tcp\n    timeout connect 5s\n"
        "    timeout client 30s\n    timeout server 30s\n\n"
        f"frontend sealroom\n    bind 127.0.0.1:{port}\n    default_backend nodes\n\n"
        f"backend nodes\n    balance roundrobin\n{servers}\n"
    )
    log = tmp_path / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [haproxy_binary(), "-db", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until(lambda: listening(port) or process.poll() is not None, timeout=10)
        assert process.poll() is None, log.read_text()
        yield port, nodes
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def test_two_nodes_behind_haproxy_are_one_server_with_one_budget_per_client(
    balanced: tuple[int, list[Node]], cluster: Cluster
) -> None:
    port, nodes = balanced
    ca = nodes[0].ca_file
    opened: list[Client] = []
    try:
        alice = Client(port, ca, source="127.0.0.2")  # round robin: node one
        opened.append(alice)
        alice.login("alice")
        bob = Client(port, ca, source="127.0.0.3")  # node two
        opened.append(bob)
        bob.login("bob")
        read_until(alice, "JOIN #lobby bob")
        assert alice.request("/say #lobby hi bob").startswith("OK say")
        read_until(bob, "MSG #lobby alice hi bob")
        # The nodes see the clients, not HAProxy: `sealroom sessions` across the cluster.
        result = cluster.cli("sessions", "--json")
        rows = sorted((row["user"], row["address"]) for row in json.loads(result.stdout))
        assert rows == [("alice", "127.0.0.2"), ("bob", "127.0.0.3")]
        # 127.0.0.2 has a budget of 3 connections for the whole cluster: its first went to
        # node one; two more land on two and one; the fourth is refused wherever it lands.
        for _ in range(2):
            opened.append(Client(port, ca, source="127.0.0.2"))
        with pytest.raises((OSError, EOFError)):
            opened.append(Client(port, ca, source="127.0.0.2"))
        opened.append(Client(port, ca, source="127.0.0.3"))  # bob's address still may
    finally:
        for client in opened:
            client.close()


def test_a_proxy_header_from_an_untrusted_address_is_closed(
    balanced: tuple[int, list[Node]],
) -> None:
    _, nodes = balanced
    body = bytes([192, 0, 2, 7, 127, 0, 0, 1]) + b"\x9c\x40\x1d\x13"
    header = V2_SIGNATURE + b"\x21\x11\x00\x0c" + body
    with raw_connection(nodes[1].port, source="127.0.0.2") as sock:
        sock.sendall(header + b"\x16\x03\x01\x00\x05hello")
        assert closed_by_server(sock, timeout=5)
