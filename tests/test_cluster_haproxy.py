"""A real HAProxy in front of two cluster nodes, sending the PROXY protocol v2.

Clients connect to HAProxy from 127.0.0.2 and 127.0.0.3; HAProxy spreads them over two
`sealroom serve` nodes that trust it. The nodes see the clients' own addresses, and the
per-address limits they share through Redis count each client once across both nodes.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from adversary import closed_by_server, raw_connection
from cluster import NODE_TIMEOUT_S, Cluster, Node, read_until
from engines import RedisEngine, free_port
from helpers import PASSWORD, Client, http_get, wait_until
from sealroom.core.proxy import V2_SIGNATURE
from test_cluster_faults import FaultProxy
from test_proxy_haproxy import haproxy_binary, listening

BALANCER = "127.0.0.1"


@contextlib.contextmanager
def haproxy(folder: Path, port: int, backend: str) -> Iterator[None]:
    """HAProxy on 127.0.0.1:``port`` in TCP mode, its backend's lines as given; stopped by
    PID on the way out."""
    config = folder / "haproxy.cfg"
    config.write_text(
        "global\n    maxconn 200\n\ndefaults\n    mode tcp\n    timeout connect 5s\n"
        "    timeout client 30s\n    timeout server 30s\n    timeout check 2s\n\n"
        f"frontend sealroom\n    bind 127.0.0.1:{port}\n    default_backend nodes\n\n"
        f"backend nodes\n    balance roundrobin\n{backend}\n"
    )
    log = folder / "haproxy.log"
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
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


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
    with haproxy(tmp_path, port, servers):
        yield port, nodes


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


def ready(port: int) -> tuple[int, str]:
    """``GET /ready`` of the node whose metrics listen on 127.0.0.1:``port``."""
    status, _, body = http_get(port, "/ready")
    return status, body


def test_haproxy_asking_ready_sends_nobody_to_a_fenced_node(
    cluster: Cluster, redis_engine: RedisEngine, tmp_path: Path
) -> None:
    """Catches: a node cut off from Redis that still looks healthy to a load balancer. It
    accepts connections (its port is open) but answers server-busy; HAProxy's check of
    ``GET /ready`` on its metrics port takes it out of the rotation, and back in once it
    is in the cluster again. (A check that only connects would keep sending it half.)"""
    proxy = FaultProxy(redis_engine.port)
    try:
        metrics = [free_port(), free_port()]
        trusted = {"trusted_proxies": [BALANCER]}
        one = cluster.node("one", cluster=trusted, metrics={"listen": f"127.0.0.1:{metrics[0]}"})
        cut = cluster.node(
            "cut",
            cluster={**trusted, "redis": f"redis://127.0.0.1:{proxy.port}/0"},
            metrics={"listen": f"127.0.0.1:{metrics[1]}"},
        )
        names = [f"user{i}" for i in range(8)]
        for name in names:
            cluster.add_user(name)
        assert ready(metrics[0]) == (200, "ready\n")
        assert ready(metrics[1]) == (200, "ready\n")
        port = free_port()
        backend = (
            "    option httpchk GET /ready\n    default-server inter 200ms fall 1 rise 1\n"
            + "\n".join(
                f"    server {node.name} 127.0.0.1:{node.port} send-proxy-v2 check port {check}"
                for node, check in zip((one, cut), metrics, strict=True)
            )
        )
        with haproxy(tmp_path, port, backend):
            proxy.blackhole()
            wait_until(lambda: ready(metrics[1])[0] == 503, timeout=NODE_TIMEOUT_S + 5)
            _, text = ready(metrics[1])
            assert text.startswith("not ready: not in the cluster"), text
            assert ready(metrics[0]) == (200, "ready\n")

            def logins_through_haproxy() -> list[str]:
                replies = []
                for name in names:
                    client = Client(port, one.ca_file, source="127.0.0.2")
                    try:
                        replies.append(client.request(f"/login {name} {PASSWORD}", timeout=10))
                    finally:
                        client.close()
                return replies

            # Within a few checks every new client lands on node one, and logs in.
            wait_until(
                lambda: all(r.startswith("OK login") for r in logins_through_haproxy()),
                timeout=5,
                what="HAProxy taking the fenced node out",
            )
            replies = logins_through_haproxy()
            assert all(reply.startswith("OK login") for reply in replies), replies

            proxy.heal()
            wait_until(lambda: ready(metrics[1]) == (200, "ready\n"), timeout=10)
    finally:
        proxy.close()
