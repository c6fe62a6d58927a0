"""The Prometheus endpoint: off by default, the text format, and counters that move."""

from __future__ import annotations

import contextlib
import re
import socket

import pytest

from helpers import Server, ServerFactory, http_get
from opshelp import captured_lines
from sealroom.core.errors import UserError
from sealroom.ops.metrics import Family, MetricsServer, render

SAMPLE = re.compile(r'^([a-z_:][a-z0-9_:]*)(\{(?:[a-z_]+="(?:[^"\\]|\\.)*",?)*\})? (\S+)$')


def scrape(server: Server, path: str = "/metrics") -> tuple[int, str, str]:
    metrics = server.app.metrics
    assert metrics is not None
    return http_get(metrics.server_address[1], path)


def parse(text: str) -> dict[str, float]:
    """``name{labels}`` -> value; every line must be a comment or a valid sample."""
    values: dict[str, float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample: {line!r}"
        name = match.group(1)
        assert name in types, f"{name} has no TYPE"
        assert types[name] != "counter" or name.endswith("_total"), name
        values[name + (match.group(2) or "")] = float(match.group(3))
    return values


def test_off_by_default(server: Server) -> None:
    assert server.app.metrics is None


def test_counters_move(make_server: ServerFactory) -> None:
    server = make_server(
        metrics={"listen": "127.0.0.1:0"}, rate={"messages": {"rate": 0.001, "burst": 3}}
    )
    status, content_type, _ = scrape(server)
    assert status == 200
    assert content_type == "text/plain; version=0.0.4; charset=utf-8"

    alice, bob = server.user("alice"), server.user("bob")
    assert alice.request("hello").startswith("OK say")  # 1 token
    assert alice.request("/msg bob psst").startswith("OK msg")  # 2
    assert alice.request("/ping").startswith("OK ping")  # 3
    assert alice.request("/ping").startswith("ERR rate-limited")
    assert server.client().request("/login bob wrong password").startswith("ERR auth-failed")
    with socket.create_connection(("127.0.0.1", server.port)) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")  # not TLS: a failed handshake
        with contextlib.suppress(ConnectionError):
            raw.recv(100)
    bob.close()
    registry = server.app.shared.registry
    with registry._cond:  # notified as each connection thread finishes (counted before)
        assert registry._cond.wait_for(lambda: len(registry) == 2, 5)  # alice, wrong login

    values = parse(scrape(server)[2])
    assert values['sealroom_connections_closed_total{reason="peer"}'] == 1
    assert values["sealroom_sessions"] == 1
    assert values['sealroom_logins_total{result="success"}'] == 2
    assert values['sealroom_logins_total{result="failure"}'] == 1
    assert values['sealroom_messages_received_total{kind="room"}'] == 1
    assert values['sealroom_messages_received_total{kind="private"}'] == 1
    assert values["sealroom_deliveries_total"] == 2  # MSG to bob, DM to bob
    assert values["sealroom_delivered_bytes_total"] == len(
        b"MSG #lobby alice hello\n" + b"DM alice psst\n"
    )
    assert values['sealroom_rate_limited_total{limit="rate.messages"}'] == 1
    assert values['sealroom_rate_limited_total{limit="limits.max_connections"}'] == 0
    assert values["sealroom_tls_handshake_failures_total"] == 1
    assert values["sealroom_connections_accepted_total"] == 4
    assert values['sealroom_bytes_total{direction="in"}'] > 0
    assert values['sealroom_bytes_total{direction="out"}'] > 0
    assert values["sealroom_argon2_slots_taken_total"] == 3
    assert values["sealroom_argon2_queue_wait_seconds_total"] >= 0
    assert values["sealroom_argon2_waiting"] == 0
    assert values["sealroom_history_writer_lag"] >= 0
    assert values["sealroom_slow_consumer_drops_total"] == 0
    assert values["sealroom_tls_certificate_expiry_seconds"] > values["sealroom_start_time_seconds"]
    alice.close()


def test_only_metrics_and_ready_are_served(make_server: ServerFactory) -> None:
    server = make_server(metrics={"listen": "127.0.0.1:0"})
    assert scrape(server, "/")[0] == 404
    assert scrape(server, "/metrics?x=1")[0] == 200
    assert scrape(server, "/ready") == (200, "text/plain; charset=utf-8", "ready\n")


def test_ready_says_why_not_with_a_503(make_server: ServerFactory) -> None:
    # A load balancer's check: anything but 2xx takes the server out of its rotation. (The
    # cluster's reasons, with a real HAProxy: test_cluster_haproxy.py.)
    server = make_server(metrics={"listen": "127.0.0.1:0"})
    metrics = server.app.metrics
    assert metrics is not None
    assert server.app.unready() is None
    metrics.unready = lambda: "shutting down"
    assert scrape(server, "/ready") == (
        503,
        "text/plain; charset=utf-8",
        "not ready: shutting down\n",
    )


def test_a_busy_port_is_one_error(make_server: ServerFactory) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(UserError, match=r"cannot listen for metrics on 127\.0\.0\.1"):
            make_server(metrics={"listen": f"127.0.0.1:{port}"})


def test_non_loopback_is_warned_about() -> None:
    with captured_lines() as logs:
        server = MetricsServer(("0.0.0.0", 0), list)  # noqa: S104 -- the point of the test
        server.server_close()
    assert "is not loopback" in logs.wait_for("metrics endpoint on 0.0.0.0")


def test_render_escapes_labels_and_help() -> None:
    text = render(
        [
            Family("x_total", "counter", "a\\b\nc", [({"why": 'say "hi"\\\n'}, 3), ({}, 0.5)]),
            Family.single("y", "gauge", "y", float("inf")),
        ]
    )
    assert text == (
        "# HELP x_total a\\\\b\\nc\n"
        "# TYPE x_total counter\n"
        'x_total{why="say \\"hi\\"\\\\\\n"} 3\n'
        "x_total 0.5\n"
        "# HELP y y\n"
        "# TYPE y gauge\n"
        "y +Inf\n"
    )
    assert parse(text)['x_total{why="say \\"hi\\"\\\\\\n"}'] == 3


@pytest.mark.parametrize(("max_concurrent", "deadline"), [(0, 1.0), (1, 0.0)])
def test_bounds_must_be_positive(max_concurrent: int, deadline: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        MetricsServer(
            ("127.0.0.1", 0), list, max_concurrent=max_concurrent, request_deadline_s=deadline
        )
